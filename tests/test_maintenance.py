"""fsck, gc, backup and stats of the SQLite store: each damage fsck claims to find."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kontextual_engine import NewArtifact
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import backup, fsck, gc, store_stats

from .damage import overwrite_root_page

OLD = time.time() - 30 * 24 * 3600


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteKnowledgeRepository]:
    repo = SQLiteKnowledgeRepository.open(tmp_path / "store", durability="none", create=True)
    collection = repo.create_collection("c").id
    repo.put_artifacts(
        collection, [NewArtifact(f"n{i}", f"body {i}".encode(), "note") for i in range(10)]
    )
    first = repo.get_artifact_by_name(collection, "n0")
    repo.update_artifact(first.id, content=b"body 0, second revision")
    yield repo
    repo.close()


def kinds(report: object, severity: str) -> set[str]:
    return {f.kind for f in report.findings if f.severity == severity}  # type: ignore[attr-defined]


def object_file(repo: SQLiteKnowledgeRepository, name: str = "n3") -> Path:
    artifact = repo.query(name=name)[0]
    path = repo.objects.path(artifact.digest)
    path.chmod(0o644)
    return path


def test_clean_store(store: SQLiteKnowledgeRepository) -> None:
    for full in (False, True):
        report = fsck(store, full=full)
        assert report.ok, report.findings
        assert report.findings == []
        assert report.revisions_checked == 11
        assert report.objects_checked == 11


def test_missing_object(store: SQLiteKnowledgeRepository) -> None:
    object_file(store).unlink()
    report = fsck(store)
    assert not report.ok
    assert kinds(report, "error") == {"missing-object"}


def test_flipped_byte_needs_full(store: SQLiteKnowledgeRepository) -> None:
    path = object_file(store)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x20
    path.write_bytes(bytes(data))
    path.chmod(0o444)
    assert fsck(store, full=False).ok  # same size: only a re-hash can tell
    report = fsck(store, full=True)
    assert "corrupt" in kinds(report, "error")


def test_truncated_and_empty_objects(store: SQLiteKnowledgeRepository) -> None:
    object_file(store, "n3").write_bytes(b"bo")
    object_file(store, "n4").write_bytes(b"")
    report = fsck(store)
    assert kinds(report, "error") == {"size-mismatch"}
    assert len(report.errors) == 2


def test_garbage_is_not_an_error(store: SQLiteKnowledgeRepository) -> None:
    store.objects.add(b"never referenced")
    stale = store.objects.root / "tmp" / "leftover"
    stale.write_bytes(b"partial")
    os.utime(stale, (OLD, OLD))
    report = fsck(store)
    assert report.ok
    assert kinds(report, "garbage") == {"unreferenced-object", "stale-tmp"}


def test_stray_file_in_objects(store: SQLiteKnowledgeRepository) -> None:
    path = object_file(store)
    (path.parent / "notes.txt").write_text("someone's file")
    report = fsck(store)
    assert "stray" in kinds(report, "warning")


def test_sequence_gap(store: SQLiteKnowledgeRepository, tmp_path: Path) -> None:
    store.close()
    with sqlite3.connect(tmp_path / "store" / "index.sqlite") as conn:
        conn.execute("DELETE FROM changes WHERE sequence = 3")
    reopened = SQLiteKnowledgeRepository.open(tmp_path / "store", durability="none")
    try:
        assert "sequence-gap" in kinds(fsck(reopened), "error")
    finally:
        reopened.close()


LAST_WORDS = "(SELECT max(rowid) FROM artifact_words)"
STALE = ("error", "stale-text")
MISSING = ("error", "missing-text")
PENDING = ("warning", "text-pending")


@pytest.mark.parametrize(
    "damage, read_only_finds, writable_finds",
    [
        # words kept for an artifact that is deleted
        (
            [f"UPDATE artifacts SET deleted_at = created_at WHERE sequence = {LAST_WORDS}"],
            {STALE},
            {STALE},
        ),
        # a reason kept for an artifact that is deleted
        (
            [
                "UPDATE artifacts SET deleted_at = created_at WHERE sequence = "
                "(SELECT max(sequence) FROM unsearchable)"
            ],
            {STALE},
            {STALE},
        ),
        # a deleted artifact waiting for words: stale and counted as pending,
        # until a writable open drops the mark (it would block text search)
        (
            [
                "INSERT INTO text_pending SELECT sequence FROM artifacts "
                "WHERE deleted_at IS NOT NULL"
            ],
            {STALE, PENDING},
            set(),
        ),
        # a live artifact with no words, no reason and not pending
        ([f"DELETE FROM artifact_words WHERE rowid = {LAST_WORDS}"], {MISSING}, {MISSING}),
        (["DELETE FROM unsearchable"], {MISSING}, {MISSING}),
        # an interrupted rebuild: a writable open finishes it
        (
            [
                f"INSERT INTO text_pending VALUES ({LAST_WORDS})",
                f"DELETE FROM artifact_words WHERE rowid = {LAST_WORDS}",
            ],
            {PENDING},
            set(),
        ),
        # the stored words no longer what FTS5 indexed for them; FTS5's check
        # is an INSERT, which a read-only store cannot run
        (
            [
                "UPDATE artifact_words_content SET c0 = 'replaced behind the index' "
                "WHERE id = (SELECT max(id) FROM artifact_words_content)"
            ],
            set(),
            {("error", "text-index-damaged")},
        ),
    ],
    ids=[
        "words-of-deleted",
        "reason-of-deleted",
        "deleted-pending",
        "words-missing",
        "reason-missing",
        "pending",
        "fts5-damaged",
    ],
)
def test_text_tables_are_checked(
    store: SQLiteKnowledgeRepository,
    tmp_path: Path,
    damage: list[str],
    read_only_finds: set[tuple[str, str]],
    writable_finds: set[tuple[str, str]],
) -> None:
    collection = store.create_collection("more").id
    store.put_artifacts(
        collection,
        [NewArtifact("bin", b"\x00binary", "blob"), NewArtifact("gone", b"gone text", "note")],
    )
    store.delete_artifact(store.query(name="gone")[0].id)
    assert store_stats(store)["text_binary"] == 1
    assert fsck(store).findings == []
    store.close()
    with sqlite3.connect(tmp_path / "store" / "index.sqlite") as conn:
        for statement in damage:
            assert conn.execute(statement).rowcount == 1, statement
    conn.close()
    for read_only, expected in ((True, read_only_finds), (False, writable_finds)):
        reopened = SQLiteKnowledgeRepository.open(
            tmp_path / "store", durability="none", read_only=read_only
        )
        try:
            report = fsck(reopened)
        finally:
            reopened.close()
        assert {(f.severity, f.kind) for f in report.findings} == expected, report.findings
        assert report.ok == (not any(severity == "error" for severity, _ in expected))


def test_damaged_index_page(store: SQLiteKnowledgeRepository, tmp_path: Path) -> None:
    store.close()
    overwrite_root_page(tmp_path / "store" / "index.sqlite", "artifacts", b"\xff")
    try:
        reopened = SQLiteKnowledgeRepository.open(tmp_path / "store", durability="none")
    except Exception as exc:  # refusing to open is a detection too
        assert type(exc).__module__.startswith("kontextual_engine")
        return
    try:
        report = fsck(reopened, full=True)
        assert "index-integrity" in kinds(report, "error")
    finally:
        reopened.close()


def test_gc_removes_exactly_old_garbage(store: SQLiteKnowledgeRepository) -> None:
    old = store.objects.add(b"old garbage")
    young = store.objects.add(b"young garbage")
    os.utime(store.objects.path(old), (OLD, OLD))
    stale = store.objects.root / "tmp" / "leftover"
    stale.write_bytes(b"partial")
    os.utime(stale, (OLD, OLD))
    referenced = {a.digest for a in store.query()} | {
        r.digest for r in store.list_revisions(store.query(name="n0")[0].id)
    }
    for digest in referenced:
        os.utime(store.objects.path(digest), (OLD, OLD))

    preview = gc(store, dry_run=True)
    assert {d for d, _ in preview.removed} == {old, str(stale)}
    assert store.objects.exists(old)
    assert all(preview.kept[digest][0].startswith("revision ") for digest in referenced)
    assert "old" in preview.kept[young][0]

    report = gc(store)
    assert {d for d, _ in report.removed} == {old, str(stale)}
    assert report.bytes_freed == len(b"old garbage") + len(b"partial")
    assert not store.objects.exists(old)
    assert store.objects.exists(young)
    assert not stale.exists()
    for digest in referenced:
        assert store.objects.exists(digest)
    assert fsck(store, full=True).ok
    assert gc(store, grace_seconds=0).removed == [(young, len(b"young garbage"))]


WRITER = textwrap.dedent("""
    import sys
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
    repo = SQLiteKnowledgeRepository.open(sys.argv[1], durability="batch")
    cid = repo.get_collection_by_name("c").id
    for i in range(int(sys.argv[2])):
        repo.create_artifact(cid, f"w{i}", f"written by a concurrent writer {i}".encode(),
                             artifact_type="note")
    repo.close()
