"""The SQLite backend cut along its seams: the connection, the row mappings by
column name, the text index, the primitives, the repository."""

from __future__ import annotations

import ast
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kontextual_engine.errors import DamagedStoreError, KontextualError
from kontextual_engine.models import (
    Artifact,
    ArtifactRef,
    Collection,
    ContextPackage,
    ContextReference,
    OperationRun,
    RunManifest,
)
from kontextual_engine.storage.sqlite import SQLiteIndex, SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite import rows as sqlite_rows
from kontextual_engine.storage.sqlite.connection import BULK_ROWS
from kontextual_engine.storage.sqlite.rows import (
    ARTIFACTS,
    BUNDLE_SELECT,
    COLLECTIONS,
    CONTEXT_PACKAGES,
    CONTEXT_REFERENCES,
    MANIFESTS,
    RUNS,
    Columns,
    json_text,
    moment,
    read_bundles,
)
from kontextual_engine.storage.text import NotSearchable

PACKAGE = Path(sqlite_rows.__file__).parent
# The modules the backend was cut into, each about one concern.
SPLIT = [
    "connection.py",
    "failures.py",
    "filters.py",
    "fsck.py",
    "index.py",
    "maintenance.py",
    "repository.py",
    "rows.py",
    "text_index.py",
]
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)


@pytest.mark.parametrize("name", SPLIT)
def test_each_module_of_the_backend_stays_small(name: str) -> None:
    lines = len((PACKAGE / name).read_text(encoding="utf-8").splitlines())
    assert lines <= 620, f"{name} has {lines} lines"


@pytest.mark.parametrize("name", ["maintenance.py", "fsck.py"])
def test_maintenance_reaches_the_index_only_through_public_names(name: str) -> None:
    tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
    private = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and "index" in ast.unparse(node.value)
        }
    )
    assert private == []


# -- rows: by name, one list per table -------------------------------------


def _listed(select: str) -> list[str]:
    return [name.strip().split(".")[-1] for name in select.split(",")]


@pytest.mark.parametrize(
    "columns",
    [value for value in vars(sqlite_rows).values() if isinstance(value, Columns)],
    ids=lambda columns: columns.table,
)
def test_select_and_insert_name_the_same_columns(columns: Columns[object]) -> None:
    inserted = columns.insert.split("(", 1)[1].split(")", 1)[0]
    assert _listed(inserted)[-len(columns.names) :] == list(columns.names)
    assert _listed(columns.select) == list(columns.names)


def test_a_column_list_that_does_not_match_the_record_is_refused() -> None:
    with pytest.raises(TypeError, match="do not match the fields of Collection"):
        Columns(
            "collections",
            Collection,
            ("id", "description", "name", json_text("metadata"), moment("created_at"), "sequence"),
        )
    with pytest.raises(TypeError, match="do not match"):
        Columns("collections", Collection, ("id", "name"))


def test_records_survive_the_trip_through_their_rows() -> None:
    artifact = Artifact(
        "art_1",
        "col_1",
        "a.md",
        "note",
        None,
        "blake3:" + "0" * 64,
        3,
        2,
        "{}",
        "{}",
        WHEN,
        WHEN,
        7,
    )
    assert ARTIFACTS.read(ARTIFACTS.values(artifact)) == artifact
    run = OperationRun(
        "run_1", "op", "running", "{}", None, WHEN, WHEN, None, None, "{}", "{}", WHEN, None, 4
    )
    stored = RUNS.values(run)
    assert stored[5] == "2024-05-06T07:08:09.123456Z" and stored[7] is None
    assert RUNS.read(stored) == run
    ref = ArtifactRef("art_1", 2, "blake3:" + "0" * 64, "input")
    manifest = RunManifest(
        "run_1",
        "op",
        "succeeded",
        "{}",
        (ref,),
        (),
        ("s1", "s2"),
        "{}",
        None,
        WHEN,
        WHEN,
        WHEN,
        True,
    )
    stored = MANIFESTS.values(manifest)
    assert stored[4] == '["s1","s2"]' and stored[-1] == 1
    assert MANIFESTS.read(stored, inputs=(ref,), outputs=()) == manifest
    package = ContextPackage(
        "pkg_1", "p", "{}", (ContextReference("run", "run_1", note="n"),), WHEN, 5
    )
    assert CONTEXT_REFERENCES.values(package.references[0], "pkg_1", 1)[:3] == ("pkg_1", 1, "run")
    assert (
        CONTEXT_PACKAGES.read(CONTEXT_PACKAGES.values(package), references=package.references)
        == package
    )


def test_the_update_of_an_artifact_binds_by_name() -> None:
    update = sqlite_rows.ARTIFACT_UPDATE
    assert update.sql.startswith("UPDATE artifacts SET name = ?, artifact_type = ?")
    assert update.sql.endswith("run_id = ? WHERE id = ?")
    artifact = Artifact(
        "art_1",
        "col_1",
        "a.md",
        "note",
        "text/plain",
        "d",
        3,
        2,
        "{}",
        "{}",
        WHEN,
        WHEN,
        7,
        "run_9",
    )
    values = update.values(artifact)
    assert values[0] == "a.md" and values[-2:] == ("run_9", "art_1")
    assert len(values) == update.sql.count("?")


