"""Garbage collection, online backup, statistics and adoption of a SQLite store.

These read the index directly, as :mod:`.fsck` does: they work on the store
itself, which the backend-neutral contract cannot see. :func:`fsck` and its
report live in :mod:`.fsck` and are importable from here too.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import (
    DamagedStoreError,
    StoreFormatError,
)
from ..durable import sync_filesystem, unlink_quietly
from ..objects import OBJECTS_DIR, STORE_MARKER, TMP_DIR, Durability, ObjectStore
from ..objects.layout import FAN
from ..reports import (
    DEFAULT_GRACE_SECONDS,
    MIN_TMP_GRACE_SECONDS,
    GcReport,
    Sweep,
    check_grace,
    record_counts,
)
from . import schema
from .connection import INDEX_NAME
from .fsck import fsck
from .repository import SQLiteKnowledgeRepository

__all__ = [
    "BackupReport",
    "adopt",
    "backup",
    "fsck",
    "gc",
    "lost_marker",
    "lost_marker_error",
    "store_stats",
]


def gc(
    repo: SQLiteKnowledgeRepository,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
) -> GcReport:
    """Remove objects no revision references and older than the grace, and tmp files
    that no write can still use.

    A staging file in ``tmp/`` is removed as soon as the process that wrote it is
    gone (checked with its writer's lock, :meth:`ObjectStore.collect_tmp`), and
    never while that process lives; only files in ``tmp/`` not named after a
    writer are judged by age (at least :data:`MIN_TMP_GRACE_SECONDS`).

    Bodies pinned by runs, manifests, context packages and external references
    are revision bodies, so "referenced by a revision" covers them all. The
    final check and the deletions run inside the index's write lock: a writer
    links new objects only while it holds that lock, so no object that a
    concurrent transaction is about to reference can be removed. ``dry_run``
    removes nothing and says, in ``kept``, why each object stays.

    gc refuses (``StoreFormatError``, nothing removed) when the index fails
    SQLite's ``quick_check`` or references an object missing from ``objects/``:
    an index that is damaged, restored from elsewhere or replayed from a stray
    WAL does not reference this store's bodies, and trusting it would delete them.
    """
    check_grace(grace_seconds)
    store = repo.objects
    sweep = Sweep(repo, grace_seconds, dry_run, time.time())
    with repo.transaction():
        try:
            # A damaged index can still answer the query below, wrongly (from an
            # intact index b-tree over damaged rows): check the pages first.
            checked = [row[0] for row in repo.index.connection.rows("PRAGMA quick_check")]
            if checked != ["ok"]:
                raise StoreFormatError(
                    f"gc refused: the index {repo.index_path} fails SQLite's quick_check "
                    f"({checked[0]}); run fsck"
                )
            referenced = {
                row[0]
                for row in repo.index.connection.rows("SELECT DISTINCT digest FROM revisions")
            }
        except (sqlite3.DatabaseError, DamagedStoreError) as exc:
            raise StoreFormatError(
                f"gc refused: cannot read the index {repo.index_path} ({exc}); run fsck"
            ) from exc
        present = list(store.all())
        missing = referenced.difference(present)
        if missing:
            # The index and the objects disagree: the index may be damaged, restored
            # from elsewhere or replayed from a stray WAL. Deleting what it does not
            # reference could delete every body of the real store.
            raise StoreFormatError(
                f"gc refused: the index references {len(missing)} object(s) missing from "
                f"objects/ (such as {min(missing)}); the index may be damaged or belong to "
                "another store; run fsck"
            )
        for digest in present:
            if digest in referenced:
                sweep.referenced(digest)
                continue
            try:
                st = os.lstat(store.path(digest))
            except FileNotFoundError:
                continue
            if sweep.unreferenced(digest, st.st_size, st.st_mtime) and not dry_run:
                store.delete(digest)
        tmp = store.collect_tmp(
            grace_seconds=max(grace_seconds, MIN_TMP_GRACE_SECONDS), remove=not dry_run
        )
    tmp_removed = [(str(item.path), item.size) for item in tmp if item.garbage]
    return sweep.report(tmp_removed, len(tmp) - len(tmp_removed))


@dataclass(frozen=True)
class BackupReport:
    path: Path
    objects: int
    bytes: int


def backup(repo: SQLiteKnowledgeRepository, destination: str | os.PathLike[str]) -> BackupReport:
    """A consistent copy of an open (even busy) store in a new directory.

    The index is copied with SQLite's online backup API, which gives one
    point in time; then every object that copy's revisions reference is
    hard-linked (or copied, whole, through the copy's ``tmp/``) from the live
    store. Objects are immutable and a referenced object is never removed, so
    they are all still there. Everything is made durable with one
    filesystem sync at the end. If the backup fails (a full filesystem:
    :class:`StorageFullError`), what it wrote is removed again.
    """
    destination = Path(destination)
    existed = destination.exists()
    if existed and (not destination.is_dir() or any(destination.iterdir())):
        raise StoreFormatError(f"backup destination {destination} exists and is not empty")
    try:
        ObjectStore(destination, durability="full").close()
        index = destination / INDEX_NAME
        copy = sqlite3.connect(index, isolation_level=None)
        try:
            repo.index.connection.backup_to(copy)
            copy.execute("PRAGMA journal_mode = WAL")
            wanted = [row[0] for row in copy.execute("SELECT DISTINCT digest FROM revisions")]
            copy.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            copy.close()
        total = 0
        # No fsync per object: one filesystem sync below covers every file and entry.
        with ObjectStore(destination, durability="none", create=False) as target:
            for digest in wanted:
                total += target.add_link(repo.objects.path(digest), digest)
        sync_filesystem(destination)
    except BaseException:
        _discard(destination, existed)
        raise
    return BackupReport(destination, len(wanted), total)


def _discard(destination: Path, existed: bool) -> None:
    """Remove what a failed backup wrote to ``destination`` (empty or missing before)."""
    if not existed:
        shutil.rmtree(destination, ignore_errors=True)
        return
    with os.scandir(destination) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                unlink_quietly(entry.path)


def store_stats(repo: SQLiteKnowledgeRepository) -> dict[str, int]:
    """Counts of every kind of record, and the sizes of the index and the objects."""
    counts = record_counts(repo, lambda sql: int(repo.index.connection.row(sql)[0]))
    stats = repo.objects.stats()
    counts["objects"] = stats.count
    counts["object_bytes"] = stats.bytes
    counts["index_bytes"] = sum(
        path.stat().st_size for path in repo.root.glob(INDEX_NAME + "*") if path.is_file()
    )
    return counts


# What a store directory may hold besides its marker: adopt refuses anything else.
_STORE_ENTRIES = frozenset(
    {OBJECTS_DIR, TMP_DIR, INDEX_NAME, INDEX_NAME + "-wal", INDEX_NAME + "-shm"}
)


def lost_marker(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` looks like a store that lost its ``kontextual.json``: no
    marker, but an ``index.sqlite`` file and an ``objects/`` directory."""
    path = Path(root)
    if os.path.lexists(path / STORE_MARKER):
        return False
    try:
        index, objects = os.lstat(path / INDEX_NAME), os.lstat(path / OBJECTS_DIR)
    except OSError:
        return False
    return stat.S_ISREG(index.st_mode) and stat.S_ISDIR(objects.st_mode)


def lost_marker_error(root: str | os.PathLike[str]) -> DamagedStoreError:
    """The error for a store that lost its marker, naming the way out."""
    return DamagedStoreError(
        f"{root} holds {INDEX_NAME} and {OBJECTS_DIR}/ but no {STORE_MARKER}: it looks "
        f"like a store that lost its marker; `kontextual init --adopt {root}` checks the "
        "index and the objects and writes the marker again"
    )


def adopt(
    root: str | os.PathLike[str], durability: Durability | str = Durability.FULL
) -> SQLiteKnowledgeRepository:
    """Write the marker of a store that lost it, after checking that it is a store.

    The directory must hold nothing but ``index.sqlite`` (and its ``-wal`` and
    ``-shm``), ``objects/`` (only fan-out directories) and ``tmp/``; the index
    must open read-only as SQLite and carry this version's schema (its
    migrations table, no migration from a newer version). Anything else is
    refused with :class:`StoreFormatError` and nothing is written. Returns the
    opened store; run fsck on it.
    """
    path = Path(root)
    where = f"refusing to adopt {path}"
    if not path.is_dir() or path.is_symlink():
        raise StoreFormatError(f"{where}: it is not a directory")
    if os.path.lexists(path / STORE_MARKER):
        raise StoreFormatError(f"{where}: it has a {STORE_MARKER} already; open it as it is")
    if not lost_marker(path):
        raise StoreFormatError(
            f"{where}: a store has an {INDEX_NAME} file and an {OBJECTS_DIR}/ directory, "
            "and this directory has not both"
        )
    unexpected = sorted(set(os.listdir(path)) - _STORE_ENTRIES)
    if unexpected:
        raise StoreFormatError(
            f"{where}: a store holds nothing but {', '.join(sorted(_STORE_ENTRIES))}, "
            f"and this directory also has {', '.join(unexpected[:5])}"
        )
    for entry in os.scandir(path / OBJECTS_DIR):
        if not FAN.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            raise StoreFormatError(
                f"{where}: {OBJECTS_DIR}/{entry.name} is not a fan-out directory "
                "(two lowercase hex digits)"
            )
    index = path / INDEX_NAME
    try:
        conn = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise StoreFormatError(f"{where}: cannot open {index}: {exc}") from exc
    try:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if schema.MIGRATIONS_TABLE not in tables:
            raise StoreFormatError(f"{where}: {index} is not a kontextual index (no schema)")
        schema.pending(conn, str(index))  # refuses a foreign or newer index
    except sqlite3.DatabaseError as exc:
        raise StoreFormatError(f"{where}: {index} is not a usable SQLite index: {exc}") from exc
    finally:
        conn.close()
    ObjectStore(path, durability=durability, create=False, adopt=True).close()
    return SQLiteKnowledgeRepository.open(path, durability)