""")


def test_gc_never_removes_what_a_concurrent_writer_references(
    store: SQLiteKnowledgeRepository, tmp_path: Path
) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "store"), "300"])
    try:
        while writer.poll() is None:
            gc(store, grace_seconds=0)
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    gc(store, grace_seconds=0)
    report = fsck(store, full=True)
    assert report.ok, report.errors
    assert len(store.query(limit=1000)) == 310


def test_backup_of_a_busy_store(store: SQLiteKnowledgeRepository, tmp_path: Path) -> None:
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "store"), "200"])
    try:
        time.sleep(0.2)
        result = backup(store, tmp_path / "copy")
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0
    assert result.objects >= 11
    copy = SQLiteKnowledgeRepository.open(tmp_path / "copy", durability="none")
    try:
        report = fsck(copy, full=True)
        assert report.ok and report.garbage == [], report.findings
        names = {a.name for a in copy.query(limit=1000)}
        assert {f"n{i}" for i in range(10)} <= names
        assert copy.read_content(copy.query(name="n0")[0].id, 1) == b"body 0"
    finally:
        copy.close()


def test_backup_refuses_non_empty_destination(
    store: SQLiteKnowledgeRepository, tmp_path: Path
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(Exception, match="not empty"):
        backup(store, tmp_path / "full")


def test_stats(store: SQLiteKnowledgeRepository) -> None:
    stats = store_stats(store)
    assert stats["artifacts"] == 10
    assert stats["revisions"] == 11
    assert stats["objects"] == 11
    assert stats["changes"] == 12
    assert stats["index_bytes"] > 0
    assert stats["text_searchable"] == 10
    assert stats["text_pending"] == 0
    assert stats["text_too_large"] == stats["text_not_utf8"] == stats["text_binary"] == 0
