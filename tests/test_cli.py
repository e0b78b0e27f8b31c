"""The `kontextual` command line through click's CliRunner: every command, good and bad input."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import stat
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import blake3
import click
import pytest
from click.testing import CliRunner, Result

from kontextual_engine.cli import cli
from kontextual_engine.cli.commands import changes as changes_module
from kontextual_engine.cli.ingest import guess_types
from kontextual_engine.cli.params import parse_value
from kontextual_engine.models import ContextReference
from kontextual_engine.storage import text
from kontextual_engine.storage.runs import Pin
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

PNG_LIKE = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\xff\r\n"


def invoke(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--durability", "none", *args], input=stdin)


def ok(*args: str, stdin: bytes | None = None) -> Result:
    result = invoke(*args, stdin=stdin)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert result.stderr == ""
    return result


def fails(code: int, *args: str, says: Sequence[str] = (), stdin: bytes | None = None) -> str:
    """Run a command that must fail: one `error:` line on stderr, no traceback, no stdout."""
    result = invoke(*args, stdin=stdin)
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    for fragment in says:
        assert fragment in lines[0]
    return lines[0]


def as_json(*args: str) -> Any:
    return json.loads(ok(*args, "--json").stdout)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A store selected through KONTEXTUAL_STORE (not yet created); cwd is a scratch dir."""
    path = tmp_path / "store"
    monkeypatch.setenv("KONTEXTUAL_STORE", str(path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return path


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A small folder: text, markdown, binary, nested dirs, a dot-directory."""
    root = tmp_path / "docs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.md").write_text("# Alpha\nretrieval notes\n")
    (root / "b.txt").write_text("beta body\nsecond line")
    (root / "sub" / "c.json").write_text('{"k": 1}\n')
    (root / "sub" / "deeper" / "d.png").write_bytes(PNG_LIKE)
    (root / "sub" / "unknown.xyz123").write_bytes(b"?")
    (root / ".git" / "config").write_text("[core]\n")
    return root


@pytest.fixture
def filled(store: Path, docs: Path) -> Path:
    ok("init")
    ok("add", "notes", str(docs))
    return store


def state(store: Path) -> tuple[int, list[str]]:
    """What a failed command must not change: the change feed and the object files."""
    objects = sorted(str(p.relative_to(store)) for p in (store / "objects").rglob("*"))
    with SQLiteKnowledgeRepository.open(store, durability="none") as repo:
        return repo.last_sequence(), objects


def library(store: Path) -> SQLiteKnowledgeRepository:
    return SQLiteKnowledgeRepository.open(store, durability="none")


def object_path(store: Path, digest: str) -> Path:
    hexd = digest.removeprefix("blake3:")
    return store / "objects" / hexd[:2] / hexd[2:]


def flip_a_byte(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


def colliding_contents() -> tuple[bytes, bytes, str]:
    """Two small bodies whose digests share their first 4 hex digits, and that prefix."""
    seen: dict[str, bytes] = {}
    for number in itertools.count():
        data = f"collide {number}".encode()
        prefix = blake3.blake3(data).hexdigest()[:4]
        if prefix in seen:
            return seen[prefix], data, prefix
        seen[prefix] = data
    raise AssertionError("unreachable")


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every command path, loading the commands not loaded yet."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield (*prefix, name)
        if isinstance(command, click.Group):
            yield from all_commands(command, (*prefix, name))


# -- conventions -----------------------------------------------------------------


def test_every_command_has_help_with_an_example() -> None:
    commands = list(all_commands(cli))
    assert len(commands) > 25
    for path in [(), *commands]:
        result = ok(*path, "--help")
        assert "Examples:" in result.stdout, path
        assert "kontextual" in result.stdout.split("Examples:")[1], path


NEEDS_STORE = [
    ["ls"],
    ["add", "notes", "."],
    ["find", "--text", "x"],
    ["show", "c/a"],
    ["cat", "c/a"],
    ["log", "c/a"],
    ["diff", "c/a", "1", "2"],
    ["rm", "c/a"],
    ["link", "c/a", "t", "c/b"],
    ["unlink", "rel_1"],
    ["changes"],
    ["runs", "list"],
    ["runs", "show", "run_1"],
    ["context", "list"],
    ["context", "show", "ctx_1"],
    ["collection", "list"],
    ["collection", "create", "c"],
    ["collection", "show", "c"],
    ["collection", "rm", "c"],
    ["fsck"],
    ["index"],
    ["gc"],
    ["backup", "bk"],
    ["export", "snap"],
    ["stats"],
    ["hash-object", "-w", "f.txt"],
    ["cat-object", "abcd"],
    ["ls-objects"],
    ["verify-object", "abcd"],
]


@pytest.mark.parametrize("args", NEEDS_STORE, ids=" ".join)
def test_a_missing_store_is_one_line_exit_3_and_is_not_created(
    store: Path, args: list[str]
) -> None:
    Path("f.txt").write_text("x")
    message = fails(3, *args, says=["no kontextual store", str(store), "kontextual init"])
    assert message.count("\n") == 0
    assert not store.exists()


def test_store_selection_option_env_and_default(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok("init")
    assert (store / "kontextual.json").is_file()
    other = tmp_path / "other"
    ok("--store", str(other), "init")
    ok("--store", str(other), "collection", "create", "only-in-other")
    assert [c["name"] for c in as_json("collection", "list")] == []
    monkeypatch.delenv("KONTEXTUAL_STORE")
    ok("init")
    assert (Path.cwd() / ".kontextual" / "kontextual.json").is_file()
    assert "initialised" in ok("init").stdout


def test_init_is_idempotent_and_refuses_a_foreign_directory(store: Path, tmp_path: Path) -> None:
    assert "initialised empty kontextual store" in ok("init").stdout
    again = ok("init")
    assert "already initialised" in again.stdout
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("mine")
    fails(5, "init", str(foreign), says=["not a kontextual store"])
    assert sorted(p.name for p in foreign.iterdir()) == ["precious.txt"]


def test_debug_shows_the_traceback(store: Path) -> None:
    result = CliRunner().invoke(cli, ["--debug", "ls"])
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "StoreNotFound"


def test_an_unexpected_error_is_one_line_exit_1(
    filled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk gremlins")

    monkeypatch.setattr(SQLiteKnowledgeRepository, "list_artifacts", broken)
    fails(1, "ls", says=["unexpected RuntimeError", "disk gremlins", "--debug"])


def test_usage_errors_are_one_line_exit_2(store: Path) -> None:
    fails(2, "add", says=["Missing argument", "kontextual add --help"])
    fails(2, "--durability", "sometimes", "ls", says=["--durability"])
    fails(2, "no-such-command", says=["No such command"])


# -- collections -----------------------------------------------------------------


def test_collection_commands(store: Path) -> None:
    ok("init")
    created = ok(
        "collection",
        "create",
        "papers",
        "--description",
        "abstracts",
        "--meta",
        "owner=ana",
        "--meta",
        "n=2",
    )
    assert "created collection papers" in created.stdout
    ok("collection", "create", "scratch")
    listed = ok("collection", "list").stdout.splitlines()
    assert listed[0].split()[:2] == ["NAME", "CREATED"]
    assert [line.split()[0] for line in listed[1:]] == ["papers", "scratch"]
    shown = as_json("collection", "show", "papers")
    assert shown["collection"]["metadata"] == {"n": 2, "owner": "ana"}
    assert shown["collection"]["description"] == "abstracts"
    assert shown["artifacts"] == 0
    by_id = as_json("collection", "show", shown["collection"]["id"])
    assert by_id == shown
    assert "artifacts:   0" in ok("collection", "show", "papers").stdout
    assert "removed collection scratch" in ok("collection", "rm", "scratch").stdout
    assert [c["name"] for c in as_json("collection", "list")] == ["papers"]


def test_collection_errors(store: Path, docs: Path) -> None:
    ok("init")
    ok("add", "notes", str(docs / "a.md"))
    before = state(store)
    fails(4, "collection", "create", "notes", says=["already exists"])
    fails(4, "collection", "rm", "notes", says=["still has 1 artifact"])
    fails(3, "collection", "show", "nope", says=["collection not found", "nope"])
    fails(3, "collection", "rm", "nope")
    fails(2, "collection", "create", "papers", "--meta", "novalue", says=["--meta", "novalue"])
    fails(2, "collection", "create", " padded", says=["white space"])
    assert state(store) == before


# -- add -------------------------------------------------------------------------


def test_add_a_folder(store: Path, docs: Path) -> None:
    ok("init")
    result = ok("add", "notes", str(docs))
    assert result.stdout.splitlines() == [
        "created collection notes",
        f"added 5, updated 0, unchanged 0, deleted 0, skipped 0, {sum_sizes(docs)} bytes",
    ]
    listed = as_json("ls", "notes")
    names = [a["name"] for a in listed]
    assert names == ["a.md", "b.txt", "sub/c.json", "sub/deeper/d.png", "sub/unknown.xyz123"]
    types = {a["name"]: (a["artifact_type"], a["media_type"]) for a in listed}
    assert types["a.md"] == ("note", "text/markdown")
    assert types["b.txt"] == ("text", "text/plain")
    assert types["sub/c.json"] == ("data", "application/json")
    assert types["sub/deeper/d.png"] == ("image", "image/png")
    assert types["sub/unknown.xyz123"] == ("file", "application/octet-stream")
    assert all(a["revision"] == 1 and a["metadata"] == {} for a in listed)


def sum_sizes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and ".git" not in p.parts)


def test_add_again_updates_changed_files_only(filled: Path, docs: Path) -> None:
    again = ok("add", "notes", str(docs))
    assert again.stdout.startswith("added 0, updated 0, unchanged 5,")
    (docs / "b.txt").write_text("beta body, edited")
    (docs / "new.md").write_text("new")
    third = ok("add", "notes", str(docs))
    assert third.stdout.startswith("added 1, updated 1, unchanged 4,")
    assert "created collection" not in third.stdout
    revisions = {a["name"]: a["revision"] for a in as_json("ls", "notes")}
    assert revisions == {
        "a.md": 1,
        "b.txt": 2,
        "sub/c.json": 1,
        "sub/deeper/d.png": 1,
        "sub/unknown.xyz123": 1,
        "new.md": 1,
    }


def test_add_single_files_with_typed_meta_type_and_provenance(store: Path, docs: Path) -> None:
    ok("init")
    report = as_json(
        "add",
        "papers",
        str(docs / "a.md"),
        str(docs / "sub" / "c.json"),
        "--type",
        "paper",
        "--media-type",
        "text/x-custom",
        "--meta",
        "n=1",
        "--meta",
        "flag=true",
        "--meta",
        's="1"',
        "--meta",
        "f=1.0",
        "--meta",
        "word=hello world",
        "--meta",
        "empty=",
        "--meta",
        "tags=[1, 2]",
        "--meta",
        "nan=NaN",
        "--provenance",
        "source=import",
        "--provenance",
        "batch=7",
    )
    assert report["created_collection"] is True
    assert (report["added"], report["updated"], report["unchanged"]) == (2, 0, 0)
    assert [item["name"] for item in report["artifacts"]] == ["a.md", "c.json"]
    shown = as_json("show", "papers/a.md")["artifact"]
    assert shown["artifact_type"] == "paper"
    assert shown["media_type"] == "text/x-custom"
    assert shown["metadata"] == {
        "n": 1,
        "flag": True,
        "s": "1",
        "f": 1.0,
        "word": "hello world",
        "empty": "",
        "tags": [1, 2],
        "nan": "NaN",
    }
    assert type(shown["metadata"]["n"]) is int and type(shown["metadata"]["f"]) is float
    assert shown["provenance"] == {"source": "import", "batch": 7}


def test_add_again_keeps_what_it_is_not_told(store: Path, docs: Path) -> None:
    ok("init")
    ok("add", "notes", str(docs / "a.md"), "--type", "memo", "--meta", "keep=1")
    ok("add", "notes", str(docs / "a.md"), "--meta", "more=2")
    shown = as_json("show", "notes/a.md")["artifact"]
    assert shown["artifact_type"] == "memo"
    assert shown["metadata"] == {"keep": 1, "more": 2}
    assert shown["revision"] == 2
    assert ok("add", "notes", str(docs / "a.md")).stdout.startswith(
        "added 0, updated 0, unchanged 1"
    )


def test_add_makes_no_lookup_per_file(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adding a folder (new files, then the same files again) reads the index in a
    few statements per batch, however many files it holds."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        (folder / f"n{i:02}.md").write_text(f"note {i}\n")
    ok("init")
    statements: list[str] = []
    connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced)
    for expected in ("added 60,", "added 0, updated 0, unchanged 60"):
        statements.clear()
        assert expected in ok("add", "notes", str(folder), "--meta", "k=1").stdout
        lookups = [s for s in statements if "FROM artifacts" in s and "name" in s]
        assert 0 < len(lookups) <= 3, lookups


def test_add_skips_the_store_and_dot_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docs: Path
) -> None:
    monkeypatch.delenv("KONTEXTUAL_STORE", raising=False)
    monkeypatch.chdir(docs)
    ok("init")
    ok("add", "here", ".")
    names = [a["name"] for a in as_json("ls")]
    assert not any(name.startswith((".kontextual", ".git")) for name in names)
    assert len(names) == 5
    fails(2, "add", "here", ".kontextual/objects", says=["inside the store"])


def test_add_in_several_batches(store: Path, docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kontextual_engine.cli import ingest

    monkeypatch.setattr(ingest, "BATCH_FILES", 2)
    ok("init")
    assert ok("add", "notes", str(docs)).stdout.splitlines()[1].startswith("added 5,")
    assert len(as_json("ls")) == 5


@pytest.mark.parametrize("batch_files", [500, 1])
def test_add_with_an_unreadable_file_writes_nothing(
    store: Path, docs: Path, monkeypatch: pytest.MonkeyPatch, batch_files: int
) -> None:
    from kontextual_engine.cli import ingest

    monkeypatch.setattr(ingest, "BATCH_FILES", batch_files)
    ok("init")
    before = state(store)
    os.mkfifo(docs / "sub" / "zz-pipe")
    fails(2, "add", "notes", str(docs), says=["zz-pipe", "FIFO"])
    (docs / "sub" / "zz-pipe").unlink()
    (docs / "sub" / "zz-link").symlink_to(docs / "gone")
    fails(2, "add", "notes", str(docs), says=["zz-link", "dangling"])
    fails(2, "add", "notes", str(docs / "sub" / "zz-link"), says=["dangling"])
    fails(
        3,
        "add",
        "notes",
        str(docs / "a.md"),
        str(docs / "missing.md"),
        says=["no such file", "missing.md"],
    )
    fails(2, "add", "notes", str(docs / "a.md"), "--meta", "oops", says=["--meta", "'oops'"])
    fails(2, "add", "notes", str(docs / "a.md"), "--provenance", "=x", says=["--provenance"])
    fails(
        2,
        "add",
        "notes",
        str(docs / "a.md"),
        str(docs / "sub" / ".." / "a.md"),
        says=["would both be named 'a.md'"],
    )
    assert state(store) == before
    assert as_json("collection", "list") == []


def test_add_reads_failing_mid_way_roll_everything_back(
    store: Path, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kontextual_engine.cli import ingest

    ok("init")
    before = state(store)
    monkeypatch.setattr(ingest, "BATCH_FILES", 1)
    real_open = ingest.open_input

    def open_input(item: ingest.InputFile) -> ingest.InputReader:
        if item.name == "sub/c.json":
            raise ingest.ValidationError(f"cannot read {item.path}: vanished")
        return real_open(item)

    monkeypatch.setattr(ingest, "open_input", open_input)
    fails(2, "add", "notes", str(docs), says=["vanished"])
    assert state(store)[0] == before[0]
    assert as_json("collection", "list") == []


def test_guess_types_takes_the_suffix_a_path_has() -> None:
    from pathlib import PurePosixPath

    from kontextual_engine.cli import ingest

    def by_path(name: str) -> tuple[str, str]:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix in ingest._BY_SUFFIX:
            return ingest._BY_SUFFIX[suffix]
        media_type, _ = ingest._MIME.guess_type(name, strict=False)
        if media_type is None:
            return ("file", "application/octet-stream")
        return ingest._BY_MAJOR.get(media_type.partition("/")[0], "file"), media_type

    names = ("a.md", "x/Y.MD", ".md", "d/.md", "a.", "a..md", "dir.md/file", "x.tar.GZ", "s.mp3")
    for name in names:
        assert guess_types(name) == by_path(name), name


def test_add_opens_the_store_with_a_small_page_cache(
    store: Path, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kontextual_engine.cli import ingest

    ok("init")
    opened: list[int] = []
    real_open = SQLiteKnowledgeRepository.open

    def spy(*args: Any, **kwargs: Any) -> SQLiteKnowledgeRepository:
        repo = real_open(*args, **kwargs)
        size = repo.index.connection.sqlite.execute("PRAGMA cache_size").fetchone()[0]
        opened.append(int(size))
        return repo

    monkeypatch.setattr(SQLiteKnowledgeRepository, "open", spy)
    ok("add", "notes", str(docs))
    assert opened == [-ingest.ADD_CACHE_KIB]
    ok("ls", "notes")
    assert opened[-1] != -ingest.ADD_CACHE_KIB  # other commands keep the library's


def test_guess_types_and_parse_value() -> None:
    assert guess_types("x/Y.MD") == ("note", "text/markdown")
    assert guess_types("a.py") == ("code", "text/x-python")
    assert guess_types("a.csv") == ("table", "text/csv")
    assert guess_types("song.mp3") == ("audio", "audio/mpeg")
    assert guess_types("noext") == ("file", "application/octet-stream")
    assert parse_value("1") == 1 and type(parse_value("1")) is int
    assert parse_value('"1"') == "1"
    assert parse_value("true") is True
    assert parse_value("null") is None
    assert parse_value("Infinity") == "Infinity"
    assert parse_value("{bad") == "{bad"


# -- ls and find -----------------------------------------------------------------


def test_ls(filled: Path, docs: Path) -> None:
    ok("collection", "create", "empty")
    table = ok("ls").stdout.splitlines()
    assert table[0].split() == ["TYPE", "REV", "SIZE", "DIGEST", "NAME"]
    assert table[1].split()[-1] == "notes/a.md"
    assert len(table) == 6
    assert ok("ls", "empty").stdout == ""
    assert len(as_json("ls", "notes")) == 5
    fails(3, "ls", "nope", says=["collection not found"])


@pytest.fixture
def corpus(filled: Path, docs: Path) -> Path:
    ok("add", "papers", str(docs / "a.md"), "--meta", "score=1", "--meta", "year=2024")
    ok("add", "papers", str(docs / "b.txt"), "--meta", "score=1.0")
    ok("add", "papers", str(docs / "sub" / "c.json"), "--meta", 'score="1"')
    ok("link", "papers/a.md", "cites", "papers/b.txt")
    ok("link", "papers/c.json", "cites", "papers/a.md")
    return filled


def names_of(records: list[dict[str, Any]]) -> list[str]:
    return [r["name"] for r in records]


def hit_names(hits: list[dict[str, Any]]) -> list[str]:
    """The names of `find --text --json` hits, in the order printed."""
    return [hit["artifact"]["name"] for hit in hits]


def test_find_filters(corpus: Path) -> None:
    assert names_of(as_json("find", "--collection", "papers")) == ["a.md", "b.txt", "c.json"]
    assert names_of(as_json("find", "--type", "text")) == ["b.txt", "b.txt"]
    assert names_of(as_json("find", "--name", "sub/c.json")) == ["sub/c.json"]
    assert names_of(as_json("find", "--meta", "score=1")) == ["a.md"]
    assert names_of(as_json("find", "--meta", "score=1.0")) == ["b.txt"]
    assert names_of(as_json("find", "--meta", 'score="1"')) == ["c.json"]
    assert names_of(as_json("find", "--meta", "score=1", "--meta", "year=2024")) == ["a.md"]
    assert as_json("find", "--meta", "score=1", "--meta", "year=2023") == []
    assert hit_names(as_json("find", "--text", "RETRIEVAL", "--collection", "notes")) == ["a.md"]
    assert hit_names(as_json("find", "--text", "beta second")) == ["b.txt", "b.txt"]
    assert as_json("find", "--text", "beta zzz") == []
    assert len(as_json("find", "--limit", "3")) == 3
    assert as_json("find", "--limit", "0") == []


def test_find_by_digest_prefix(corpus: Path) -> None:
    digest = as_json("show", "papers/b.txt")["artifact"]["digest"]
    for given in (digest, digest.removeprefix("blake3:"), digest[7:15], "blake3:" + digest[7:12]):
        assert names_of(as_json("find", "--digest", given)) == ["b.txt", "b.txt"]
    fails(2, "find", "--digest", "abc", says=["at least 4"])
    fails(2, "find", "--digest", "XYZW")
    missing = next(
        p
        for p in ("0000", "ffff", "1234")
        if not any(d.startswith("blake3:" + p) for d in ok("ls-objects").stdout.split())
    )
    fails(3, "find", "--digest", missing, says=["no object matches"])


def test_find_related(corpus: Path) -> None:
    assert names_of(as_json("find", "--related-to", "papers/a.md")) == ["b.txt", "c.json"]
    assert names_of(as_json("find", "--related-to", "papers/a.md", "--direction", "outgoing")) == [
        "b.txt"
    ]
    assert names_of(
        as_json(
            "find", "--related-to", "papers/a.md", "--direction", "incoming", "--rel-type", "cites"
        )
    ) == ["c.json"]
    assert as_json("find", "--related-to", "papers/a.md", "--rel-type", "refutes") == []
    fails(2, "find", "--rel-type", "cites", says=["--related-to"])
    fails(3, "find", "--related-to", "papers/nope", says=["papers/nope"])
    fails(2, "find", "--direction", "sideways", says=["--direction"])


def test_find_human_output(corpus: Path) -> None:
    lines = ok("find", "--type", "text").stdout.splitlines()
    assert lines[0].split() == ["TYPE", "REV", "SIZE", "DIGEST", "NAME"]
    assert [line.split()[-1] for line in lines[1:]] == ["notes/b.txt", "papers/b.txt"]
    assert ok("find", "--text", "nothing-matches-this").stdout == ""


def test_ambiguous_digest_prefix(filled: Path, tmp_path: Path) -> None:
    first, second, prefix = colliding_contents()
    for number, data in enumerate((first, second)):
        path = tmp_path / f"collide{number}"
        path.write_bytes(data)
        ok("hash-object", "-w", str(path))
    before = state(filled)
    for args in (["cat-object", prefix], ["verify-object", prefix], ["find", "--digest", prefix]):
        fails(2, *args, says=["ambiguous", prefix])
    full = "blake3:" + blake3.blake3(first).hexdigest()
    assert ok("cat-object", full[:20]).stdout_bytes == first
    assert state(filled) == before


# -- word search -----------------------------------------------------------------

# Added in this order (file names sort so): the weaker retrieval hit is the older.
TEXTS = {
    "a-notes.txt": "Some notes about retrieval and ranking, among other things like gardening.",
    "b-guide.md": "Retrieval augmented generation ranks passages. Retrieval quality matters; "
    "retrieval is the topic of this guide.",
    "c-fox.txt": "The quick brown fox jumps over the lazy dog.",
    "d-fox.txt": "The brown quick fox sleeps all day.",
    "e-mail.txt": "Send an e-mail to the team about tokenizers.",
    "f-garden.txt": "Gardening tips: tomatoes and basil.",
    "g-plain.txt": "Nothing relevant here at all.",
    "h-cooking.txt": "Another unrelated document about cooking.",
}
UNSEARCHABLE = {
    "x-binary.dat": b"\x00\x01 retrieval",
    "y-latin1.txt": "caf\u00e9 retrieval".encode("latin-1"),
    "z-huge.txt": (b"retrieval " * (text.MAX_TEXT_BYTES // 10 + 1))[: text.MAX_TEXT_BYTES] + b"x",
}


@pytest.fixture
def texts(store: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "texts"
    folder.mkdir()
    for name, body in TEXTS.items():
        (folder / name).write_text(body)
    for name, data in UNSEARCHABLE.items():
        (folder / name).write_bytes(data)
    assert len(UNSEARCHABLE["z-huge.txt"]) == text.MAX_TEXT_BYTES + 1
    ok("init")
    ok("add", "texts", str(folder))
    return store


def test_find_text_prints_the_best_hit_first_then_its_snippet(texts: Path) -> None:
    result = ok("find", "--text", "retrieval")
    assert "\x1b" not in result.stdout  # no styling when stdout is not a terminal
    lines = result.stdout.splitlines()
    assert len(lines) == 4  # two hits, each with its snippet
    heads = [line.split() for line in lines[::2]]
    assert [head[1] for head in heads] == ["texts/b-guide.md", "texts/a-notes.txt"]
    assert float(heads[0][0]) > float(heads[1][0]) > 0
    digest = as_json("show", "texts/b-guide.md")["artifact"]["digest"]
    assert digest.removeprefix("blake3:").startswith(heads[0][2])
    for snippet in lines[1::2]:
        assert snippet.startswith("    ") and not snippet.startswith("     ")
        assert "retrieval" in snippet.casefold()
    assert TEXTS["b-guide.md"].startswith(lines[1].removeprefix("    "))


def test_find_text_highlights_the_matched_words_on_a_terminal(texts: Path) -> None:
    result = CliRunner().invoke(
        cli, ["--durability", "none", "find", "--text", "retrieval"], color=True
    )
    assert result.exit_code == 0, result.stderr
    snippet = result.stdout.splitlines()[1]
    assert snippet.count("\x1b[1m") == 3  # the three places of the word, bold
    assert TEXTS["b-guide.md"].startswith(click.unstyle(snippet).removeprefix("    "))
    styled = snippet.split("\x1b[1m")[1]
    assert click.unstyle(styled.split("\x1b[0m")[0]) == "Retrieval"


def test_find_text_json_has_scores_snippets_and_highlights(texts: Path) -> None:
    found = as_json("find", "--text", "retrieval")
    assert hit_names(found) == ["b-guide.md", "a-notes.txt"]
    assert set(found[0]) == {"artifact", "score", "snippet", "highlights"}
    scores = [hit["score"] for hit in found]
    assert all(isinstance(score, float) for score in scores)
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    for hit in found:
        assert TEXTS[hit["artifact"]["name"]].startswith(hit["snippet"])
        marked = [hit["snippet"][start:end] for start, end in hit["highlights"]]
        assert marked and {word.casefold() for word in marked} == {"retrieval"}
    assert len(found[0]["highlights"]) == 3


def test_find_text_scores_tell_close_hits_apart(store: Path, tmp_path: Path) -> None:
    """A word in most documents has a tiny weight (BM25's IDF floor); the printed
    score still orders the hits as the ranking did."""
    ok("init")
    for name, body in (("a", "beta body"), ("b", "beta beta beta"), ("c", "gamma")):
        (tmp_path / name).write_text(body)
        ok("add", "small", str(tmp_path / name))
    found = as_json("find", "--text", "beta")
    assert hit_names(found) == ["b", "a"] and 0 < found[1]["score"] < found[0]["score"] < 1e-3
    lines = ok("find", "--text", "beta").stdout.splitlines()
    printed = [float(line.split()[0]) for line in lines[::2]]
    assert printed[0] > printed[1] > 0, lines


def test_find_text_phrase_prefix_and_exclusion(texts: Path) -> None:
    assert sorted(hit_names(as_json("find", "--text", "quick brown"))) == [
        "c-fox.txt",
        "d-fox.txt",
    ]
    assert hit_names(as_json("find", "--text", '"quick brown"')) == ["c-fox.txt"]
    assert hit_names(as_json("find", "--text", '"BROWN quick"')) == ["d-fox.txt"]
    assert hit_names(as_json("find", "--text", "e-mail")) == ["e-mail.txt"]  # a phrase
    assert hit_names(as_json("find", "--text", "token*")) == ["e-mail.txt"]
    assert as_json("find", "--text", "token") == []  # words, not substrings
    assert sorted(hit_names(as_json("find", "--text", "garden*"))) == [
        "a-notes.txt",
        "f-garden.txt",
    ]
    assert hit_names(as_json("find", "--text", "retrieval -gardening")) == ["b-guide.md"]
    assert hit_names(as_json("find", "--text", 'fox -"lazy dog"')) == ["d-fox.txt"]
    [hit] = as_json("find", "--text", '"quick brown"')
    marked = [hit["snippet"][start:end] for start, end in hit["highlights"]]
    assert marked == ["quick", "brown"]


@pytest.mark.parametrize(
    "query, problem",
    [
        ('"unclosed', "unclosed quote"),
        ("-retrieval", "only excludes"),
        ("a*b", "'*' may only end a word"),
        ("--", "'--'"),
        ("***", "'***'"),
        ("!!", "has no word to search for"),
        (" ".join(f"w{n}" for n in range(33)), "at most 32"),
    ],
)
def test_find_text_refuses_a_malformed_query(texts: Path, query: str, problem: str) -> None:
    fails(2, "find", "--text", query, says=["text query", problem])
    fails(2, "find", "--text", query, "--json", says=[problem])


def test_find_text_substring_is_the_old_search(texts: Path) -> None:
    assert as_json("find", "--text", "etriev") == []  # no such word
    found = as_json("find", "--text", "ETRIEV", "--substring")
    assert hit_names(found) == ["a-notes.txt", "b-guide.md"]  # oldest first
    assert [(hit["score"], hit["snippet"], hit["highlights"]) for hit in found] == [
        (None, None, None)
    ] * 2
    lines = ok("find", "--text", "etriev", "--substring").stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["texts/a-notes.txt", "texts/b-guide.md"]
    fails(2, "find", "--text", "x", "--substring", "--order", "relevance", says=["substring"])
    fails(2, "find", "--substring", says=["needs a text query"])


def test_find_text_in_sequence_order(texts: Path) -> None:
    found = as_json("find", "--text", "retrieval", "--order", "sequence")
    assert hit_names(found) == ["a-notes.txt", "b-guide.md"]
    assert [hit["score"] for hit in found] == [None, None]
    assert all("retrieval" in hit["snippet"].casefold() for hit in found)
    lines = ok("find", "--text", "retrieval", "--order", "sequence").stdout.splitlines()
    assert [line.split()[0] for line in lines[::2]] == ["texts/a-notes.txt", "texts/b-guide.md"]
    ranked = as_json("find", "--text", "retrieval", "--order", "relevance")
    assert ranked == as_json("find", "--text", "retrieval")
    assert hit_names(as_json("find", "--text", "retrieval", "--limit", "1")) == ["b-guide.md"]
    fails(2, "find", "--order", "relevance", says=["needs a text query"])
    fails(2, "find", "--text", "x", "--order", "sideways", says=["--order"])


@pytest.mark.parametrize(
    "name, reason, shown",
    [
        ("x-binary.dat", "binary", "not searchable: binary (holds NUL bytes)"),
        ("y-latin1.txt", "not-utf8", "not searchable: not UTF-8"),
        ("z-huge.txt", "too-large", "not searchable: larger than 1 MiB"),
    ],
)
def test_show_says_why_a_body_is_not_searchable(
    texts: Path, name: str, reason: str, shown: str
) -> None:
    fields = dict(line.split(":", 1) for line in ok("show", f"texts/{name}").stdout.splitlines())
    assert fields["text"].strip() == shown
    assert as_json("show", f"texts/{name}")["not_searchable"] == reason
    assert name not in hit_names(as_json("find", "--text", "retrieval"))
    assert name not in hit_names(as_json("find", "--text", "retrieval", "--substring"))


def test_stats_counts_text_states(texts: Path) -> None:
    counts = as_json("stats")
    assert {key: value for key, value in counts.items() if key.startswith("text_")} == {
        "text_searchable": len(TEXTS),
        "text_pending": 0,
        "text_too_large": 1,
        "text_not_utf8": 1,
        "text_binary": 1,
    }
    fields = dict(line.split(":", 1) for line in ok("stats").stdout.splitlines())
    assert fields["text searchable"].strip() == str(len(TEXTS))
    assert fields["text binary"].strip() == "1"


def test_index_rebuild_derives_every_artifacts_words(texts: Path) -> None:
    before = as_json("find", "--text", "retrieval")
    assert as_json("index") == {"indexed": 0}  # nothing waits
    assert ok("index").stdout == "derived the words of 0 artifacts\n"
    total = len(TEXTS) + len(UNSEARCHABLE)
    assert as_json("index", "--rebuild") == {"indexed": total}
    assert ok("index", "--rebuild", "--quiet").stdout == f"derived the words of {total} artifacts\n"
    assert as_json("find", "--text", "retrieval") == before
    assert as_json("stats")["text_binary"] == 1
    assert as_json("fsck")["findings"] == []


def test_an_interrupted_upgrade_is_finished_and_counted(texts: Path) -> None:
    """Pending words (an upgrade or rebuild that stopped) are derived when the store
    is opened writable; `index` reports them."""
    with sqlite3.connect(texts / "index.sqlite") as conn:
        conn.execute("DELETE FROM artifact_words")
        conn.execute("DELETE FROM unsearchable")
        conn.execute("INSERT INTO text_pending SELECT sequence FROM artifacts")
    conn.close()
    assert as_json("index") == {"indexed": len(TEXTS) + len(UNSEARCHABLE)}
    assert as_json("stats")["text_pending"] == 0
    assert hit_names(as_json("find", "--text", "retrieval")) == ["b-guide.md", "a-notes.txt"]


# -- one artifact ----------------------------------------------------------------


def test_show(corpus: Path) -> None:
    text = ok("show", "papers/a.md").stdout
    fields = dict(
        line.split(":", 1)
        for line in text.splitlines()
        if ":" in line and not line.startswith(("->", "<-"))
    )
    assert fields["artifact"].strip() == "papers/a.md"
    assert fields["type"].strip() == "note"
    assert fields["media type"].strip() == "text/markdown"
    assert fields["revision"].strip() == "1"
    assert fields["digest"].strip().startswith("blake3:")
    assert fields["metadata"].strip() == '{"score": 1, "year": 2024}'
    rows = [line.split()[:3] for line in text.splitlines()]
    assert ["->", "cites", "papers/b.txt"] in rows
    assert ["<-", "cites", "papers/c.json"] in rows
    shown = as_json("show", "papers/a.md")
    assert set(shown) == {
        "artifact",
        "collection",
        "outgoing",
        "incoming",
        "run",
        "not_searchable",
        "as_of",
    }
    assert shown["not_searchable"] is None
    assert fields["text"].strip() == "searchable"
    assert shown["collection"] == "papers"
    assert [r["relationship_type"] for r in shown["outgoing"]] == ["cites"]
    assert shown["incoming"][0]["target_id"] == shown["artifact"]["id"]
    assert shown["run"] is None
    assert as_json("show", shown["artifact"]["id"]) == shown


def test_unknown_and_malformed_artifacts(filled: Path) -> None:
    for command in (["show"], ["cat"], ["log"], ["rm"], ["diff", "-", "1", "2"]):
        name = command[0]
        rest = command[2:] if name == "diff" else []
        fails(3, name, "notes/nope.md", *rest, says=["artifact not found", "notes/nope.md"])
        fails(3, name, "nocollection/a.md", *rest, says=["nocollection/a.md"])
        fails(2, name, "justaname", *rest, says=["COLLECTION/NAME"])
    fails(3, "show", "art_00000000000000000000000000000000", says=["art_0000"])
    fails(3, "log", "art_00000000000000000000000000000000")


def test_cat_is_binary_safe_and_reads_old_revisions(filled: Path, docs: Path) -> None:
    assert ok("cat", "notes/sub/deeper/d.png").stdout_bytes == PNG_LIKE
    (docs / "b.txt").write_bytes(b"v2\r\n\x00tail")
    ok("add", "notes", str(docs))
    assert ok("cat", "notes/b.txt").stdout_bytes == b"v2\r\n\x00tail"
    assert ok("cat", "notes/b.txt", "--revision", "1").stdout_bytes == b"beta body\nsecond line"
    assert ok("cat", "notes/b.txt", "-r", "2").stdout_bytes == b"v2\r\n\x00tail"
    fails(3, "cat", "notes/b.txt", "-r", "3", says=["revision 3"])
    fails(2, "cat", "notes/b.txt", "-r", "0")


def test_cat_reports_a_corrupt_body(filled: Path) -> None:
    digest = as_json("show", "notes/a.md")["artifact"]["digest"]
    flip_a_byte(object_path(filled, digest))
    result = invoke("cat", "notes/a.md")
    assert result.exit_code == 5
    assert result.stderr.startswith("error: corrupt object " + digest)


def test_log_and_diff(filled: Path, docs: Path) -> None:
    (docs / "b.txt").write_text("beta body\nsecond line, edited\nthird\n")
    ok("add", "notes", str(docs), "--meta", "edited=true")
    history = as_json("log", "notes/b.txt")
    revisions = history["revisions"]
    assert [r["revision"] for r in revisions] == [1, 2]
    assert revisions[0]["old_digest"] is None and revisions[0]["changed"] == []
    assert revisions[1]["old_digest"] == revisions[0]["digest"]
    assert revisions[1]["changed"] == ["digest", "metadata"]
    assert history["deleted_at"] is None
    table = ok("log", "notes/b.txt").stdout.splitlines()
    assert table[0].split() == [
        "REV",
        "TIME",
        "CHANGE",
        "SET",
        "ACTOR",
        "DIGEST",
        "CHANGED",
        "RUN",
        "MESSAGE",
    ]
    assert "created" in table[1]
    assert f"{revisions[0]['digest'][7:19]} -> {revisions[1]['digest'][7:19]}" in table[2]
    assert "digest,metadata" in table[2]
    diff = ok("diff", "notes/b.txt", "1", "2").stdout
    assert diff.splitlines() == [
        "--- a/notes/b.txt@1",
        "+++ b/notes/b.txt@2",
        "@@ -1,2 +1,3 @@",
        " beta body",
        "-second line",
        "\\ No newline at end of file",
        "+second line, edited",
        "+third",
    ]
    assert ok("diff", "notes/b.txt", "2", "2").stdout == ""
    fails(2, "diff", "notes/sub/deeper/d.png", "1", "1", says=["binary"])
    fails(3, "diff", "notes/b.txt", "1", "9", says=["revision 9"])


def test_rm_keeps_history(filled: Path) -> None:
    artifact_id = as_json("show", "notes/a.md")["artifact"]["id"]
    assert ok("rm", "notes/a.md").stdout.strip() == f"removed notes/a.md ({artifact_id})"
    fails(3, "show", "notes/a.md")
    fails(3, "rm", "notes/a.md")
    history = as_json("log", artifact_id)
    assert history["deleted_at"] is not None
    assert ok("log", artifact_id).stdout.splitlines()[-1].split()[-1] == "deleted"
    assert ok("cat", artifact_id, "-r", "1").stdout.startswith("# Alpha")
    fails(3, "cat", artifact_id)
    assert len(as_json("ls")) == 4


def test_link_and_unlink(corpus: Path) -> None:
    made = as_json("link", "papers/b.txt", "derived_from", "notes/b.txt", "--meta", "w=0.5")
    assert made["relationship_type"] == "derived_from" and made["metadata"] == {"w": 0.5}
    before = state(corpus)
    fails(4, "link", "papers/b.txt", "derived_from", "notes/b.txt", says=["already exists"])
    fails(3, "link", "papers/b.txt", "cites", "notes/nope", says=["notes/nope"])
    fails(2, "link", "papers/b.txt", "cites", "notes/b.txt", "--meta", "x")
    fails(2, "link", "papers/b.txt", " bad", "notes/b.txt", says=["white space"])
    assert state(corpus) == before
    said = ok("unlink", "papers/b.txt", "derived_from", "notes/b.txt").stdout
    assert said.strip() == f"unlinked {made['id']}"
    fails(3, "unlink", "papers/b.txt", "derived_from", "notes/b.txt", says=["not found"])
    fails(3, "unlink", made["id"], says=["relationship not found"])
    fails(2, "unlink", "a", "b", says=["SRC TYPE DST"])
    relationship = as_json("show", "papers/a.md")["outgoing"][0]
    ok("unlink", relationship["id"])
    assert as_json("show", "papers/a.md")["outgoing"] == []


# -- the change feed -------------------------------------------------------------


def test_changes(filled: Path) -> None:
    # `add` made one change set: the collection and its five artifacts.
    (change_set,) = [json.loads(line) for line in ok("changes", "--json").stdout.splitlines()]
    assert set(change_set) == {"id", "sequence", "timestamp", "actor", "message", "changes"}
    assert change_set["id"] == "cs_1" and change_set["actor"] is None
    lines = change_set["changes"]
    assert [c["sequence"] for c in lines] == list(range(1, 7))
    assert lines[0]["entity_kind"] == "collection" and lines[0]["details"] == {"name": "notes"}
    assert set(lines[1]) == {
        "sequence",
        "entity_kind",
        "entity_id",
        "action",
        "timestamp",
        "revision",
        "old_digest",
        "new_digest",
        "details",
        "change_set_id",
    }
    since = ok("changes", "--since", "4", "--json").stdout.splitlines()
    assert [c["sequence"] for c in json.loads(since[0])["changes"]] == [5, 6]
    ok("collection", "create", "more")
    assert len(ok("changes", "--limit", "1", "--json").stdout.splitlines()) == 1
    human = ok("changes", "--since", "5").stdout.splitlines()
    assert human[0].split()[0] == "cs_1"
    assert human[1].split()[0] == "6" and "artifact" in human[1] and "create" in human[1]
    assert human[2].split()[0] == "cs_7"
    fails(2, "changes", "--since", "-1")


def test_changes_follow_prints_new_changes_until_interrupted(
    filled: Path, docs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            with library(filled) as repo:
                repo.create_collection("arrived-while-following")
            return
        raise KeyboardInterrupt

    monkeypatch.setattr(changes_module, "sleep", sleep)
    result = ok("changes", "--follow", "--since", "6", "--json")
    change_sets = [json.loads(line) for line in result.stdout.splitlines()]
    records = [record for change_set in change_sets for record in change_set["changes"]]
    assert [r["details"].get("name") for r in records] == ["arrived-while-following"]
    assert polls == [changes_module.POLL_SECONDS] * 2


# -- runs and context packages ---------------------------------------------------


@pytest.fixture
def with_run(filled: Path) -> dict[str, str]:
    with library(filled) as repo:
        notes = repo.get_collection_by_name("notes")
        source = repo.get_artifact_by_name(notes.id, "a.md")
        run = repo.start_run(
            repo.create_run("summarize", parameters={"k": 2}).id, holder={"host": "h", "pid": 1}
        )
        repo.add_inputs(run.id, [Pin(source.id, role="doc")])
        step = repo.add_step(run.id, "llm")
        repo.set_step_status(step.id, "running")
        output = repo.create_artifact(
            notes.id, "summary.md", b"short", artifact_type="summary", run_id=run.id
        )
        repo.set_step_status(step.id, "succeeded")
        repo.finish_run(run.id, diagnostics={"tokens": 9})
        pending = repo.create_run("later")
        package = repo.create_context_package(
            "pack",
            [
                ContextReference("artifact", source.id, revision=1),
                ContextReference("run", run.id),
                ContextReference("external", "m-1", system="mem", uri="mem://m-1"),
            ],
            metadata={"purpose": "test"},
        )
        return {
            "run": run.id,
            "pending": pending.id,
            "package": package.id,
            "output": output.id,
            "source": source.id,
        }


def test_runs(with_run: dict[str, str]) -> None:
    listed = as_json("runs", "list")
    assert [r["id"] for r in listed] == [with_run["run"], with_run["pending"]]
    assert [r["id"] for r in as_json("runs", "list", "--status", "pending")] == [
        with_run["pending"]
    ]
    table = ok("runs", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "STATUS", "OPERATION", "CREATED", "FINISHED"]
    shown = as_json("runs", "show", with_run["run"])
    assert shown["run"]["status"] == "succeeded"
    assert shown["run"]["holder"] == {"host": "h", "pid": 1}
    assert [s["name"] for s in shown["steps"]] == ["llm"]
    assert shown["manifest"]["inputs"][0]["artifact_id"] == with_run["source"]
    assert shown["manifest"]["inputs"][0]["role"] == "doc"
    assert shown["manifest"]["outputs"][0]["artifact_id"] == with_run["output"]
    text = ok("runs", "show", with_run["run"]).stdout
    assert "status:" in text and "succeeded" in text
    assert '{"host": "h", "pid": 1}' in text
    assert "notes/a.md" in text and "doc" in text and "notes/summary.md" in text
    assert (
        "run" in as_json("show", "notes/summary.md")
        and as_json("show", "notes/summary.md")["run"]["id"] == with_run["run"]
    )
    assert f"{with_run['run']} (summarize, succeeded)" in ok("show", "notes/summary.md").stdout
    assert with_run["run"] in ok("log", "notes/summary.md").stdout
    fails(3, "runs", "show", "run_nope", says=["run not found"])
    fails(2, "runs", "list", "--status", "sleeping")


def test_context_packages(with_run: dict[str, str]) -> None:
    listed = as_json("context", "list")
    assert [p["id"] for p in listed] == [with_run["package"]]
    assert "pack" in ok("context", "list").stdout
    shown = as_json("context", "show", with_run["package"])
    assert shown["metadata"] == {"purpose": "test"}
    assert [r["kind"] for r in shown["references"]] == ["artifact", "run", "external"]
    text = ok("context", "show", with_run["package"]).stdout
    assert "notes/a.md" in text and "mem:m-1" in text and "mem://m-1" in text
    fails(3, "context", "show", "ctx_nope", says=["context package not found"])


# -- maintenance -----------------------------------------------------------------


def test_stats(filled: Path) -> None:
    counts = as_json("stats")
    assert counts["collections"] == 1 and counts["artifacts"] == 5 and counts["objects"] == 5
    assert counts["changes"] == 6
    text = ok("stats").stdout
    assert "artifacts:" in text and str(filled) in text


def test_fsck(filled: Path, tmp_path: Path) -> None:
    assert "0 errors" in ok("fsck").stdout
    report = as_json("fsck", "--full")
    assert report["ok"] is True and report["findings"] == [] and report["full"] is True
    stray = tmp_path / "stray.txt"
    stray.write_text("unreferenced")
    digest = ok("hash-object", "-w", str(stray)).stdout.strip()
    # Written before the index last changed: plain garbage, not a possibly lost write.
    index_changed = (filled / "index.sqlite").stat().st_mtime
    os.utime(object_path(filled, digest), (index_changed - 60, index_changed - 60))
    garbage = as_json("fsck")
    assert garbage["ok"] is True
    assert [f["kind"] for f in garbage["findings"]] == ["unreferenced-object"]
    assert garbage["garbage_bytes"] == len("unreferenced")
    assert garbage["free_with"] == "kontextual gc --grace 0"  # younger than the default grace
    assert ok("fsck").stdout.splitlines()[-1] == (
        "garbage: 1 file, 12 bytes; `kontextual gc --grace 0` frees it"
    )
    digest = as_json("show", "notes/b.txt")["artifact"]["digest"]
    flip_a_byte(object_path(filled, digest))
    result = invoke("fsck", "--full")
    assert result.exit_code == 5
    assert result.stderr.strip().startswith(
        f"error: fsck found 1 error(s) in {filled}; objects are damaged or missing: "
        "a backup or snapshot holds the same bytes"
    )
    assert digest in result.stdout and "corrupt" in result.stdout
    broken = json.loads(invoke("fsck", "--full", "--json").stdout)
    assert broken["ok"] is False
    assert {(f["severity"], f["kind"], f["subject"]) for f in broken["findings"]} >= {
        ("error", "corrupt", digest)
    }


def test_gc(filled: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose.txt"
    loose.write_text("nobody references me")
    digest = ok("hash-object", "-w", str(loose)).stdout.strip()
    kept = ok("gc").stdout
    assert kept.splitlines() == [
        "removed 0 files (0 from tmp/), 0 bytes; kept 1 object",
        "kept 1 unreferenced object (20 bytes) younger than the grace period (14 days): "
        "a write may be about to reference them, or they were stored with "
        "`hash-object -w` for later; `kontextual gc --grace 0` (or a shorter --grace) "
        "removes them now",
    ]
    dry = as_json("gc", "--dry-run", "--grace", "0")
    assert dry["dry_run"] is True and [name for name, _ in dry["removed"]] == [digest]
    assert len(dry["kept"]) == 5 and all(dry["kept"].values())
    reasons = ok("gc", "--dry-run", "--grace", "0").stdout.splitlines()
    assert reasons[0] == f"would remove {digest} (20 bytes)"
    assert (
        sum(
            line.startswith("keep blake3:") and "revision 1 of artifact" in line for line in reasons
        )
        == 5
    )
    assert object_path(filled, digest).exists()
    said = ok("gc", "--grace", "0").stdout
    assert f"removed {digest} (20 bytes)" in said
    assert not object_path(filled, digest).exists()
    assert as_json("fsck", "--full")["ok"] is True
    for duration in ("2w", "3d", "12h", "30m", "90s", "1d12h", "0", "15"):
        ok("gc", "--dry-run", "--grace", duration)
    for bad in ("2x", "-1", "1.5h", "", "h"):
        fails(2, "gc", "--grace", bad, says=["--grace"])


def test_backup(filled: Path, tmp_path: Path) -> None:
    destination = tmp_path / "backup"
    report = as_json("backup", str(destination))
    assert report["objects"] == 5 and report["path"] == str(destination)
    assert len(as_json("--store", str(destination), "ls")) == 5
    assert as_json("--store", str(destination), "fsck", "--full")["ok"] is True
    fails(5, "backup", str(destination), says=["not empty"])


def test_export_and_import(filled: Path, tmp_path: Path) -> None:
    directory, archive = tmp_path / "snap", tmp_path / "snap.tar"
    summary = as_json("export", str(directory))
    assert summary["objects"] == 5 and summary["counts"]["artifacts"] == 5
    assert "exported" in ok("export", str(archive), "--tar").stdout
    assert tarfile.is_tarfile(archive)
    for source, name in ((directory, "from-dir"), (archive, "from-tar")):
        target = tmp_path / name
        assert "imported" in ok("--store", str(target), "import", str(source)).stdout
        assert as_json("--store", str(target), "ls") == as_json("ls")
        assert as_json("--store", str(target), "fsck", "--full")["ok"] is True
    via_option = tmp_path / "via-option"
    ok("import", str(directory), "--store", str(via_option))
    assert len(as_json("--store", str(via_option), "ls")) == 5
    fails(5, "export", str(directory), says=["not empty"])


def test_import_refuses_and_leaves_nothing_behind(filled: Path, tmp_path: Path) -> None:
    snapshot = tmp_path / "snap"
    ok("export", str(snapshot))
    fails(4, "import", str(snapshot), says=["already has records"])
    fails(
        3, "--store", str(tmp_path / "never"), "import", str(tmp_path / "missing"), says=["missing"]
    )
    assert not (tmp_path / "never").exists()
    body = next(p for p in (snapshot / "objects").rglob("*") if p.is_file())
    flip_a_byte(body)
    target = tmp_path / "restored"
    fails(5, "--store", str(target), "import", str(snapshot))
    assert not target.exists()
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    fails(5, "--store", str(empty), "import", str(snapshot))
    assert empty.is_dir() and list(empty.iterdir()) == []


# -- plumbing --------------------------------------------------------------------


def test_hash_object(filled: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(PNG_LIKE)
    expected = "blake3:" + blake3.blake3(PNG_LIKE).hexdigest()
    before = state(filled)
    assert ok("hash-object", str(path)).stdout == expected + "\n"
    assert state(filled) == before
    assert ok("hash-object", "-", stdin=PNG_LIKE).stdout == expected + "\n"
    assert ok("hash-object", "-w", str(path)).stdout == expected + "\n"
    assert object_path(filled, expected).read_bytes() == PNG_LIKE
    assert stat.S_IMODE(object_path(filled, expected).stat().st_mode) == 0o444
    assert (
        ok("hash-object", "-w", "-", stdin=b"from stdin").stdout.strip()
        in ok("ls-objects").stdout.split()
    )
    fails(2, "hash-object", str(tmp_path), says=["directory"])
    fails(3, "hash-object", str(tmp_path / "nope"), says=["no such file"])
    os.mkfifo(tmp_path / "fifo")
    fails(2, "hash-object", "-w", str(tmp_path / "fifo"), says=["FIFO"])


def test_hash_object_works_without_a_store(store: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_bytes(b"hello")
    assert (
        ok("hash-object", str(path)).stdout.strip()
        == "blake3:" + blake3.blake3(b"hello").hexdigest()
    )
    assert not store.exists()


def test_cat_ls_and_verify_objects(filled: Path) -> None:
    listed = ok("ls-objects").stdout.split()
    assert len(listed) == 5 and listed == sorted(listed)
    lines = [json.loads(line) for line in ok("ls-objects", "--json").stdout.splitlines()]
    assert [line["digest"] for line in lines] == listed
    png = as_json("show", "notes/sub/deeper/d.png")["artifact"]["digest"]
    assert {"digest": png, "size": len(PNG_LIKE)} in lines
    assert f"{png}  {len(PNG_LIKE)}" in ok("ls-objects", "-l").stdout
    assert ok("cat-object", png).stdout_bytes == PNG_LIKE
    assert ok("cat-object", png[7:15]).stdout_bytes == PNG_LIKE
    assert ok("verify-object", png[7:13]).stdout == f"ok {png}\n"
    fails(2, "cat-object", "abc", says=["at least 4"])
    flip_a_byte(object_path(filled, png))
    fails(5, "verify-object", png, says=["corrupt object", png])
    result = invoke("cat-object", png)
    assert result.exit_code == 5 and "corrupt object" in result.stderr


def test_human_output_escapes_c1_controls() -> None:
    from kontextual_engine.cli.output import compact

    shown = compact({"k": "a\u009b[2Jb", "tab": "\t"})
    assert "\u009b" not in shown and "\t" not in shown
    assert "\\u009b" in shown and "\\t" in shown


def test_store_locations_are_paths_or_file_urls(store: Path, tmp_path: Path) -> None:
    ok("init")
    ok("--store", store.as_uri(), "collection", "create", "via-url")
    assert [c["name"] for c in as_json("collection", "list")] == ["via-url"]
    fails(2, "--store", "s3://bucket/kb", "ls", says=["'s3' scheme is not supported"])
    assert not (tmp_path / "s3:").exists()
