"""The command line starts fast: a command imports what it needs and nothing more.

Not timed (the benchmark suite measures start-up): each test runs the command
line in a child process and looks at the modules it imported by the end.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kontextual_engine.cli import app, cli, commands

OLD_STORE = Path(__file__).parent / "fixtures" / "store-schema-0004" / "store"
HANG_GUARD_SECONDS = 60
# Slow to import, and needed only by some commands or some stores.
HEAVY = ("sqlite_utils", "pathspec", "dateutil")

# Runs the command line, then writes the imported modules (and what it printed).
CHILD = """
import contextlib, io, json, sys
from kontextual_engine.cli import main
out = io.StringIO()
code = None
with contextlib.redirect_stdout(out):
    sys.argv = ["kontextual", *sys.argv[1:]]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
with open(REPORT, "w") as report:
    json.dump({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}, report)
"""


def run(tmp_path: Path, *args: str) -> tuple[str, set[str]]:
    """What ``kontextual ARGS`` printed, and the modules it imported; it must succeed."""
    report = tmp_path / "report.json"
    env = {key: value for key, value in os.environ.items() if key != "KONTEXTUAL_STORE"}
    env["COLUMNS"] = "100"
    done = subprocess.run(
        [sys.executable, "-c", CHILD.replace("REPORT", repr(str(report))), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["code"] in (0, None), (result, done.stderr)
    return result["out"], set(result["modules"])


def heavy(modules: set[str]) -> set[str]:
    return {name for name in modules if name.partition(".")[0] in HEAVY}


def command_modules(modules: set[str]) -> set[str]:
    return {name for name in modules if name.startswith(f"{commands.__name__}.")}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("startup")
    (root / "notes").mkdir()
    (root / "notes" / "a.md").write_text("apples\n")
    kontextual = [sys.executable, "-m", "kontextual_engine", "--store", str(root / "kb")]
    subprocess.run([*kontextual, "init"], check=True, capture_output=True)
    subprocess.run(
        [*kontextual, "add", "notes", str(root / "notes"), "-q"], check=True, capture_output=True
    )
    return root / "kb"


def test_version_imports_no_command_no_storage_and_nothing_heavy(tmp_path: Path) -> None:
    out, modules = run(tmp_path, "--version")
    assert out == "kontextual, version 0.1.0\n"
    assert not heavy(modules)
    assert not command_modules(modules)
    assert "kontextual_engine.models" not in modules
    assert not {name for name in modules if name.startswith("kontextual_engine.storage.sqlite")}
    # Beyond what click itself imports, the root command needs none of these.
    assert not {"pathlib", "dataclasses", "kontextual_engine.cli.params"} & modules


def test_ls_imports_its_own_command_module_and_nothing_heavy(tmp_path: Path, store: Path) -> None:
    out, modules = run(tmp_path, "--store", str(store), "ls")
    assert "notes/a.md" in out
    assert not heavy(modules)
    assert command_modules(modules) == {f"{commands.__name__}.artifacts"}
    unneeded = {"kontextual_engine.cli.ingest", "kontextual_engine.cli.plan"}
    unneeded |= {"kontextual_engine.storage.memory", "kontextual_engine.storage.sqlite.maintenance"}
    # The ingest pipeline's threads, and the shared store's clients.
    unneeded |= {"concurrent.futures", "kontextual_engine.storage.shared", "psycopg", "boto3"}
    assert not modules & unneeded


def test_add_imports_pathspec_only_for_patterns(tmp_path: Path, store: Path) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "b.md").write_text("pears\n")
    _, modules = run(tmp_path, "--store", str(store), "add", "more", str(folder), "-q")
    assert command_modules(modules) == {f"{commands.__name__}.add"}
    assert not heavy(modules)
    excluding = ("add", "more", str(folder), "--exclude", "*.tmp", "-q")
    _, modules = run(tmp_path, "--store", str(store), *excluding)
    assert "pathspec" in modules


def test_a_pending_migration_imports_sqlite_utils_to_apply_it(tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(OLD_STORE, old)
    _, modules = run(tmp_path, "--store", str(old), "ls")
    assert "sqlite_utils" in modules
    _, modules = run(tmp_path, "--store", str(old), "ls")  # migrated by the first
    assert "sqlite_utils" not in modules


def test_help_lists_every_command_without_importing_one(tmp_path: Path) -> None:
    out, modules = run(tmp_path, "--help")
    assert not command_modules(modules)
    assert not heavy(modules)
    listed = out.partition("Commands:")[2]
    for name in app.COMMANDS:
        assert f"\n  {name} " in listed, name


def test_help_is_the_same_whether_the_commands_are_loaded_or_not(tmp_path: Path) -> None:
    lazy, _ = run(tmp_path, "--help")
    script = (
        "import importlib, pkgutil, sys\n"
        "from kontextual_engine.cli import commands, main\n"
        "for info in pkgutil.iter_modules(commands.__path__):\n"
        "    importlib.import_module(f'{commands.__name__}.{info.name}')\n"
        "sys.argv = ['kontextual', '--help']\n"
        "main()\n"
    )
    env = {**os.environ, "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_SECONDS,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == lazy


def test_the_command_table_says_where_each_command_is_and_its_short_help() -> None:
    """``COMMANDS`` (what ``--help`` lists without importing) matches the commands."""
    for info in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{info.name}")
    assert set(cli.commands) == set(app.COMMANDS)
    for name, command in cli.commands.items():
        module = command.callback.__module__ if command.callback else None
        short_help = command.get_short_help_str(limit=1_000_000)
        assert app.COMMANDS[name] == (module.rpartition(".")[2] if module else None, short_help)


def test_a_command_not_in_the_table_is_unknown() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command 'no-such-command'" in result.output
