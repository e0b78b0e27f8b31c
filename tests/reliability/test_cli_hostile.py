"""The ``kontextual`` command on damaged stores and hostile input.

Every failure must be one line on stderr, a non-zero exit status and no
traceback; where the library raises a typed error, the command says what is
wrong rather than "unexpected ...". Each command runs as a real process:
``python -m kontextual_engine --store STORE ...``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kontextual_engine.errors import ValidationError
from kontextual_engine.snapshot import export_snapshot
from kontextual_engine.storage import text as words
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

from ..damage import overwrite_root_page
from .harness import tree_state

INJECTION = "'; DROP TABLE artifacts; --"


def kontextual(store: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kontextual_engine", "--store", str(store), *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[bytes], *, code: int | None = None, says: str = ""
) -> str:
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0, (result.stdout, stderr)
    assert "Traceback" not in stderr and b"Traceback" not in result.stdout, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    if code is not None:
        assert result.returncode == code, stderr
    assert says in lines[0], lines[0]
    return lines[0]


def assert_typed(line: str) -> None:
    """The library's typed error reached the user, not a stray exception."""
    assert "unexpected" not in line, line


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(path, "none", create=True) as repo:
        cid = repo.create_collection("notes").id
        for name in ("a.md", "b.md", INJECTION):
            repo.create_artifact(
                cid,
                name,
                f"body of {name} NEAR(x)".encode(),
                artifact_type="note",
                metadata={INJECTION: name},
            )
    return path


def object_of(store: Path, name: str) -> tuple[str, Path]:
    with SQLiteKnowledgeRepository.open(store, read_only=True) as repo:
        digest = repo.query(name=name)[0].digest
    hexd = digest.removeprefix("blake3:")
    path = store / "objects" / hexd[:2] / hexd[2:]
    path.chmod(0o644)
    return digest, path


# -- damaged stores ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["flipped bit", "truncated", "zero length", "deleted"])
def test_damaged_object(store: Path, damage: str) -> None:
    digest, path = object_of(store, "a.md")
    data = path.read_bytes()
    if damage == "flipped bit":
        path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    elif damage == "truncated":
        path.write_bytes(data[:3])
    elif damage == "zero length":
        path.write_bytes(b"")
    else:
        path.unlink()
    for args in (["cat", "notes/a.md"], ["cat-object", digest]):
        result = kontextual(store, *args)
        line = assert_one_line_error(result, says=digest.removeprefix("blake3:")[:12])
        assert_typed(line)
        assert not result.stdout.startswith(data[:3]) or damage == "truncated"
    check = kontextual(store, "fsck", "--full")
    assert check.returncode != 0
    assert b"Traceback" not in check.stderr + check.stdout
    assert kontextual(store, "cat", "notes/b.md").stdout == b"body of b.md NEAR(x)"


MARKERS = {
    "missing": None,
    "garbage": b"\xff\xfe garbage",
    "newer version": b'{"format": "kontextual-store", "version": 9, "digest": "blake3"}',
    "a directory": b"",
}


@pytest.mark.parametrize("damage", list(MARKERS))
def test_damaged_marker(store: Path, damage: str) -> None:
    marker = store / "kontextual.json"
    marker.unlink()
    if damage == "a directory":
        marker.mkdir()
    elif MARKERS[damage] is not None:
        marker.write_bytes(MARKERS[damage] or b"")
    before = sorted(p.name for p in store.iterdir())
    for args in (["ls"], ["fsck"], ["gc"], ["add", "notes", str(store.parent)]):
        line = assert_one_line_error(kontextual(store, *args))
        assert_typed(line)
    assert sorted(p.name for p in store.iterdir()) == before


def damage_artifacts_page(store: Path) -> None:
    overwrite_root_page(store / "index.sqlite", "artifacts", b"\xa5")


def test_damaged_index(store: Path) -> None:
    damage_artifacts_page(store)
    for args in (["ls"], ["cat", "notes/a.md"], ["find", "--text", "body"], ["gc"]):
        assert_one_line_error(kontextual(store, *args))
    check = kontextual(store, "fsck")
    assert check.returncode != 0
    assert b"Traceback" not in check.stderr + check.stdout
    line = assert_one_line_error(kontextual(store, "gc"), says="gc refused")
    assert_typed(line)


def test_damaged_index_reads_say_what_is_wrong(store: Path) -> None:
    damage_artifacts_page(store)
    assert_typed(assert_one_line_error(kontextual(store, "ls")))


def test_store_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "unrelated.txt").write_text("mine")
    for store in (tmp_path / "file", tmp_path / "full", tmp_path / "missing"):
        assert_typed(assert_one_line_error(kontextual(store, "ls")))
    assert_typed(assert_one_line_error(kontextual(tmp_path / "full", "init")))
    assert sorted(os.listdir(tmp_path / "full")) == ["unrelated.txt"]


