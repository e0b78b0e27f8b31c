"""`kontextual add` as a folder sync: --sync, --prefix, --include/--exclude and
.kontextualignore, --dry-run, --skip-invalid, and one transaction per run."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine.cli import ingest, plan
from kontextual_engine.models import NewArtifact
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

from .test_cli import as_json, fails, invoke, library, ok, state
from .test_cli import store as store  # the fixture: a store selected through the environment


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("alpha\n")
    (root / "b.txt").write_text("beta\n")
    (root / "sub" / "c.md").write_text("gamma\n")
    return root


@pytest.fixture
def synced(store: Path, folder: Path) -> Path:
    ok("init")
    ok("add", "notes", str(folder), "--sync")
    return store


def names(collection: str = "notes") -> list[str]:
    return sorted(a["name"] for a in as_json("ls", collection))


def summary(*args: str) -> str:
    return ok("add", *args).stdout.splitlines()[-1]


def changes_since(store: Path, sequence: int) -> list[Any]:
    with library(store) as repo:
        return repo.list_changes(sequence)


# -- sync ------------------------------------------------------------------------


def test_sync_creates_updates_and_deletes(synced: Path, folder: Path) -> None:
    assert names() == ["a.md", "b.txt", "sub/c.md"]
    (folder / "b.txt").write_text("beta, edited\n")
    (folder / "sub" / "c.md").unlink()
    (folder / "d.md").write_text("delta\n")
    line = summary("notes", str(folder), "--sync")
    assert line.startswith("added 1, updated 1, unchanged 1, deleted 1, skipped 0,")
    assert names() == ["a.md", "b.txt", "d.md"]
    assert as_json("show", "notes/b.txt")["artifact"]["revision"] == 2


def test_add_without_sync_never_deletes(synced: Path, folder: Path) -> None:
    (folder / "a.md").unlink()
    assert summary("notes", str(folder)).startswith("added 0, updated 0, unchanged 2, deleted 0,")
    assert names() == ["a.md", "b.txt", "sub/c.md"]


def test_resync_of_an_unchanged_folder_changes_nothing(synced: Path, folder: Path) -> None:
    before = state(synced)
    line = summary("notes", str(folder), "--sync")
    assert line.startswith("added 0, updated 0, unchanged 3, deleted 0, skipped 0,")
    assert state(synced) == before
    assert changes_since(synced, before[0]) == []


def test_sync_with_prefix_leaves_other_names_alone(
    store: Path, folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "wikipedia.md").write_text("not under wiki/\n")
    (other / "top.md").write_text("top\n")
    ok("init")
    ok("add", "kb", str(other))
    ok("add", "kb", str(other / "top.md"), "--prefix", "elsewhere")
    ok("add", "kb", str(folder), "--sync", "--prefix", "wiki/")
    assert names("kb") == [
        "elsewhere/top.md",
        "top.md",
        "wiki/a.md",
        "wiki/b.txt",
        "wiki/sub/c.md",
        "wikipedia.md",
    ]
    (folder / "a.md").unlink()
    (folder / "sub" / "c.md").unlink()
    line = summary("kb", str(folder), "--sync", "--prefix", "wiki")
    assert line.startswith("added 0, updated 0, unchanged 1, deleted 2,")
    assert names("kb") == ["elsewhere/top.md", "top.md", "wiki/b.txt", "wikipedia.md"]


def test_sync_of_a_whole_collection_deletes_what_other_adds_put_there(
    synced: Path, folder: Path, tmp_path: Path
) -> None:
    extra = tmp_path / "extra.md"
    extra.write_text("extra\n")
    ok("add", "notes", str(extra))
    assert "extra.md" in names()
    assert "deleted 1," in summary("notes", str(folder), "--sync")
    assert names() == ["a.md", "b.txt", "sub/c.md"]


def test_sync_is_refused_for_several_paths_or_a_file(store: Path, folder: Path) -> None:
    ok("init")
    fails(2, "add", "notes", str(folder), str(folder), "--sync", says=["one folder", "2 paths"])
    fails(2, "add", "notes", str(folder / "a.md"), "--sync", says=["a.md", "is not one"])
    fails(3, "add", "notes", str(folder / "gone"), "--sync", says=["no such file", "gone"])
    assert as_json("collection", "list") == []


def test_prefix_is_checked(store: Path, folder: Path) -> None:
    ok("init")
    fails(2, "add", "notes", str(folder), "--prefix", "/abs", says=["--prefix", "'/abs'"])
    fails(2, "add", "notes", str(folder), "--prefix", "a//b", says=["--prefix"])
    fails(2, "add", "notes", str(folder), "--prefix", "/", says=["--prefix"])
    ok("add", "notes", str(folder / "a.md"), "--prefix", "x/y")
    assert names() == ["x/y/a.md"]


# -- patterns --------------------------------------------------------------------


@pytest.fixture
def patterned(tmp_path: Path) -> Path:
    root = tmp_path / "patterned"
    for relative in (
        "a.md",
        "b.txt",
        "draft.md",
        "keep.log",
        "logs/x.log",
        "build/out.md",
        "sub/build/deep.md",
        "sub/e.md",
        "sub/keep.tmp",
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(f"{relative}\n")
    (root / ".kontextualignore").write_text(
        "# comments and blank lines are ignored\n\n*.log\n!keep.log\nbuild/\n"
    )
    return root


def test_include_exclude_and_the_ignore_file(store: Path, patterned: Path) -> None:
    ok("init")
    ok("add", "all", str(patterned))
    assert names("all") == ["a.md", "b.txt", "draft.md", "keep.log", "sub/e.md", "sub/keep.tmp"]
    ok(
        "add",
        "some",
        str(patterned),
        "--include",
        "*.md",
        "--include",
        "*.log",
        "--exclude",
        "draft.md",
    )
    assert names("some") == ["a.md", "keep.log", "sub/e.md"]
    ok("add", "anchored", str(patterned), "--exclude", "/*.md", "--exclude", "*.tmp")
    assert names("anchored") == ["b.txt", "keep.log", "sub/e.md"]


def test_a_file_given_on_its_own_is_matched_by_its_name(store: Path, patterned: Path) -> None:
    ok("init")
    ok("add", "notes", str(patterned / "a.md"), str(patterned / "b.txt"), "--exclude", "*.txt")
    assert names() == ["a.md"]


def test_sync_does_not_delete_what_the_patterns_leave_out(store: Path, patterned: Path) -> None:
    ok("init")
    ok("add", "notes", str(patterned), "--exclude", "!*.log", "--exclude", "!build/")
    before = names()
    assert "logs/x.log" in before and "build/out.md" in before
    (patterned / "logs" / "x.log").unlink()
    (patterned / "sub" / "keep.tmp").unlink()
    (patterned / "a.md").unlink()
    line = summary("notes", str(patterned), "--sync", "--exclude", "*.tmp")
    assert line.startswith("added 0, updated 0, unchanged 4, deleted 1,")
    # a.md went; x.log (ignore file), build/ (directory pattern) and keep.tmp (--exclude) stay.
    assert names() == sorted(set(before) - {"a.md"})


def test_bad_patterns_are_refused_naming_where(store: Path, patterned: Path) -> None:
    ok("init")
    fails(2, "add", "notes", str(patterned), "--exclude", "a\\", says=["--exclude", "a\\\\"])
    fails(2, "add", "notes", str(patterned), "--include", "!", says=["--include"])
    (patterned / ".kontextualignore").write_text("ok.md\n!\n")
    fails(2, "add", "notes", str(patterned), says=[".kontextualignore"])
    assert as_json("collection", "list") == []


# -- dry run ---------------------------------------------------------------------


def test_dry_run_prints_the_plan_and_writes_nothing(synced: Path, folder: Path) -> None:
    (folder / "b.txt").write_text("beta, edited\n")
    (folder / "sub" / "c.md").unlink()
    (folder / "d.md").write_text("delta\n")
    os.mkfifo(folder / "pipe")
    before = state(synced)
    args = ("add", "notes", str(folder), "--sync", "--skip-invalid", "--dry-run")
    assert ok(*args).stdout.splitlines() == [
        "update b.txt",
        "create d.md",
        "delete sub/c.md",
        "skip pipe: it is a FIFO, not a regular file",
        "dry run: would add 1, update 1, delete 1, skip 1; 1 unchanged; nothing written",
    ]
    report = as_json(*args)
    assert report["dry_run"] is True and report["create_collection"] is False
    assert report["plan"] == [
        {"action": "unchanged", "name": "a.md"},
        {"action": "update", "name": "b.txt"},
        {"action": "create", "name": "d.md"},
        {"action": "delete", "name": "sub/c.md"},
    ]
    assert (report["added"], report["updated"], report["unchanged"], report["deleted"]) == (
        1,
        1,
        1,
        1,
    )
    assert [(s["name"], s["reason"]) for s in report["skipped"]] == [
        ("pipe", "it is a FIFO, not a regular file")
    ]
    assert state(synced) == before


def test_dry_run_of_a_new_collection_and_of_new_metadata(
    synced: Path, folder: Path, store: Path
) -> None:
    before = state(store)
    assert ok("add", "fresh", str(folder / "a.md"), "--dry-run").stdout.splitlines() == [
        "create collection fresh",
        "create a.md",
        "dry run: would add 1, update 0, delete 0, skip 0; 0 unchanged; nothing written",
    ]
    # What a real run would update: a new metadata key, a type given.
    assert "update a.md" in ok("add", "notes", str(folder), "--meta", "k=1", "--dry-run").stdout
    assert "update a.md" in ok("add", "notes", str(folder), "--type", "memo", "--dry-run").stdout
    assert "0 unchanged" in ok("add", "notes", str(folder), "--type", "memo", "--dry-run").stdout
    assert state(store) == before
    assert [c["name"] for c in as_json("collection", "list")] == ["notes"]


def test_dry_run_predicts_what_the_run_does(synced: Path, folder: Path) -> None:
    ok("add", "notes", str(folder / "a.md"), "--meta", "k=1")
    (folder / "b.txt").write_text("beta, edited\n")
    args = ("add", "notes", str(folder), "--meta", "k=1")
    planned = as_json(*args, "--dry-run")
    done = as_json(*args)
    keys = ("added", "updated", "unchanged", "deleted")
    assert [planned[key] for key in keys] == [done[key] for key in keys] == [0, 2, 1, 0]


# -- invalid files -----------------------------------------------------------------


def test_skip_invalid_stores_the_rest_and_lists_what_it_skipped(
    store: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.mkfifo(folder / "sub" / "pipe")
    (folder / "bad name.md ").write_text("a name with trailing white space\n")
    (folder / "link").symlink_to(folder / "nowhere")
    (folder / "vanishing.md").write_text("read fails\n")
    real_open = ingest.open_input

    def open_input(item: ingest.InputFile) -> ingest.InputReader:
        if item.name == "vanishing.md":
            raise ingest.UnstorableFile(item.path, "it vanished before it was read")
        return real_open(item)

    monkeypatch.setattr(ingest, "open_input", open_input)
    ok("init")
    result = invoke("add", "notes", str(folder), "--skip-invalid")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        "skipped bad name.md : artifact name 'bad name.md ' has leading or trailing white space",
        "skipped link: dangling symbolic link",
        "skipped sub/pipe: it is a FIFO, not a regular file",
        "skipped vanishing.md: it vanished before it was read",
    ]
    assert result.stdout.splitlines()[-1].startswith(
        "added 3, updated 0, unchanged 0, deleted 0, skipped 4,"
    )
    assert names() == ["a.md", "b.txt", "sub/c.md"]
    report = as_json("add", "notes", str(folder), "--skip-invalid")
    assert [(s["name"], s["path"]) for s in report["skipped"]] == [
        ("bad name.md ", str(folder / "bad name.md ")),
        ("link", str(folder / "link")),
        ("sub/pipe", str(folder / "sub" / "pipe")),
        ("vanishing.md", str(folder / "vanishing.md")),
    ]
    assert report["unchanged"] == 3


def test_sync_keeps_the_artifacts_of_skipped_files_and_folders(
    synced: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "a.md").unlink()
    os.mkfifo(folder / "a.md")  # was a file, now cannot be read: keep its artifact
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path).name == "sub":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = invoke("add", "notes", str(folder), "--sync", "--skip-invalid")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr.splitlines() == [
        "skipped a.md: it is a FIFO, not a regular file",
        "skipped sub/: Permission denied",
    ]
    assert "deleted 0, skipped 2," in result.stdout
    assert names() == ["a.md", "b.txt", "sub/c.md"]


def test_an_invalid_file_without_skip_invalid_stores_nothing(synced: Path, folder: Path) -> None:
    (folder / "new.md").write_text("new\n")
    (folder / "b.txt").unlink()
    before = state(synced)
    os.mkfifo(folder / "sub" / "pipe")
    fails(
        2,
        "add",
        "notes",
        str(folder),
        "--sync",
        says=[str(folder / "sub" / "pipe"), "FIFO", "--skip-invalid"],
    )
    (folder / "sub" / "pipe").unlink()
    (folder / "tab\tname.md").write_text("refused name\n")
    line = fails(2, "add", "notes", str(folder), "--sync")
    assert "tab\\x09name.md" in line and "control character" in line and "--skip-invalid" in line
    assert state(synced) == before


def test_a_read_failing_without_skip_invalid_stores_nothing(
    synced: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "new.md").write_text("new\n")
    before = state(synced)[0]
    monkeypatch.setattr(ingest, "BATCH_FILES", 1)

    def open_input(item: ingest.InputFile) -> ingest.InputReader:
        raise ingest.UnstorableFile(item.path, "it vanished before it was read")

    monkeypatch.setattr(ingest, "open_input", open_input)
    fails(2, "add", "notes", str(folder), says=["a.md", "vanished", "--skip-invalid"])
    assert state(synced)[0] == before


# -- one transaction -------------------------------------------------------------


def test_a_sync_is_one_transaction_of_contiguous_change_records(synced: Path, folder: Path) -> None:
    (folder / "a.md").write_text("alpha, edited\n")
    (folder / "b.txt").unlink()
    (folder / "d.md").write_text("delta\n")
    (folder / "e.md").write_text("epsilon\n")
    before = state(synced)[0]
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite3, "connect", traced)
        report = as_json("add", "notes", str(folder), "--sync")
    assert (report["added"], report["updated"], report["deleted"]) == (2, 1, 1)
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
    records = changes_since(synced, before)
    assert [c.sequence for c in records] == list(range(before + 1, before + 5))
    assert sorted(c.action for c in records) == ["create", "create", "delete", "update"]


def test_a_failure_mid_sync_leaves_nothing(synced: Path, folder: Path) -> None:
    (folder / "a.md").write_text("alpha, edited\n")
    (folder / "d.md").write_text("delta\n")
    (folder / "b.txt").unlink()
    (folder / "sub" / "c.md").unlink()
    before_sequence, listed = state(synced)[0], as_json("ls", "notes")
    deleted: list[str] = []
    real = SQLiteKnowledgeRepository.delete_artifact

    def failing(self: SQLiteKnowledgeRepository, artifact_id: str, **kwargs: Any) -> None:
        if deleted:
            raise OSError(5, "Input/output error", "injected")
        real(self, artifact_id, **kwargs)
        deleted.append(artifact_id)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SQLiteKnowledgeRepository, "delete_artifact", failing)
        result = invoke("add", "notes", str(folder), "--sync")
    assert result.exit_code == 1 and "Input/output error" in result.stderr
    assert len(deleted) == 1  # the first deletion ran, after every put
    assert state(synced)[0] == before_sequence
    assert as_json("ls", "notes") == listed


def test_a_sync_refuses_to_delete_what_changed_since_it_planned(
    synced: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "b.txt").unlink()
    real = plan.make_plan

    def then_changed(*args: Any, **kwargs: Any) -> plan.Plan:
        planned = real(*args, **kwargs)
        with library(synced) as repo:
            notes = repo.get_collection_by_name("notes")
            repo.put_artifacts(notes.id, [NewArtifact("b.txt", b"edited elsewhere\n", "text")])
        return planned

    monkeypatch.setattr(plan, "make_plan", then_changed)
    before = state(synced)[0]
    fails(
        4, "add", "notes", str(folder), "--sync", says=["revision conflict", "expected revision 1"]
    )
    assert state(synced)[0] == before + 1  # only the other writer's update
    assert names() == ["a.md", "b.txt", "sub/c.md"]


def test_sync_with_include_leaves_the_other_names_alone(synced: Path, folder: Path) -> None:
    (folder / "b.txt").unlink()
    (folder / "sub" / "c.md").unlink()
    line = summary("notes", str(folder), "--sync", "--include", "*.md")
    assert line.startswith("added 0, updated 0, unchanged 1, deleted 1,")
    assert names() == ["a.md", "b.txt"]


def test_a_store_inside_the_folder_is_neither_stored_nor_deleted(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside = folder / "kb"
    monkeypatch.setenv("KONTEXTUAL_STORE", str(inside))
    ok("init")
    ok("add", "notes", str(folder), "--sync")
    assert names() == ["a.md", "b.txt", "sub/c.md"]
    ok("add", "notes", str(folder / "kb" / ".." / "a.md"), "--prefix", "kb")
    assert "deleted 0," in summary("notes", str(folder), "--sync")
    assert names() == ["a.md", "b.txt", "kb/a.md", "sub/c.md"]


def test_an_ignore_file_that_is_not_text_is_refused(store: Path, folder: Path) -> None:
    ok("init")
    (folder / ".kontextualignore").write_bytes(b"\xff\xfe*.md\n")
    fails(2, "add", "notes", str(folder), says=[".kontextualignore", "not UTF-8"])


def test_a_file_gone_between_listing_and_checking_is_skipped(
    store: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_check = ingest.check_file

    def check_file(path: str | Path) -> os.stat_result:
        if Path(path).name == "b.txt":
            Path(path).unlink()  # listed by the walk, gone when looked at
        return real_check(path)

    monkeypatch.setattr(ingest, "check_file", check_file)
    ok("init")
    result = invoke("add", "notes", str(folder), "--skip-invalid")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == "skipped b.txt: it vanished while its folder was read\n"
    assert names() == ["a.md", "sub/c.md"]
