"""History on the command line: --actor/--message, log with change sets and --all,
changes by change set, --as-of, and ARTIFACT@REV / ARTIFACT@cs_N."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kontextual_engine.cli.commands import changes as changes_module
from kontextual_engine.models import ChangeRecord, NewArtifact, Rename

from .test_cli import as_json, fails, library, ok, state
from .test_cli import store as store  # the fixture: a store selected through the environment


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "folder"
    root.mkdir()
    (root / "a.md").write_text("alpha one\n")
    (root / "b.md").write_text("beta one\n")
    return root


@pytest.fixture
def written(store: Path, folder: Path) -> Path:
    """cs_1: notes with a.md and b.md (by ana); cs_4: a.md edited (by bob);
    cs_5: a.md removed; cs_6: a.md added anew; cs_7: b.md -> a.md link."""
    ok("init")
    ok("add", "notes", str(folder), "--actor", "ana", "-m", "first import")
    (folder / "a.md").write_text("alpha two\n")
    ok("add", "notes", str(folder), "--actor", "bob", "--message", "edit a")
    ok("rm", "notes/a.md", "-m", "gone")
    (folder / "a.md").write_text("alpha three\n")
    ok("add", "notes", str(folder / "a.md"))
    ok("link", "notes/b.md", "cites", "notes/a.md")
    return store


def change_sets(store: Path) -> list[tuple[str, str | None, str | None]]:
    with library(store) as repo:
        return [(c.id, c.actor, c.message) for c in repo.list_change_sets()]


def records_of(store: Path, change_set_id: str) -> list[ChangeRecord]:
    with library(store) as repo:
        return [c for c in repo.list_changes() if c.change_set_id == change_set_id]


# -- --actor and --message --------------------------------------------------------


def test_every_writing_command_is_one_change_set_with_its_actor_and_message(
    store: Path, folder: Path
) -> None:
    ok("init")
    ok("collection", "create", "notes", "--actor", "ana", "-m", "make notes")
    ok("add", "notes", str(folder), "--actor", "ana", "-m", "import")
    (folder / "b.md").unlink()
    (folder / "c.md").write_text("gamma\n")
    ok("add", "notes", str(folder), "--sync", "--actor", "bob", "-m", "sync")
    ok("link", "notes/a.md", "cites", "notes/c.md", "--actor", "cy", "-m", "relate")
    ok("unlink", "notes/a.md", "cites", "notes/c.md", "--actor", "cy", "-m", "unrelate")
    ok("rm", "notes/c.md", "--actor", "dee", "-m", "drop c")
    ok("rm", "notes/a.md", "--actor", "dee", "-m", "drop a")
    ok("collection", "create", "scratch")
    ok("collection", "rm", "scratch", "--actor", "eve", "-m", "tidy")
    found = change_sets(store)
    assert [(actor, message) for _, actor, message in found] == [
        ("ana", "make notes"),
        ("ana", "import"),
        ("bob", "sync"),
        ("cy", "relate"),
        ("cy", "unrelate"),
        ("dee", "drop c"),
        ("dee", "drop a"),
        (None, None),
        ("eve", "tidy"),
    ]
    # The sync put c.md and deleted b.md: one change set.
    sync_records = records_of(store, found[2][0])
    assert sorted(r.action for r in sync_records) == ["create", "delete"]
    # The collection, a.md and b.md: one change set for the whole import.
    assert len(records_of(store, found[1][0])) == 2


def test_the_actor_comes_from_the_environment_only_when_set(
    store: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok("init")
    ok("collection", "create", "a")
    monkeypatch.setenv("KONTEXTUAL_ACTOR", "robot")
    ok("collection", "create", "b")
    ok("collection", "create", "c", "--actor", "ana")
    assert [actor for _, actor, _ in change_sets(store)] == [None, "robot", "ana"]


def test_an_actor_or_message_the_store_refuses_writes_nothing(store: Path, folder: Path) -> None:
    ok("init")
    before = state(store)
    fails(2, "add", "notes", str(folder), "--actor", "bad\udcff", says=["actor"])
    fails(2, "collection", "create", "x", "-m", "bad\x00", says=["message"])
    assert state(store) == before
    assert change_sets(store) == []


def test_a_dry_run_takes_actor_and_message_and_writes_nothing(store: Path, folder: Path) -> None:
    ok("init")
    before = state(store)
    ok("add", "notes", str(folder), "--dry-run", "--actor", "ana", "-m", "try")
    assert state(store) == before


# -- log ------------------------------------------------------------------------


def test_log_shows_the_change_set_of_each_revision(written: Path) -> None:
    ok("collection", "create", "other")  # not a.md's: no effect on its log
    with library(written) as repo:
        notes = repo.get_collection_by_name("notes")
        b_id = repo.get_artifact_by_name(notes.id, "b.md").id
        repo.put_artifacts(
            notes.id,
            [NewArtifact("b.md", b"beta two\n", "note")],
            actor="ana",
            message="line one\nline two",
        )
    history = as_json("log", "notes/b.md")
    fields = [
        (r["revision"], r["change_set_id"], r["actor"], r["message"]) for r in history["revisions"]
    ]
    assert fields == [(1, "cs_1", "ana", "first import"), (2, "cs_9", "ana", "line one\nline two")]
    assert history["deleted"] is False and history["deletion"] is None
    table = ok("log", b_id).stdout.splitlines()
    assert table[0].split()[:5] == ["REV", "TIME", "CHANGE", "SET", "ACTOR"]
    assert table[0].split()[-1] == "MESSAGE"
    assert table[1].split()[3:5] == ["cs_1", "ana"] and table[1].endswith("first import")
    assert table[2].endswith("line one line two")  # a message stays on its line


def test_log_of_a_deleted_artifact_ends_with_its_deletion_and_change_set(written: Path) -> None:
    (first,) = [a for a in as_json("log", "notes/a.md", "--all")["artifacts"] if a["deleted"]]
    history = as_json("log", first["artifact_id"])
    assert history["deleted"] is True
    assert history["deletion"]["change_set_id"] == "cs_5"
    assert history["deletion"]["message"] == "gone" and history["deletion"]["actor"] is None
    assert history["deleted_at"] == history["deletion"]["timestamp"]
    last = ok("log", first["artifact_id"]).stdout.splitlines()[-1].split()
    assert last[2:5] == ["cs_5", "-", "deleted"] and last[-1] == "gone"


def test_log_all_shows_every_artifact_that_had_the_name(written: Path) -> None:
    with library(written) as repo:
        notes = repo.get_collection_by_name("notes")
        repo.apply(notes.id, [Rename("a.md", "c.md")], actor="fay", message="rename a")
    named = as_json("log", "notes/a.md", "--all")
    assert named["collection"] == "notes" and named["name"] == "a.md"
    old, new = named["artifacts"]
    assert old["deleted"] is True and new["deleted"] is False
    assert [(r["revision"], r["change_set_id"], r["actor"]) for r in old["revisions"]] == [
        (1, "cs_1", "ana"),
        (2, "cs_4", "bob"),
    ]
    assert old["deletion"]["change_set_id"] == "cs_5"
    assert [(r["name"], r["change_set_id"], r["changed"]) for r in new["revisions"]] == [
        ("a.md", "cs_6", []),
        ("c.md", "cs_8", ["name"]),
    ]
    human = ok("log", "notes/a.md", "--all").stdout.splitlines()
    assert human[0] == f"artifact {old['artifact_id']} (deleted)"
    assert f"artifact {new['artifact_id']}" in human
    assert human[1].split()[:6] == ["REV", "TIME", "CHANGE", "SET", "ACTOR", "NAME"]
    assert any(line.split()[3:6] == ["cs_8", "fay", "c.md"] for line in human)
    # By id: the history of its last name.
    assert as_json("log", new["artifact_id"], "--all")["name"] == "c.md"
    # The new name's history holds the renamed artifact only.
    assert [a["artifact_id"] for a in as_json("log", "notes/c.md", "--all")["artifacts"]] == [
        new["artifact_id"]
    ]


def test_log_all_refuses_what_names_nothing(written: Path) -> None:
    fails(3, "log", "notes/never.md", "--all", says=["notes/never.md"])
    fails(3, "log", "nope/a.md", "--all", says=["nope"])
    fails(2, "log", "no-slash", "--all", says=["COLLECTION/NAME"])


# -- changes ------------------------------------------------------------------------


def test_changes_prints_a_header_per_change_set_with_its_records_under_it(written: Path) -> None:
    lines = ok("changes").stdout.splitlines()
    headers = [line for line in lines if not line.startswith(" ")]
    assert [h.split()[0] for h in headers] == ["cs_1", "cs_4", "cs_5", "cs_6", "cs_7"]
    assert headers[0].split()[3:] == ["ana", "first", "import"]
    assert headers[2].split()[3:] == ["-", "gone"]
    first_records = lines[1 : lines.index(headers[1])]
    assert [r.split()[0] for r in first_records] == ["1", "2", "3"]
    sets = [json.loads(line) for line in ok("changes", "--json").stdout.splitlines()]
    assert [(s["id"], s["actor"], s["message"]) for s in sets][:2] == [
        ("cs_1", "ana", "first import"),
        ("cs_4", "bob", "edit a"),
    ]
    assert [[c["sequence"] for c in s["changes"]] for s in sets] == [[1, 2, 3], [4], [5], [6], [7]]
    assert all(c["change_set_id"] == s["id"] for s in sets for c in s["changes"])
    # --limit counts change sets; --since may start inside one.
    assert [
        json.loads(line)["id"]
        for line in ok("changes", "--limit", "2", "--json").stdout.splitlines()
    ] == ["cs_1", "cs_4"]
    since = [
        json.loads(line) for line in ok("changes", "--since", "2", "--json").stdout.splitlines()
    ]
    assert since[0]["id"] == "cs_1" and [c["sequence"] for c in since[0]["changes"]] == [3]


def test_changes_of_one_change_set(written: Path) -> None:
    (one,) = [
        json.loads(line)
        for line in ok("changes", "--change-set", "cs_1", "--json").stdout.splitlines()
    ]
    assert one["id"] == "cs_1" and [c["sequence"] for c in one["changes"]] == [1, 2, 3]
    human = ok("changes", "--change-set", "cs_4").stdout.splitlines()
    assert human[0].split()[0] == "cs_4" and len(human) == 2
    fails(3, "changes", "--change-set", "cs_2", says=["cs_2"])
    fails(3, "changes", "--change-set", "nonsense", says=["nonsense"])
    fails(2, "changes", "--change-set", "cs_1", "--follow", says=["--change-set"])
    fails(2, "changes", "--change-set", "cs_1", "--since", "3", says=["--change-set"])


def test_changes_follow_prints_a_change_set_whole(
    written: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            (folder / "new.md").write_text("new\n")
            (folder / "b.md").write_text("beta two\n")
            ok("add", "notes", str(folder), "--actor", "ana", "-m", "two at once")
            return
        raise KeyboardInterrupt

    monkeypatch.setattr(changes_module, "sleep", sleep)
    result = ok("changes", "--follow", "--since", "7", "--json")
    (arrived,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert arrived["message"] == "two at once"
    assert sorted(c["action"] for c in arrived["changes"]) == ["create", "update"]


def test_a_record_written_before_change_sets_is_a_group_of_its_own() -> None:
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    old = [ChangeRecord(n, "collection", f"col_{n}", "create", moment) for n in (1, 2)]
    new = ChangeRecord(3, "collection", "col_3", "create", moment, change_set_id="cs_3")
    groups = [list(group) for group in changes_module.by_change_set([*old, new])]
    assert [[c.sequence for c in group] for group in groups] == [[1], [2], [3]]
    document = changes_module.change_set_json(None, [old[0]])
    assert document["id"] is None and document["actor"] is None and document["sequence"] == 1
    assert "no change set" in changes_module.change_set_line(None, old[0])


# -- --as-of -----------------------------------------------------------------------


def test_as_of_on_ls_find_show_and_cat(written: Path) -> None:
    def names(*args: str) -> list[str]:
        return sorted(a["name"] for a in as_json("ls", "notes", *args))

    assert names("--as-of", "cs_1") == ["a.md", "b.md"]
    assert names("--as-of", "cs_5") == ["b.md"]
    assert names("--as-of", "5") == ["b.md"]
    assert names("--as-of", "0") == []
    with library(written) as repo:
        cs_4 = repo.get_change_set("cs_4").timestamp
    moment = (cs_4 + timedelta(microseconds=1)).isoformat().replace("+00:00", "Z")
    assert names("--as-of", moment) == ["a.md", "b.md"]
    assert as_json("show", "notes/a.md", "--as-of", moment)["artifact"]["revision"] == 2
    assert ok("cat", "notes/a.md", "--as-of", "cs_1").stdout == "alpha one\n"
    assert ok("cat", "notes/a.md", "--as-of", "cs_4").stdout == "alpha two\n"
    assert ok("cat", "notes/a.md").stdout == "alpha three\n"
    fails(3, "cat", "notes/a.md", "--as-of", "cs_5", says=["as of cs_5"])
    found = as_json("find", "--text", "alpha", "--as-of", "cs_4")
    assert [(h["artifact"]["name"], h["artifact"]["revision"]) for h in found] == [("a.md", 2)]
    assert as_json("find", "--text", "two", "--as-of", "cs_1") == []
    assert [a["name"] for a in as_json("find", "--name", "a.md", "--as-of", "cs_5")] == []


def test_show_as_of_has_the_relationships_of_then(written: Path) -> None:
    ok("unlink", "notes/b.md", "cites", "notes/a.md")
    assert as_json("show", "notes/b.md")["outgoing"] == []
    then = as_json("show", "notes/b.md", "--as-of", "cs_7")
    assert [r["relationship_type"] for r in then["outgoing"]] == ["cites"]
    assert then["as_of"] == 7 and "not_searchable" not in then
    assert as_json("show", "notes/b.md")["as_of"] is None
    human = ok("show", "notes/b.md", "--as-of", "cs_7").stdout
    assert "as of:" in human and "cites" in human and "text:" not in human
    related = as_json("find", "--related-to", "notes/b.md", "--as-of", "cs_7")
    assert [a["name"] for a in related] == ["a.md"]


@pytest.mark.parametrize(
    "point",
    ["2026-11-30T12:00:00", "2026-11-30", "yesterday", "cs_", "cs_x", "-1", "1.5", "12h"],
)
def test_an_as_of_point_of_no_known_form_is_a_usage_error(written: Path, point: str) -> None:
    for command in (["ls"], ["find"], ["show", "notes/b.md"], ["cat", "notes/b.md"]):
        fails(2, *command, "--as-of", point, says=["--as-of", "cs_12", "ISO 8601", "zone"])


def test_an_as_of_point_outside_history_is_refused(written: Path) -> None:
    fails(3, "ls", "--as-of", "cs_99", says=["cs_99"])
    fails(2, "ls", "--as-of", "99", says=["99"])


# -- ARTIFACT@REV and ARTIFACT@cs_N --------------------------------------------------


def test_at_revision_and_at_change_set_on_show_and_cat(written: Path) -> None:
    assert ok("cat", "notes/b.md@1").stdout == "beta one\n"
    (old, _) = as_json("log", "notes/a.md", "--all")["artifacts"]
    # NAME@REV: the live artifact of that name; ID@REV also of a deleted one.
    assert ok("cat", "notes/a.md@1").stdout == "alpha three\n"
    assert ok("cat", f"{old['artifact_id']}@2").stdout == "alpha two\n"
    assert ok("cat", old["artifact_id"], "-r", "1").stdout == "alpha one\n"
    # NAME@cs_N: the artifact of that name as of that change set.
    assert ok("cat", "notes/a.md@cs_1").stdout == "alpha one\n"
    shown = as_json("show", "notes/a.md@cs_4")
    assert shown["artifact"]["id"] == old["artifact_id"]
    assert shown["artifact"]["revision"] == 2 and shown["as_of"] == 4
    at_revision = as_json("show", f"{old['artifact_id']}@1")
    assert at_revision["artifact"]["revision"] == 1 and at_revision["as_of"] == 2
    assert at_revision["artifact"]["digest"] == old["revisions"][0]["digest"]
    fails(3, "cat", "notes/a.md@cs_5", says=["as of cs_5"])
    fails(3, "cat", "notes/a.md@9", says=["revision 9"])
    fails(2, "cat", "notes/a.md@1", "-r", "1", says=["point in history"])
    fails(2, "show", "notes/a.md@cs_4", "--as-of", "cs_1", says=["point in history"])
    fails(2, "cat", "notes/a.md", "-r", "1", "--as-of", "cs_1", says=["not both"])


def test_a_name_with_an_at_sign_resolves_plainly_first(store: Path, tmp_path: Path) -> None:
    ok("init")
    for name, body in (("v@2", "whole name\n"), ("v", "v one\n"), ("w@cs_1", "odd\n")):
        (tmp_path / name).write_text(body)
        ok("add", "notes", str(tmp_path / name))
    (tmp_path / "v").write_text("v two\n")
    ok("add", "notes", str(tmp_path / "v"))
    assert ok("cat", "notes/v@2").stdout == "whole name\n"  # the artifact named v@2
    assert ok("cat", "notes/v@1").stdout == "v one\n"  # no such name: revision 1 of v
    assert ok("cat", "notes/w@cs_1").stdout == "odd\n"
    assert ok("cat", "notes/v@2@1").stdout == "whole name\n"  # revision 1 of v@2
    assert as_json("show", "notes/v@2")["artifact"]["name"] == "v@2"
    fails(3, "cat", "notes/x@1", says=["notes/x"])
