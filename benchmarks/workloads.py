"""The benchmark workloads, each against its baselines, with its targets."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kontextual_engine.models import NewArtifact
from kontextual_engine.snapshot import export_snapshot, import_snapshot
from kontextual_engine.storage import text
from kontextual_engine.storage.pipeline import NewFile
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository, schema

from . import baselines, data
from .config import Scale
from .contract_cost import contract_per_doc
from .harness import (
    Measurement,
    Report,
    Run,
    alternate,
    at_least,
    at_most,
    below,
    drop_dirty_pages,
    log,
    percentile,
    speedup,
)
from .startup import startup

MIB = 1 << 20
# Artifacts per put_artifacts call when a store is filled for other workloads.
FILL_BATCH = 10_000
# Results a query returns at most, as a listing page would.
PAGE = 50
# Hits a ranked text search returns: the first page of a search box.
TOP = 10
GROWTH_BYTES_PER_ARTIFACT = 8 << 10  # object file block + index rows + FTS, generously
# A call timed with no arguments.
Runnable = Callable[[], object]


@dataclass
class BigStore:
    """A store of ``n`` generated artifacts, shared by the lookup and snapshot workloads."""

    path: Path
    collection_id: str
    ids: list[str]
    names: list[str]
    seconds: float


@dataclass
class Context:
    scale: Scale
    root: Path
    report: Report
    _counter: int = 0
    _big: BigStore | None = None
    _keep: list[Path] = field(default_factory=list)
    _spent: list[Path] = field(default_factory=list)

    def fresh(self, stem: str) -> Path:
        """A path that does not exist yet under the run's temp directory."""
        self._counter += 1
        return self.root / f"{stem}-{self._counter}"

    def discard(self, path: Path) -> None:
        """Remove ``path`` once the workload is over, not between timed runs.

        Deleting a tree of 20,000 files or a large index makes ext4 free (and,
        mounted with ``discard``, trim) its blocks in the following seconds,
        which can slow whichever contender runs next.
        """
        self._spent.append(path)

    def empty_trash(self) -> None:
        for path in self._spent:
            _remove(path)
        self._spent.clear()
        drop_dirty_pages()

    def big_store(self) -> BigStore:
        if self._big is None:
            n = self.scale.lookup_n
            path = self.fresh("big-store")
            log(f"  building a store of {n:,} artifacts for lookups and snapshots")
            start = time.perf_counter()
            repo = SQLiteKnowledgeRepository.open(path, durability="batch", create=True)
            collection = repo.create_collection("bench")
            ids: list[str] = []
            names: list[str] = []
            for offset in range(0, n, FILL_BATCH):
                docs = data.documents(offset, min(FILL_BATCH, n - offset))
                results = repo.put_artifacts(collection.id, _items(docs))
                for result in results:
                    ids.append(result.artifact.id)
                    names.append(result.artifact.name)
            pending = repo.text_counts()["pending"]
            repo.close()
            assert pending == 0, f"{pending} artifacts wait for their words"
            seconds = time.perf_counter() - start
            log(f"  built in {seconds:.1f} s")
            self._big = BigStore(path, collection.id, ids, names, seconds)
        return self._big


def _items(docs: Iterator[data.Doc]) -> Iterator[NewArtifact]:
    for doc in docs:
        yield NewArtifact(doc.name, doc.content, "document", "text/markdown", doc.metadata)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _read_items(
    source: Path, names: list[str], metadata: list[dict[str, Any]]
) -> Iterator[NewArtifact]:
    """Files as the bulk API takes them, read as ``kontextual add`` would."""
    for name, meta in zip(names, metadata, strict=True):
        with open(source / name, "rb") as reader:
            content = reader.read()
        yield NewArtifact(name, content, "document", "text/markdown", meta)


# The CLI in a child process that writes its own peak RSS (VmHWM, KiB) to the file
# named by PEAK_RSS_FILE when it exits: the ru_maxrss that wait4 reports for a
# child also counts the memory of the parent it was forked from (Linux folds the
# old address space's peak into it at exec), and the parent here holds the data
# set.
PEAK_RSS_FILE = "KONTEXTUAL_BENCH_PEAK_RSS_FILE"
_CLI_MAIN = f"""
import atexit, os, sys
def _peak():
    out = os.environ.get({PEAK_RSS_FILE!r})
    if out:
        with open("/proc/self/status") as status:
            kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
        with open(out, "w") as sink:
            sink.write(kib)
atexit.register(_peak)
from kontextual_engine.cli import main
sys.exit(main())
"""


