"""fsck, garbage collection, online backup and statistics of a SQLite store.

These read the index directly: they check the store itself (files, pages,
foreign keys), which the backend-neutral contract cannot see.

Severity in fsck: ``error`` is damage (the store may return wrong or missing
data), ``garbage`` is harmless leftovers that gc removes (unreferenced
objects, stale tmp files), ``warning`` is worth a look but loses nothing
(a writable object file).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ...errors import (
    DamagedStoreError,
    KontextualError,
    ObjectNotFound,
    StoreFormatError,
    ValidationError,
)
from ..durable import sync_filesystem, unlink_quietly
from ..objects import OBJECTS_DIR, STORE_MARKER, TMP_DIR, Durability, ObjectStore
from ..objects.layout import FAN
from . import schema
from .connection import INDEX_NAME
from .repository import SQLiteKnowledgeRepository

# git's default (gc.pruneExpire) for the same reason: a writer may have put an
# object it has not referenced yet. Writers here reference objects inside the
# write lock that gc also takes, so the grace period is a second line of defence
# (and protects objects written with `hash-object -w` for later use).
DEFAULT_GRACE_SECONDS = 14 * 24 * 3600.0
# A file in tmp/ that is not named after a writer (see ObjectStore.collect_tmp) and
# is younger than this may belong to a write in progress in another process,
# whatever grace the caller asked for. Files named after a writer are removed as
# soon as their writer's process is gone, and never while it lives.
MIN_TMP_GRACE_SECONDS = 3600.0
# What frees garbage: plain gc, or gc without grace when some is younger than that.
GC_COMMAND = "kontextual gc"
GC_NOW_COMMAND = "kontextual gc --grace 0"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Finding:
    """One thing fsck found. ``bytes`` is the space a garbage finding takes, else 0."""

    severity: str
    kind: str
    subject: str
    detail: str
    bytes: int = 0


@dataclass(frozen=True)
class FsckReport:
    """``garbage_bytes`` is what the garbage findings take; ``free_with`` the
    command that removes all of it (None when there is no garbage)."""

    findings: list[Finding]
    objects_checked: int
    revisions_checked: int
    full: bool
    garbage_bytes: int = 0
    free_with: str | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def garbage(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "garbage"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def advice(self) -> list[str]:
        """What to do about the errors found, one sentence per kind of damage."""
        kinds = {finding.kind for finding in self.errors}
        said = []
        if kinds & INDEX_DAMAGE:
            said.append(
                f"the index ({INDEX_NAME}) is damaged: restore the store from a backup "
                "(`kontextual backup` makes one, consistent even while the store is open) "
                "or from a snapshot (`kontextual import`); a store copied with `cp -a` or "
                "`rsync` while it was open can be torn like this"
            )
        if kinds & OBJECT_DAMAGE:
            said.append(
                "objects are damaged or missing: a backup or snapshot holds the same bytes "
                "under the same name (objects/ab/cdef...), so copy those files back, or "
                "add the same content again"
            )
        return said


# Error kinds that mean the index itself is damaged, and those that mean objects are.
INDEX_DAMAGE = frozenset(
    {"index-integrity", "foreign-key", "sequence-gap", "text-duplicate", "stale-text"}
)
OBJECT_DAMAGE = frozenset(
    {"missing-object", "bad-object", "size-mismatch", "corrupt", "not-a-file", "bad-fanout"}
)

_SCAN_SEVERITY = {
    "corrupt": "error",
    "not-a-file": "error",
    "bad-fanout": "error",
    "stray": "warning",
    "writable": "warning",
    "stale-tmp": "garbage",
}


def fsck(
    repo: SQLiteKnowledgeRepository, *, full: bool = False, progress: Progress | None = None
) -> FsckReport:
    """Check the index and every object. ``full`` re-hashes every object.

    Without ``full``, referenced objects are checked for presence and size
    only; with it, every file under ``objects/`` is hashed.
    """
    findings: list[Finding] = []
    findings += _check_index(repo, full)
    try:
        referenced: dict[str, int] | None = {
            digest: size
            for digest, size in repo.index.connection.rows(
                "SELECT digest, max(size) FROM revisions GROUP BY digest"
            )
        }
        revisions = repo.index.connection.row("SELECT count(*) FROM revisions")[0]
        findings += _check_sequences(repo)
        findings += _check_text(repo)
    except (sqlite3.DatabaseError, KontextualError) as exc:
        # A damaged index is a finding, not a crash; without the revisions no
        # object can be called garbage, so only the objects themselves are checked.
        findings.append(
            Finding(
                "error",
                "index-integrity",
                INDEX_NAME,
                f"cannot read the revisions and change records: {exc}",
            )
        )
        referenced, revisions = None, 0
    store = repo.objects
    total = len(referenced or {})
    for done, (digest, size) in enumerate(sorted((referenced or {}).items()), 1):
        try:
            actual = store.size(digest)
        except ObjectNotFound:
            findings.append(
                Finding(
                    "error",
                    "missing-object",
                    digest,
                    "referenced by a revision but not in objects/",
                )
            )
            actual = None
        except KontextualError as exc:
            findings.append(Finding("error", "bad-object", digest, str(exc)))
            actual = None
        if actual is not None and actual != size:
            findings.append(
                Finding(
                    "error",
                    "size-mismatch",
                    digest,
                    f"index records {size} bytes, the file has {actual}",
                )
            )
        if progress is not None:
            progress(done, total)
    present: set[str] = set()
    young = False
    now = time.time()
    index_changed = _last_index_write(repo)
    for digest in store.all():
        present.add(digest)
        if referenced is not None and digest not in referenced:
            try:
                st = os.lstat(store.path(digest))
            except FileNotFoundError:
                continue
            if index_changed is not None and st.st_mtime > index_changed:
                findings.append(_possibly_lost(digest, index_changed, st.st_size))
                continue
            age = now - st.st_mtime
            if age >= DEFAULT_GRACE_SECONDS:
                detail = f"no revision references it; `{GC_COMMAND}` removes it"
            else:
                young = True
                detail = (
                    f"no revision references it; written {_duration(age)} ago, so "
                    f"`{GC_COMMAND}` keeps it for its {_duration(DEFAULT_GRACE_SECONDS)} "
                    f"grace period (`{GC_NOW_COMMAND}` removes it now)"
                )
            findings.append(Finding("garbage", "unreferenced-object", digest, detail, st.st_size))
    for problem in store.scan(rehash=full):
        subject = problem.digest or str(problem.path)
        severity = _SCAN_SEVERITY.get(problem.kind, "error")
        findings.append(Finding(severity, problem.kind, subject, problem.detail, problem.size))
    garbage = [f for f in findings if f.severity == "garbage"]
    free_with = None if not garbage else GC_NOW_COMMAND if young else GC_COMMAND
    return FsckReport(
        findings, len(present), revisions, full, sum(f.bytes for f in garbage), free_with
    )


def _last_index_write(repo: SQLiteKnowledgeRepository) -> float | None:
    """When ``index.sqlite`` itself last changed, if no -wal holds newer commits.

    In WAL mode the index file changes only when a checkpoint copies commits
    into it. While its -wal is not empty the newer commits are there, and every
    body they reference counts as referenced; when the -wal is empty or gone,
    nothing the index knows is newer than the file.
    """
    index = repo.index_path
    try:
        if os.stat(index.with_name(index.name + "-wal")).st_size > 0:
            return None
    except FileNotFoundError:
        pass
    try:
        return os.stat(index).st_mtime
    except FileNotFoundError:
        return None


def _possibly_lost(digest: str, index_changed: float, size: int) -> Finding:
    """An unreferenced body written after the index file last changed.

    Either a write that never committed (an interrupted or refused one: garbage)
    or one that committed and was then lost with the -wal (deleted, or not
    copied with the index): the store cannot tell which, so it says both.
    """
    when = datetime.fromtimestamp(index_changed, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Finding(
        "warning",
        "possibly-lost-write",
        digest,
        f"no revision references it, and it was written after the index last changed "
        f"({when}): an interrupted write left it, or a write that was acknowledged was "
        f"lost with the index's -wal (deleted, or left behind by a copy); if writes are "
        f"missing, restore the store from a backup, otherwise `{GC_COMMAND}` removes it "
        "after its grace period",
        size,
    )


def _duration(seconds: float) -> str:
    """A short, rounded-down duration for people: 45 s, 12 min, 5 h, 14 days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {'day' if unit == 'days' and count == 1 else unit}"
    return f"{max(seconds, 0):.0f} s"


