"""Replay a git repository's history into a store, then check the store's history
against what git itself says.

The test builds a small repository (adds, edits, renames with ``git mv``,
deletions, paths added again after deletion, commits touching several files,
authors in several time zones), replays its first-parent history through the
public library API, one ``apply`` per commit, and asserts that every commit's
tree, every path's history, every revision's body and every change set's
author, message and time agree with git; then the same through the command
line (``log --all --json``, ``ls --as-of``, ``cat NAME@cs_N``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import blake3
import pytest

from kontextual_engine.models import ArtifactHistory, Delete, NewArtifact, Rename
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

from .test_cli import ok

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

AUTHORS = {
    "ana": ("Ana Lima", "ana@example.org"),
    "bob": ("Bob Stone", "bob@example.org"),
    "cy": ("Cy Wu", "cy@example.org"),
}
ZONES = [timezone.utc, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30))]
START = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


def text(tag: str, version: int) -> str:
    """A body unlike every other tag's, so git pairs renames by content only where meant."""
    return "".join(f"{tag}: line {i} of the {tag} document\n" for i in range(12)) + f"v{version}\n"


# (author, subject, operations): ("w", path, body), ("rm", path), ("mv", old, new).
Step = tuple[str, str, list[tuple[str, ...]]]
HISTORY: list[Step] = [
    (
        "ana",
        "Start the notes",
        [
            ("w", "README.md", text("readme", 1)),
            ("w", "notes/a.md", text("a", 1)),
            ("w", "notes/b.md", text("b", 1)),
        ],
    ),
    ("bob", "Expand a", [("w", "notes/a.md", text("a", 2))]),
    ("cy", "Add the guide", [("w", "docs/guide.md", text("guide", 1))]),
    ("ana", "Rename b", [("mv", "notes/b.md", "notes/b-renamed.md")]),
    (
        "bob",
        "Touch up readme and guide",
        [("w", "README.md", text("readme", 2)), ("w", "docs/guide.md", text("guide", 2))],
    ),
    ("cy", "Drop a", [("rm", "notes/a.md")]),
    ("ana", "Start c", [("w", "notes/c.md", text("c", 1))]),
    ("bob", "Bring a back", [("w", "notes/a.md", text("a-again", 1))]),
    (
        "cy",
        "Guide becomes the manual",
        [("mv", "docs/guide.md", "docs/manual.md"), ("w", "docs/manual.md", text("guide", 3))],
    ),
    ("ana", "Edit c", [("w", "notes/c.md", text("c", 2))]),
    ("bob", "Drop the renamed b", [("rm", "notes/b-renamed.md")]),
    (
        "cy",
        "Add data",
        [("w", "data/x.json", '{"x": 1}\n'), ("w", "data/y.json", '{"y": "first"}\n')],
    ),
    ("ana", "c takes the name b", [("mv", "notes/c.md", "notes/b.md")]),
    ("bob", "Edit b", [("w", "notes/b.md", text("c", 3))]),
    ("cy", "Drop x", [("rm", "data/x.json")]),
    ("ana", "Edit y", [("w", "data/y.json", '{"y": "second"}\n')]),
    ("bob", "x again", [("w", "data/x.json", '{"x": 2, "again": true}\n')]),
    ("cy", "Move the readme", [("mv", "README.md", "docs/README.md")]),
    ("ana", "Edit a", [("w", "notes/a.md", text("a-again", 2))]),
    (
        "bob",
        "Three more notes",
        [
            ("w", "notes/d.md", text("d", 1)),
            ("w", "notes/e.md", text("e", 1)),
            ("w", "notes/f.md", text("f", 1)),
        ],
    ),
    (
        "cy",
        "Drop d, edit e, rename f",
        [
            ("rm", "notes/d.md"),
            ("w", "notes/e.md", text("e", 2)),
            ("mv", "notes/f.md", "notes/g.md"),
        ],
    ),
    ("ana", "Edit the manual", [("w", "docs/manual.md", text("guide", 4))]),
    ("bob", "Drop e", [("rm", "notes/e.md")]),
    ("cy", "e again", [("w", "notes/e.md", text("e-again", 1))]),
    ("ana", "Archive g", [("mv", "notes/g.md", "archive/g.md")]),
    ("bob", "Edit the archived g", [("w", "archive/g.md", text("f", 2))]),
    ("cy", "Clear out", [("rm", "archive/g.md"), ("rm", "notes/e.md")]),
    ("ana", "A name with an at sign", [("w", "notes/v@2.md", text("v", 1))]),
    ("bob", "Edit it", [("w", "notes/v@2.md", text("v", 2))]),
    (
        "cy",
        "Edit readme and b, add h",
        [
            ("w", "docs/README.md", text("readme", 3)),
            ("w", "notes/b.md", text("c", 4)),
            ("w", "notes/h.md", text("h", 1)),
        ],
    ),
]