def _cli_add(ctx: Context, source: Path) -> Callable[[Path], list[list[str]]] | None:
    """``kontextual init`` and ``kontextual add`` for a store, if the command works here."""
    base = [sys.executable, "-c", _CLI_MAIN]

    def command(store: Path, folder: Path = source) -> list[list[str]]:
        options = ["--store", str(store), "--durability", "batch"]
        return [[*base, *options, "init"], [*base, *options, "add", "-q", "bench", str(folder)]]

    probe_source = ctx.fresh("cli-probe-source")
    data.write_tree(probe_source, data.documents(0, 3))
    probe_store = ctx.fresh("cli-probe-store")
    try:
        for argv in command(probe_store, probe_source):
            probe = subprocess.run(argv, capture_output=True, timeout=120, check=False)
            if probe.returncode != 0:
                break
    except (OSError, subprocess.TimeoutExpired) as exc:
        ctx.report.note("bulk-ingest", f"CLI row skipped: {exc}")
        return None
    finally:
        _remove(probe_source)
        _remove(probe_store)
    if probe.returncode != 0:
        reason = (probe.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
        ctx.report.note("bulk-ingest", f"CLI row skipped: `kontextual add` failed: {reason}")
        return None
    return command


# -- bulk ingest -------------------------------------------------------------


def bulk_ingest(ctx: Context) -> None:
    workload = "bulk-ingest"
    n = ctx.scale.bulk_n
    source = ctx.fresh("bulk-source")
    docs = list(data.documents(0, n))
    names = data.write_tree(source, iter(docs))
    # The same documents, each with a NUL byte appended: the same work for the
    # store but no words (a body holding NUL is binary), to time the words alone.
    source_nul = ctx.fresh("bulk-source-nul")
    data.write_tree(source_nul, data.unsearchable(docs))
    metadata = [doc.metadata for doc in docs]
    indexed = [text.indexed_form(doc.content.decode("utf-8")) for doc in docs]
    del docs
    log(f"  {n:,} documents of ~1 KiB written to {source}, and with a NUL byte to {source_nul}")

    def ingest(
        label: str, durability: str, put: Callable[[SQLiteKnowledgeRepository, str], list[Any]]
    ) -> Run:
        """One fresh store, timed from its opening to its closing around ``put``."""

        def run() -> float:
            target = ctx.fresh(f"store-{label}")
            start = time.perf_counter()
            repo = SQLiteKnowledgeRepository.open(target, durability=durability, create=True)
            results = put(repo, repo.create_collection("bench").id)
            repo.close()
            seconds = time.perf_counter() - start
            assert len(results) == n
            ctx.discard(target)
            return seconds

        return run

    def ours(durability: str, folder: Path = source) -> Run:
        return ingest(
            durability,
            durability,
            lambda repo, collection_id: repo.put_artifacts(
                collection_id, _read_items(folder, names, metadata)
            ),
        )

    def files_in(workers: int) -> Run:
        """put_files: bodies read, hashed and written by ``workers`` threads
        (0: on the calling thread) overlapped with the index transaction."""

        def put(repo: SQLiteKnowledgeRepository, collection_id: str) -> list[Any]:
            items = (
                NewFile(name, source / name, "document", "text/markdown", meta)
                for name, meta in zip(names, metadata, strict=True)
            )
            return repo.put_files(collection_id, items, workers=workers)

        return ingest(f"files-{workers}", "batch", put)

    def git(config: tuple[str, ...]) -> Run:
        def run() -> float:
            git_dir = ctx.fresh("git")
            seconds = baselines.git_add(source, git_dir, config)
            ctx.discard(git_dir)
            return seconds

        return run

    def ceiling(text_index: bool = False, files_only: bool = False) -> Run:
        def run() -> float:
            target = ctx.fresh("ceiling")
            seconds = baselines.raw_ceiling(
                source, names, target, text_index=text_index, files_only=files_only
            )
            ctx.discard(target)
            return seconds

        return run

    def words_alone() -> float:
        target = ctx.fresh("words")
        seconds = baselines.words_insert(indexed, target)
        ctx.discard(target)
        return seconds

    m_full = Measurement(workload, "kontextual full", n, "doc", False)
    m_batch = Measurement(workload, "kontextual batch", n, "doc", False)
    m_none = Measurement(workload, "kontextual none", n, "doc", False)
    m_files = Measurement(workload, "kontextual batch put_files (2 threads)", n, "doc", False)
    m_files_1 = Measurement(workload, "kontextual batch put_files (no threads)", n, "doc", False)
    m_unsearchable = Measurement(
        workload, "kontextual batch, bodies unsearchable (NUL)", n, "doc", False
    )
    g_default = Measurement(workload, "git add -A", n, "doc", True)
    g_batch = Measurement(workload, "git add -A (fsync batch)", n, "doc", True)
    raw = Measurement(workload, "raw ceiling", n, "doc", True)
    raw_words = Measurement(workload, "raw ceiling + FTS5 words", n, "doc", True)
    files = Measurement(workload, "files only (tmp+rename, no sync)", n, "doc", True)
    # A part of the work, not an alternative to it: listed, never compared.
    words = Measurement(workload, "FTS5 words insert alone (one transaction)", n, "doc", True)
    words.extra["no_ratio"] = True
    contenders: list[tuple[Measurement, Run]] = [
        (m_full, ours("full")),
        (m_batch, ours("batch")),
        (m_none, ours("none")),
        (m_files, files_in(2)),
        (m_files_1, files_in(0)),
        (m_unsearchable, ours("batch", source_nul)),
        (g_default, git(())),
        (g_batch, git(baselines.GIT_DURABLE_BATCH)),
        (raw, ceiling()),
        (raw_words, ceiling(text_index=True)),
        (files, ceiling(files_only=True)),
        (words, words_alone),
    ]
    cli = _cli_add(ctx, source)
    if cli is not None:
        m_cli = Measurement(workload, "kontextual add (CLI, batch)", n, "doc", False)
        m_cli.extra["peak_rss_kib"] = []

        def run_cli() -> float:
            target = ctx.fresh("store-cli")
            start = time.perf_counter()
            peak_file = ctx.fresh("cli-peak-rss")
            env = {**os.environ, PEAK_RSS_FILE: str(peak_file)}
            for argv in cli(target):
                subprocess.run(argv, stdout=subprocess.DEVNULL, env=env, check=True)
                if "add" in argv:
                    m_cli.extra["peak_rss_kib"].append(int(peak_file.read_text()))
            seconds = time.perf_counter() - start
            ctx.discard(target)
            return seconds

        contenders.append((m_cli, run_cli))
    alternate(ctx.report, workload, contenders, ctx.scale.repetitions)
    if cli is not None:
        peak = max(m_cli.extra["peak_rss_kib"]) / 1024
        m_cli.extra["per_item_text"] = f"peak RSS {peak:.1f} MiB"
        ctx.report.targets += [
            at_least(
                workload, "kontextual add vs git add -A (default)", speedup(m_cli, g_default), 1.0
            ),
            at_least(
                workload, "kontextual add vs git add -A (fsync batch)", speedup(m_cli, g_batch), 2.5
            ),
            below(workload, "kontextual add: peak RSS", peak, 64, "MiB"),
        ]
    with_words = m_batch.median / m_unsearchable.median
    ctx.report.targets += [
        at_least(workload, "batch vs git add -A (fsync batch)", speedup(m_batch, g_batch), 3.0),
        at_least(workload, "batch vs raw ceiling", speedup(m_batch, raw), 0.7),
        at_least(workload, "put_files (2 threads) vs raw ceiling", speedup(m_files, raw), 1.0),
        at_least(workload, "none vs git add -A (default)", speedup(m_none, g_default), 2.0),
        at_most(workload, "batch time with words / without words", with_words, 1.15),
    ]
    per_doc = 1e6 / n
    ctx.report.note(
        workload,
        f"words cost {(m_batch.median - m_unsearchable.median) * per_doc:.0f} us/doc in batch "
        f"({m_batch.median * per_doc:.0f} with, {m_unsearchable.median * per_doc:.0f} without: "
        f"{with_words:.2f}x); FTS5 insert alone {words.median * per_doc:.0f} us/doc; "
        f"raw ceiling + FTS5 words - raw ceiling "
        f"{(raw_words.median - raw.median) * per_doc:.0f} us/doc",
    )
    _remove(source)
    _remove(source_nul)


# -- single creates ----------------------------------------------------------


def single_create(ctx: Context) -> None:
    """Creates one at a time, each durable on return, interleaved item by item with
    the floor so that both meet the same bursts of load from other processes."""
    workload = "single-create"
    n = ctx.scale.single_n
    # Steady state: both start from a store whose 256 fan-out directories exist.
    warm = list(data.documents(50_000_000, ctx.scale.single_warm))
    m_ours = Measurement(workload, "kontextual full create_artifact", n, "create", False)
    m_floor = Measurement(workload, "fsync file+dir + FULL commit", n, "create", True)
    m_floor.extra["compare_with"] = "*"
    ours_items: list[float] = []
    floor_items: list[float] = []
    for rep in range(ctx.scale.repetitions):
        target = ctx.fresh("single")
        repo = SQLiteKnowledgeRepository.open(target, durability="full", create=True)
        collection = repo.create_collection("bench")
        repo.put_artifacts(collection.id, _items(iter(warm)))
        floor_root = ctx.fresh("floor")
        floor = baselines.FsyncFloor(floor_root)
        for fan in range(256):
            os.mkdir(floor.objects / f"{fan:02x}")
            floor.fans.add(f"{fan:02x}")
        docs = list(data.documents(60_000_000 + rep * n, n))
        drop_dirty_pages()
        ours_total = floor_total = 0.0
        for number, doc in enumerate(docs):
            first_ours = (number + rep) % 2 == 0
            for turn in (0, 1):
                start = time.perf_counter()
                if (turn == 0) == first_ours:
                    repo.create_artifact(
                        collection.id,
                        doc.name,
                        doc.content,
                        artifact_type="document",
                        media_type="text/markdown",
                        metadata=doc.metadata,
                    )
                    elapsed = time.perf_counter() - start
                    ours_total += elapsed
                    ours_items.append(elapsed)
                else:
                    floor.put(doc.name, doc.content)
                    elapsed = time.perf_counter() - start
                    floor_total += elapsed
                    floor_items.append(elapsed)
        repo.close()
        floor.close()
        ctx.discard(target)
        ctx.discard(floor_root)
        m_ours.seconds.append(ours_total)
        m_floor.seconds.append(floor_total)
        log(
            f"  {workload} rep {rep + 1}/{ctx.scale.repetitions}: ours {ours_total:.3f} s, "
            f"floor {floor_total:.3f} s"
        )
    for m, items in ((m_ours, ours_items), (m_floor, floor_items)):
        m.extra["per_item_text"] = (
            f"p50 {percentile(items, 0.5) * 1e3:.2f} ms, p95 {percentile(items, 0.95) * 1e3:.2f} ms"
        )
    ctx.report.measurements += [m_ours, m_floor]
    ctx.report.targets.append(
        at_least(workload, "full creates vs fsync+commit floor", speedup(m_ours, m_floor), 0.7)
    )
    ctx.report.note(
        workload,
        f"{n} creates per repetition into a store of "
        f"{len(warm):,} artifacts, alternating item by item with the floor",
    )


# -- the stdlib corpus -------------------------------------------------------

# Queries a developer might type over the standard library. As word queries
# they are asked of `git grep -w` (the same question for ASCII words; for
# `socket.socket` and `xml.etree` we look for a phrase of two words, git grep
# for the literal string); as substring queries (`substring=True`) of plain
# `git grep -F -i` (the same question, but for -i not being casefold).
CORPUS_QUERIES: tuple[tuple[str, ...], ...] = (
    ("asyncio",),
    ("lru_cache",),
    ("threading", "lock"),
    ("contextmanager", "yield"),
    ("deprecated", "removed"),
    ("socket.socket",),
    ("unicodedata",),
    ("xml.etree",),
)


def index_size(store: Path) -> dict[str, int]:
    """A closed store's index: its bytes on disk, free pages, and the bytes of
    the pages of the words table (its FTS5 shadow tables)."""
    path = store / "index.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        words = conn.execute(
            "SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name LIKE 'artifact_words%'"
        ).fetchone()[0]
    except sqlite3.OperationalError:  # no dbstat in this SQLite
        words = -1
    finally:
        conn.close()
    return {"bytes": path.stat().st_size, "free_pages": free, "words_bytes": words}