def _check_index(repo: SQLiteKnowledgeRepository, full: bool) -> list[Finding]:
    found: list[Finding] = []
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = repo.index.connection.rows(f"PRAGMA {pragma}")
        for (message,) in rows:
            if message != "ok":
                found.append(Finding("error", "index-integrity", INDEX_NAME, message))
        violations = repo.index.connection.rows("PRAGMA foreign_key_check")
        # One query per broken foreign key names each row by its primary key:
        # WITHOUT ROWID tables have no rowid to name it by.
        for table, fkid in sorted({(row[0], row[3]) for row in violations}):
            parent, keys = _dangling_rows(repo, table, fkid)
            found += [
                Finding(
                    "error",
                    "foreign-key",
                    f"{table}({key})",
                    f"row references a missing {parent} row",
                )
                for key in keys
            ]
    except (sqlite3.DatabaseError, KontextualError) as exc:
        found.append(Finding("error", "index-integrity", INDEX_NAME, str(exc)))
    return found


def _dangling_rows(repo: SQLiteKnowledgeRepository, table: str, fkid: int) -> tuple[str, list[str]]:
    """The parent table of foreign key ``fkid`` of ``table``, and the primary keys
    (``col=value, ...``) of the rows whose key points at no parent row."""
    parts = sorted(
        (
            row
            for row in repo.index.connection.rows(f"PRAGMA foreign_key_list({_quote(table)})")
            if row[0] == fkid
        ),
        key=lambda row: row[1],
    )
    parent = parts[0][2]
    parent_key = _primary_key(repo, parent)
    pairs = [(row[3], row[4] or parent_key[row[1]]) for row in parts]
    key = _primary_key(repo, table) or ["rowid"]
    present = " AND ".join(f"c.{_quote(child)} IS NOT NULL" for child, _ in pairs)
    match = " AND ".join(f"p.{_quote(up)} = c.{_quote(child)}" for child, up in pairs)
    rows = repo.index.connection.rows(
        f"SELECT {', '.join(f'c.{_quote(column)}' for column in key)} "
        f"FROM {_quote(table)} AS c WHERE {present} "
        f"AND NOT EXISTS (SELECT 1 FROM {_quote(parent)} AS p WHERE {match})"
    )
    labels = [
        ", ".join(f"{column}={value!r}" for column, value in zip(key, row, strict=True))
        for row in rows
    ]
    return parent, labels


