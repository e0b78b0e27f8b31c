"""Corruption: every kind of damage is detected, typed and named; no wrong bytes are served.

Each test damages a closed store in one way and checks that opening it or
running fsck detects the damage with a :class:`KontextualError` subclass whose
message names what is wrong, and that no verified read path (``read_content``,
``read_object``, ``open_object``, ``objects.get(verify=True)``,
``objects.open(verify=True)``, ``objects.verify``) returns bytes that do not
hash to the digest asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import (
    CorruptObjectError,
    KontextualError,
    NotFoundError,
    StoreFormatError,
)
from kontextual_engine.snapshot import export_snapshot
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck, gc

from ..damage import overwrite_root_page

BODIES = {f"n{i}": (f"body number {i} " * (i + 1)).encode() for i in range(8)}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A closed store with eight artifacts, one of them with two revisions."""
    path = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(path, "none", create=True) as repo:
        cid = repo.create_collection("c").id
        for name, body in BODIES.items():
            repo.create_artifact(cid, name, body, artifact_type="note")
        repo.update_artifact(repo.get_artifact_by_name(cid, "n0").id, content=b"n0 again")
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    return sentinel


def digest_of(store: Path, name: str) -> str:
    with SQLiteKnowledgeRepository.open(store, read_only=True) as repo:
        return repo.query(name=name)[0].digest


def object_path(store: Path, digest: str) -> Path:
    hexd = digest.removeprefix("blake3:")
    return store / "objects" / hexd[:2] / hexd[2:]


def rewrite(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(data)
    path.chmod(0o444)


def errors(store: Path, *, full: bool = True) -> dict[str, list[str]]:
    """fsck's error findings by kind: {kind: [subject, ...]}."""
    with SQLiteKnowledgeRepository.open(store, "none") as repo:
        report = fsck(repo, full=full)
    found: dict[str, list[str]] = {}
    for finding in report.errors:
        found.setdefault(finding.kind, []).append(finding.subject)
    return found


def verified_reads(
    repo: SQLiteKnowledgeRepository, artifact_id: str, digest: str
) -> Iterator[Callable[[], bytes]]:
    yield lambda: repo.read_content(artifact_id)
    yield lambda: repo.read_object(digest)
    yield lambda: repo.open_object(digest).read()
    yield lambda: repo.objects.get(digest, verify=True)
    yield lambda: repo.objects.open(digest, verify=True).read()

    def verify() -> bytes:
        repo.objects.verify(digest)
        return repo.objects.get(digest)

    yield verify


def assert_reads_refuse(store: Path, name: str, error: type[KontextualError]) -> None:
    """Every verified read of ``name``'s body raises ``error`` naming the digest."""
    with SQLiteKnowledgeRepository.open(store, "none") as repo:
        artifact = repo.query(name=name)[0]
        for read in verified_reads(repo, artifact.id, artifact.digest):
            with pytest.raises(error) as caught:
                data = read()
                assert digest_bytes(data) == artifact.digest  # never wrong bytes
            assert artifact.digest in str(caught.value)


# -- objects ----------------------------------------------------------------


def flip_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x04
    rewrite(path, bytes(data))


OBJECT_DAMAGE: dict[str, tuple[Callable[[Path], None], set[str], bool]] = {
    # damage -> (how, error kinds a full fsck reports, detected without re-hashing)
    "flipped bit": (flip_bit, {"corrupt"}, False),
    "truncated": (lambda p: rewrite(p, p.read_bytes()[:5]), {"corrupt", "size-mismatch"}, True),
    "zero length": (lambda p: rewrite(p, b""), {"corrupt", "size-mismatch"}, True),
    "another object's bytes": (
        lambda p: rewrite(p, p.read_bytes()[:-1] + b"?"),
        {"corrupt"},
        False,
    ),
    "appended garbage": (
        lambda p: rewrite(p, p.read_bytes() + b"\n"),
        {"corrupt", "size-mismatch"},
        True,
    ),
}


@pytest.mark.parametrize("damage", list(OBJECT_DAMAGE))
def test_damaged_object_is_found_and_never_served(store: Path, damage: str) -> None:
    how, kinds, quick = OBJECT_DAMAGE[damage]
    digest = digest_of(store, "n3")
    how(object_path(store, digest))
    found = errors(store)
    assert set(found) == kinds
    assert all(subject == digest for subjects in found.values() for subject in subjects)
    assert bool(errors(store, full=False)) is quick
    assert_reads_refuse(store, "n3", CorruptObjectError)
    with SQLiteKnowledgeRepository.open(store, "none") as repo:  # the others still read
        assert repo.read_content(repo.query(name="n4")[0].id) == BODIES["n4"]


def test_deleted_object(store: Path) -> None:
    digest = digest_of(store, "n2")
    object_path(store, digest).unlink()
    assert errors(store, full=False) == {"missing-object": [digest]}
    assert_reads_refuse(store, "n2", NotFoundError)


def test_object_replaced_by_symlink_to_outside(store: Path, outside: Path) -> None:
    """Even a link to a file with the right bytes is refused: objects are regular files."""
    digest = digest_of(store, "n1")
    path = object_path(store, digest)
    target = outside / "body"
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)
    found = errors(store)
    assert found.pop("not-a-file") == [digest]
    assert set(found) <= {"bad-object"}  # the size check names it again
    assert_reads_refuse(store, "n1", CorruptObjectError)
    assert target.read_bytes() == BODIES["n1"]


