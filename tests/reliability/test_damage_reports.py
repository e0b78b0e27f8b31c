"""What the store tells its user about damage and leftovers.

Verified reads hand out no byte that fails its digest (not even a prefix of a
large body), fsck and gc report garbage with its size and what frees it,
staging files of dead writers are recognised by checking for a live writer,
a store that lost its marker can be adopted again, fsck's findings name rows
by key and stay one per line, and a damaged index points to a backup.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kontextual_engine.errors import CorruptObjectError
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck, gc

from ..damage import scramble_page_tail
from .test_cli_hostile import kontextual

MIB = 1 << 20


def rewrite(path: Path, offset: int) -> None:
    """Flip one byte of a (read-only) object file in place."""
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    path.chmod(0o444)


def object_path(store: Path, digest: str) -> Path:
    hexd = digest.removeprefix("blake3:")
    return store / "objects" / hexd[:2] / hexd[2:]


# -- verified reads ------------------------------------------------------------------


@pytest.fixture
def large(tmp_path: Path) -> tuple[Path, str, str]:
    """A closed store with one 1.6 MB artifact: (store, artifact id, digest)."""
    store = tmp_path / "store"
    body = random.Random(13).randbytes(1_600_000)
    with SQLiteKnowledgeRepository.open(store, "none", create=True) as repo:
        cid = repo.create_collection("notes").id
        artifact = repo.create_artifact(cid, "big.bin", body, artifact_type="blob")
    return store, artifact.id, artifact.digest


@pytest.mark.parametrize("offset", [1000, MIB + 5])
def test_verified_reads_return_no_byte_of_a_damaged_object(
    large: tuple[Path, str, str], offset: int
) -> None:
    store, artifact_id, digest = large
    rewrite(object_path(store, digest), offset)
    with SQLiteKnowledgeRepository.open(store, "none", create=True) as repo:
        for open_ in (
            lambda: repo.open_object(digest),
            lambda: repo.objects.open(digest, verify=True),
        ):
            received = bytearray()
            with pytest.raises(CorruptObjectError, match=digest), open_() as reader:
                while chunk := reader.read(4096):
                    received += chunk
            assert received == b""
        for read in (
            lambda: repo.read_content(artifact_id),
            lambda: repo.read_object(digest),
            lambda: repo.objects.get(digest, verify=True),
        ):
            with pytest.raises(CorruptObjectError, match=digest):
                read()
    for args in (["cat", "notes/big.bin"], ["cat-object", digest]):
        result = kontextual(store, *args)
        assert result.returncode == 5, result.stderr
        assert result.stdout == b"", f"{args[0]} wrote {len(result.stdout)} unverified bytes"
        assert digest.encode() in result.stderr


def test_verified_reads_of_a_large_intact_object(large: tuple[Path, str, str]) -> None:
    store, _, digest = large
    expected = random.Random(13).randbytes(1_600_000)
    with (
        SQLiteKnowledgeRepository.open(store, "none", create=True) as repo,
        repo.open_object(digest) as reader,
    ):
        assert reader.read(10) == expected[:10]
        assert reader.read() == expected[10:]
    assert kontextual(store, "cat", "notes/big.bin").stdout == expected
    assert kontextual(store, "cat-object", digest).stdout == expected


# -- garbage: staging files of dead writers, and what gc keeps --------------------------

STREAMER = textwrap.dedent("""
    import sys
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
    repo = SQLiteKnowledgeRepository.open(sys.argv[1], durability="none", create=True)
    repo.objects.add_stream(sys.stdin.buffer)  # blocks on stdin until killed