def _size_note(sizes: dict[str, int], searchable: int) -> str:
    words = sizes["words_bytes"]
    return (
        f"index.sqlite {sizes['bytes'] / MIB:.1f} MiB for {searchable / MIB:.1f} MiB of "
        f"searchable text ({sizes['bytes'] / searchable:.2f}x; the words table "
        + (f"{words / MIB:.1f} MiB, {words / searchable:.2f}x" if words >= 0 else "not measured")
        + f"); {sizes['free_pages']:,} free pages after the ingest"
    )


def stdlib_corpus(ctx: Context) -> None:
    workload = "stdlib-corpus"
    source = ctx.fresh("stdlib")
    names = data.copy_stdlib_corpus(source, ctx.scale.corpus_files)
    total = sum((source / name).stat().st_size for name in names)
    searchable = 0
    for name in names:
        content = (source / name).read_bytes()
        if not isinstance(text.text_of(content), text.NotSearchable):
            searchable += len(content)
    ctx.report.note(
        workload,
        f"{len(names):,} files, {total / MIB:.1f} MiB from {data.stdlib_root()} "
        f"({searchable / MIB:.1f} MiB of it searchable text)",
    )
    kept: dict[str, Path] = {}

    def ingest_items() -> Iterator[NewArtifact]:
        for name in names:
            artifact_type, media_type, metadata = data.corpus_metadata(name)
            with open(source / name, "rb") as reader:
                content = reader.read()
            yield NewArtifact(name, content, artifact_type, media_type, metadata)

    def ours() -> float:
        target = ctx.fresh("corpus-store")
        start = time.perf_counter()
        repo = SQLiteKnowledgeRepository.open(target, durability="batch", create=True)
        collection = repo.create_collection("stdlib")
        repo.put_artifacts(collection.id, ingest_items())
        repo.close()
        seconds = time.perf_counter() - start
        _replace_kept(kept, "ours", target)
        return seconds

    def git(config: tuple[str, ...], key: str) -> Run:
        def run() -> float:
            git_dir = ctx.fresh("corpus-git")
            seconds = baselines.git_add(source, git_dir, config)
            _replace_kept(kept, key, git_dir)
            return seconds

        return run

    m_ours = Measurement(workload, "ingest: kontextual batch", len(names), "file", False)
    g_batch = Measurement(workload, "ingest: git add -A (fsync batch)", len(names), "file", True)
    g_default = Measurement(workload, "ingest: git add -A", len(names), "file", True)
    for m in (g_batch, g_default):
        m.extra["compare_with"] = m_ours.contender
    alternate(
        ctx.report,
        workload,
        [
            (m_ours, ours),
            (g_batch, git(baselines.GIT_DURABLE_BATCH, "git-batch")),
            (g_default, git((), "git")),
        ],
        ctx.scale.repetitions,
    )
    sizes = index_size(kept["ours"])
    ctx.report.note(workload, _size_note(sizes, searchable))
    ctx.report.targets.append(
        at_most(workload, "index size / searchable text", sizes["bytes"] / searchable, 1.5)
    )

    repo = SQLiteKnowledgeRepository.open(kept["ours"], durability="batch")
    collection = repo.get_collection_by_name("stdlib")
    git_dir = kept["git"]
    counts: dict[str, list[int]] = {" ".join(terms): [-1] * 4 for terms in CORPUS_QUERIES}

    def our_queries(substring: bool) -> Run:
        column = 2 if substring else 0

        def run() -> float:
            start = time.perf_counter()
            for terms in CORPUS_QUERIES:
                key = " ".join(terms)
                found = repo.query(text=key, substring=substring, collection_id=collection.id)
                counts[key][column] = len(found)
            return time.perf_counter() - start

        return run

    def grep_queries(words: bool) -> Run:
        column = 1 if words else 3

        def run() -> float:
            start = time.perf_counter()
            for terms in CORPUS_QUERIES:
                found = baselines.git_grep(source, git_dir, terms, words=words)
                counts[" ".join(terms)][column] = found
            return time.perf_counter() - start

        return run

    q = len(CORPUS_QUERIES)
    q_words = Measurement(workload, "queries: kontextual words, ranked (all)", q, "query", False)
    q_grep_w = Measurement(workload, "queries: git grep -l -w -F -i --all-match", q, "query", True)
    q_sub = Measurement(workload, "queries: kontextual substring=True (all)", q, "query", False)
    q_grep = Measurement(workload, "queries: git grep -l -F -i --all-match", q, "query", True)
    q_grep_w.extra["compare_with"] = q_words.contender
    q_grep.extra["compare_with"] = q_sub.contender
    alternate(
        ctx.report,
        workload,
        [
            (q_words, our_queries(substring=False)),
            (q_grep_w, grep_queries(words=True)),
            (q_sub, our_queries(substring=True)),
            (q_grep, grep_queries(words=False)),
        ],
        max(ctx.scale.repetitions, 3),
    )
    lookups: list[tuple[str, Runnable]] = [
        ("stdlib by name", lambda: repo.get_artifact_by_name(collection.id, "os.py")),
        ("stdlib metadata ext=.rst", lambda: repo.query(metadata={"ext": ".rst"}, limit=PAGE)),
        (
            "stdlib metadata+text, ranked",
            lambda: repo.query(metadata={"ext": ".py"}, text="asyncio", limit=TOP),
        ),
        (
            "stdlib search with snippets",
            lambda: repo.search("context manager", limit=TOP),
        ),
    ]
    for label, call in lookups:
        samples = []
        for _ in range(20):
            start = time.perf_counter()
            call()
            samples.append(time.perf_counter() - start)
        ctx.report.measurements.append(_latency(workload, f"query: {label}", samples, False))
    repo.close()
    ctx.report.note(
        workload,
        "matches (words: kontextual / git grep -w; substrings: kontextual / git grep): "
        + ", ".join(f"{key!r} {a}/{b}; {c}/{d}" for key, (a, b, c, d) in counts.items()),
    )
    for path in kept.values():
        _remove(path)
    _remove(source)