class Git:
    """A git repository driven through the ``git`` command, with no user configuration."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {
            **os.environ,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "LC_ALL": "C",
        }

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> bytes:
        return subprocess.run(
            ["git", *args],
            cwd=self.root,
            env={**self.env, **(env or {})},
            check=True,
            capture_output=True,
        ).stdout

    def text(self, *args: str) -> str:
        return self(*args).decode()


def build(root: Path) -> Git:
    root.mkdir()
    git = Git(root)
    git("init", "-q", "-b", "main")
    for i, (who, subject, operations) in enumerate(HISTORY):
        for operation in operations:
            if operation[0] == "w":
                path = root / operation[1]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(operation[2])
                git("add", operation[1])
            elif operation[0] == "rm":
                git("rm", "-q", operation[1])
            else:
                (root / operation[2]).parent.mkdir(parents=True, exist_ok=True)
                git("mv", operation[1], operation[2])
        name, email = AUTHORS[who]
        moment = (START + timedelta(hours=7 * i, minutes=13 * i)).astimezone(ZONES[i % 3])
        git(
            "commit",
            "-q",
            "--no-verify",
            "-m",
            subject,
            env={
                "GIT_AUTHOR_NAME": name,
                "GIT_AUTHOR_EMAIL": email,
                "GIT_COMMITTER_NAME": name,
                "GIT_COMMITTER_EMAIL": email,
                "GIT_AUTHOR_DATE": moment.isoformat(),
                "GIT_COMMITTER_DATE": moment.isoformat(),
            },
        )
    return git


@dataclass(frozen=True)
class Commit:
    sha: str
    author: str
    subject: str
    at: datetime


def commits(git: Git) -> list[Commit]:
    """The first-parent history, oldest first."""
    out = git.text("log", "--first-parent", "--reverse", "--format=%H%x00%an%x00%s%x00%aI")
    found = []
    for line in out.splitlines():
        sha, author, subject, at = line.split("\x00")
        found.append(Commit(sha, author, subject, datetime.fromisoformat(at)))
    return found


def name_status(git: Git, parent: str, commit: str) -> Iterator[list[str]]:
    """``git diff --name-status -M`` between two commits: [status, path] or
    [R<score>, old, new] each."""
    fields = git("diff", "--name-status", "-M", "-z", parent, commit).decode().split("\x00")
    fields = [f for f in fields if f]
    i = 0
    while i < len(fields):
        status = fields[i]
        width = 3 if status[0] in "RC" else 2
        yield fields[i : i + width]
        i += width


def operations(git: Git, parent: str, commit: str) -> list[NewArtifact | Rename | Delete]:
    """What a commit did, as apply operations: deletions, then renames, then puts,
    so a name freed by a deletion or a rename can be taken in the same commit."""
    deletes: list[Delete] = []
    renames: list[Rename] = []
    puts: list[NewArtifact] = []
    for entry in name_status(git, parent, commit):
        status = entry[0][0]
        if status == "D":
            deletes.append(Delete(entry[1]))
        elif status == "R":
            renames.append(Rename(entry[1], entry[2]))
            if not entry[0].endswith("100"):
                puts.append(NewArtifact(entry[2], blob(git, commit, entry[2]), "file"))
        elif status in "AM":
            puts.append(NewArtifact(entry[1], blob(git, commit, entry[1]), "file"))
        else:
            raise AssertionError(f"the history holds an unexpected change: {entry}")
    return [*deletes, *renames, *puts]


def blob(git: Git, commit: str, path: str) -> bytes:
    return git("show", f"{commit}:{path}")


def tree(git: Git, commit: str) -> list[str]:
    return sorted(git.text("ls-tree", "-r", "--name-only", "-z", commit).split("\x00")[:-1])


def digest(body: bytes) -> str:
    return "blake3:" + blake3.blake3(body).hexdigest()


@dataclass
class Replayed:
    git: Git
    store: Path
    collection_id: str
    commits: list[Commit]
    change_set_of: dict[str, str]  # commit -> change set id
    commit_of: dict[str, Commit]  # change set id -> commit


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    root = tmp_path_factory.mktemp("replay")
    git = build(root / "git")
    history = commits(git)
    assert len(history) == len(HISTORY)
    store = root / "store"
    ok("--store", str(store), "init")
    empty_tree = git.text("hash-object", "-t", "tree", os.devnull).strip()
    change_set_of: dict[str, str] = {}
    with SQLiteKnowledgeRepository.open(store, durability="none") as repo:
        collection = repo.create_collection(
            "repo", actor="replay", message="the replayed repository", at=history[0].at
        )
        parent = empty_tree
        for commit in history:
            before = repo.last_sequence()
            repo.apply(
                collection.id,
                operations(git, parent, commit.sha),
                actor=commit.author,
                message=commit.subject,
                at=commit.at,
            )
            (made,) = repo.list_change_sets(after=before)
            change_set_of[commit.sha] = made.id
            parent = commit.sha
    return Replayed(
        git,
        store,
        collection.id,
        history,
        change_set_of,
        {change_set_of[c.sha]: c for c in history},
    )


def library(replayed: Replayed) -> SQLiteKnowledgeRepository:
    return SQLiteKnowledgeRepository.open(replayed.store, durability="none")


def test_the_history_exercises_what_it_should(replayed: Replayed) -> None:
    git, shas = replayed.git, [c.sha for c in replayed.commits]
    statuses = [
        entry[0][0]
        for parent, commit in itertools.pairwise(shas)
        for entry in name_status(git, parent, commit)
    ]
    assert {"A", "M", "D", "R"} <= set(statuses)
    partial = [
        entry
        for parent, commit in itertools.pairwise(shas)
        for entry in name_status(git, parent, commit)
        if entry[0].startswith("R") and entry[0] != "R100"
    ]
    assert partial, "a rename with an edit"
    assert len({c.author for c in replayed.commits}) == 3
    assert len({c.at.utcoffset() for c in replayed.commits}) == 3


def test_every_commit_is_one_change_set_with_its_author_message_and_time(
    replayed: Replayed,
) -> None:
    with library(replayed) as repo:
        change_sets = repo.list_change_sets()
    assert [c.id for c in change_sets[1:]] == [
        replayed.change_set_of[c.sha] for c in replayed.commits
    ]
    for change_set, commit in zip(change_sets[1:], replayed.commits, strict=True):
        assert (change_set.actor, change_set.message) == (commit.author, commit.subject)
        assert change_set.timestamp == commit.at


def test_the_store_as_of_each_change_set_is_the_commits_tree(replayed: Replayed) -> None:
    git = replayed.git
    with library(replayed) as repo:
        for commit in replayed.commits:
            point = replayed.change_set_of[commit.sha]
            then = repo.list_artifacts(replayed.collection_id, as_of=point)
            assert sorted(a.name for a in then) == tree(git, commit.sha), commit.subject
            for artifact in then:
                body = blob(git, commit.sha, artifact.name)
                assert repo.read_content(artifact.id, as_of=point) == body
                assert artifact.digest == digest(body)
            # As of the commit's time: the same.
            by_time = repo.list_artifacts(replayed.collection_id, as_of=commit.at)
            assert [a.name for a in by_time] == [a.name for a in then]


def touched(history: ArtifactHistory, name: str) -> list[str]:
    """The change sets in which this artifact came to have, changed under, or left ``name``."""
    names = {r.revision: r.name for r in history.revisions}
    found = []
    for change in history.changes:
        assert change.revision is not None and change.change_set_id is not None
        before = names.get(change.revision - 1) if change.action == "update" else None
        if name in (names[change.revision], before):
            found.append(change.change_set_id)
    return found


def paths(replayed: Replayed) -> list[str]:
    return sorted({path for c in replayed.commits for path in tree(replayed.git, c.sha)})


def git_log(replayed: Replayed, path: str) -> list[Commit]:
    shas = replayed.git.text(
        "log", "--first-parent", "--reverse", "--format=%H", "--", path
    ).split()
    by_sha = {c.sha: c for c in replayed.commits}
    return [by_sha[sha] for sha in shas]


def test_the_history_of_every_name_is_gits_log_of_that_path(replayed: Replayed) -> None:
    with library(replayed) as repo:
        for path in paths(replayed):
            histories = repo.history_of_name(replayed.collection_id, path)
            ours = sorted(
                {cs for h in histories for cs in touched(h, path)},
                key=lambda cs: int(cs.removeprefix("cs_")),
            )
            theirs = git_log(replayed, path)
            assert len(ours) == len(theirs), path
            change_sets = [repo.get_change_set(cs) for cs in ours]
            assert [(c.actor, c.message) for c in change_sets] == [
                (c.author, c.subject) for c in theirs
            ], path
            assert ours == [replayed.change_set_of[c.sha] for c in theirs]


def test_every_revision_is_the_blob_of_the_commit_that_made_it(replayed: Replayed) -> None:
    """The last revision an artifact got in a change set is the commit's blob; an
    earlier one in the same change set (the rename of a renamed and edited file)
    is the parent commit's blob under the old name, as the rename changes no body."""
    git = replayed.git
    parent_of = {c.sha: p.sha for p, c in itertools.pairwise(replayed.commits)}
    seen = intermediate = 0
    with library(replayed) as repo:
        artifact_ids = {
            h.artifact_id
            for path in paths(replayed)
            for h in repo.history_of_name(replayed.collection_id, path)
        }
        for artifact_id in artifact_ids:
            changes = {c.sequence: c for c in repo.list_changes(entity_id=artifact_id)}
            revisions = repo.list_revisions(artifact_id)
            made_in = [changes[r.change_sequence].change_set_id for r in revisions]
            for i, revision in enumerate(revisions):
                commit = replayed.commit_of[str(made_in[i])]
                if i + 1 < len(revisions) and made_in[i + 1] == made_in[i]:
                    assert revision.name != revisions[i - 1].name  # a rename
                    body = blob(git, parent_of[commit.sha], revisions[i - 1].name)
                    intermediate += 1
                else:
                    body = blob(git, commit.sha, revision.name)
                assert repo.read_content(artifact_id, revision=revision.revision) == body
                seen += 1
    assert seen >= len(HISTORY) and intermediate == 1