def test_object_replaced_by_directory_or_fifo(store: Path) -> None:
    first, second = digest_of(store, "n1"), digest_of(store, "n2")
    object_path(store, first).unlink()
    object_path(store, first).mkdir()
    object_path(store, second).unlink()
    os.mkfifo(object_path(store, second))
    found = errors(store)
    assert sorted(found.pop("not-a-file")) == sorted([first, second])
    assert set(found) <= {"bad-object"}  # the size check may name them again
    assert_reads_refuse(store, "n1", CorruptObjectError)
    assert_reads_refuse(store, "n2", CorruptObjectError)  # and never blocks on the FIFO


def test_fanout_directory_replaced_by_file(store: Path) -> None:
    digest = digest_of(store, "n5")
    fan = object_path(store, digest).parent
    shutil.rmtree(fan)
    fan.write_bytes(b"not a directory")
    found = errors(store)
    assert "bad-fanout" in found
    with (
        SQLiteKnowledgeRepository.open(store, "none") as repo,
        pytest.raises(StoreFormatError, match="fan-out"),
    ):
        repo.read_content(repo.query(name="n5")[0].id)


def test_export_refuses_a_corrupt_body(store: Path, tmp_path: Path) -> None:
    """A snapshot (a backup) must not carry damaged bytes silently."""
    flip_bit(object_path(store, digest_of(store, "n6")))
    with SQLiteKnowledgeRepository.open(store, "none") as repo:
        with pytest.raises(CorruptObjectError):
            export_snapshot(repo, tmp_path / "snap")
        with pytest.raises(CorruptObjectError):
            export_snapshot(repo, tmp_path / "snap.tar", tar=True)
    assert not (tmp_path / "snap" / "snapshot.json").exists()
    assert not (tmp_path / "snap.tar").exists()


# -- the index ----------------------------------------------------------------


@pytest.mark.parametrize(
    "table", ["artifacts", "revisions", "changes", "artifact_words_data", "sqlite_master"]
)
def test_damaged_index_page_is_found_by_open_or_fsck(store: Path, table: str) -> None:
    index = store / "index.sqlite"
    if table == "sqlite_master":
        data = bytearray(index.read_bytes())
        data[100:400] = b"\xa5" * 300  # the schema table lives on page 1, after the header
        index.write_bytes(bytes(data))
    else:
        overwrite_root_page(index, table)
    try:
        repo = SQLiteKnowledgeRepository.open(store, "none")
    except StoreFormatError as exc:
        assert "index.sqlite" in str(exc)
        return
    try:
        report = fsck(repo, full=True)  # never raises: damage is a finding
        assert "index-integrity" in {f.kind for f in report.errors}, report.findings
    finally:
        repo.close()


def test_reading_a_damaged_index_raises_a_typed_error(store: Path) -> None:
    overwrite_root_page(store / "index.sqlite", "artifacts")
    with (
        SQLiteKnowledgeRepository.open(store, "none") as repo,
        pytest.raises(KontextualError, match="index"),
    ):
        repo.list_artifacts()


def test_damaged_header_is_refused_at_open(store: Path) -> None:
    index = store / "index.sqlite"
    data = bytearray(index.read_bytes())
    data[0:16] = b"Not SQLite here!"
    index.write_bytes(bytes(data))
    with pytest.raises(StoreFormatError, match=r"index\.sqlite"):
        SQLiteKnowledgeRepository.open(store, "none")


def test_truncated_index_is_found(store: Path) -> None:
    index = store / "index.sqlite"
    index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    try:
        repo = SQLiteKnowledgeRepository.open(store, "none")
    except StoreFormatError:
        return
    try:
        assert not fsck(repo, full=True).ok
    finally:
        repo.close()


def test_zero_length_index_over_objects_is_refused(store: Path) -> None:
    (store / "index.sqlite").write_bytes(b"")
    try:
        with pytest.raises(StoreFormatError):
            SQLiteKnowledgeRepository.open(store, "none").close()
    finally:
        assert len(list((store / "objects").rglob("*/*"))) == len(BODIES) + 1


# -- kontextual.json ------------------------------------------------------------


def _replace_with_directory(marker: Path) -> None:
    marker.unlink()
    marker.mkdir()


def _replace_with_symlink(marker: Path) -> None:
    marker.rename(marker.with_name("real.json"))
    marker.symlink_to(marker.with_name("real.json"))