# -- hostile input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "digest",
    [
        "../../etc/passwd",
        "blake3:../../x",
        "/etc/passwd",
        "0" * 63 + "g",
        "blake3:" + "A" * 64,
        "*",
        "%",
    ],
)
def test_hostile_digests(store: Path, digest: str) -> None:
    assert_typed(assert_one_line_error(kontextual(store, "cat-object", digest), code=2))
    assert_one_line_error(kontextual(store, "find", "--digest", digest))


@pytest.mark.parametrize(
    "reference", ["../../etc/passwd", f"notes/{INJECTION}x", "art_%", "notes/../notes/a.md"]
)
def test_hostile_artifact_references(store: Path, reference: str) -> None:
    for command in ("cat", "show", "rm"):
        assert_typed(assert_one_line_error(kontextual(store, command, reference)))
    assert len(kontextual(store, "ls").stdout.splitlines()) >= 3  # nothing was removed


@pytest.mark.parametrize(
    "text", ['"', "NEAR(a b", "(", "*", "a OR b", INJECTION, "-x", "col:val", "'", '"""']
)
def test_text_query_syntax_is_parsed_or_refused(store: Path, text: str) -> None:
    """Never FTS5 syntax: a query the word-search grammar accepts runs; anything
    else is one typed line naming the problem (exit 2), never a traceback."""
    result = kontextual(store, "find", "--text", text, "--json")
    try:
        words.parse_query(text)
    except ValidationError:
        assert_one_line_error(result, code=2, says="text query")
    else:
        assert result.returncode == 0, result.stderr
        assert b"Traceback" not in result.stderr


def test_injection_in_names_and_metadata(store: Path) -> None:
    result = kontextual(store, "find", "--meta", f'{INJECTION}="a.md"', "--json")
    assert result.returncode == 0, result.stderr
    assert b"a.md" in result.stdout
    shown = kontextual(store, "cat", f"notes/{INJECTION}")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"body of {INJECTION} NEAR(x)".encode()
    linked = kontextual(store, "link", "notes/a.md", INJECTION, f"notes/{INJECTION}")
    assert linked.returncode == 0, linked.stderr
    assert kontextual(store, "ls").returncode == 0


def test_deeply_nested_meta_value_is_a_usage_error(store: Path) -> None:
    value = "[" * 20_000 + "]" * 20_000
    assert_typed(assert_one_line_error(kontextual(store, "find", "--meta", f"k={value}")))


def test_deeply_nested_meta_value_never_tracebacks(store: Path) -> None:
    value = "[" * 20_000 + "]" * 20_000
    assert_one_line_error(kontextual(store, "find", "--meta", f"k={value}"))


def test_adding_a_file_whose_name_has_control_characters(store: Path, tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "good.md").write_text("good")
    (folder / "bad\x1b[2Jname.md").write_text("bad")
    before = kontextual(store, "ls", "--json").stdout
    assert_typed(assert_one_line_error(kontextual(store, "add", "notes", str(folder))))
    assert kontextual(store, "ls", "--json").stdout == before  # all or nothing


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for member, data in members:
            archive.addfile(member, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", data: bytes = b""
) -> tuple[tarfile.TarInfo, bytes | None]:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.linkname = linkname
    member.size = len(data) if kind == tarfile.REGTYPE else 0
    return member, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize(
    "attack", ["absolute path", "dot-dot", "symlink", "hard link", "device", "duplicate", "garbage"]
)
def test_hostile_snapshot_import(store: Path, tmp_path: Path, attack: str) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "secret").write_text("secret")
    before = tree_state(sentinel)
    snapshot = tmp_path / "snap"
    with SQLiteKnowledgeRepository.open(store, read_only=True) as repo:
        export_snapshot(repo, snapshot)
    valid = [
        _member(p.relative_to(snapshot).as_posix(), data=p.read_bytes())
        for p in sorted(snapshot.rglob("*"))
        if p.is_file()
    ]
    attacks = {
        "absolute path": [_member(str(sentinel / "planted"), data=b"x"), *valid],
        "dot-dot": [*valid, _member("../sentinel/planted", data=b"x")],
        "symlink": [_member("objects", tarfile.SYMTYPE, str(sentinel)), *valid],
        "hard link": [*valid, _member("index/x.jsonl", tarfile.LNKTYPE, str(sentinel / "secret"))],
        "device": [*valid, _member("index/dev", tarfile.CHRTYPE)],
        "duplicate": [*valid, valid[0]],
    }
    archive = tmp_path / "hostile.tar"
    archive.write_bytes(b"\x00garbage" * 100 if attack == "garbage" else _tar(*attacks[attack]))
    target = tmp_path / "target"
    line = assert_one_line_error(kontextual(target, "import", str(archive)))
    assert_typed(line)
    assert tree_state(sentinel) == before
    if target.exists():
        listing = kontextual(target, "ls", "--json")
        assert listing.returncode != 0 or listing.stdout.strip() in (b"", b"[]")
    shutil.rmtree(snapshot)