def _primary_key(repo: SQLiteKnowledgeRepository, table: str) -> list[str]:
    """The primary key columns of ``table`` in key order (empty for a bare rowid)."""
    columns = [
        (row[5], row[1])
        for row in repo.index.connection.rows(f"PRAGMA table_info({_quote(table)})")
    ]
    return [name for position, name in sorted(columns) if position > 0]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_sequences(repo: SQLiteKnowledgeRepository) -> list[Finding]:
    count, low, high = repo.index.connection.row(
        "SELECT count(*), min(sequence), max(sequence) FROM changes"
    )
    if count and (low != 1 or high != count):
        return [
            Finding(
                "error",
                "sequence-gap",
                "changes",
                f"{count} change records numbered {low}..{high}; expected 1..{count}",
            )
        ]
    return []


def _check_text(repo: SQLiteKnowledgeRepository) -> list[Finding]:
    """Each live artifact's text is in the FTS5 index or the backlog, never both
    (ADR 0004), and no text is kept for an artifact that is gone."""
    return [
        Finding("error", kind, f"sequence {sequence}", message)
        for kind, sequence, message in repo.index.text.check()
    ]


@dataclass(frozen=True)
class GcReport:
    """What gc removed (or would), and what it kept and why.

    ``young``/``young_bytes``: unreferenced objects kept only because they are
    younger than ``grace_seconds``; ``tmp_in_use``: files in ``tmp/`` kept
    because a live writer holds them (or, not named after a writer, they are
    younger than the tmp grace).
    """

    removed: list[tuple[str, int]]
    kept: dict[str, list[str]] = field(default_factory=dict)
    bytes_freed: int = 0
    dry_run: bool = False
    tmp_removed: int = 0
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    young: int = 0
    young_bytes: int = 0
    tmp_in_use: int = 0

    def grace_note(self) -> str | None:
        """Why unreferenced objects stayed, and how to remove them now; None if none did."""
        if not self.young:
            return None
        return (
            f"kept {self.young} unreferenced object{'' if self.young == 1 else 's'} "
            f"({self.young_bytes} bytes) younger than the grace period "
            f"({_duration(self.grace_seconds)}): a write may be about to reference them, "
            f"or they were stored with `hash-object -w` for later; `{GC_NOW_COMMAND}` "
            "(or a shorter --grace) removes them now"
        )


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
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, (int, float))
        or not (grace_seconds >= 0)
    ):
        raise ValidationError(f"grace_seconds must be a number >= 0, got {grace_seconds!r}")
    store = repo.objects
    now = time.time()
    removed: list[tuple[str, int]] = []
    kept: dict[str, list[str]] = {}
    young = young_bytes = 0
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
        pins = _pins(repo) if dry_run else {}
        for digest in present:
            if digest in referenced:
                if dry_run:
                    kept[digest] = _reasons(repo, digest) + pins.get(digest, [])
                continue
            path = store.path(digest)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            age = now - st.st_mtime
            if age < grace_seconds:
                kept[digest] = [
                    f"unreferenced, but only {age:.0f} s old (grace {grace_seconds:.0f} s)"
                ]
                young += 1
                young_bytes += st.st_size
                continue
            if not dry_run:
                store.delete(digest)
            removed.append((digest, st.st_size))
        tmp = store.collect_tmp(
            grace_seconds=max(grace_seconds, MIN_TMP_GRACE_SECONDS), remove=not dry_run
        )
        removed += [(str(item.path), item.size) for item in tmp if item.garbage]
    tmp_removed = sum(item.garbage for item in tmp)
    return GcReport(
        removed,
        kept,
        sum(size for _, size in removed),
        dry_run,
        tmp_removed,
        float(grace_seconds),
        young,
        young_bytes,
        len(tmp) - tmp_removed,
    )