def _latency(workload: str, contender: str, samples: list[float], baseline: bool) -> Measurement:
    """A measurement of one query's latency: p50 and p95 of its samples."""
    return Measurement(
        workload,
        contender,
        1,
        "query",
        baseline,
        samples,
        {"latency": {"p50": percentile(samples, 0.5), "p95": percentile(samples, 0.95)}},
    )


def _replace_kept(kept: dict[str, Path], key: str, path: Path) -> None:
    old = kept.get(key)
    if old is not None:
        _remove(old)
    kept[key] = path


# -- lookups -----------------------------------------------------------------


def lookups(ctx: Context) -> None:
    workload = "lookups"
    big = ctx.big_store()
    samples = ctx.scale.lookup_samples
    ctx.report.note(
        workload,
        f"store of {len(big.ids):,} artifacts (built in {big.seconds:.1f} s "
        f"in batch mode); {samples:,} samples per lookup kind, "
        f"{ctx.scale.text_samples:,} per text query kind; lookups return at most "
        f"{PAGE} results, text queries the best {TOP}",
    )
    repo = SQLiteKnowledgeRepository.open(big.path, durability="batch")
    floor_path = ctx.fresh("floor-index.sqlite")
    shutil.copyfile(big.path / "index.sqlite", floor_path)
    floor = sqlite3.connect(floor_path, isolation_level=None)
    # What an index of metadata values would give: one row per (key, value) of
    # every live artifact, looked up by B-tree instead of json_each on every row.
    floor.executescript(
        "CREATE TABLE meta_kv (key TEXT, type TEXT, atom, seq INTEGER);"
        "INSERT INTO meta_kv SELECT j.key, j.type, j.atom, a.sequence "
        "FROM artifacts a, json_each(a.metadata) j WHERE a.deleted_at IS NULL;"
        "CREATE INDEX meta_kv_lookup ON meta_kv (key, type, atom, seq);"
    )
    rng = random.Random(42)
    collection_id = big.collection_id

    def pick_id() -> tuple[Any, ...]:
        return (rng.choice(big.ids),)

    def pick_name() -> tuple[Any, ...]:
        return (rng.choice(big.names),)

    def pick_topic() -> tuple[Any, ...]:
        return (f"topic-{rng.randrange(data.TOPICS):04d}",)

    columns = "a.id, a.name, a.digest, a.metadata, a.sequence"
    kinds: list[
        tuple[str, Callable[[], tuple[Any, ...]], Callable[..., object], Callable[..., object], str]
    ] = [
        (
            "by id",
            pick_id,
            lambda i: repo.get_artifact(i),
            lambda i: floor.execute(
                f"SELECT {columns} FROM artifacts a WHERE a.id = ?", (i,)
            ).fetchone(),
            "sqlite3 PK lookup",
        ),
        (
            "by name",
            pick_name,
            lambda name: repo.get_artifact_by_name(collection_id, name),
            lambda name: floor.execute(
                f"SELECT {columns} FROM artifacts a WHERE a.collection_id = ? AND a.name = ? "
                "AND a.deleted_at IS NULL",
                (collection_id, name),
            ).fetchone(),
            "sqlite3 index lookup",
        ),
        (
            "metadata topic=",
            pick_topic,
            lambda topic: repo.query(metadata={"topic": topic}, limit=PAGE),
            lambda topic: floor.execute(
                f"SELECT {columns} FROM meta_kv m JOIN artifacts a ON a.sequence = m.seq "
                "WHERE m.key = 'topic' AND m.type = 'text' AND m.atom = ? "
                "AND a.deleted_at IS NULL ORDER BY m.seq LIMIT ?",
                (topic, PAGE),
            ).fetchall(),
            "sqlite3 with a (key, value) index",
        ),
    ]
    plans = _query_plans(
        repo, big.path, {label: _bound(call, pick) for label, pick, call, _, _ in kinds}
    )
    for label, pick, call_ours, call_floor, floor_label in kinds:
        ours_samples: list[float] = []
        floor_samples: list[float] = []
        for _ in range(20):  # warm the page cache and statement caches
            args = pick()
            call_ours(*args)
            call_floor(*args)
        for _ in range(samples):
            args = pick()
            start = time.perf_counter()
            call_ours(*args)
            middle = time.perf_counter()
            call_floor(*args)
            end = time.perf_counter()
            ours_samples.append(middle - start)
            floor_samples.append(end - middle)
        m = _latency(workload, f"{label}: kontextual", ours_samples, False)
        m.extra["plan"] = plans.get(label, "")
        base = _latency(workload, f"{label}: {floor_label}", floor_samples, True)
        base.extra["compare_with"] = m.contender
        ctx.report.measurements += [m, base]
        p50 = percentile(ours_samples, 0.5)
        if label in ("by id", "by name"):
            ctx.report.targets.append(below(workload, f"{label} p50", p50 * 1e6, 100, "us"))
        else:
            ctx.report.targets.append(below(workload, f"{label} p50", p50 * 1e3, 10, "ms"))
    floor.close()
    floor_path.unlink()
    for label, plan in plans.items():
        ctx.report.note(workload, f"query plan of {label!r}: {plan}")
    text_queries(
        ctx,
        workload,
        repo,
        big.path,
        _phrases(repo, [rng.choice(big.ids) for _ in range(200)], rng),
        {label: 10.0 for label in TEXT_KINDS},
    )
    repo.close()