""")


def staging_files(store: Path) -> list[Path]:
    return sorted(p for p in (store / "tmp").iterdir() if p.suffix == ".tmp")


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(store, "none", create=True) as repo:
        cid = repo.create_collection("notes").id
        repo.create_artifact(cid, "a.md", b"kept", artifact_type="note")
    return store


def test_staging_file_of_a_killed_writer_is_garbage_at_once(small_store: Path) -> None:
    store = small_store
    writer = subprocess.Popen([sys.executable, "-c", STREAMER, str(store)], stdin=subprocess.PIPE)
    try:
        assert writer.stdin is not None
        writer.stdin.write(b"x" * MIB)  # one whole chunk: read() returns it
        writer.stdin.flush()
        deadline = time.monotonic() + 60
        while not (staged := staging_files(store)) or staged[0].stat().st_size < MIB:
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # A live writer's staging file is neither garbage nor removed, even with no grace.
        with SQLiteKnowledgeRepository.open(store, "none", create=True) as repo:
            assert fsck(repo).garbage == []
            report = gc(repo, grace_seconds=0)
            assert report.tmp_removed == 0 and report.tmp_in_use >= 1
        assert staging_files(store) == staged
        writer.kill()
        writer.wait(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(timeout=60)
    checked = kontextual(store, "fsck")
    assert checked.returncode == 0, checked.stderr
    out = checked.stdout.decode()
    assert "stale-tmp" in out and "process is gone" in out
    assert "garbage: 2 files, 1048576 bytes; `kontextual gc` frees them" in out  # file + lock
    with SQLiteKnowledgeRepository.open(store, "none", create=True) as repo:
        assert fsck(repo).garbage_bytes == MIB
    removed = kontextual(store, "gc")  # the default grace: the writer is gone, so at once
    assert removed.returncode == 0, removed.stderr
    assert "removed 2 files (2 from tmp/), 1048576 bytes" in removed.stdout.decode()
    assert list((store / "tmp").iterdir()) == []
    assert kontextual(store, "cat", "notes/a.md").stdout == b"kept"


def test_gc_explains_the_grace_that_keeps_space(small_store: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose.bin"
    loose.write_bytes(b"y" * 5000)
    written = kontextual(small_store, "hash-object", "-w", str(loose))
    digest = written.stdout.decode().strip()
    # Older than the index's last change, so plain garbage (not a possibly lost write).
    index_changed = (small_store / "index.sqlite").stat().st_mtime - 60
    os.utime(small_store / "objects" / digest[7:9] / digest[9:], (index_changed, index_changed))
    checked = kontextual(small_store, "fsck").stdout.decode()
    assert "garbage: 1 file, 5000 bytes; `kontextual gc --grace 0` frees it" in checked
    assert "grace period" in checked
    kept = kontextual(small_store, "gc").stdout.decode()
    assert "kept 1 unreferenced object (5000 bytes) younger than the grace period (14 days)" in (
        kept
    )
    assert "`kontextual gc --grace 0`" in kept
    freed = kontextual(small_store, "gc", "--grace", "0").stdout.decode()
    assert "5000 bytes" in freed and "younger than the grace" not in freed


# -- fsck's own reports ---------------------------------------------------------------


def test_foreign_key_findings_name_rows_by_key(small_store: Path) -> None:
    with SQLiteKnowledgeRepository.open(small_store, "none", create=True) as repo:
        artifact = repo.query(name="a.md")[0]
        repo.update_artifact(artifact.id, content=b"kept, second revision")
    conn = sqlite3.connect(small_store / "index.sqlite")
    with conn:  # foreign keys are off in a plain connection
        conn.execute("DELETE FROM artifacts WHERE id = ?", (artifact.id,))
    conn.close()
    with SQLiteKnowledgeRepository.open(small_store, "none", create=True) as repo:
        report = fsck(repo)
    subjects = {f.subject for f in report.errors if f.kind == "foreign-key"}
    # revisions is a WITHOUT ROWID table: its rows are named by (artifact_id, revision).
    assert {
        f"revisions(artifact_id={artifact.id!r}, revision=1)",
        f"revisions(artifact_id={artifact.id!r}, revision=2)",
    } <= subjects
    assert not any("None" in subject for subject in subjects), subjects
    out = kontextual(small_store, "fsck").stdout.decode()
    assert f"revisions(artifact_id={artifact.id!r}, revision=2)" in out


def test_damaged_index_is_one_finding_per_line_and_points_to_a_backup(
    small_store: Path,
) -> None:
    with SQLiteKnowledgeRepository.open(small_store, "none", create=True) as repo:
        cid = repo.get_collection_by_name("notes").id
        for number in range(40):
            repo.create_artifact(cid, f"n{number}", b"x", artifact_type="note")
    scramble_page_tail(small_store / "index.sqlite", "changes_entity")
    result = kontextual(small_store, "fsck", "--full")
    assert result.returncode == 5, result.stderr
    report = json.loads(kontextual(small_store, "fsck", "--full", "--json").stdout)
    details = [f["detail"] for f in report["findings"] if f["kind"] == "index-integrity"]
    assert any("\n" in detail for detail in details)  # SQLite's own multi-line message
    lines = result.stdout.decode().splitlines()
    table = [line for line in lines[1:] if line.startswith(("error", "garbage", "warning"))]
    assert len(table) == len(report["findings"])
    # Every line but the header, the findings and the summary would be a torn finding.
    assert len(lines) == 1 + len(table) + 1, lines
    [error] = result.stderr.decode().splitlines()
    assert "the index (index.sqlite) is damaged: restore the store from a backup" in error
    assert "`kontextual backup`" in error
    assert report["advice"] and "backup" in report["advice"][0]


# -- a store that lost its marker ----------------------------------------------------


def test_store_that_lost_its_marker_says_how_to_recover_and_adopt_works(
    small_store: Path,
) -> None:
    marker = small_store / "kontextual.json"
    original = marker.read_bytes()
    marker.unlink()
    for args in (["ls"], ["cat", "notes/a.md"], ["fsck"], ["init"]):
        result = kontextual(small_store, *args)
        assert result.returncode == 5, (args, result.stderr)
        assert f"`kontextual init --adopt {small_store}`" in result.stderr.decode(), args
        assert not marker.exists()
    adopted = kontextual(small_store, "init", "--adopt")
    assert adopted.returncode == 0, adopted.stderr
    assert "adopted the kontextual store" in adopted.stdout.decode()
    assert marker.read_bytes() == original
    assert kontextual(small_store, "cat", "notes/a.md").stdout == b"kept"
    assert kontextual(small_store, "fsck", "--full").returncode == 0


def _foreign_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "setup, says",
    [
        ("nothing", "has not both"),
        ("no objects", "has not both"),
        ("index not sqlite", "not a usable SQLite index"),
        ("other sqlite", "not a kontextual index"),
        ("extra file", "also has precious.txt"),
        ("stray in objects", "objects/notes is not a fan-out directory"),
    ],
)
def test_adopt_refuses_a_directory_that_is_not_a_store(
    small_store: Path, tmp_path: Path, setup: str, says: str
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    if setup != "nothing":
        if setup != "no objects":
            (target / "objects").mkdir()
        if setup == "index not sqlite":
            (target / "index.sqlite").write_bytes(b"not a database " * 300)
        elif setup == "other sqlite":
            _foreign_sqlite(target / "index.sqlite")
        else:
            (target / "index.sqlite").write_bytes((small_store / "index.sqlite").read_bytes())
        if setup == "extra file":
            (target / "precious.txt").write_text("mine")
        if setup == "stray in objects":
            (target / "objects" / "notes").write_text("mine")
    before = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    result = kontextual(target, "init", "--adopt")
    assert result.returncode == 5, result.stderr
    assert says in result.stderr.decode()
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == before
