"""What only the SQLite backend has: files, processes, locking, schema, query plans.

The shared semantics are tested by tests/contract/ on every backend; this
file tests durability across processes, the schema and its migrations,
concurrency, and that queries use indexes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from kontextual_engine import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    NewArtifact,
    Query,
    RelatedTo,
    SQLiteKnowledgeRepository,
)
from kontextual_engine.errors import (
    ConflictError,
    KontextualError,
    ReadOnlyStoreError,
    StoreFormatError,
    StoreNotFound,
    ValidationError,
)
from kontextual_engine.models import ContextReference
from kontextual_engine.storage import SequentialIds, TickingClock, text
from kontextual_engine.storage.objects import ObjectStore
from kontextual_engine.storage.runs import Pin
from kontextual_engine.storage.sqlite import INDEX_NAME, schema
from kontextual_engine.storage.sqlite.options import CACHE_SIZE_KIB
from kontextual_engine.storage.sqlite.schema import KNOWN as KNOWN_MIGRATIONS
from kontextual_engine.storage.sqlite.schema import migrations

SQLITE_CLI = shutil.which("sqlite3") or "/usr/bin/sqlite3"

METADATA: dict[str, Any] = {
    "unicode": "Grüße, 東京, emoji 😀, RTL שלום",
    "nested": {"a": [1, {"b": [True, False, None]}], "empty_list": [], "empty": {}},
    "big": 2**63 - 1,
    "small": -(2**63),
    "float": 1.5,
    "tiny": 5e-324,
    "huge": 1.7976931348623157e308,
    "negative_zero": -0.0,
    "third": 0.1 + 0.2,
    "escapes": 'quote " backslash \\ newline \n tab \t nul-free',
    'key with "quotes"': "v",
    "dotted.key[0]": "$.path",
    "": "empty key",
}


def open_repo(path: Path, durability: str = "none", **kwargs: Any) -> SQLiteKnowledgeRepository:
    """Open ``path``, creating the store if it is missing unless ``create=False``."""
    kwargs.setdefault("create", True)
    return SQLiteKnowledgeRepository.open(path, durability, **kwargs)


def everything(repo: KnowledgeRepository) -> dict[str, Any]:
    """Every read the contract offers, for comparing two views of one store."""
    artifacts = repo.list_artifacts()
    ids = {change.entity_id for change in repo.list_changes() if change.entity_kind == "artifact"}
    return {
        "collections": repo.list_collections(),
        "artifacts": artifacts,
        "revisions": {aid: repo.list_revisions(aid) for aid in sorted(ids)},
        "bodies": {a.id: repo.read_content(a.id) for a in artifacts},
        "relationships": repo.list_relationships(),
        "changes": repo.list_changes(),
        "last": repo.last_sequence(),
    }


def populate(repo: KnowledgeRepository) -> None:
    notes = repo.create_collection("notes", description="d", metadata=METADATA).id
    other = repo.create_collection("other").id
    a = repo.create_artifact(
        notes,
        "a.md",
        "Äpfel und Birnen".encode(),
        artifact_type="note",
        media_type="text/markdown",
        metadata=METADATA,
        provenance={"source": "test"},
    ).id
    b = repo.create_artifact(notes, "b.bin", b"\x00\xff binary", artifact_type="blob").id
    c = repo.create_artifact(other, "c.md", b"third", artifact_type="note").id
    repo.update_artifact(a, content=b"apples and pears", metadata={"v": 2})
    repo.update_artifact(a, name="renamed.md", expected_revision=2)
    repo.create_relationship(a, b, "cites", metadata={"w": 0.5})
    repo.create_relationship(c, a, "derived-from")
    repo.delete_artifact(b)
    repo.put_artifacts(
        notes,
        [
            NewArtifact(f"bulk-{i}", f"bulk {i}".encode(), "note", metadata={"i": i})
            for i in range(30)
        ],
    )


def cli(index: Path, sql: str) -> str:
    if not os.path.exists(SQLITE_CLI):
        pytest.skip("the sqlite3 command-line tool is not installed")
    done = subprocess.run(
        [SQLITE_CLI, str(index), sql], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


def assert_index_clean(store: Path) -> None:
    index = store / INDEX_NAME
    assert cli(index, "PRAGMA integrity_check;") == "ok"
    assert cli(index, "PRAGMA foreign_key_check;") == ""
    assert (
        cli(index, "INSERT INTO artifact_words(artifact_words) VALUES ('integrity-check');") == ""
    )
    assert cli(index, "SELECT count(*) FROM text_pending;") == "0"


def run_python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- opening ------------------------------------------------------------------


def test_open_creates_a_store(tmp_path: Path) -> None:
    with open_repo(tmp_path / "missing" / "store") as repo:
        assert repo.list_collections() == []
    store = tmp_path / "missing" / "store"
    assert sorted(os.listdir(store)) == [INDEX_NAME, "kontextual.json", "objects", "tmp"]
    (tmp_path / "empty").mkdir()
    with open_repo(tmp_path / "empty") as repo:
        repo.create_collection("x")
    with open_repo(tmp_path / "empty") as repo:
        assert [c.name for c in repo.list_collections()] == ["x"]


@pytest.mark.parametrize("read_only", [False, True])
def test_open_without_create_creates_nothing(tmp_path: Path, read_only: bool) -> None:
    """A mistyped path is an error, never a new empty store."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    for path in (tmp_path / "missing", tmp_path / "missing" / "deeper", tmp_path / "empty"):
        with pytest.raises(StoreNotFound, match=f"no kontextual store at {path}") as caught:
            SQLiteKnowledgeRepository.open(path, "none", read_only=read_only)
        assert caught.value.exit_code == 3
        assert "create=True" in str(caught.value)
    with pytest.raises(StoreNotFound):
        SQLiteKnowledgeRepository(tmp_path / "other", "none", read_only=read_only)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    # Creating is explicit, and an existing store then opens without it.
    SQLiteKnowledgeRepository.open(tmp_path / "missing", "none", create=True).close()
    with SQLiteKnowledgeRepository.open(tmp_path / "missing", "none", read_only=read_only) as repo:
        assert repo.list_collections() == []