def _bound(call: Callable[..., object], pick: Callable[[], tuple[Any, ...]]) -> Runnable:
    return lambda: call(*pick())


# -- ranked text queries -----------------------------------------------------

# The kinds of ranked text query timed, in the order they are reported.
TEXT_KINDS = ("rare term", "common + rare", "phrase", "prefix", "metadata + text")
# The question asked of SQLite FTS5 directly: its best TOP by bm25(), no join.
FTS5_TOP = (
    "SELECT rowid, bm25(artifact_words) FROM artifact_words WHERE artifact_words MATCH ? "
    "ORDER BY bm25(artifact_words) LIMIT ?"
)
FTS5_TOP_WITH_METADATA = (
    "SELECT t.rowid, bm25(t.artifact_words) FROM artifact_words t "
    "JOIN artifact_metadata m ON m.artifact_sequence = t.rowid AND m.key = ? "
    "AND m.type = ? AND m.value IS ? WHERE t.artifact_words MATCH ? "
    "ORDER BY bm25(t.artifact_words) LIMIT ?"
)


def _phrases(repo: SQLiteKnowledgeRepository, ids: list[str], rng: random.Random) -> list[str]:
    """Two adjacent words of the body of each artifact, as a quoted phrase (the
    words after the header line and the topic line)."""
    found = []
    for artifact_id in ids:
        body = text.words(repo.read_content(artifact_id).decode("utf-8"))[4:]
        start = rng.randrange(len(body) - 1)
        found.append(f'"{body[start]} {body[start + 1]}"')
    return found


def text_queries(
    ctx: Context,
    workload: str,
    repo: SQLiteKnowledgeRepository,
    store: Path,
    phrases: list[str],
    bounds_ms: dict[str, float],
) -> None:
    """p50/p95 of each kind of ranked text query (``TEXT_KINDS``), asked as
    ``repo.search(limit=TOP, snippets=False)``, ``repo.query(text=, limit=TOP)``,
    ``repo.search(limit=TOP)`` with snippets, and of SQLite FTS5 directly on the
    same index file; a target of p50 under ``bounds_ms[kind]`` ms for the first."""
    rng = random.Random(7)
    vocab = data.VOCABULARY
    samples = ctx.scale.text_samples
    direct = sqlite3.connect(f"file:{store / 'index.sqlite'}?mode=ro", uri=True)

    def pick(kind: str) -> tuple[str, dict[str, Any]]:
        rare = vocab.rare(rng.randrange(200))
        if kind == "rare term":
            return rare, {}
        if kind == "common + rare":
            return f"{vocab.common(rng.randrange(20))} {rare}", {}
        if kind == "phrase":
            return rng.choice(phrases), {}
        if kind == "prefix":
            return f"{rare[:3]}*", {}
        return rare, {"priority": rng.randrange(10)}

    def ask_directly(query: str, metadata: dict[str, Any]) -> Runnable:
        match = text.parse_query(query).fts5()
        if not metadata:
            return lambda: direct.execute(FTS5_TOP, (match, TOP)).fetchall()
        ((key, value),) = metadata.items()
        kind, atom = schema.metadata_cell(value)
        return lambda: direct.execute(
            FTS5_TOP_WITH_METADATA, (key, kind, atom, match, TOP)
        ).fetchall()

    def calls(query: str, metadata: dict[str, Any]) -> list[Runnable]:
        filters: dict[str, Any] = {"metadata": metadata} if metadata else {}
        return [
            lambda: repo.search(query, snippets=False, limit=TOP, **filters),
            lambda: repo.query(text=query, limit=TOP, **filters),
            lambda: repo.search(query, limit=TOP, **filters),
            ask_directly(query, metadata),
        ]

    labels = [
        "search(snippets=False)",
        "query(text=)",
        "search with snippets",
        "sqlite3 FTS5 bm25() top 10",
    ]
    plans = _query_plans(repo, store, {kind: calls(*pick(kind))[0] for kind in TEXT_KINDS})
    for kind in TEXT_KINDS:
        timed: list[list[float]] = [[] for _ in labels]
        matches: list[int] = []
        for _ in range(10):  # warm the page cache and statement caches
            for call in calls(*pick(kind)):
                call()
        for number in range(samples):
            query, metadata = pick(kind)
            if number < 20:
                matches.append(
                    direct.execute(
                        "SELECT count(*) FROM artifact_words WHERE artifact_words MATCH ?",
                        (text.parse_query(query).fts5(),),
                    ).fetchone()[0]
                )
            chosen = calls(query, metadata)
            # Each contender goes first in turn, so none always meets a cold cache.
            for offset in range(len(chosen)):
                index = (number + offset) % len(chosen)
                start = time.perf_counter()
                chosen[index]()
                timed[index].append(time.perf_counter() - start)
        measured = [
            _latency(workload, f"{kind}: {label}", values, label.startswith("sqlite3"))
            for label, values in zip(labels, timed, strict=True)
        ]
        measured[0].extra["plan"] = plans.get(kind, "")
        for m in measured[1:3]:
            m.extra["no_ratio"] = True
        measured[3].extra["compare_with"] = measured[0].contender
        ctx.report.measurements += measured
        ctx.report.note(
            workload,
            f"{kind}: {statistics.median(matches):,.0f} matching artifacts (median of "
            f"{len(matches)} queries, e.g. {query!r}); plan {plans.get(kind, '?')}",
        )
        if kind in bounds_ms:
            p50 = percentile(timed[0], 0.5) * 1e3
            ctx.report.targets.append(
                below(workload, f"search {kind} p50", p50, bounds_ms[kind], "ms")
            )
    direct.close()