def test_an_unreadable_row_is_damage_that_names_its_table() -> None:
    with pytest.raises(DamagedStoreError, match=r"\(table collections\).*kontextual fsck"):
        COLLECTIONS.read(("col_1", "c", "", "{}", 7, 1))
    with pytest.raises(DamagedStoreError, match=r"\(table collections\)"):
        COLLECTIONS.read(("col_1", "c", "", "{}"))
    with pytest.raises(DamagedStoreError, match=r"\(table manifests\)"):
        stamp = "2024-01-01T00:00:00.000000Z"
        MANIFESTS.read(
            ("run_1", "op", "ok", "{}", "not json", "{}", None, stamp, stamp, None, 1),
            inputs=(),
            outputs=(),
        )
    width = len(BUNDLE_SELECT.split(" FROM ")[0].split(","))
    with pytest.raises(DamagedStoreError, match=r"\(table bundles\)"):
        read_bundles([("bun_1", "run_1", "{}", None, 3) + (None,) * (width - 5)])


# -- the connection -----------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> SQLiteKnowledgeRepository:
    return SQLiteKnowledgeRepository.open(tmp_path / "s", "none", create=True)


def test_the_connection_offers_reads_and_a_backup(
    repo: SQLiteKnowledgeRepository, tmp_path: Path
) -> None:
    with repo:
        repo.create_collection("notes")
        conn = repo.index.connection
        assert conn.rows("SELECT name FROM collections") == [("notes",)]
        assert conn.row("SELECT count(*) FROM collections") == (1,)
        assert conn.row("SELECT name FROM collections WHERE name = ?", ("x",)) is None
        assert conn.rows("SELECT name FROM collections WHERE name = ?", ("\ud800",)) == []
        copy = sqlite3.connect(tmp_path / "copy.sqlite")
        conn.backup_to(copy)
        assert copy.execute("SELECT name FROM collections").fetchall() == [("notes",)]
        copy.close()
    with pytest.raises(KontextualError, match="is closed"):
        _ = repo.index.connection.sqlite


def test_transactions_yield_true_only_at_the_outermost_level(
    repo: SQLiteKnowledgeRepository,
) -> None:
    with repo:
        conn = repo.index.connection
        with conn.transaction() as outer:
            assert conn.depth == 1
            with conn.transaction() as inner:
                assert conn.depth == 2
            with repo.index.transaction() as nested:
                pass
        assert (outer, inner, nested) == (True, False, False)
        assert conn.depth == 0


def test_buffered_rows_and_their_notes_go_together(repo: SQLiteKnowledgeRepository) -> None:
    insert = (
        "INSERT INTO collections (id, name, description, metadata, created_at, sequence) "
        "VALUES (?, ?, '', '{}', '2024-01-01T00:00:00.000000Z', ?)"
    )
    with repo:
        conn = repo.index.connection
        with conn.transaction(), conn.buffering():
            conn.defer(insert, ("col_x", "x", 1))
            conn.note("x", "the record")
            assert conn.has_pending and conn.noted("x") == "the record"
            # A read that may skip the buffer sees neither the row nor loses the note.
            assert conn.row("SELECT 1 FROM collections", flush=False) is None
            assert conn.noted("x") == "the record"
            # Any other read writes the buffer first, and the notes go with it.
            assert conn.row("SELECT name FROM collections WHERE id = ?", ("col_x",)) == ("x",)
            assert not conn.has_pending and conn.noted("x") is None
            for number in range(BULK_ROWS - 1):
                conn.defer(insert, (f"col_{number}", f"n{number}", number + 2))
            conn.flush_if_full()
            assert conn.has_pending  # one row short of a full buffer
            conn.defer(insert, ("col_last", "last", BULK_ROWS + 1))
            conn.flush_if_full()
            assert not conn.has_pending
        assert len(repo.list_collections()) == BULK_ROWS + 1


def test_the_sqlite_index_is_importable_where_it_always_was() -> None:
    from kontextual_engine.storage.sqlite.repository import SQLiteIndex as old_path

    assert old_path is SQLiteIndex


# -- the text index -----------------------------------------------------------


def test_the_text_index_reports_text_that_is_stale_or_missing(
    repo: SQLiteKnowledgeRepository,
) -> None:
    with repo:
        cid = repo.create_collection("c").id
        kept = repo.create_artifact(cid, "a", b"alpha text", artifact_type="t")
        gone = repo.create_artifact(cid, "b", b"beta text", artifact_type="t")
        binary = repo.create_artifact(cid, "c", b"\x00", artifact_type="t")
        text = repo.index.text
        assert text.check() == [] and text.integrity_problem() is None
        assert text.status(kept.sequence) is None
        assert text.status(binary.sequence) is NotSearchable.BINARY
        assert text.counts() == {
            "searchable": 2,
            "pending": 0,
            "too-large": 0,
            "not-utf8": 0,
            "binary": 1,
        }
        repo.delete_artifact(gone.id)
        assert text.check() == [] and text.counts()["searchable"] == 1
        conn = repo.index.connection
        with conn.transaction():
            conn.execute(
                "INSERT INTO artifact_words (rowid, words) VALUES (?, 'beta')", (gone.sequence,)
            )
            conn.execute("DELETE FROM unsearchable WHERE sequence = ?", (binary.sequence,))
        assert sorted(text.check()) == [
            (
                "missing-text",
                binary.sequence,
                "live artifact has no words, no reason it is unsearchable and is not pending; "
                "run `kontextual index --rebuild`",
            ),
            (
                "stale-text",
                gone.sequence,
                "artifact_words holds text of an artifact that is deleted or missing",
            ),
        ]
        with conn.transaction():
            assert text.request_rebuild() == 2  # the live ones
        assert text.pending(10) == [kept.sequence, binary.sequence]
        assert text.check() == []  # the stale words went with the rest
        assert repo.rebuild_text() == 2
        assert text.check() == [] and text.status(binary.sequence) is NotSearchable.BINARY


def test_the_architecture_names_every_module_of_the_backend() -> None:
    architecture = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text(
        encoding="utf-8"
    )
    modules = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert [name for name in modules if name not in architecture] == []