# -- the same through the command line ----------------------------------------------


def cli_json(replayed: Replayed, *args: str) -> object:
    return json.loads(ok("--store", str(replayed.store), *args, "--json").stdout)


@pytest.mark.parametrize("path", ["notes/b.md", "notes/a.md", "data/x.json", "notes/v@2.md"])
def test_log_all_on_the_command_line_agrees_with_git(replayed: Replayed, path: str) -> None:
    logged = cli_json(replayed, "log", f"repo/{path}", "--all")
    assert isinstance(logged, dict)
    with library(replayed) as repo:
        histories = repo.history_of_name(replayed.collection_id, path)
    assert [a["artifact_id"] for a in logged["artifacts"]] == [h.artifact_id for h in histories]
    assert [a["deleted"] for a in logged["artifacts"]] == [h.deleted for h in histories]
    touching = set()
    for artifact in logged["artifacts"]:
        previous = None
        for revision in artifact["revisions"]:
            commit = replayed.commit_of[revision["change_set_id"]]
            assert (revision["actor"], revision["message"]) == (commit.author, commit.subject)
            assert revision["digest"] == digest(blob(replayed.git, commit.sha, revision["name"]))
            if path in (revision["name"], previous):
                touching.add(commit.sha)
            previous = revision["name"]
        deletion = artifact["deletion"]
        if deletion is not None:
            commit = replayed.commit_of[deletion["change_set_id"]]
            assert (deletion["actor"], deletion["message"]) == (commit.author, commit.subject)
            if previous == path:
                touching.add(commit.sha)
    assert touching == {c.sha for c in git_log(replayed, path)}
    # The artifact live under the name now is the one git has at that path.
    live = [a for a in logged["artifacts"] if not a["deleted"]]
    head = replayed.commits[-1].sha
    if path in tree(replayed.git, head):
        assert live and live[-1]["revisions"][-1]["name"] == path


@pytest.mark.parametrize("index", [0, 3, 12, 20, -1])
def test_ls_as_of_on_the_command_line_agrees_with_git(replayed: Replayed, index: int) -> None:
    commit = replayed.commits[index]
    point = replayed.change_set_of[commit.sha]
    listed = cli_json(replayed, "ls", "repo", "--as-of", point)
    assert isinstance(listed, list)
    assert sorted(a["name"] for a in listed) == tree(replayed.git, commit.sha)
    for artifact in listed:
        body = blob(replayed.git, commit.sha, artifact["name"])
        assert artifact["digest"] == digest(body)
    for path in tree(replayed.git, commit.sha)[:3]:
        shown = ok("--store", str(replayed.store), "cat", f"repo/{path}@{point}").stdout_bytes
        assert shown == blob(replayed.git, commit.sha, path)