def _query_plans(
    repo: SQLiteKnowledgeRepository, store: Path, calls: dict[str, Runnable]
) -> dict[str, str]:
    """EXPLAIN QUERY PLAN of the SQL our backend runs for each call."""
    conn: sqlite3.Connection = repo.index.connection.sqlite
    plans: dict[str, str] = {}
    explain = sqlite3.connect(f"file:{store / 'index.sqlite'}?mode=ro", uri=True)
    try:
        for label, call in calls.items():
            statements: list[str] = []
            conn.set_trace_callback(statements.append)
            try:
                call()
            finally:
                conn.set_trace_callback(None)
            selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
            # A text query first checks that no artifact waits for its words:
            # the plan that matters is the one that reads the words.
            indexed = [s for s in selects if "artifact_words" in s]
            if not selects:
                continue
            rows = explain.execute("EXPLAIN QUERY PLAN " + (indexed or selects)[-1]).fetchall()
            plans[label] = "; ".join(row[-1] for row in rows)
    finally:
        explain.close()
    return plans


# -- text search at scale ------------------------------------------------------

# Artifacts per put_artifacts call while the text-scale store is built.
TEXT_FILL_BATCH = 50_000


def text_scale(ctx: Context) -> None:
    """Ranked text queries on a store of ``text_n`` artifacts (1M by default),
    built with ``durability="none"`` (setup, not measured)."""
    workload = "text-scale"
    n = ctx.scale.text_n
    path = ctx.fresh("text-store")
    log(f"  building a store of {n:,} artifacts for text queries")
    start = time.perf_counter()
    repo = SQLiteKnowledgeRepository.open(path, durability="none", create=True)
    collection = repo.create_collection("bench")
    searchable = 0
    sampled: list[str] = []
    rng = random.Random(11)
    for offset in range(0, n, TEXT_FILL_BATCH):
        docs = list(data.documents(offset, min(TEXT_FILL_BATCH, n - offset), seed=5))
        searchable += sum(len(doc.content) for doc in docs)
        results = repo.put_artifacts(collection.id, _items(iter(docs)))
        sampled += [result.artifact.id for result in rng.sample(results, min(40, len(results)))]
        log(f"  {offset + len(docs):,} artifacts, {time.perf_counter() - start:.0f} s")
    repo.close()
    seconds = time.perf_counter() - start
    sizes = index_size(path)
    ctx.report.note(
        workload,
        f"store of {n:,} artifacts built in {seconds:.0f} s (durability none, "
        f"{TEXT_FILL_BATCH:,} per put_artifacts); " + _size_note(sizes, searchable),
    )
    repo = SQLiteKnowledgeRepository.open(path, durability="batch")
    text_queries(
        ctx,
        workload,
        repo,
        path,
        _phrases(repo, rng.sample(sampled, min(200, len(sampled))), rng),
        {"rare term": 5.0, "phrase": 5.0},
    )
    repo.close()
    ctx.discard(path)


# -- the large body ----------------------------------------------------------


def large_body(ctx: Context) -> None:
    workload = "large-body"
    size = ctx.scale.large_bytes
    source = ctx.fresh("large-source.bin")
    _write_large(source, size)
    mib = size // MIB

    stored: dict[str, Path] = {}
    digest = ""

    def ours_in() -> float:
        store = ctx.fresh("large-store")
        nonlocal digest
        result = child("store-in", str(store), str(source))
        _replace_kept(stored, "store", store)
        digest = str(result["digest"])
        return _record_rss(m_in, result)

    def base_in() -> float:
        target = ctx.fresh("large-copy.bin")
        result = child("baseline-in", str(source), str(target))
        target.unlink()
        return _record_rss(b_in, result)

    def ours_out() -> float:
        target = ctx.fresh("large-out.bin")
        result = child("store-out", str(stored["store"]), digest, str(target))
        target.unlink()
        return _record_rss(m_out, result)

    def base_out() -> float:
        target = ctx.fresh("large-out.bin")
        obj = stored["store"] / "objects" / digest[7:9] / digest[9:]
        result = child("baseline-out", str(obj), str(target))
        target.unlink()
        return _record_rss(b_out, result)

    m_in = Measurement(workload, "in: kontextual objects.add_stream (full)", mib, "MiB", False)
    b_in = Measurement(workload, "in: read-hash-write + fsync", mib, "MiB", True)
    m_out = Measurement(workload, "out: kontextual objects.open(verify=True)", mib, "MiB", False)
    b_out = Measurement(workload, "out: read-hash-write", mib, "MiB", True)
    b_in.extra["compare_with"] = m_in.contender
    b_out.extra["compare_with"] = m_out.contender
    # A few seconds each, and disk throughput is the noisiest thing on a shared VM.
    repetitions = ctx.scale.repetitions if size < 256 * MIB else max(ctx.scale.repetitions, 5)
    alternate(ctx.report, workload, [(m_in, ours_in), (b_in, base_in)], repetitions)
    alternate(ctx.report, workload, [(m_out, ours_out), (b_out, base_out)], repetitions)
    for m in (m_in, b_in, m_out, b_out):
        peak = max(m.extra["peak_rss_kib"]) / 1024
        before = max(m.extra["rss_before_kib"]) / 1024
        m.extra["per_item_text"] = f"peak RSS {peak:.1f} MiB ({before:.1f} before)"
    ctx.report.targets += [
        at_least(workload, "in: throughput vs read-hash-write", speedup(m_in, b_in), 0.7),
        at_least(workload, "out: throughput vs read-hash-write", speedup(m_out, b_out), 0.7),
        below(workload, "in: peak RSS", max(m_in.extra["peak_rss_kib"]) / 1024, 64, "MiB"),
        below(workload, "out: peak RSS", max(m_out.extra["peak_rss_kib"]) / 1024, 64, "MiB"),
    ]
    ctx.report.note(
        workload,
        f"body of {size / MIB:,.0f} MiB; RSS is VmHWM of a child process "
        "that imports kontextual_engine and opens the store",
    )
    _remove(stored["store"])
    source.unlink()


