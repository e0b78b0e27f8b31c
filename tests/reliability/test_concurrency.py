"""Concurrency: many writers, readers and gc on one store at once lose and expose nothing.

Processes: N writer processes make M writes each (creates, bulk puts, content
and metadata updates, deletes, relationships) into one collection, while two
reader processes (one of them read-only) check invariants continuously and a
third process runs gc with no grace period plus a quick fsck in a loop.
Afterwards every acknowledged write is present with its exact revision and
body, no caller saw an error (in particular not "database is locked"), gc
removed no object that any revision references, and a full fsck is clean.

Threads: the same mix inside one process, all threads sharing one
``SQLiteKnowledgeRepository`` object.

CI: 4 x 250 writes; long form (``--runslow``): 4 x 1000. Sizes scale with
``KONTEXTUAL_CONCURRENCY_WRITES`` and ``KONTEXTUAL_CONCURRENCY_WRITES_LONG``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import ArtifactNotFound
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck, gc

from . import concurrency_worker
from .harness import record_figures, scaled

WORKER = Path(__file__).with_name("concurrency_worker.py")
WRITERS = 4
READERS = 2
DURABILITIES = ["full", "batch", "none", "full"]


def check_writes(store: Path, writes: list[dict[str, Any]], removed: set[str]) -> dict[str, int]:
    """Every acknowledged write present; gc removed nothing referenced; fsck clean."""
    with SQLiteKnowledgeRepository.open(store) as repo:
        final: dict[str, dict[str, Any]] = {}
        for write in writes:
            if write["op"] in ("create", "update"):
                revision = repo.get_revision(write["id"], write["revision"])
                assert revision.digest == write["digest"], write
                data = repo.read_content(write["id"], write["revision"])
                assert digest_bytes(data) == write["digest"]
                final[write["id"]] = write
            elif write["op"] == "delete":
                final[write["id"]] = write
            elif write["op"] == "relate":
                pass  # checked below: a relationship lives until an end is deleted
        for artifact_id, last in final.items():
            if last["op"] == "delete":
                with pytest.raises(ArtifactNotFound):
                    repo.get_artifact(artifact_id)
            else:
                current = repo.get_artifact(artifact_id)
                assert (current.revision, current.digest) == (last["revision"], last["digest"])
        referenced = {r.digest for r in repo.export_records()["revisions"]}
        # gc may remove the garbage of a rolled-back write whose body is then
        # written again (and so is referenced now); any other referenced object
        # it removed would be a loss (and fsck below would also miss it).
        rewritten = {w["digest"] for w in writes if w.get("rewritten")}
        assert removed & referenced <= rewritten, sorted((removed & referenced) - rewritten)
        report = fsck(repo, full=True)
        assert report.ok, report.errors
        assert [f for f in report.findings if f.severity != "garbage"] == []
        sequences = [c.sequence for c in repo.list_changes()]
        assert sequences == list(range(1, len(sequences) + 1))
        live = len(repo.list_artifacts())
    return {
        "writes": len(writes),
        "live_artifacts": live,
        "referenced_objects": len(referenced),
        "gc_removed": len(removed),
        "gc_removed_then_rewritten": len(removed & referenced),
    }


def run_processes(tmp_path: Path, per_writer: int) -> dict[str, Any]:
    store = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(store, create=True) as repo:
        repo.create_collection(concurrency_worker.COLLECTION)
        repo.objects.add(b"garbage from the start: gc may remove it")
    stop = tmp_path / "stop"
    start = time.monotonic()

    def spawn(role: str, number: int, durability: str = "full") -> subprocess.Popen[str]:
        log = tmp_path / f"{role}-{number}.jsonl"
        return subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                role,
                str(store),
                str(number),
                str(per_writer),
                str(stop),
                str(log),
                durability,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    writers = [spawn("writer", n, DURABILITIES[n % len(DURABILITIES)]) for n in range(WRITERS)]
    others = [spawn("reader", n) for n in range(READERS)] + [spawn("gc", 0)]
    errors: list[str] = []
    try:
        for proc in writers:
            errors.append(proc.communicate(timeout=900)[1])
    finally:
        stop.touch()
        for proc in others:
            errors.append(proc.communicate(timeout=300)[1])
    seconds = time.monotonic() - start
    procs = writers + others
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(errors)
    assert not any("locked" in error for error in errors), errors
    assert all(error == "" for error in errors), errors
    writes = [
        json.loads(line)
        for n in range(WRITERS)
        for line in (tmp_path / f"writer-{n}.jsonl").read_text().splitlines()
    ]
    assert len(writes) == WRITERS * per_writer
    removed = {
        json.loads(line)["removed"]
        for line in (tmp_path / "gc-0.jsonl").read_text().splitlines()
        if "removed" in line
    }
    rounds = {
        f"reader_{n}_rounds": json.loads((tmp_path / f"reader-{n}.jsonl").read_text())["rounds"]
        for n in range(READERS)
    }
    gc_rounds = json.loads((tmp_path / "gc-0.jsonl").read_text().splitlines()[-1])["rounds"]
    assert all(count > 0 for count in rounds.values()), rounds
    assert gc_rounds > 0
    figures = check_writes(store, writes, removed)
    return {
        "writers": WRITERS,
        "writes_per_writer": per_writer,
        **rounds,
        "gc_rounds": gc_rounds,
        **figures,
        "seconds": round(seconds, 1),
    }


def test_processes_write_read_and_collect_at_once(tmp_path: Path) -> None:
    per_writer = scaled("CONCURRENCY_WRITES", 250)
    record_figures("concurrency-processes", run_processes(tmp_path, per_writer))


@pytest.mark.slow
def test_processes_write_read_and_collect_at_once_long(tmp_path: Path) -> None:
    per_writer = scaled("CONCURRENCY_WRITES_LONG", 1000)
    record_figures("concurrency-processes-long", run_processes(tmp_path, per_writer))


def run_threads(tmp_path: Path, per_writer: int) -> dict[str, Any]:
    store = tmp_path / "store"
    failures: list[BaseException] = []
    writes: list[dict[str, Any]] = []
    removed: set[str] = set()
    stop = threading.Event()
    counts = {"reader_rounds": 0, "gc_rounds": 0}
    with SQLiteKnowledgeRepository.open(store, "batch", create=True) as repo:
        repo.create_collection(concurrency_worker.COLLECTION)
        lock = threading.Lock()

        def guarded(body: Any) -> Any:
            def run(*args: Any) -> None:
                try:
                    body(*args)
                except BaseException as exc:  # reported by the test below
                    failures.append(exc)
                    stop.set()

            return run

        def emit(record: dict[str, Any]) -> None:
            with lock:
                writes.append(record)

        @guarded
        def writer(number: int) -> None:
            concurrency_worker.write(repo, number, per_writer, emit, seed=1)

        @guarded
        def reader(number: int) -> None:
            rng, since = random.Random(number), 0
            while not stop.is_set():
                since = concurrency_worker.check_once(repo, rng, since)
                counts["reader_rounds"] += 1

        @guarded
        def collector() -> None:
            while not stop.is_set():
                removed.update(digest for digest, _ in gc(repo, grace_seconds=0).removed)
                assert fsck(repo).ok
                counts["gc_rounds"] += 1
                time.sleep(0.01)

        writers = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        others = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
        others.append(threading.Thread(target=collector))
        for thread in writers + others:
            thread.start()
        for thread in writers:
            thread.join()
        stop.set()
        for thread in others:
            thread.join()
    assert failures == [], failures
    assert counts["reader_rounds"] > 0 and counts["gc_rounds"] > 0
    return {**counts, **check_writes(store, writes, removed)}


def test_threads_share_one_repository(tmp_path: Path) -> None:
    per_writer = scaled("CONCURRENCY_THREAD_WRITES", 150)
    record_figures("concurrency-threads", run_threads(tmp_path, per_writer))


@pytest.mark.slow
def test_threads_share_one_repository_long(tmp_path: Path) -> None:
    per_writer = scaled("CONCURRENCY_THREAD_WRITES_LONG", 1000)
    record_figures("concurrency-threads-long", run_threads(tmp_path, per_writer))