def test_open_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(StoreFormatError, match="not a kontextual store"):
        open_repo(tmp_path / "busy")
    assert os.listdir(tmp_path / "busy") == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreFormatError):
        open_repo(tmp_path / "file")


def test_open_refuses_a_foreign_or_damaged_index(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    ObjectStore(foreign)
    with sqlite3.connect(foreign / INDEX_NAME) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(StoreFormatError, match="not a kontextual index"):
        open_repo(foreign)
    garbage = tmp_path / "garbage"
    ObjectStore(garbage)
    (garbage / INDEX_NAME).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreFormatError, match="not a usable SQLite index"):
        open_repo(garbage)


def test_open_refuses_objects_without_an_index(tmp_path: Path) -> None:
    with open_repo(tmp_path / "s") as repo:
        repo.create_artifact(repo.create_collection("c").id, "a", b"body", artifact_type="t")
    (tmp_path / "s" / INDEX_NAME).unlink()
    with pytest.raises(StoreFormatError, match=r"index\.sqlite is missing"):
        open_repo(tmp_path / "s")


def test_bad_arguments_are_validation_errors(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="durability"):
        open_repo(tmp_path / "s", durability="sometimes")
    for timeout in (-1, float("nan"), "30", True):
        with pytest.raises(ValidationError, match="busy_timeout"):
            open_repo(tmp_path / "t", busy_timeout=timeout)
    for cache in (0, 1023, 2048.0, "4096", True):
        with pytest.raises(ValidationError, match="cache_kib"):
            open_repo(tmp_path / "u", cache_kib=cache)
    assert os.listdir(tmp_path) == []


def test_the_page_cache_is_the_size_asked_for(tmp_path: Path) -> None:
    def cache_size(repo: SQLiteKnowledgeRepository) -> int:
        return int(repo.index.connection.sqlite.execute("PRAGMA cache_size").fetchone()[0])

    with open_repo(tmp_path / "s") as repo:
        assert cache_size(repo) == -CACHE_SIZE_KIB
    with open_repo(tmp_path / "s", cache_kib=2048) as repo:
        assert cache_size(repo) == -2048


def test_read_only(tmp_path: Path) -> None:
    with pytest.raises(StoreFormatError):
        open_repo(tmp_path / "nothing", read_only=True)
    assert not (tmp_path / "nothing").exists()
    with open_repo(tmp_path / "s") as repo:
        populate(repo)
        before = everything(repo)
    with open_repo(tmp_path / "s", read_only=True) as repo:
        assert everything(repo) == before
        with pytest.raises(ReadOnlyStoreError):
            repo.create_collection("new")
    with open_repo(tmp_path / "s") as repo:
        assert everything(repo) == before


def test_closed_repository_refuses_use(tmp_path: Path) -> None:
    repo = open_repo(tmp_path / "s")
    repo.close()
    repo.close()
    with pytest.raises(Exception, match="closed"):
        repo.list_collections()


# -- schema -------------------------------------------------------------------


def schema_of(store: Path) -> list[tuple[str, ...]]:
    with sqlite3.connect(store / INDEX_NAME) as conn:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
        found = [tuple(row) for row in rows]
    conn.close()
    return found


def test_fresh_schemas_are_identical(tmp_path: Path) -> None:
    for name in ("one", "two"):
        open_repo(tmp_path / name).close()
    first = schema_of(tmp_path / "one")
    assert first == schema_of(tmp_path / "two")
    names = {row[1] for row in first}
    assert {
        "collections",
        "artifacts",
        "revisions",
        "relationships",
        "changes",
        "artifact_words",
        "unsearchable",
        "text_pending",
        "_sqlite_migrations",
    } <= names
    assert not {"artifact_text", "text_backlog"} & names
    assert auto_vacuum(tmp_path / "one") == "2"  # incremental from the start


def auto_vacuum(store: Path) -> str:
    return cli(store / INDEX_NAME, "PRAGMA auto_vacuum;")


# The tables of the first migration, in an order that satisfies their foreign keys.
TABLES_0001 = ("collections", "artifacts", "revisions", "relationships", "changes")