def _write_large(path: Path, size: int) -> None:
    """Incompressible bytes: a random MiB, its first bytes changed in every copy."""
    block = bytearray(os.urandom(MIB))
    with open(path, "wb") as writer:
        for number in range(size // MIB):
            block[:8] = number.to_bytes(8, "little")
            writer.write(block)
    drop_dirty_pages()


# -- snapshots ---------------------------------------------------------------


def snapshot(ctx: Context) -> None:
    workload = "snapshot"
    big = ctx.big_store()
    n = len(big.ids)

    def ours() -> float:
        target = ctx.fresh("snapshot")
        restored = ctx.fresh("restored")
        repo = SQLiteKnowledgeRepository.open(big.path, durability="full")
        start = time.perf_counter()
        export_snapshot(repo, target)
        middle = time.perf_counter()
        repo.close()
        fresh = SQLiteKnowledgeRepository.open(restored, durability="full", create=True)
        middle2 = time.perf_counter()
        import_snapshot(target, fresh)
        fresh.close()
        end = time.perf_counter()
        m_ours.extra.setdefault("export", []).append(middle - start)
        m_ours.extra.setdefault("import", []).append(end - middle2)
        ctx.discard(target)
        ctx.discard(restored)
        return (middle - start) + (end - middle2)

    def baseline() -> float:
        target = ctx.fresh("dump")
        restored = ctx.fresh("loaded")
        exported = baselines.copy_and_dump(big.path, target)
        imported = baselines.copy_and_load(target, restored)
        m_base.extra.setdefault("export", []).append(exported)
        m_base.extra.setdefault("import", []).append(imported)
        ctx.discard(target)
        ctx.discard(restored)
        return exported + imported

    m_ours = Measurement(workload, "kontextual export+import", n, "artifact", False)
    m_base = Measurement(
        workload, "cp -r + sqlite3 .dump, then cp -r + load + syncfs", n, "artifact", True
    )
    # Minutes per round at 100k artifacts: three rounds keep the suite within the hour.
    alternate(
        ctx.report, workload, [(m_ours, ours), (m_base, baseline)], min(ctx.scale.repetitions, 3)
    )
    derived = []
    for part in ("export", "import"):
        a = Measurement(
            workload, f"{part}: kontextual", n, "artifact", False, list(m_ours.extra[part])
        )
        b = Measurement(
            workload,
            f"{part}: "
            + ("cp -r + sqlite3 .dump" if part == "export" else "cp -r + sqlite3 load + syncfs"),
            n,
            "artifact",
            True,
            list(m_base.extra[part]),
        )
        b.extra["compare_with"] = a.contender
        derived += [a, b]
    m_base.extra["compare_with"] = m_ours.contender
    ctx.report.measurements += derived
    export_only = statistics.median(m_base.extra["export"])
    # Two readings of "within 2x of the cp + dump baseline": like for like (our
    # round trip against cp + dump and its way back, cp + load), and the strict
    # one the first report used (our round trip against cp + dump alone).
    ctx.report.targets += [
        at_most(
            workload,
            "export+import time vs cp -r + .dump, then cp -r + load",
            m_ours.median / m_base.median,
            2.0,
        ),
        at_most(
            workload,
            "export+import time vs cp -r + .dump alone (strict)",
            m_ours.median / export_only,
            2.0,
        ),
    ]
    ctx.report.note(workload, f"{n:,} artifacts; the import indexes their words as it writes them")


# -- growth ------------------------------------------------------------------


def _written_bytes() -> int:
    """Bytes this process has caused to be written to storage so far (Linux
    ``/proc/self/io``: counted when a page is dirtied); 0 where it cannot be read."""
    try:
        with open("/proc/self/io") as io_file:
            for line in io_file:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


# The B-trees a growth note names: those that wrote the most pages of a batch.
GROWTH_TOP_BTREES = 5


def wal_pages_by_btree(conn: sqlite3.Connection, wal: Path) -> Counter[str]:
    """The pages in the WAL file, counted by the table or index they belong to.

    Read after a batch's commit, before the next write restarts the WAL: each
    frame header names a page, and ``dbstat`` names the B-tree of each page.
    Frames left from a longer earlier transaction carry other salts and end
    the reading."""
    pages: set[int] = set()
    with open(wal, "rb") as log:
        wal_header = log.read(32)
        page_size, salts = int.from_bytes(wal_header[8:12], "big"), wal_header[16:24]
        while len(header := log.read(24)) == 24 and header[8:16] == salts:
            pages.add(int.from_bytes(header[:4], "big"))
            log.seek(page_size, os.SEEK_CUR)
    owner = dict(conn.execute("SELECT pageno, name FROM dbstat"))
    return Counter(owner.get(page, "(free or other)") for page in pages)


def growth(ctx: Context) -> None:
    """Batches of ``growth_batch`` put into one ``batch`` store, three timed at each
    size, after one untimed warm-up batch: the first timed batch never pays for
    an empty store (the fan-out directories, the WAL file, the caches). Each
    timed batch's write volume is recorded: the pages its transaction wrote to
    the WAL and the bytes the process wrote in all (bodies, WAL, checkpoint)."""
    workload = "growth"
    points = list(ctx.scale.growth_points)
    batch = ctx.scale.growth_batch
    free = shutil.disk_usage(ctx.root).free
    fits = [p for p in points if (p + 4 * batch) * GROWTH_BYTES_PER_ARTIFACT < free * 0.8]
    if fits != points:
        ctx.report.note(
            workload,
            f"disk has {free / 2**30:.0f} GiB free: stopping at "
            f"{fits[-1]:,} artifacts instead of {points[-1]:,}",
        )
        points = fits
    target = ctx.fresh("growth")
    repo = SQLiteKnowledgeRepository.open(target, durability="batch", create=True)
    collection = repo.create_collection("bench")
    conn = repo.index.connection.sqlite
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    count = 0
    fill_seconds = 0.0

    def put(number: int) -> float:
        nonlocal count
        docs = data.documents(count, number, seed=7)
        start = time.perf_counter()
        repo.put_artifacts(collection.id, _items(docs))
        seconds = time.perf_counter() - start
        count += number
        return seconds

    def wal_frames() -> int:
        # The frames in the WAL after a batch: the pages its one transaction wrote
        # (the WAL restarts at the first write after a complete checkpoint).
        return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])

    measured: list[Measurement] = []
    for number, point in enumerate(points):
        while count < point:
            fill_seconds += put(min(FILL_BATCH, point - count))
        if number == 0:
            drop_dirty_pages()
            warm = put(batch)
            log(f"  growth warm-up: {batch:,} artifacts at {count - batch:,}, {warm:.1f} s")
        m = Measurement(
            workload, f"kontextual batch at {point:,} artifacts", batch, "artifact", False
        )
        m.extra["no_ratio"] = True
        m.extra["from"] = count
        m.extra["wal_pages"] = []
        m.extra["written_bytes"] = []
        for repetition in range(3):
            drop_dirty_pages()
            before = _written_bytes()
            m.seconds.append(put(batch))
            m.extra["wal_pages"].append(wal_frames())
            if repetition == 0:
                by_btree = wal_pages_by_btree(conn, target / "index.sqlite-wal")
            drop_dirty_pages()
            m.extra["written_bytes"].append(_written_bytes() - before)
        pages = statistics.median(m.extra["wal_pages"])
        written = statistics.median(m.extra["written_bytes"])
        m.extra["per_item_text"] = (
            f"{pages * page / batch / 1024:.1f} KiB WAL, {written / batch / 1024:.1f} KiB "
            "written per artifact"
        )
        log(f"  growth at {point:,}: {m.median / batch * 1e6:.1f} us per artifact")
        ctx.report.note(
            workload,
            f"at {point:,} artifacts (timed from {m.extra['from']:,}) a batch of {batch:,} "
            f"took {m.median / batch * 1e6:.0f} us per artifact, wrote {pages:,.0f} pages "
            f"({pages * page / MIB:.0f} MiB) to the WAL and {written / MIB:.0f} MiB in all "
            "(bodies, WAL, checkpoint; median of three)",
        )
        ctx.report.note(
            workload,
            f"at {point:,} artifacts the first batch's pages by B-tree: "
            + ", ".join(
                f"{name} {count:,}" for name, count in by_btree.most_common(GROWTH_TOP_BTREES)
            ),
        )
        measured.append(m)
    repo.close()
    ctx.report.measurements += measured
    first, last = measured[0], measured[-1]
    ratio = (last.median / last.items) / (first.median / first.items)
    ctx.report.targets.append(
        at_most(workload, f"cost per artifact at {points[-1]:,} vs {points[0]:,}", ratio, 1.3)
    )
    ctx.report.note(
        workload,
        f"one untimed warm-up batch, then three batches of {batch:,} timed at each size "
        f"(median shown); untimed fill took {fill_seconds:.0f} s",
    )
    _remove(target)


