"""Bodies are read, hashed and written in chunks: a large body costs about a chunk.

Each memory test runs the command (or library call) in a child process and
reads the growth of its peak RSS (``VmHWM``) across the call; the body is
48 MiB and the bound 16 MiB, so a path that holds the body whole fails.
The full-size check (1 GiB) is the benchmark's ``large-body`` workload.
"""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kontextual_engine import InMemoryKnowledgeRepository, SQLiteKnowledgeRepository
from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import DuplicateNameError, NotTextError, ValidationError
from kontextual_engine.models import NewArtifact, PutOutcome
from kontextual_engine.storage import pipeline, text
from kontextual_engine.storage.pipeline import NewFile, StoredBody, pipelined

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs /proc (Linux)"
)

BODY = 48 << 20
BOUND = 16 << 20

# Runs ``kontextual ARGS...`` in this process (stdout to /dev/null) and prints how
# much the call grew the peak RSS; "library" runs put_files / store_body instead.
CHILD = """
import os, sys

def peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

from kontextual_engine.cli import cli
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.pipeline import NewFile

args = sys.argv[1:]
null = os.open(os.devnull, os.O_WRONLY)
real_stdout = os.dup(1)
if args[0] == "library":
    _, store, path, how = args
    with SQLiteKnowledgeRepository.open(store, "batch", create=True) as repo:
        notes = repo.create_collection("lib")
        # Measured from here: creating the store (its migrations, the modules
        # they import) is not the body's cost.
        before = peak()
        if how == "path":
            repo.put_files(notes.id, [NewFile("big.bin", path, "blob")])
        elif how == "stream":
            with open(path, "rb") as source:
                repo.put_files(notes.id, [NewFile("big.bin", source, "blob")])
        else:
            with repo.transaction():
                body = repo.store_body(path)
                repo.create_artifact(notes.id, "big.bin", body, artifact_type="blob")
    code = 0
else:
    before = peak()
    os.dup2(null, 1)
    try:
        cli.main(args, prog_name="kontextual", standalone_mode=False)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:
        code = 1
        sys.stderr.write(f"{type(exc).__name__}: {exc}\\n")
    sys.stdout.flush()
    os.dup2(real_stdout, 1)
print(code, peak() - before)
"""


def run_child(*args: str) -> tuple[int, int, str]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=300
    )
    assert done.stdout, done.stderr
    code, growth = done.stdout.split()
    return int(code), int(growth), done.stderr


def write_big(path: Path, *, binary: bool) -> Path:
    """A BODY-byte file: text lines, or bytes with NULs."""
    line = b"x" * 63 + b"\n" if not binary else b"\x00\x01" * 32
    with open(path, "wb") as out:
        block = line * (1 << 14)  # 1 MiB
        for _ in range(BODY >> 20):
            out.write(block)
    return path


@pytest.fixture
def big(tmp_path: Path) -> Path:
    return write_big(tmp_path / "big.txt", binary=False)


def kontextual(store: Path, *args: str) -> tuple[int, int, str]:
    return run_child("--store", str(store), *args)


def test_add_and_cat_stream_a_large_file(tmp_path: Path, big: Path) -> None:
    store = tmp_path / "store"
    assert kontextual(store, "init")[0] == 0
    code, growth, err = kontextual(store, "add", "notes", str(big), "--quiet")
    assert code == 0, err
    assert growth < BOUND, f"add grew the peak RSS by {growth >> 20} MiB"
    code, growth, err = kontextual(store, "add", "notes", str(big), "--dry-run")
    assert code == 0, err
    assert growth < BOUND, f"add --dry-run grew the peak RSS by {growth >> 20} MiB"
    code, growth, err = kontextual(store, "cat", "notes/big.txt")
    assert code == 0, err
    assert growth < BOUND, f"cat grew the peak RSS by {growth >> 20} MiB"
    with SQLiteKnowledgeRepository.open(store) as repo:
        [artifact] = repo.list_artifacts()
        assert artifact.size == BODY
        assert repo.text_status(artifact.id) is text.NotSearchable.TOO_LARGE


