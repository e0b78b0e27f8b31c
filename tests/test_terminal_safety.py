"""Stored text never reaches the terminal raw: human output escapes control characters.

Free text (descriptions, run errors, notes, external ids) may hold any
character but NUL, so escape sequences can be stored through the API. Names
cannot, but a store written by other means (or an older version) may hold
them. Every human listing and detail view shows them as visible escapes
(``\\x1b``); ``--json`` keeps the exact text.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from kontextual_engine.cli import cli
from kontextual_engine.models import ContextReference
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

HOSTILE = "x\x1b]0;pwned\x07\x1b[2J\x9b31m\r\nforged line\x7f"
# Control characters a terminal acts on; newline only ends lines of our own.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(path, "none", create=True) as repo:
        notes = repo.create_collection("notes", description=HOSTILE)
        a = repo.create_artifact(notes.id, "a.md", b"alpha", artifact_type="note")
        run = repo.start_run(repo.create_run("summarize").id)
        repo.finish_run(run.id, "failed", error=HOSTILE)
        repo.create_context_package(
            "pack",
            [
                ContextReference("artifact", a.id, note=HOSTILE),
                ContextReference("external", HOSTILE, system="pm", uri=HOSTILE),
            ],
        )
    # A name the API refuses, as a store written by other means may hold it.
    with contextlib.closing(sqlite3.connect(path / "index.sqlite")) as conn:
        conn.execute("UPDATE artifacts SET name = ?", (HOSTILE,))
        conn.execute("UPDATE revisions SET name = ?", (HOSTILE,))
        conn.commit()
    return path


def run(store: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--store", str(store), "--durability", "none", *args])
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result.stdout


def ids(store: Path) -> dict[str, str]:
    with SQLiteKnowledgeRepository.open(store, "none", create=True) as repo:
        return {
            "artifact": repo.list_artifacts()[0].id,
            "run": repo.list_runs()[0].id,
            "package": repo.list_context_packages()[0].id,
        }


def human_views(store: Path) -> list[list[str]]:
    found = ids(store)
    return [
        ["collection", "list"],
        ["collection", "show", "notes"],
        ["ls"],
        ["find", "--type", "note"],
        ["show", found["artifact"]],
        ["log", found["artifact"]],
        ["changes"],
        ["runs", "list"],
        ["runs", "show", found["run"]],
        ["context", "list"],
        ["context", "show", found["package"]],
    ]


def test_human_output_escapes_control_characters(store: Path) -> None:
    for args in human_views(store):
        out = run(store, *args)
        assert not RAW_CONTROL.search(out), (args, out)
        assert "forged line" not in out.splitlines(), (args, out)
    assert "\\x1b]0;pwned\\x07" in run(store, "collection", "list")
    assert "\\x1b]0;pwned\\x07" in run(store, "ls")


def test_json_output_stays_exact(store: Path) -> None:
    [collection] = json.loads(run(store, "collection", "list", "--json"))
    assert collection["description"] == HOSTILE
    [artifact] = json.loads(run(store, "ls", "--json"))
    assert artifact["name"] == HOSTILE
    # Exact, and still safe to print: DEL and C1 controls are JSON escapes too.
    assert not RAW_CONTROL.search(run(store, "ls", "--json"))


def test_error_messages_escape_control_characters(store: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--store", str(store), "--durability", "none", "collection", "create", HOSTILE]
    )
    assert result.exit_code == 2
    assert not RAW_CONTROL.search(result.stderr), result.stderr
