"""Upgrading a store written by the release with the trigram index and its backlog
(schema ``0004_text_backlog``, the committed fixture) to word search."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from kontextual_engine.cli import cli
from kontextual_engine.errors import StoreFormatError
from kontextual_engine.storage import contract, text
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.fsck import fsck
from kontextual_engine.storage.sqlite.schema import KNOWN

FIXTURE = Path(__file__).parent / "fixtures" / "store-schema-0004" / "store"
# Every table the upgrade must leave exactly as it was.
KEPT_TABLES = (
    "collections",
    "artifacts",
    "revisions",
    "relationships",
    "changes",
    "artifact_metadata",
    "runs",
    "context_packages",
)
LIVE_ARTIFACTS = 7  # eight made, one deleted


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(FIXTURE, copy)
    for path in copy.rglob("*"):
        if path.is_file():
            path.chmod(0o444 if "objects" in path.parts else 0o644)
    return copy


def table_rows(index: Path, like: Path | None = None) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the kept tables, in the columns they have in ``like`` (the old
    index: later migrations add columns, such as ``changes.change_set``)."""
    with sqlite3.connect(like or index) as conn:
        columns = {
            table: ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
            for table in KEPT_TABLES
        }
    with sqlite3.connect(index) as conn:
        return {
            table: sorted(
                conn.execute(f"SELECT {columns[table]} FROM {table}").fetchall(), key=repr
            )
            for table in KEPT_TABLES
        }


def schema_of(index: Path) -> tuple[set[str], int, list[str]]:
    with sqlite3.connect(index) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        vacuum = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
        migrations = [row[0] for row in conn.execute("SELECT name FROM _sqlite_migrations")]
    return tables, vacuum, migrations


def test_the_fixture_is_what_the_old_release_wrote(old_store: Path) -> None:
    tables, vacuum, migrations = schema_of(old_store / "index.sqlite")
    assert {"artifact_text", "text_backlog"} <= tables and "artifact_words" not in tables
    assert vacuum == 0 and migrations[-1] == "0004_text_backlog"


def test_opening_writable_upgrades_derives_words_and_changes_nothing_else(
    old_store: Path,
) -> None:
    index = old_store / "index.sqlite"
    before = table_rows(index)
    pristine = old_store.parent / "pristine.sqlite"
    shutil.copyfile(index, pristine)
    calls: list[tuple[int, int]] = []
    repo = SQLiteKnowledgeRepository.open(
        old_store, rebuild_progress=lambda done, total: calls.append((done, total))
    )
    try:
        assert calls and calls[-1] == (LIVE_ARTIFACTS, LIVE_ARTIFACTS)
        assert repo.text_counts() == {
            "searchable": LIVE_ARTIFACTS - 1,
            "pending": 0,
            "too-large": 0,
            "not-utf8": 0,
            "binary": 1,
        }
        found = [hit.artifact.name for hit in repo.search("retrieval")]
        # Ranked: the short heading document first; the deleted note is gone;
        # the text that waited in the old backlog is found like the rest.
        assert set(found) == {"retrieval.md", "mixed.md", "late.md"}
        assert found[0] == "retrieval.md"
        assert [a.name for a in repo.query(text="café")] == ["cafe.md"]
        assert [a.name for a in repo.query(text="file fullwidth")] == ["fullwidth.txt"]
        assert [a.name for a in repo.query(text="move_back*")] == ["code.py"]  # _ joins words
        assert [a.name for a in repo.query(text="revised")] == ["mixed.md"]
        binary = repo.get_artifact_by_name(repo.get_collection_by_name("notes").id, "binary.bin")
        assert repo.text_status(binary.id) is text.NotSearchable.BINARY
        report = fsck(repo)
        assert report.ok and not report.findings, report.findings
    finally:
        repo.close()
    tables, vacuum, migrations = schema_of(index)
    assert "artifact_text" not in tables and "text_backlog" not in tables
    assert {"artifact_words", "unsearchable", "text_pending"} <= tables
    assert vacuum == 2  # incremental from now on
    assert migrations[-1] == KNOWN[-1]
    assert table_rows(index, like=pristine) == before
    with sqlite3.connect(index) as conn:
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0


def test_a_read_only_open_of_the_old_store_says_to_upgrade(old_store: Path) -> None:
    with pytest.raises(StoreFormatError, match="open the store writable once"):
        SQLiteKnowledgeRepository.open(old_store, read_only=True)


def test_an_interrupted_upgrade_resumes(old_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(contract, "REBUILD_BATCH", 2)  # several batches, each committed

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SQLiteKnowledgeRepository.open(old_store, rebuild_progress=stop)
    with SQLiteKnowledgeRepository.open(old_store, read_only=True) as reader:
        assert reader.text_counts()["pending"] > 0
        with pytest.raises(StoreFormatError, match="being rebuilt"):
            reader.query(text="retrieval")
    with SQLiteKnowledgeRepository.open(old_store) as repo:
        assert repo.text_counts()["pending"] == 0
        assert {a.name for a in repo.query(text="retrieval")} == {
            "retrieval.md",
            "mixed.md",
            "late.md",
        }


def test_the_command_line_upgrades_on_first_use(old_store: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--store", str(old_store), "find", "--text", "retrieval", "--json"]
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)
    assert {hit["artifact"]["name"] for hit in hits} == {"retrieval.md", "mixed.md", "late.md"}
    assert all(isinstance(hit["score"], float) and hit["snippet"] for hit in hits)