def test_diff_refuses_a_large_binary_body_before_reading_it(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = write_big(tmp_path / "blob.bin", binary=True)
    assert kontextual(store, "init")[0] == 0
    assert kontextual(store, "add", "notes", str(first), "--quiet")[0] == 0
    with open(first, "ab") as more:
        more.write(b"\x00")
    assert kontextual(store, "add", "notes", str(first), "--quiet")[0] == 0
    code, growth, err = kontextual(store, "diff", "notes/blob.bin", "1", "2")
    assert code == 2
    assert "revision 1 of notes/blob.bin is binary" in err
    assert growth < BOUND, f"diff grew the peak RSS by {growth >> 20} MiB"


def test_diff_refuses_a_text_body_too_large_to_compare(tmp_path: Path, big: Path) -> None:
    store = tmp_path / "store"
    assert kontextual(store, "init")[0] == 0
    assert kontextual(store, "add", "notes", str(big), "--quiet")[0] == 0
    with open(big, "ab") as more:
        more.write(b"one more line\n")
    assert kontextual(store, "add", "notes", str(big), "--quiet")[0] == 0
    code, growth, err = kontextual(store, "diff", "notes/big.txt", "1", "2")
    assert code == 2
    assert f"revision 1 of notes/big.txt is {BODY} bytes; diff compares bodies of at most" in err
    assert growth < BOUND, f"diff grew the peak RSS by {growth >> 20} MiB"


@pytest.mark.parametrize("how", ["path", "stream", "store_body"])
def test_library_file_and_stream_entry_points_stream(tmp_path: Path, big: Path, how: str) -> None:
    code, growth, err = run_child("library", str(tmp_path / "store"), str(big), how)
    assert code == 0, err
    assert growth < BOUND, f"{how} grew the peak RSS by {growth >> 20} MiB"
    with SQLiteKnowledgeRepository.open(tmp_path / "store") as repo:
        [artifact] = repo.list_artifacts()
        assert artifact.size == BODY
        assert repo.bodies.size(artifact.digest) == BODY


# -- the library entry points, in this process ---------------------------------------


def test_put_files_matches_put_artifacts(tmp_path: Path) -> None:
    bodies = {f"n{i}.md": f"note {i} words\n".encode() * (i + 1) for i in range(40)}
    for name, body in bodies.items():
        (tmp_path / name).write_bytes(body)
    by_bytes = InMemoryKnowledgeRepository()
    by_files = InMemoryKnowledgeRepository()
    for repo in (by_bytes, by_files):
        repo.create_collection("notes")
    put = by_bytes.put_artifacts(
        by_bytes.get_collection_by_name("notes").id,
        [NewArtifact(name, body, "note") for name, body in bodies.items()],
    )
    files = [
        NewFile(name, tmp_path / name if i % 2 else io.BytesIO(body), "note")
        for i, (name, body) in enumerate(bodies.items())
    ]
    got = by_files.put_files(by_files.get_collection_by_name("notes").id, files)
    assert [(r.outcome, r.artifact.name, r.artifact.digest, r.artifact.size) for r in got] == [
        (r.outcome, r.artifact.name, r.artifact.digest, r.artifact.size) for r in put
    ]
    assert all(r.outcome is PutOutcome.CREATED for r in got)
    assert [hit.artifact.name for hit in by_files.search("words")] == [
        hit.artifact.name for hit in by_bytes.search("words")
    ]
    # The same files again change nothing.
    again = by_files.put_files(
        by_files.get_collection_by_name("notes").id,
        [NewFile(name, tmp_path / name, "note") for name in list(bodies)[1::2]],
    )
    assert {r.outcome for r in again} == {PutOutcome.UNCHANGED}


def test_put_files_is_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_bytes(b"a")
    repo = SQLiteKnowledgeRepository.open(tmp_path / "store", "batch", create=True)
    with repo:
        notes = repo.create_collection("notes")
        before = repo.last_sequence()
        with pytest.raises(ValidationError, match=r"cannot read .*missing\.md"):
            repo.put_files(
                notes.id,
                [NewFile("a.md", tmp_path / "a.md", "note")]
                + [NewFile(f"x{i}.md", io.BytesIO(b"x%d" % i), "note") for i in range(100)]
                + [NewFile("missing.md", tmp_path / "missing.md", "note")],
            )
        with pytest.raises(DuplicateNameError, match="appears twice"):
            repo.put_files(
                notes.id,
                [NewFile("a.md", tmp_path / "a.md", "note")] * 2,
            )
        assert repo.last_sequence() == before
        assert repo.list_artifacts(notes.id) == []
        # Nothing is left staged: every worker finished before the transaction ended.
        assert list((tmp_path / "store" / "tmp").glob("*.tmp")) == []


def test_a_stored_body_of_another_store_is_refused() -> None:
    one, other = InMemoryKnowledgeRepository(), InMemoryKnowledgeRepository()
    notes = other.create_collection("notes")
    body = one.store_body(b"elsewhere")
    with pytest.raises(ValidationError, match="another body store"):
        other.create_artifact(notes.id, "a", body, artifact_type="note")
    assert other.list_artifacts(notes.id) == []


@pytest.mark.parametrize("size", [0, 5, text.MAX_TEXT_BYTES, text.MAX_TEXT_BYTES + 1, 3 << 20])
def test_store_body_from_a_stream_of_any_size(size: int) -> None:
    repo = InMemoryKnowledgeRepository()
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)

    class Trickle(io.RawIOBase):
        """Returns at most 1000 bytes a read, as a pipe may."""

        def __init__(self) -> None:
            self.at = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            chunk = data[self.at : self.at + min(1000, n if n >= 0 else 1000)]
            self.at += len(chunk)
            return chunk

    for source in (io.BytesIO(data), Trickle()):
        body = repo.store_body(source)  # type: ignore[arg-type]
        assert (body.digest, body.size) == (digest_bytes(data), size)
        assert body.content == (data if size <= text.MAX_TEXT_BYTES else None)
        assert repo.bodies.get(body.digest) == data


