"""The `kontextual` command line as users run it: real processes over the fixture corpus."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
# Only a guard against a hung child: no assertion depends on how long anything takes.
HANG_GUARD_SECONDS = 60


def kontextual(
    *args: str,
    store: Path | None,
    cwd: Path | None = None,
    check: int | None = 0,
    stdin: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    env = {key: value for key, value in os.environ.items() if key != "KONTEXTUAL_STORE"}
    if store is not None:
        env["KONTEXTUAL_STORE"] = str(store)
    done = subprocess.run(
        [sys.executable, "-m", "kontextual_engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        input=stdin,
        timeout=HANG_GUARD_SECONDS,
    )
    if check is not None:
        assert done.returncode == check, (args, done.stdout, done.stderr)
    return done


def lines(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    return done.stdout.decode().splitlines()


def json_of(done: subprocess.CompletedProcess[bytes]) -> object:
    return json.loads(done.stdout)


def names(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    found = json_of(done)
    assert isinstance(found, list)
    return [record["name"] for record in found]


def hits(done: subprocess.CompletedProcess[bytes]) -> list[str]:
    """The names of `find --text --json` hits, best first."""
    found = json_of(done)
    assert isinstance(found, list)
    assert all(isinstance(hit["score"], float) and hit["snippet"] for hit in found), found
    return [hit["artifact"]["name"] for hit in found]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    copy = tmp_path / "corpus"
    shutil.copytree(CORPUS, copy)
    return copy


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[bytes]]:
    store = tmp_path / "store"

    def in_store(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[bytes]:
        return kontextual("--durability", "batch", *args, store=store, check=check)

    return in_store


def test_main_flow(
    tmp_path: Path, corpus: Path, run: Callable[..., subprocess.CompletedProcess[bytes]]
) -> None:
    store = tmp_path / "store"
    assert "initialised empty kontextual store" in run("init").stdout.decode()
    added = lines(
        run("add", "notes", str(corpus), "--meta", "source=fixtures", "--meta", "batch=1")
    )
    total = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
    assert added == [
        "created collection notes",
        f"added 37, updated 0, unchanged 0, deleted 0, skipped 0, {total} bytes",
    ]

    # The facts fixtures/README.md promises, through the command line.
    assert hits(run("find", "--text", "zephyrine", "--json")) == ["notes/interview-archivist.md"]
    assert sorted(hits(run("find", "--text", "QUILLWORT", "--json"))) == [
        "notes/research-graph-vs-tags.md",
        "papers/knowledge-graphs-personal-archives.txt",
    ]
    assert len(hits(run("find", "--text", "retrieval", "--json"))) == 12
    assert sorted(hits(run("find", "--text", "strasse", "--json"))) == [
        "data/multilingual.txt",  # Straße: ß case-folds to ss
        "notes/research-fts5-ranking.md",
    ]
    assert len(names(run("find", "--meta", "source=fixtures", "--json"))) == 37
    assert names(run("find", "--meta", 'batch="1"', "--json")) == []

    # Update one file and add the folder again: one new revision, nothing else.
    target = corpus / "notes" / "todo.md"
    original = target.read_bytes()
    target.write_bytes(original + b"- [ ] zephyrine follow-up\n")
    assert lines(run("add", "notes", str(corpus)))[-1].startswith(
        "added 0, updated 1, unchanged 36,"
    )
    assert sorted(hits(run("find", "--text", "zephyrine", "--json"))) == [
        "notes/interview-archivist.md",
        "notes/todo.md",
    ]
    assert hits(run("find", "--meta", "batch=1", "--text", "follow-up", "--json")) == [
        "notes/todo.md"
    ]

    history = json_of(run("log", "notes/notes/todo.md", "--json"))
    assert isinstance(history, dict)
    assert [r["revision"] for r in history["revisions"]] == [1, 2]
    assert history["revisions"][1]["changed"] == ["digest"]
    assert history["revisions"][1]["old_digest"] == history["revisions"][0]["digest"]
    table = lines(run("log", "notes/notes/todo.md"))
    assert len(table) == 3 and "->" in table[2]

    assert run("cat", "notes/notes/todo.md", "--revision", "1").stdout == original
    assert run("cat", "notes/notes/todo.md").stdout == target.read_bytes()
    png = (corpus / "data" / "pixel.png").read_bytes()
    assert run("cat", "notes/data/pixel.png").stdout == png
    assert "+- [ ] zephyrine follow-up" in lines(run("diff", "notes/notes/todo.md", "1", "2"))

    # Snapshot round trip into a new store, which checks out clean.
    snapshot = tmp_path / "snapshot.tar"
    assert "exported" in run("export", str(snapshot), "--tar").stdout.decode()
    restored = tmp_path / "restored"
    kontextual("import", str(snapshot), store=restored)
    assert json_of(kontextual("ls", "--json", store=restored)) == json_of(run("ls", "--json"))
    assert kontextual("cat", "notes/notes/todo.md", "-r", "1", store=restored).stdout == original
    clean = json_of(kontextual("fsck", "--full", "--json", store=restored))
    assert isinstance(clean, dict) and clean["ok"] is True and clean["findings"] == []

    # Damage an object by hand, as someone poking at the directory would.
    digest = history["revisions"][0]["digest"]
    hexd = digest.removeprefix("blake3:")
    body = restored / "objects" / hexd[:2] / hexd[2:]
    assert body.read_bytes() == original
    body.chmod(0o644)
    damaged = bytearray(body.read_bytes())
    damaged[10] ^= 0x01
    body.write_bytes(bytes(damaged))
    checked = kontextual("fsck", "--full", store=restored, check=5)
    assert digest in checked.stdout.decode() and "corrupt" in checked.stdout.decode()
    [line] = checked.stderr.decode().splitlines()
    assert line.startswith(f"error: fsck found 1 error(s) in {restored}; objects are damaged")
    verified = kontextual("verify-object", hexd[:8], store=restored, check=5)
    assert verified.stderr.decode().startswith(f"error: corrupt object {digest}")
    assert (
        kontextual("cat", "notes/notes/todo.md", "-r", "1", store=restored, check=5).stderr.count(
            b"\n"
        )
        == 1
    )
    # The original store is untouched by all of that.
    assert json_of(run("fsck", "--full", "--json"))["ok"] is True  # type: ignore[index]
    assert store.is_dir()


def test_the_default_store_is_dot_kontextual_in_the_working_directory(
    tmp_path: Path, corpus: Path
) -> None:
    """What the README's first command runs."""
    work = tmp_path / "clone"
    work.mkdir()
    kontextual("init", store=None, cwd=work)
    assert (work / ".kontextual" / "kontextual.json").is_file()
    kontextual("add", "notes", str(corpus), store=None, cwd=work)
    found = lines(kontextual("find", "--text", "retrieval", store=None, cwd=work))
    assert len(found) == 24  # each hit, then its snippet indented
    scores = [float(line.split()[0]) for line in found[::2]]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]
    assert all(line.startswith("    ") and "retrieval" in line.casefold() for line in found[1::2])
    assert "\x1b" not in "".join(found)  # no styling when stdout is not a terminal
    hexd = json_of(kontextual("show", "notes/notes/glossary.md", "--json", store=None, cwd=work))[
        "artifact"
    ]["digest"][7:]  # type: ignore[index]
    body = work / ".kontextual" / "objects" / hexd[:2] / hexd[2:]
    assert body.read_bytes() == (corpus / "notes" / "glossary.md").read_bytes()
    if shutil.which("b3sum"):
        assert (
            subprocess.run(["b3sum", "--no-names", str(body)], capture_output=True, check=True)
            .stdout.decode()
            .strip()
            == hexd
        )