# -- one large text body ------------------------------------------------------


def text_body(ctx: Context) -> None:
    """One text body of ``text_body_bytes`` (50 MiB) stored with its words
    indexed (the searchable-size cap raised in the child process only), against
    the same body over the cap (stored, no words) and a body at the cap (1 MiB)."""
    workload = "text-body"
    size = ctx.scale.text_body_bytes
    cap = text.MAX_TEXT_BYTES
    large = ctx.fresh("text-large.txt")
    small = ctx.fresh("text-small.txt")
    data.write_text_file(large, size)
    data.write_text_file(small, cap)
    drop_dirty_pages()

    def put(m: Measurement, source: Path, limit: int, searchable: int) -> Run:
        def run() -> float:
            store = ctx.fresh("text-body-store")
            result = child("text-in", str(store), str(source), str(limit))
            assert result["searchable"] == searchable, result
            ctx.discard(store)
            m.extra.setdefault("close_seconds", []).append(result["close_seconds"])
            return _record_rss(m, result)

        return run

    def words(m: Measurement, source: Path) -> Run:
        def run() -> float:
            folder = ctx.fresh("text-body-words")
            folder.mkdir()
            result = child("words-in", str(folder / "index.sqlite"), str(source))
            ctx.discard(folder)
            return _record_rss(m, result)

        return run

    mib = size // MIB
    m_large = Measurement(workload, f"{mib} MiB body, words indexed", mib, "MiB", False)
    m_over = Measurement(workload, f"{mib} MiB body, over the cap (no words)", mib, "MiB", False)
    m_small = Measurement(workload, "1 MiB body, words indexed", cap // MIB, "MiB", False)
    m_fts = Measurement(workload, f"{mib} MiB body: FTS5 insert alone", mib, "MiB", True)
    for m in (m_large, m_over, m_small, m_fts):
        m.extra["no_ratio"] = True
    alternate(
        ctx.report,
        workload,
        [
            (m_large, put(m_large, large, size, 1)),
            (m_over, put(m_over, large, cap, 0)),
            (m_small, put(m_small, small, cap, 1)),
            (m_fts, words(m_fts, large)),
        ],
        ctx.scale.repetitions,
    )
    for m in (m_large, m_over, m_small, m_fts):
        peak = max(m.extra["peak_rss_kib"]) / 1024
        before = max(m.extra["rss_before_kib"]) / 1024
        m.extra["per_item_text"] = f"peak RSS {peak:.0f} MiB ({before:.0f} before)"
    scaled = m_small.median * size / cap
    ctx.report.note(
        workload,
        f"{mib} MiB of ASCII words in one body: {m_large.median:.2f} s with its words "
        f"(close, with its checkpoint, {statistics.median(m_large.extra['close_seconds']):.2f} s "
        f"more), {m_over.median:.2f} s without; the 1 MiB body scaled to {mib} MiB: "
        f"{scaled:.2f} s ({m_large.median / scaled:.2f}x); peak RSS "
        f"{max(m_large.extra['peak_rss_kib']) / 1024:.0f} MiB with words, "
        f"{max(m_over.extra['peak_rss_kib']) / 1024:.0f} MiB without, "
        f"{max(m_small.extra['peak_rss_kib']) / 1024:.0f} MiB for 1 MiB",
    )
    large.unlink()
    small.unlink()


def child(*args: str) -> dict[str, Any]:
    """Run one operation of ``benchmarks.child`` in a fresh process; its result."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.child", *args],
        capture_output=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return baselines.child_result(result.stdout)


def _record_rss(m: Measurement, result: dict[str, Any]) -> float:
    """Keep a child's RSS figures with its measurement; return its seconds."""
    m.extra.setdefault("peak_rss_kib", []).append(result["peak_rss_kib"])
    m.extra.setdefault("rss_before_kib", []).append(result["rss_before_kib"])
    return float(result["seconds"])


WORKLOADS: dict[str, Callable[[Context], None]] = {
    "bulk-ingest": bulk_ingest,
    "contract-per-doc": contract_per_doc,
    "single-create": single_create,
    "stdlib-corpus": stdlib_corpus,
    "lookups": lookups,
    "large-body": large_body,
    "snapshot": snapshot,
    "growth": growth,
    "text-body": text_body,
    "text-scale": text_scale,
    "startup": startup,
}