def test_store_body_refuses_what_is_not_a_body(tmp_path: Path) -> None:
    repo = InMemoryKnowledgeRepository()
    with pytest.raises(ValidationError, match="bytes, a path or a binary stream, not int"):
        repo.store_body(5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"cannot read .*nothing-here"):
        repo.store_body(tmp_path / "nothing-here")


def test_pipelined_keeps_order_bounds_the_work_ahead_and_raises_in_turn() -> None:
    started: list[int] = []
    lock = threading.Lock()
    gate = threading.Event()

    def work(item: int) -> int:
        with lock:
            started.append(item)
        if item == 0:
            gate.wait(5)
        return item * 10

    opener = threading.Timer(0.3, gate.set)
    opener.start()
    results = pipelined(range(100), work, ahead_items=4)
    assert next(results) == 0
    # Item 0 held its worker until the gate opened; meanwhile no more than four
    # items were submitted, and none is until the consumer asks for more.
    assert sorted(started) == [0, 1, 2, 3]
    assert list(results) == [i * 10 for i in range(1, 100)]
    opener.join()

    def failing(item: int) -> int:
        if item == 7:
            raise ValidationError("item 7 is bad")
        return item

    seen: list[int] = []
    with pytest.raises(ValidationError, match="item 7"):
        seen.extend(pipelined(range(50), failing, ahead_items=8))
    assert seen == list(range(7))


def test_pipelined_holds_no_more_than_the_bytes_ahead() -> None:
    inflight = 0
    most = 0
    lock = threading.Lock()

    def items() -> list[int]:
        return list(range(60))

    def work(item: int) -> int:
        nonlocal inflight, most
        with lock:
            inflight += 1
            most = max(most, inflight)
        return item

    results = pipelined(items(), work, weight=lambda _i: 10, ahead_bytes=30, ahead_items=64)
    for taken, result in enumerate(results):
        with lock:
            inflight -= 1
        assert result == taken
    assert most <= 3


def test_stored_body_text() -> None:
    repo = InMemoryKnowledgeRepository()
    assert repo.store_body(b"hello").text() == "hello"
    assert repo.store_body(b"\x00").text() is text.NotSearchable.BINARY
    large = repo.store_body(io.BytesIO(b"a" * (text.MAX_TEXT_BYTES + 1)))
    assert large.text() is text.NotSearchable.TOO_LARGE
    assert isinstance(large, StoredBody) and "size=" in repr(large)
    assert pipeline.held_size(10 << 20) == text.MAX_TEXT_BYTES + 1


def test_diff_refuses_binary_with_a_typed_error_before_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kontextual_engine.cli.commands import artifacts

    with SQLiteKnowledgeRepository.open(tmp_path / "store", "none", create=True) as repo:
        notes = repo.create_collection("notes")
        made = repo.create_artifact(
            notes.id,
            "b.bin",
            b"text first\n" * 10 + b"\x00" + b"y" * (3 << 20),
            artifact_type="blob",
        )
        revision = repo.get_revision(made.id, 1)

        def whole(*_args: object) -> bytes:
            raise AssertionError("the body was read whole")

        monkeypatch.setattr(repo, "read_content", whole)
        with pytest.raises(NotTextError, match="revision 1 of b is binary"):
            artifacts._text(repo, revision, "revision 1 of b")
