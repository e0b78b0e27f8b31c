"""A damaged index is a typed "damaged store" error, whichever command meets it.

Each test damages one page of a closed store's ``index.sqlite`` (the interior
root of a table of many pages, or its first leaf) or one row, then runs the
commands that read it as real processes. Every one must exit 5 with one line
that names the damaged table and says to run fsck and restore from a backup
or a snapshot; none may exit 1 ("unexpected ...") or print a traceback.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from kontextual_engine.errors import DamagedStoreError
from kontextual_engine.models import NewArtifact
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

from ..damage import overwrite_page, table_pages
from .test_cli_hostile import assert_one_line_error, kontextual

# Enough rows that artifacts and changes span many pages, so each has an
# interior root page over leaves.
ARTIFACTS = 400
# What each command must report when the table is damaged.
READERS = {
    "artifacts": ["ls", "export", "find", "show", "log"],
    "changes": ["export", "changes", "log"],
}
COMMANDS = {
    "ls": ["ls", "notes"],
    "export": ["export", "{tmp}/snapshot"],
    "find": ["find", "--text", "needle"],
    "show": ["show", "notes/n0.md"],
    "log": ["log", "notes/n0.md"],
    "changes": ["changes"],
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "store"
    with SQLiteKnowledgeRepository.open(path, "none", create=True) as repo:
        cid = repo.create_collection("notes").id
        repo.put_artifacts(
            cid,
            [
                NewArtifact(f"n{i}.md", f"body {i} with a needle ".encode() * 3, "note")
                for i in range(ARTIFACTS)
            ],
        )
    return path


@pytest.fixture
def store(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(pristine, copy)
    return copy


def assert_damaged(result_line: str, table: str) -> None:
    assert f"(table {table})" in result_line, result_line
    assert "kontextual fsck" in result_line and "backup" in result_line, result_line
    assert "snapshot" in result_line, result_line


@pytest.mark.parametrize("table", ["artifacts", "changes"])
@pytest.mark.parametrize("page", ["interior", "leaf"])
def test_zeroed_page_is_a_damaged_store_error(
    store: Path, tmp_path: Path, table: str, page: str
) -> None:
    index = store / "index.sqlite"
    root, children = table_pages(index, table)
    assert children, f"{table} should span several pages"
    # The first leaf holds the lowest rowids: the first artifact, n0, and the
    # first change records, including n0's creation.
    overwrite_page(index, root if page == "interior" else children[0], b"\0")
    for name, args in COMMANDS.items():
        result = kontextual(store, *(arg.format(tmp=tmp_path) for arg in args))
        stderr = result.stderr.decode(errors="replace")
        assert b"Traceback" not in result.stdout + result.stderr, stderr
        if name in READERS[table]:
            line = assert_one_line_error(result, code=5, says="is damaged")
            assert_damaged(line, table)
        else:
            assert result.returncode == 0, (name, stderr)
        shutil.rmtree(tmp_path / "snapshot", ignore_errors=True)


def test_unreadable_row_is_a_damaged_store_error(store: Path, tmp_path: Path) -> None:
    """A row whose bytes decode to a value of the wrong type (no B-tree damage, so
    SQLite itself reports nothing) is damage too, not a raw ValueError."""
    with sqlite3.connect(store / "index.sqlite") as conn:
        conn.execute("UPDATE artifacts SET created_at = 7 WHERE name = 'n0.md'")
    conn.close()
    for args in (["ls", "notes"], ["show", "notes/n0.md"], ["export", str(tmp_path / "snap")]):
        line = assert_one_line_error(kontextual(store, *args), code=5, says="is damaged")
        assert_damaged(line, "artifacts")
    with (
        SQLiteKnowledgeRepository.open(store, "none") as repo,
        pytest.raises(DamagedStoreError, match=r"table artifacts"),
    ):
        repo.query(name="n0.md")


def test_damaged_index_in_the_library(store: Path) -> None:
    index = store / "index.sqlite"
    overwrite_page(index, table_pages(index, "changes")[1][0], b"\0")
    with SQLiteKnowledgeRepository.open(store, "none") as repo:
        with pytest.raises(
            DamagedStoreError, match=r"\(table changes\).*kontextual fsck"
        ) as caught:
            repo.list_changes()
        assert caught.value.exit_code == 5
        assert str(index) in str(caught.value)
        assert len(repo.query(limit=5)) == 5  # other tables still read