def _reasons(repo: SQLiteKnowledgeRepository, digest: str) -> list[str]:
    reasons = [
        f"revision {r.revision} of artifact {r.artifact_id}"
        + (f" (produced by run {r.run_id})" if r.run_id else "")
        for r in repo.index.revisions_with_digest(digest)
    ]
    reasons += [
        f"input of run {b.run_id}" for b in repo.index.bundles_consuming(None, None, digest)
    ]
    return reasons


def _pins(repo: SQLiteKnowledgeRepository) -> dict[str, list[str]]:
    """Digests pinned by context packages and external references, read once per gc."""
    pins: dict[str, list[str]] = {}
    for package in repo.list_context_packages():
        for digest in dict.fromkeys(ref.digest for ref in package.references if ref.digest):
            pins.setdefault(digest, []).append(f"pinned by context package {package.id}")
    for external in repo.list_external_references():
        if external.digest is not None:
            pins.setdefault(external.digest, []).append(
                f"held by external reference {external.id} ({external.system})"
            )
    return pins


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
    counts: dict[str, int] = {}
    for name, sql in (
        ("collections", "SELECT count(*) FROM collections WHERE deleted_at IS NULL"),
        ("artifacts", "SELECT count(*) FROM artifacts WHERE deleted_at IS NULL"),
        ("deleted_artifacts", "SELECT count(*) FROM artifacts WHERE deleted_at IS NOT NULL"),
        ("revisions", "SELECT count(*) FROM revisions"),
        ("relationships", "SELECT count(*) FROM relationships"),
        ("changes", "SELECT count(*) FROM changes"),
    ):
        counts[name] = int(repo.index.connection.row(sql)[0])
    counts["text_backlog"] = repo.index.text.count_backlog()
    for name, table in (("runs", "runs"), ("context_packages", "context_packages")):
        counts[name] = int(repo.index.connection.row(f"SELECT count(*) FROM {table}")[0])
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