def test_errors_are_one_line_without_a_traceback(tmp_path: Path) -> None:
    store = tmp_path / "nowhere"
    missing = kontextual("ls", store=store, check=3)
    assert missing.stdout == b""
    assert missing.stderr.decode().splitlines() == [
        f"error: no kontextual store at {store}; run `kontextual init` to create one"
    ]
    assert not store.exists()
    kontextual("init", store=store)
    for args, code in (
        (["show", "notes/nope"], 3),
        (["show", "nope"], 2),
        (["add", "n", str(tmp_path), "--meta", "bad"], 2),
        (["add"], 2),
        (["gc", "--grace", "soon"], 2),
    ):
        failed = kontextual(*args, store=store, check=code)
        text = failed.stderr.decode()
        assert len(text.splitlines()) == 1 and text.startswith("error: "), text
        assert b"Traceback" not in failed.stderr
    debug = kontextual("--debug", "show", "notes/nope", store=store, check=1)
    assert b"Traceback" in debug.stderr and b"ArtifactNotFound" in debug.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "kontextual"
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    done = subprocess.run(
        [str(script), "--version"], capture_output=True, check=True, timeout=HANG_GUARD_SECONDS
    )
    assert done.stdout.decode().startswith("kontextual, version ")


def read_until(stream: int, wanted: Callable[[bytes], bool]) -> bytes:
    """Read from a pipe until ``wanted(everything so far)``; fail if the child hangs."""
    seen = b""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not wanted(seen):
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no progress from the child; it printed {seen!r}"
        ready, _, _ = select.select([stream], [], [], remaining)
        if ready:
            chunk = os.read(stream, 65536)
            assert chunk, f"the child closed its output early; it printed {seen!r}"
            seen += chunk
    return seen


def test_changes_follow_streams_new_changes_until_ctrl_c(
    tmp_path: Path, run: Callable[..., subprocess.CompletedProcess[bytes]]
) -> None:
    store = tmp_path / "store"
    run("init")
    run("collection", "create", "first")
    env = {**os.environ, "KONTEXTUAL_STORE": str(store)}
    follower = subprocess.Popen(
        [sys.executable, "-m", "kontextual_engine", "changes", "--follow", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None
        fd = follower.stdout.fileno()
        first = read_until(fd, lambda seen: seen.count(b"\n") >= 1)
        assert json.loads(first.splitlines()[0])["changes"][0]["details"] == {"name": "first"}
        run("collection", "create", "second")
        more = read_until(fd, lambda seen: seen.count(b"\n") >= 1)
        assert json.loads(more.splitlines()[0])["changes"][0]["details"] == {"name": "second"}
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=HANG_GUARD_SECONDS) == 0
        assert follower.stderr is not None and follower.stderr.read() == b""
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()


@pytest.mark.parametrize("quiet", [False, True])
def test_add_shows_a_progress_bar_on_a_terminal_only(
    tmp_path: Path,
    corpus: Path,
    quiet: bool,
    run: Callable[..., subprocess.CompletedProcess[bytes]],
) -> None:
    run("init")
    controller, terminal = pty.openpty()
    env = {**os.environ, "KONTEXTUAL_STORE": str(tmp_path / "store")}
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "kontextual_engine",
                "add",
                "notes",
                str(corpus),
                *(["--quiet"] if quiet else []),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=HANG_GUARD_SECONDS,
        )
        os.close(terminal)
        shown = b""
        while select.select([controller], [], [], 0)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # Linux reports EIO once the terminal's other end is closed
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert done.stdout.decode().splitlines()[-1].startswith("added 37,")
    assert (b"adding" in shown) is not quiet
    assert b"error" not in shown