MARKER_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing": (lambda m: m.unlink(), "kontextual.json"),
    "empty": (lambda m: rewrite(m, b""), "kontextual.json"),
    "garbage bytes": (lambda m: rewrite(m, b"\xff\xfe\x00garbage"), "kontextual.json"),
    "truncated": (lambda m: rewrite(m, m.read_bytes()[:20]), "not valid JSON"),
    "a JSON array": (lambda m: rewrite(m, b"[1, 2]"), "JSON object"),
    "other format": (
        lambda m: rewrite(
            m, json.dumps({"format": "git", "version": 1, "digest": "blake3"}).encode()
        ),
        "format",
    ),
    "newer version": (
        lambda m: rewrite(
            m, json.dumps({"format": "kontextual-store", "version": 2, "digest": "blake3"}).encode()
        ),
        "upgrade",
    ),
    "version as text": (
        lambda m: rewrite(
            m,
            json.dumps({"format": "kontextual-store", "version": "1", "digest": "blake3"}).encode(),
        ),
        "version",
    ),
    "other digest": (
        lambda m: rewrite(
            m, json.dumps({"format": "kontextual-store", "version": 1, "digest": "sha256"}).encode()
        ),
        "sha256",
    ),
    "huge": (lambda m: rewrite(m, b" " * (1 << 17)), "large"),
    "a directory": (lambda m: _replace_with_directory(m), "kontextual.json"),
    "a symlink": (lambda m: _replace_with_symlink(m), "symbolic link"),
}


@pytest.mark.parametrize("damage", list(MARKER_DAMAGE))
@pytest.mark.parametrize("read_only", [False, True])
def test_damaged_marker_is_refused_at_open(store: Path, damage: str, read_only: bool) -> None:
    how, words = MARKER_DAMAGE[damage]
    how(store / "kontextual.json")
    before = sorted(p.name for p in store.iterdir())
    with pytest.raises(StoreFormatError) as caught:
        SQLiteKnowledgeRepository.open(store, "none", read_only=read_only)
    assert words in str(caught.value)
    assert str(store) in str(caught.value) or "kontextual.json" in str(caught.value)
    assert sorted(p.name for p in store.iterdir()) == before  # nothing written, nothing fixed


# -- a stray write-ahead log ----------------------------------------------------

CRASHING_WRITER = textwrap.dedent("""
    import os, sys
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
    repo = SQLiteKnowledgeRepository.open(sys.argv[1], "none", create=True)
    cid = repo.create_collection("other").id
    for i in range(int(sys.argv[2])):
        repo.create_artifact(cid, f"other{i}", b"another store's body %d" % i,
                             artifact_type="note")
    os._exit(0)  # no close(): the WAL stays behind, full of committed frames
""")


@pytest.mark.parametrize("writes", [20, 300])
def test_stray_wal_from_another_store_is_detected(store: Path, tmp_path: Path, writes: int) -> None:
    """SQLite cannot tell whose WAL it is and replays it; fsck must then report damage.

    With a few frames the index silently becomes a mix of both stores (the
    other store's rows, pointing at bodies this one does not have); with many,
    the mix is malformed. Either way opening or fsck says so, with a typed error.
    """
    other = tmp_path / "other"
    subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(other), str(writes)], check=True, timeout=120
    )
    shutil.copy(other / "index.sqlite-wal", store / "index.sqlite-wal")
    try:
        repo = SQLiteKnowledgeRepository.open(store, "none")
    except StoreFormatError:
        return
    try:
        report = fsck(repo, full=True)
        assert not report.ok
        assert {f.kind for f in report.errors} & {
            "missing-object",
            "index-integrity",
            "sequence-gap",
            "foreign-key",
        }
        # gc must not trust such an index: deleting what it does not reference
        # would delete this store's bodies.
        with pytest.raises(StoreFormatError, match="gc refused"):
            gc(repo, grace_seconds=0)
        assert len(list((store / "objects").rglob("*/*"))) == len(BODIES) + 1
    finally:
        repo.close()


def test_stray_wal_from_an_unrelated_database(store: Path, tmp_path: Path) -> None:
    """A WAL of a database with another page size is ignored; the store stays intact."""
    unrelated = tmp_path / "unrelated.db"
    conn = sqlite3.connect(unrelated, isolation_level=None)
    conn.execute("PRAGMA page_size = 1024")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (randomblob(5000))")
    shutil.copy(tmp_path / "unrelated.db-wal", store / "index.sqlite-wal")
    conn.close()
    try:
        repo = SQLiteKnowledgeRepository.open(store, "none")
    except StoreFormatError:
        return
    try:
        report = fsck(repo, full=True)
        if report.ok:
            assert {a.name for a in repo.list_artifacts()} == set(BODIES)
            for name, body in BODIES.items():
                if name != "n0":
                    assert repo.read_content(repo.query(name=name)[0].id) == body
    finally:
        repo.close()