def make_store_0001(path: Path) -> dict[str, Any]:
    """A store whose index has only the first migration, holding ``populate``'s data.

    The index is made by the migration set stopped before ``0002_runs_context``;
    its rows and bodies come from a store the current code wrote (the first
    migration's tables are what that code writes). Returns ``everything()``.
    """
    source = path.with_name(path.name + "-source")
    with open_repo(source, clock=TickingClock(), ids=SequentialIds()) as repo:
        populate(repo)
        before = everything(repo)
        # What 0001 indexed: the case-folded text of each live searchable body.
        folded = [
            (artifact.sequence, body.casefold())
            for artifact in repo.list_artifacts()
            if isinstance(body := text.text_of(repo.read_content(artifact.id)), str)
        ]
    ObjectStore(path).close()
    conn = sqlite3.connect(path / INDEX_NAME, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        migrations().apply(Database(conn), stop_before="0002_runs_context")
        conn.execute("ATTACH DATABASE ? AS source", (str(source / INDEX_NAME),))
        for table in TABLES_0001:
            # The columns 0001 made (later migrations add some, e.g. changes.change_set).
            columns = ", ".join(row[1] for row in conn.execute(f"PRAGMA main.table_info({table})"))
            conn.execute(f"INSERT INTO {table} SELECT {columns} FROM source.{table}")
        conn.executemany("INSERT INTO artifact_text (rowid, folded) VALUES (?, ?)", folded)
        conn.execute("COMMIT")
        conn.execute("DETACH DATABASE source")
    finally:
        conn.close()
    shutil.copytree(source / "objects", path / "objects", dirs_exist_ok=True)
    shutil.rmtree(source)
    return before


def applied_migrations(store: Path) -> list[str]:
    with sqlite3.connect(store / INDEX_NAME) as conn:
        names = [row[0] for row in conn.execute("SELECT name FROM _sqlite_migrations")]
    conn.close()
    return names


def test_a_store_of_the_first_migration_opens_and_migrates_in_place(tmp_path: Path) -> None:
    store = tmp_path / "old"
    before = make_store_0001(store)
    assert applied_migrations(store) == ["0001_core"]
    assert "runs" not in {row[1] for row in schema_of(store)}
    with pytest.raises(StoreFormatError, match="needs a schema upgrade"):
        open_repo(store, read_only=True)
    with open_repo(
        store,
        clock=TickingClock(datetime(2027, 1, 1, tzinfo=timezone.utc)),
        ids=SequentialIds(start=10_000),
    ) as repo:
        # Changes written before change sets existed belong to none.
        old_changes = [dataclasses.replace(c, change_set_id=None) for c in before["changes"]]
        assert everything(repo) == {**before, "changes": old_changes}
        assert repo.list_change_sets() == []
        notes = repo.get_collection_by_name("notes")
        source = repo.get_artifact_by_name(notes.id, "renamed.md")
        run = repo.start_run(repo.create_run("summarize").id)
        repo.add_inputs(run.id, [Pin(source.id, revision=1), source.id])
        out = repo.create_artifact(
            notes.id, "summary", b"short", artifact_type="summary", run_id=run.id
        )
        repo.finish_run(run.id)
        manifest = repo.get_manifest(run.id)
        assert [(i.artifact_id, i.revision) for i in manifest.inputs] == [
            (source.id, 1),
            (source.id, 3),
        ]
        assert repo.consuming_runs(source.id, 1) == [repo.get_run(run.id)]
        assert [i.artifact_id for i in repo.impact(source.id, revision=1)] == [out.id]
    assert applied_migrations(store) == KNOWN_MIGRATIONS
    with open_repo(store) as repo:
        # The words were derived from the bodies at the first writable open.
        assert repo.text_counts()["pending"] == 0
        assert [a.name for a in repo.query(text="apples pears")] == ["renamed.md"]
        assert [a.name for a in repo.query(text="bulk 7")] == ["bulk-7"]
        assert repo.get_manifest(run.id) == manifest
        assert repo.get_run(run.id).status == "succeeded"
        assert everything(repo)["changes"][: len(old_changes)] == old_changes
    assert_index_clean(store)


def test_a_migrated_schema_equals_a_fresh_one(tmp_path: Path) -> None:
    make_store_0001(tmp_path / "old")
    open_repo(tmp_path / "old").close()
    open_repo(tmp_path / "fresh").close()
    assert schema_of(tmp_path / "old") == schema_of(tmp_path / "fresh")
    assert auto_vacuum(tmp_path / "old") == auto_vacuum(tmp_path / "fresh") == "2"


def test_applied_and_pending_migrations_are_read_as_sqlite_utils_reads_them(
    tmp_path: Path,
) -> None:
    """The plain-sqlite3 reading of the migrations table agrees with sqlite-utils'."""
    assert migrations().migrations_table == schema.MIGRATIONS_TABLE
    assert [migration.name for migration in migrations()._migrations] == KNOWN_MIGRATIONS
    make_store_0001(tmp_path / "old")
    conn = sqlite3.connect(tmp_path / "old" / INDEX_NAME)
    try:
        db = Database(conn)
        assert schema.applied_migrations(conn) == [m.name for m in migrations().applied(db)]
        assert schema.applied_migrations(conn) == ["0001_core"]
        assert schema.pending(conn, "old") == [m.name for m in migrations().pending(db)]
        assert schema.pending(conn, "old") == KNOWN_MIGRATIONS[1:]
    finally:
        conn.close()
    empty = sqlite3.connect(tmp_path / "empty.sqlite")
    try:
        assert schema.applied_migrations(empty) == []
        assert schema.pending(empty, "empty") == KNOWN_MIGRATIONS
    finally:
        empty.close()


def test_index_is_wal_and_json_is_checked(tmp_path: Path) -> None:
    open_repo(tmp_path / "s").close()
    index = tmp_path / "s" / INDEX_NAME
    assert cli(index, "PRAGMA journal_mode;") == "wal"
    conn = sqlite3.connect(index)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO collections (id, name, description, metadata, created_at, "
            "sequence) VALUES ('c', 'n', '', '{not json', 'x', 1)"
        )
    conn.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    open_repo(tmp_path / "s").close()
    conn = sqlite3.connect(tmp_path / "s" / INDEX_NAME)
    with conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('kontextual', '9999_from_the_future', 'then')"
        )
    conn.close()
    for read_only in (False, True):
        with pytest.raises(StoreFormatError, match=r"9999_from_the_future.*newer version"):
            open_repo(tmp_path / "s", read_only=read_only)


def test_fresh_store_opened_by_many_processes_at_once(tmp_path: Path) -> None:
    store = tmp_path / "store"
    start = time.time() + 1.5
    code = """
        import sys, time
        from kontextual_engine import SQLiteKnowledgeRepository
        time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
        with SQLiteKnowledgeRepository.open(sys.argv[1], "batch", create=True) as repo:
            repo.create_collection("from-" + sys.argv[3])
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(store), str(start), str(n)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(6)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 6, errors
    with open_repo(store) as repo:
        assert sorted(c.name for c in repo.list_collections()) == [f"from-{n}" for n in range(6)]
        assert [c.sequence for c in repo.list_changes()] == list(range(1, 7))
    with sqlite3.connect(store / INDEX_NAME) as conn:
        applied = conn.execute("SELECT name FROM _sqlite_migrations").fetchall()
    conn.close()
    assert applied == [(name,) for name in KNOWN_MIGRATIONS]
    assert_index_clean(store)


# -- durability ---------------------------------------------------------------


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    with open_repo(tmp_path / "s", "full") as repo:
        populate(repo)
        before = everything(repo)
    with open_repo(tmp_path / "s", "full") as repo:
        after = everything(repo)
        assert after == before
        assert repo.get_collection_by_name("notes").metadata == METADATA
        artifact = repo.get_artifact_by_name(repo.get_collection_by_name("notes").id, "renamed.md")
        assert repo.list_revisions(artifact.id)[0].metadata == METADATA
        assert repo.read_content(artifact.id, 1) == "Äpfel und Birnen".encode()
    assert_index_clean(tmp_path / "s")


def test_a_process_that_exits_without_close_loses_nothing_committed(tmp_path: Path) -> None:
    store = tmp_path / "s"
    code = """
        import json, os, sys
        from kontextual_engine import SQLiteKnowledgeRepository
        sys.path.insert(0, sys.argv[2])
        from test_sqlite_backend import everything, populate
        repo = SQLiteKnowledgeRepository.open(sys.argv[1], "full", create=True)
        populate(repo)
        with open(os.path.join(sys.argv[1], "..", "expected.repr"), "w") as out:
            out.write(repr(everything(repo)))
        os._exit(0)
    """
    done = run_python(code, str(store), str(Path(__file__).parent))
    assert done.returncode == 0, done.stderr
    assert (store / (INDEX_NAME + "-wal")).stat().st_size > 0  # never checkpointed
    with open_repo(store, "full") as repo:
        assert repr(everything(repo)) == (tmp_path / "expected.repr").read_text()
    assert_index_clean(store)


def test_a_killed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with open_repo(store) as repo:
        repo.create_collection("c")
    code = """
        import os, sys
        from kontextual_engine import SQLiteKnowledgeRepository
        repo = SQLiteKnowledgeRepository.open(sys.argv[1], "full")
        cid = repo.get_collection_by_name("c").id
        with repo.transaction():
            for i in range(50):
                repo.create_artifact(cid, f"a{i}", b"body %d" % i, artifact_type="t")
            os._exit(0)
    """
    done = run_python(code, str(store))
    assert done.returncode == 0, done.stderr
    with open_repo(store) as repo:
        assert repo.list_artifacts() == []
        assert repo.last_sequence() == 1
        repo.create_artifact(repo.get_collection_by_name("c").id, "a0", b"x", artifact_type="t")
        assert [c.sequence for c in repo.list_changes()] == [1, 2]
    assert_index_clean(store)


def test_close_checkpoints_so_a_copy_is_complete(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with open_repo(store) as repo:
        populate(repo)
        before = everything(repo)
    assert sorted(os.listdir(store)) == [INDEX_NAME, "kontextual.json", "objects", "tmp"]
    shutil.copytree(store, tmp_path / "copy", symlinks=True)
    with open_repo(tmp_path / "copy") as repo:
        assert everything(repo) == before


def test_close_truncates_the_wal_while_others_have_it_open(tmp_path: Path) -> None:
    store = tmp_path / "s"
    first = open_repo(store)
    second = open_repo(store)
    populate(first)
    wal = store / (INDEX_NAME + "-wal")
    assert wal.stat().st_size > 0
    first.close()
    assert wal.stat().st_size == 0
    assert second.list_collections()
    second.close()


def test_bodies_are_durable_objects(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with open_repo(store, "batch") as repo:
        cid = repo.create_collection("c").id
        results = repo.put_artifacts(
            cid, [NewArtifact(f"n{i}", b"same" if i % 2 else b"%d" % i, "t") for i in range(40)]
        )
        digests = {result.artifact.digest for result in results}
    objects = ObjectStore(store, create=False)
    assert set(objects.all()) == digests
    assert os.listdir(store / "tmp") == []


def test_failed_bulk_put_leaves_no_rows(tmp_path: Path) -> None:
    with open_repo(tmp_path / "s") as repo:
        cid = repo.create_collection("c").id
        items = [NewArtifact(f"n{i}", b"%d" % i, "t") for i in range(2500)]
        items.append(NewArtifact("bad", b"x", "t", metadata={"x": float("nan")}))
        with pytest.raises(ValidationError):
            repo.put_artifacts(cid, items)
        assert repo.list_artifacts() == []
        assert repo.last_sequence() == 1
        assert repo.query(text="12") == []
        results = repo.put_artifacts(cid, items[:-1])
        assert len(results) == 2500
        assert repo.last_sequence() == 2501
        assert [r.artifact.sequence for r in results] == list(range(2, 2502))
    assert_index_clean(tmp_path / "s")


def test_bulk_put_matches_the_reference(tmp_path: Path) -> None:
    memory = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
    with open_repo(tmp_path / "s", clock=TickingClock(), ids=SequentialIds()) as sqlite:
        for repo in (memory, sqlite):
            cid = repo.create_collection("c").id
            first = [NewArtifact(f"n{i}", b"%d" % i, "t") for i in range(1500)]
            repo.put_artifacts(cid, first)
            second = [
                NewArtifact(f"n{i}", b"%d" % (i % 3 or 7), "t", metadata={"i": i % 2})
                for i in range(0, 3000, 2)
            ]
            repo.put_artifacts(cid, second)
        assert everything(sqlite) == everything(memory)
        assert sqlite.query(text="7") == memory.query(text="7")


# -- runs across processes ------------------------------------------------------


def test_a_killed_holder_leaves_an_abandoned_run(tmp_path: Path) -> None:
    store = tmp_path / "s"
    open_repo(store).close()
    code = """
        import sys, time
        from kontextual_engine import SQLiteKnowledgeRepository
        repo = SQLiteKnowledgeRepository.open(sys.argv[1], "full")
        run = repo.start_run(repo.create_run("long job").id, lease_seconds=3600)
        print(run.id, flush=True)
        time.sleep(600)
    """
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()
        assert run_id, child.stderr.read() if child.stderr else ""
        with open_repo(store) as repo:  # the holder is alive: opening changes nothing
            assert repo.get_run(run_id).status == "running"
            assert repo.get_run(run_id).holder["pid"] == child.pid
            assert repo.recover_abandoned() == []
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    with open_repo(store) as repo:
        mine = repo.start_run(repo.create_run("mine").id)
    with open_repo(store) as repo:
        run = repo.get_run(run_id)
        assert run.status == "abandoned"
        assert run.error == "abandoned: holder process is gone"
        assert run.finished_at is not None and run.lease_expires_at is None
        last = repo.list_changes(entity_id=run_id)[-1]
        assert (last.entity_kind, last.action, last.details) == (
            "run",
            "transition",
            {"from": "running", "to": "abandoned"},
        )
        manifest = repo.get_manifest(run_id)
        assert manifest.final and manifest.status == "abandoned"
        assert repo.get_run(mine.id).status == "running"  # held by this live process
        resumed = repo.start_run(run_id)
        assert resumed.status == "running" and resumed.holder["pid"] == os.getpid()
    assert_index_clean(store)


def test_an_expired_lease_is_abandoned_on_open(tmp_path: Path) -> None:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with open_repo(tmp_path / "s", clock=TickingClock(start)) as repo:
        remote = {"host": "another-host.invalid", "pid": 1}
        short = repo.start_run(repo.create_run("op").id, lease_seconds=60, holder=remote)
        long = repo.start_run(repo.create_run("op").id, lease_seconds=7200, holder=remote)
    later = TickingClock(start + timedelta(hours=1))
    with open_repo(tmp_path / "s", clock=later) as repo:
        assert repo.get_run(short.id).status == "abandoned"
        assert repo.get_run(short.id).error == "abandoned: lease expired"
        assert repo.get_run(long.id).status == "running"


def test_runs_survive_reopen_in_every_state(tmp_path: Path) -> None:
    with open_repo(tmp_path / "s") as repo:
        cid = repo.create_collection("c").id
        doc = repo.create_artifact(cid, "doc", b"text", artifact_type="t").id
        pending = repo.create_run("a", parameters={"p": [1, {"q": None}]})
        running = repo.start_run(repo.create_run("b", parent_run_id=pending.id).id)
        repo.add_inputs(running.id, [Pin(doc, role="source")], parameters={"x": 1})
        step = repo.add_step(running.id, "s1", diagnostics={"d": 1})
        repo.set_step_status(step.id, "running")
        cancelled = repo.finish_run(repo.create_run("c").id, "cancelled")
        failed = repo.start_run(repo.create_run("d").id)
        repo.create_artifact(cid, "out", b"o", artifact_type="t", run_id=failed.id)
        failed = repo.finish_run(failed.id, "failed", error="boom", diagnostics={"e": "x"})
        package = repo.create_context_package("p", [ContextReference("run", failed.id)])
        before = repo.export_records()
    with open_repo(tmp_path / "s") as repo:
        assert repo.export_records() == before
        assert [r.status for r in repo.list_runs()] == ["pending", "running", "cancelled", "failed"]
        assert repo.get_run(cancelled.id) == cancelled
        assert repo.get_manifest(failed.id).error == "boom"
        assert repo.get_context_package(package.id) == package


# -- typed errors from the index ------------------------------------------------


# -- concurrency --------------------------------------------------------------


def test_processes_write_concurrently_without_lock_errors(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with open_repo(store) as repo:
        repo.create_collection("shared")
    code = """
        import sys
        from kontextual_engine import SQLiteKnowledgeRepository
        with SQLiteKnowledgeRepository.open(sys.argv[1], "batch") as repo:
            cid = repo.get_collection_by_name("shared").id
            for i in range(250):
                repo.create_artifact(cid, f"{sys.argv[2]}-{i}", f"{sys.argv[2]} {i}".encode(),
                                     artifact_type="note")
                if i % 50 == 0:
                    repo.query(text=sys.argv[2])
    """
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), str(store), f"p{n}"],
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errors
    assert not any("locked" in error for error in errors)
    with open_repo(store) as repo:
        artifacts = repo.list_artifacts()
        assert len(artifacts) == 1000
        assert {a.name for a in artifacts} == {f"p{n}-{i}" for n in range(4) for i in range(250)}
        assert [c.sequence for c in repo.list_changes()] == list(range(1, 1002))
        assert len(repo.query(text="p2 ")) == 250
    assert_index_clean(store)


def test_threads_share_one_repository(tmp_path: Path) -> None:
    with open_repo(tmp_path / "s") as repo:
        cid = repo.create_collection("c").id
        failures: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for i in range(40):
                    with repo.transaction():
                        artifact = repo.create_artifact(
                            cid, f"{worker}-{i}", b"%d" % i, artifact_type="t"
                        )
                        repo.update_artifact(artifact.id, content=b"v2 %d" % i)
                    repo.query(collection_id=cid, limit=5)
            except BaseException as exc:  # pragma: no cover - reported below
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert failures == []
        assert len(repo.list_artifacts(cid)) == 240
        assert [c.sequence for c in repo.list_changes()] == list(range(1, 482))


def test_threads_with_their_own_connections(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with open_repo(store) as repo:
        cid = repo.create_collection("c").id
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            with SQLiteKnowledgeRepository.open(store, "none") as own:
                for i in range(30):
                    own.create_artifact(cid, f"{worker}-{i}", b"x", artifact_type="t")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    with open_repo(store) as repo:
        assert len(repo.list_artifacts()) == 120


def test_a_writer_waits_for_the_lock(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with open_repo(store) as repo:
        repo.create_collection("c")
    holder = sqlite3.connect(store / INDEX_NAME, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
    with open_repo(store, busy_timeout=10) as repo:
        started = time.monotonic()
        release.start()
        repo.create_collection("d")
        assert time.monotonic() - started >= 0.4
    release.join()
    holder.execute("BEGIN IMMEDIATE")
    try:
        with (
            open_repo(store, busy_timeout=0.2) as repo,
            pytest.raises(ConflictError, match="locked by another writer"),
        ):
            repo.create_collection("e")
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- query plans --------------------------------------------------------------


@pytest.fixture
def traced(tmp_path: Path) -> Iterator[tuple[SQLiteKnowledgeRepository, list[str]]]:
    with open_repo(tmp_path / "s", clock=TickingClock(), ids=SequentialIds()) as repo:
        populate(repo)
        statements: list[str] = []
        conn = repo.index.connection.sqlite
        conn.set_trace_callback(statements.append)
        yield repo, statements
        conn.set_trace_callback(None)


def plan(repo: SQLiteKnowledgeRepository, statement: str) -> list[str]:
    conn = repo.index.connection.sqlite
    conn.set_trace_callback(None)
    return [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement)]


@pytest.mark.parametrize(
    "query",
    [
        Query(ids=("art_00000000000000000000000000000003",)),
        Query(name="a.md"),
        Query(digest="blake3:" + "0" * 64),
        Query(artifact_type="note"),
        Query(collection_id="col_00000000000000000000000000000001", after=3, limit=2),
        Query(text="apples pears"),
        Query(text="apples", name="renamed.md"),
        Query(related_to=RelatedTo("art_00000000000000000000000000000003", "cites", "outgoing")),
        Query(related_to=RelatedTo("art_00000000000000000000000000000003")),
    ],
    ids=[
        "ids",
        "name",
        "digest",
        "type",
        "collection",
        "text",
        "text-and-name",
        "related-out",
        "related-both",
    ],
)
def test_queries_use_indexes(
    traced: tuple[SQLiteKnowledgeRepository, list[str]], query: Query
) -> None:
    repo, statements = traced
    repo.query(query)
    selects = [s for s in statements if s.startswith("SELECT")]
    if query.text is None:
        assert len(selects) == 1, selects
    else:  # whether words are pending (one row at most), then the words
        assert len(selects) == 2, selects
        assert selects[0] == "SELECT 1 FROM text_pending LIMIT 1", selects
        assert "artifact_words" in selects[1], selects
    for statement in selects:
        steps = plan(repo, statement)
        assert not [step for step in steps if step.split()[:2] == ["SCAN", "a"]], steps
    if query.text is not None:
        steps = plan(repo, selects[1])
        assert any(re.match(r"SCAN t VIRTUAL TABLE INDEX \d+:=?M", step) for step in steps), steps


def test_lookups_and_listings_use_indexes(
    traced: tuple[SQLiteKnowledgeRepository, list[str]],
) -> None:
    repo, statements = traced
    artifact = repo.list_artifacts()[0]
    statements.clear()
    repo.get_artifact(artifact.id)
    repo.get_artifact_by_name(artifact.collection_id, artifact.name)
    repo.list_revisions(artifact.id)
    repo.get_revision(artifact.id, 1)
    repo.list_relationships(artifact.id)
    repo.list_relationships(artifact.id, direction="incoming", relationship_type="cites")
    repo.list_changes(3, entity_id=artifact.id)
    repo.list_artifacts(artifact.collection_id)
    selects = [s for s in statements if s.startswith("SELECT")]
    assert len(selects) == 9  # one statement each, no N+1 (get_collection first)
    for statement in selects:
        steps = plan(repo, statement)
        assert not [step for step in steps if step.startswith("SCAN")], (statement, steps)


def test_run_primitives_use_indexes(
    traced: tuple[SQLiteKnowledgeRepository, list[str]],
) -> None:
    repo, statements = traced
    artifact = repo.list_artifacts()[0]
    run = repo.start_run(repo.create_run("op").id)
    repo.add_inputs(run.id, [artifact.id])
    repo.add_step(run.id, "s")
    repo.create_artifact(artifact.collection_id, "out", b"o", artifact_type="t", run_id=run.id)
    repo.finish_run(run.id)
    package = repo.create_context_package("p", [ContextReference("run", run.id)])
    statements.clear()
    repo.list_runs(status="running")
    step = repo.list_steps(run.id)[0]
    repo.get_step(step.id)
    repo.list_bundles(run.id)
    repo.run_outputs(run.id)
    repo.consuming_runs(artifact.id, 1)
    repo.impact(digest=artifact.digest)
    repo.get_manifest(run.id)
    repo.get_context_package(package.id)
    selects = [s for s in statements if s.startswith("SELECT")]
    for statement in selects:
        steps = plan(repo, statement)
        # Scanning json_each is reading the list of ids bound as one parameter.
        assert not [
            step
            for step in steps
            if step.startswith("SCAN") and not step.startswith("SCAN json_each")
        ], (statement, steps)


def test_run_listings_cost_the_same_number_of_statements_at_any_size(tmp_path: Path) -> None:
    with open_repo(tmp_path / "s") as repo:
        cid = repo.create_collection("c").id
        artifact = repo.create_artifact(cid, "a", b"a", artifact_type="t").id
        counts = []
        for _ in range(2):
            for _ in range(3):
                run = repo.start_run(repo.create_run("op").id)
                repo.add_inputs(run.id, [artifact, artifact])
                repo.add_step(run.id, "s")
                repo.finish_run(run.id)
                repo.create_context_package("p", [ContextReference("run", run.id)] * 2)
                repo.record_external_reference("s", run.id, recorded_by="me")
            statements: list[str] = []
            conn = repo.index.connection.sqlite
            conn.set_trace_callback(statements.append)
            repo.export_records()
            repo.list_bundles(run.id)
            repo.list_context_packages()
            repo.list_external_references()
            conn.set_trace_callback(None)
            counts.append(len([s for s in statements if s.startswith("SELECT")]))
        assert counts[1] == counts[0]


def search_outcome(repo: KnowledgeRepository, query: str) -> object:
    """The names and scores a text query finds, or the message it is refused with."""
    try:
        return [(hit.artifact.name, hit.score) for hit in repo.search(query, snippets=False)]
    except ValidationError as exc:
        return str(exc)


def test_fts5_syntax_in_a_query_is_never_fts5_syntax(tmp_path: Path) -> None:
    """FTS5 operators, column filters and its own quoting are words or refused,
    as the reference parser says; the SQLite backend agrees result for result."""
    memory = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
    with open_repo(tmp_path / "s", clock=TickingClock(), ids=SequentialIds()) as sqlite:
        bodies = [
            'foo-bar AND "quoted" don\'t NEAR(x y) * ^col: {a b}',
            "plain text",
            "ÄB ß İx",
            "ab",
        ]
        for repo in (memory, sqlite):
            cid = repo.create_collection("c").id
            for n, body in enumerate(bodies):
                repo.create_artifact(cid, f"n{n}", body.encode(), artifact_type="t")
        queries = [
            "foo-bar",
            "AND",
            "don't",
            '"quoted"',
            '"',
            "NEAR(x",
            "*",
            "^col:",
            "{a",
            "b}",
            "ss",
            "äb",
            "i̇x",
            "a",
            "b",
            "ab",
            "x AND y",
            "OR",
            "x OR nothing",
            "NOT",
            "col:a",
            "a -b",
            "-",
            "a**",
            "b*",
        ]
        outcomes = {query: search_outcome(sqlite, query) for query in queries}
        assert outcomes == {query: search_outcome(memory, query) for query in queries}
    found = {q: [name for name, _ in o] for q, o in outcomes.items() if isinstance(o, list)}
    assert found["AND"] == found["x AND y"] == found["NEAR(x"] == found["^col:"] == ["n0"]
    assert found["x OR nothing"] == found["OR"] == found["NOT"] == []  # no OR, no NOT
    assert found["col:a"] == ["n0"]  # the phrase "col a", not column "col"
    assert found["ss"] == ["n2"]  # ß case-folds to ss
    assert found["a -b"] == []  # n0 has a and b; nothing else has the word a
    assert sorted(found["b*"]) == ["n0"]  # b is a word of n0 only; ab and äb do not start with b
    refused = {q: o for q, o in outcomes.items() if isinstance(o, str)}
    assert set(refused) == {'"', "*", "-", "a**"}, refused
    assert "unclosed quote" in refused['"']


def test_index_survives_cli_checks_after_updates_and_deletes(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with open_repo(store) as repo:
        populate(repo)
        for artifact in repo.list_artifacts()[:10]:
            repo.update_artifact(artifact.id, content=artifact.name.encode() + b" again")
        for artifact in repo.list_artifacts()[5:15]:
            repo.delete_artifact(artifact.id)
        remaining = len(repo.list_artifacts())
    assert_index_clean(store)
    index = store / INDEX_NAME
    live = "SELECT count(*) FROM artifacts WHERE deleted_at IS NULL;"
    words = "SELECT count(*) FROM artifact_words;"
    # Every live body of populate() is text (the binary one is deleted).
    assert cli(index, words) == cli(index, live) == str(remaining)
    assert cli(index, "SELECT count(*) FROM unsearchable;") == "0"
    with open_repo(store) as repo:
        found = repo.search("again")
        assert len(found) == 5
        assert repo.rebuild_text(everything=True) == remaining
        assert repo.search("again") == found
    assert_index_clean(store)
    assert cli(index, words) == str(remaining)


def unencodable_reads(repo: KnowledgeRepository, collection_id: str) -> list[object]:
    found: list[object] = [
        repo.query(name="\ud800"),
        repo.query(text="te\ud800"),
        repo.query(ids=("\ud800",)),
        repo.query(artifact_type="\udfff"),
        repo.list_relationships(relationship_type="\ud800"),
    ]
    for lookup in (
        lambda: repo.get_artifact("\ud800"),
        lambda: repo.get_artifact_by_name(collection_id, "\ud800"),
        lambda: repo.get_collection_by_name("\ud800"),
    ):
        try:
            found.append(lookup())
        except KontextualError as exc:
            found.append(type(exc).__name__)
    return found


def test_reads_with_unencodable_strings_find_nothing(tmp_path: Path) -> None:
    memory = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
    with open_repo(tmp_path / "s", clock=TickingClock(), ids=SequentialIds()) as sqlite:
        outcomes = []
        for repo in (memory, sqlite):
            cid = repo.create_collection("c").id
            repo.create_artifact(cid, "a", b"text", artifact_type="t")
            outcomes.append(unencodable_reads(repo, cid))
        assert outcomes[0] == outcomes[1]


def test_a_text_query_needs_no_write_lock(tmp_path: Path) -> None:
    """Words are indexed as they are written, so a reader never writes to search."""
    path = tmp_path / "s"
    with SQLiteKnowledgeRepository.open(path, durability="none", create=True) as first:
        collection = first.create_collection("c")
        first.create_artifact(collection.id, "a", b"a needle here", artifact_type="note")
    reader = SQLiteKnowledgeRepository.open(path, durability="none", busy_timeout=0.2)
    writer = SQLiteKnowledgeRepository.open(path, durability="none")
    try:
        with writer.transaction():
            writer.create_artifact(collection.id, "b", b"another needle", artifact_type="note")
            started = time.monotonic()
            assert [a.name for a in reader.query(text="needle")] == ["a"]
            assert time.monotonic() - started < 0.2  # never waited for the lock
        assert sorted(a.name for a in reader.query(text="needle")) == ["a", "b"]
    finally:
        writer.close()
        reader.close()


def mark_pending(store: Path) -> int:
    """Mark every live artifact's words as waiting to be derived, as an upgrade
    does; return how many."""
    with sqlite3.connect(store / INDEX_NAME) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO text_pending SELECT sequence FROM artifacts "
            "WHERE deleted_at IS NULL"
        )
        count: int = conn.execute("SELECT count(*) FROM text_pending").fetchone()[0]
    conn.close()
    return count


def test_text_queries_are_refused_while_words_are_pending(tmp_path: Path) -> None:
    store = tmp_path / "s"
    with open_repo(store) as repo:
        populate(repo)
    pending = mark_pending(store)
    assert pending == 32
    with open_repo(store, read_only=True) as repo:
        assert repo.text_counts()["pending"] == pending
        with pytest.raises(StoreFormatError, match="being rebuilt"):
            repo.query(text="apples")
        with pytest.raises(StoreFormatError, match="being rebuilt"):
            repo.search("apples")
        assert len(repo.query(artifact_type="note")) == pending  # other queries answer
    calls: list[tuple[int, int]] = []
    with open_repo(store, rebuild_progress=lambda done, total: calls.append((done, total))) as repo:
        assert repo.text_counts()["pending"] == 0
        assert [a.name for a in repo.query(text="apples")] == ["renamed.md"]
    assert calls and calls[-1] == (pending, pending)
    assert [total for _, total in calls] == [pending] * len(calls)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    assert_index_clean(store)


def test_consuming_runs_reads_the_runs_in_one_query(tmp_path: Path) -> None:
    with open_repo(tmp_path / "s") as repo:
        collection = repo.create_collection("c")
        doc = repo.create_artifact(collection.id, "doc", b"input", artifact_type="note")
        runs = [repo.create_run("op") for _ in range(5)]
        for run in runs:
            repo.add_inputs(run.id, [doc.id])
        statements: list[str] = []
        repo.index.connection.sqlite.set_trace_callback(statements.append)
        found = repo.consuming_runs(doc.id)
        repo.index.connection.sqlite.set_trace_callback(None)
        assert [run.id for run in found] == [run.id for run in runs]
        assert len([s for s in statements if "FROM runs" in s]) == 1, statements
