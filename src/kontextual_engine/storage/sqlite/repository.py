"""``SQLiteKnowledgeRepository``: bodies in the object store, the rest in SQLite.

The contract (:mod:`..contract`) implements every rule; this module supplies
its storage primitives over one ``sqlite3`` connection per repository object.

Connection discipline: autocommit mode (``isolation_level=None``) with every
write transaction opened by ``BEGIN IMMEDIATE``, retried with backoff while
another process holds the write lock; nested :meth:`transaction` levels are
SAVEPOINTs. A re-entrant lock serialises use of the connection across
threads; a transaction holds it from ``BEGIN`` to ``COMMIT``.

Write ordering: bodies written inside a transaction are staged by the object
store in batch mode (for ``full`` as well as ``batch`` durability: one flush
makes them all durable, which is cheaper than an fsync per body and gives the
same guarantee) and flushed before ``COMMIT``, so the index never references a
body that is not durable.

Bulk writes: inside :meth:`put_artifacts`, the rows of newly created
artifacts (artifact, first revision, text, change record) are buffered and
written with ``executemany``; any other statement flushes the buffer first,
so every read sees every write.

Runs: opening a store for writing recovers abandoned runs (the contract's
:meth:`recover_abandoned`) once migrations are done. Records with ordered
parts (input bundles, context packages, manifests) keep the parts in child
tables keyed by position; a listing reads parents and parts in one ``LEFT
JOIN`` (or, for manifests, two statements in one read transaction), never a
statement per record.

Errors: a write refused by a constraint of the index (a duplicate id, a
missing referenced row) raises :class:`IntegrityError`, never a raw
``sqlite3`` error.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import random
import re
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from ...digests import parse_digest
from ...errors import (
    ConflictError,
    DamagedStoreError,
    IntegrityError,
    KontextualError,
    ReadOnlyStoreError,
    StorageFullError,
    StoreFormatError,
    StoreNotFound,
    ValidationError,
)
from ...models import (
    Artifact,
    ArtifactRef,
    ArtifactRevision,
    ChangeRecord,
    Collection,
    ContextPackage,
    ContextReference,
    ExternalMemoryReference,
    InputBundle,
    OperationRun,
    Query,
    Relationship,
    RunManifest,
    RunStatus,
    WorkflowStep,
    format_time,
)
from .. import text
from ..backend import IndexBackend
from ..contract import KnowledgeRepository
from ..ids import Clock, IdSource
from ..objects import STORE_MARKER, Durability, ObjectStore, storage_full
from . import schema

INDEX_NAME = "index.sqlite"
# Long enough to ride out any ordinary burst of writers from other processes;
# a writer that holds the lock longer than this is stuck, not busy.
DEFAULT_BUSY_TIMEOUT = 30.0
# Closing only tries to checkpoint; if other processes keep the store busy the
# last one to close checkpoints, so there is no point waiting long here.
CLOSE_CHECKPOINT_TIMEOUT_MS = 2000
# Backoff between BEGIN IMMEDIATE attempts that failed without the busy
# handler being consulted: short first, capped so waiters notice a free lock.
FIRST_BACKOFF = 0.001
MAX_BACKOFF = 0.05
# Rows buffered by put_artifacts before an executemany: large enough to
# amortise per-statement overhead, small enough to bound memory.
BULK_ROWS = 1000
# Names bound in one IN (...) lookup: well under SQLite's 32766 variables,
# large enough that a put_artifacts chunk is one query.
NAMES_PER_QUERY = 500
# 64 MiB page cache (negative = KiB): bulk ingest and FTS merges touch far more
# than the 2 MiB default, and the cache is only allocated as pages are used.
CACHE_SIZE_KIB = 64 * 1024
# FTS5 trigram queries need SQLite 3.34; JSON functions are built in from 3.38
# but present as an extension in most earlier builds.
MIN_SQLITE = (3, 34, 0)
# SQLITE_BUSY and SQLITE_LOCKED primary result codes.
_BUSY_CODES = (5, 6)
# Other primary result codes that say what happened to the index file.
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
# A filesystem with less free space than this when SQLite reports an I/O
# error is full: SQLite reports a failed write of its -shm or a page as
# SQLITE_IOERR, not SQLITE_FULL.
NEARLY_FULL_BYTES = 1024 * 1024
# The tables a statement names (not table-valued functions such as json_each).
_STATEMENT_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+(\w+)\b(?!\s*\()", re.IGNORECASE)
# A term shorter than this cannot go through a trigram MATCH.
_TRIGRAM = 3
# How a metadata filter begins in SQL (see _query).
_METADATA_FILTER = "a.sequence IN (SELECT artifact_sequence FROM"
# Backlog rows a text query reads without an index (ADR 0004): an instr()
# scan of 1,000 documents of 1 KiB takes about a millisecond. Past this, a
# text query on a writable store indexes the backlog before it runs.
DEFAULT_TEXT_BACKLOG_LIMIT = 1000
# Backlog rows moved into FTS5 per transaction by index_text(): large batches
# make few FTS5 segments to merge; each batch commits, so progress survives an
# interruption and other writers get the lock in between.
INDEX_TEXT_BATCH = 5000

_SYNCHRONOUS = {
    Durability.FULL: "FULL",
    Durability.BATCH: "NORMAL",
    Durability.NONE: "OFF",
}

_T = TypeVar("_T")

_ARTIFACT_COLUMNS = (
    "a.id, a.collection_id, a.name, a.artifact_type, a.media_type, a.digest, a.size, "
    "a.revision, a.metadata, a.provenance, a.created_at, a.updated_at, a.sequence, a.run_id"
)
_REVISION_COLUMNS = (
    "artifact_id, revision, collection_id, name, artifact_type, media_type, digest, size, "
    "metadata, provenance, created_at, change_sequence, run_id"
)
_COLLECTION_COLUMNS = "id, name, description, metadata, created_at, sequence"
_RELATIONSHIP_COLUMNS = (
    "id, source_id, target_id, relationship_type, metadata, created_at, sequence"
)
_CHANGE_COLUMNS = (
    "sequence, entity_kind, entity_id, action, timestamp, revision, old_digest, new_digest, details"
)
_RUN_COLUMNS = (
    "id, operation, status, parameters, parent_run_id, created_at, started_at, finished_at, "
    "error, diagnostics, holder, lease_expires_at, heartbeat_at, sequence"
)
_STEP_COLUMNS = (
    "id, run_id, position, name, status, created_at, started_at, finished_at, diagnostics, sequence"
)
# A bundle row followed by one of its inputs (NULLs for a bundle without inputs).
_BUNDLE_SELECT = (
    "SELECT b.id, b.run_id, b.parameters, b.created_at, b.sequence, "
    "i.artifact_id, i.revision, i.digest, i.role "
    "FROM bundles b LEFT JOIN bundle_inputs i ON i.bundle_id = b.id"
)
_MANIFEST_COLUMNS = (
    "m.run_id, m.operation, m.status, m.parameters, m.steps, m.diagnostics, m.error, "
    "m.created_at, m.started_at, m.finished_at, m.final"
)
_MANIFEST_REF_COLUMNS = "run_id, direction, artifact_id, revision, digest, role"
# A package row followed by one of its references (NULLs for an empty package).
_PACKAGE_SELECT = (
    "SELECT p.id, p.name, p.metadata, p.created_at, p.sequence, "
    "r.kind, r.target_id, r.revision, r.digest, r.system, r.uri, r.note "
    "FROM context_packages p LEFT JOIN context_references r ON r.package_id = p.id"
)
_EXTERNAL_COLUMNS = (
    "id, system, external_id, uri, artifact_id, revision, digest, recorded_by, metadata, "
    "recorded_at, sequence"
)

_INSERT_ARTIFACT = (
    "INSERT INTO artifacts (id, collection_id, name, artifact_type, media_type, digest, size, "
    "revision, metadata, provenance, created_at, updated_at, sequence, run_id) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_REVISION = (
    f"INSERT INTO revisions ({_REVISION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_TEXT = "INSERT INTO text_backlog (sequence, folded) VALUES (?, ?)"
_INSERT_METADATA = "INSERT INTO artifact_metadata VALUES (?, ?, ?, ?)"
_INSERT_CHANGE = f"INSERT INTO changes ({_CHANGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_RUN = f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_RUN = (
    "UPDATE runs SET operation = ?, status = ?, parameters = ?, parent_run_id = ?, "
    "created_at = ?, started_at = ?, finished_at = ?, error = ?, diagnostics = ?, holder = ?, "
    "lease_expires_at = ?, heartbeat_at = ?, sequence = ? WHERE id = ?"
)
_INSERT_STEP = f"INSERT INTO steps ({_STEP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_UPDATE_STEP = (
    "UPDATE steps SET run_id = ?, position = ?, name = ?, status = ?, created_at = ?, "
    "started_at = ?, finished_at = ?, diagnostics = ?, sequence = ? WHERE id = ?"
)


# What a DamagedStoreError tells the user to do.
DAMAGE_ADVICE = (
    "run `kontextual fsck` to see what is damaged, then restore the store from a backup "
    "(`kontextual backup`) or a snapshot (`kontextual export`)"
)
_Decoder = TypeVar("_Decoder", bound=Callable[..., Any])


def _decodes(table: str) -> Callable[[_Decoder], _Decoder]:
    """Mark a function that turns rows of ``table`` into records: a row it cannot
    read (a NULL or a wrong type where the schema allows none, as a damaged page
    can yield) raises :class:`DamagedStoreError` naming the table, not a raw
    ``TypeError`` or ``ValueError``."""

    def wrap(decode: _Decoder) -> _Decoder:
        @functools.wraps(decode)
        def checked(*args: Any) -> Any:
            try:
                return decode(*args)
            except (TypeError, ValueError, IndexError, AttributeError) as exc:
                raise DamagedStoreError(
                    f"the index is damaged (table {table}): a stored row cannot be read "
                    f"({type(exc).__name__}: {exc}); {DAMAGE_ADVICE}"
                ) from exc

        return checked  # type: ignore[return-value]

    return wrap


def _time(value: str) -> datetime:
    """Parse what :func:`format_time` wrote (``...T..:..:...ffffffZ``), fast."""
    return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)


def _maybe_time(value: str | None) -> datetime | None:
    return None if value is None else _time(value)


def _format_maybe(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


@_decodes("artifacts")
def _artifact(row: Any) -> Artifact:
    return Artifact(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        _time(row[10]),
        _time(row[11]),
        row[12],
        row[13],
    )


@_decodes("revisions")
def _revision(row: Any) -> ArtifactRevision:
    return ArtifactRevision(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        row[9],
        _time(row[10]),
        row[11],
        row[12],
    )


@_decodes("collections")
def _collection(row: Any) -> Collection:
    return Collection(row[0], row[1], row[2], row[3], _time(row[4]), row[5])


@_decodes("relationships")
def _relationship(row: Any) -> Relationship:
    return Relationship(row[0], row[1], row[2], row[3], row[4], _time(row[5]), row[6])


@_decodes("changes")
def _change(row: Any) -> ChangeRecord:
    return ChangeRecord(
        row[0], row[1], row[2], row[3], _time(row[4]), row[5], row[6], row[7], row[8]
    )


@_decodes("runs")
def _run_record(row: Any) -> OperationRun:
    return OperationRun(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        _time(row[5]),
        _maybe_time(row[6]),
        _maybe_time(row[7]),
        row[8],
        row[9],
        row[10],
        _maybe_time(row[11]),
        _maybe_time(row[12]),
        row[13],
    )


@_decodes("steps")
def _step(row: Any) -> WorkflowStep:
    return WorkflowStep(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        _time(row[5]),
        _maybe_time(row[6]),
        _maybe_time(row[7]),
        row[8],
        row[9],
    )


@_decodes("external_references")
def _external(row: Any) -> ExternalMemoryReference:
    return ExternalMemoryReference(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        _time(row[9]),
        row[10],
    )


def _grouped(rows: Iterable[Any], width: int) -> Iterator[tuple[Any, list[Any]]]:
    """Split rows of ``parent columns + child columns`` (from a LEFT JOIN ordered by
    parent) into ``(parent columns, [child rows])``; a parent without children
    has one row whose child columns are all NULL."""
    head: Any = None
    children: list[Any] = []
    for row in rows:
        if head is None or row[0] != head[0]:
            if head is not None:
                yield head, children
            head, children = row[:width], []
        if row[width] is not None:
            children.append(row[width:])
    if head is not None:
        yield head, children


@_decodes("bundles")
def _bundles(rows: Iterable[Any]) -> list[InputBundle]:
    return [
        InputBundle(
            head[0],
            head[1],
            tuple(ArtifactRef(ref[0], ref[1], ref[2], ref[3]) for ref in refs),
            head[2],
            _time(head[3]),
            head[4],
        )
        for head, refs in _grouped(rows, 5)
    ]


@_decodes("context_packages")
def _packages(rows: Iterable[Any]) -> list[ContextPackage]:
    return [
        ContextPackage(
            head[0],
            head[1],
            head[2],
            tuple(ContextReference(*ref) for ref in refs),
            _time(head[3]),
            head[4],
        )
        for head, refs in _grouped(rows, 5)
    ]


@_decodes("manifests")
def _manifest(row: Any, refs: Sequence[Any]) -> RunManifest:
    """A manifest from its row and its ``manifest_refs`` rows (ordered by direction,
    position)."""
    inputs = tuple(ArtifactRef(r[2], r[3], r[4], r[5]) for r in refs if r[1] == "input")
    outputs = tuple(ArtifactRef(r[2], r[3], r[4], r[5]) for r in refs if r[1] == "output")
    return RunManifest(
        row[0],
        row[1],
        row[2],
        row[3],
        inputs,
        outputs,
        tuple(json.loads(row[4])),
        row[5],
        row[6],
        _time(row[7]),
        _maybe_time(row[8]),
        _maybe_time(row[9]),
        bool(row[10]),
    )


def _run_values(run: OperationRun) -> tuple[Any, ...]:
    """Every column of a run but ``id``, in ``_UPDATE_RUN`` order."""
    return (
        run.operation,
        run.status,
        run.parameters_json,
        run.parent_run_id,
        format_time(run.created_at),
        _format_maybe(run.started_at),
        _format_maybe(run.finished_at),
        run.error,
        run.diagnostics_json,
        run.holder_json,
        _format_maybe(run.lease_expires_at),
        _format_maybe(run.heartbeat_at),
        run.sequence,
    )


def _step_values(step: WorkflowStep) -> tuple[Any, ...]:
    """Every column of a step but ``id``, in ``_UPDATE_STEP`` order."""
    return (
        step.run_id,
        step.position,
        step.name,
        step.status,
        format_time(step.created_at),
        _format_maybe(step.started_at),
        _format_maybe(step.finished_at),
        step.diagnostics_json,
        step.sequence,
    )


def _constraint_error(exc: sqlite3.IntegrityError) -> IntegrityError:
    """The typed error for a write that the index's constraints refused."""
    message = str(exc)
    if message.startswith("UNIQUE"):
        hint = "a record with that id or key already exists"
    elif message.startswith("FOREIGN KEY"):
        hint = "it refers to a record the index does not hold"
    else:
        hint = "a value breaks the schema's rules"
    return IntegrityError(f"the index refused the write ({message}): {hint}")


def _artifact_row(artifact: Artifact) -> tuple[Any, ...]:
    return (
        artifact.id,
        artifact.collection_id,
        artifact.name,
        artifact.artifact_type,
        artifact.media_type,
        artifact.digest,
        artifact.size,
        artifact.revision,
        artifact.metadata_json,
        artifact.provenance_json,
        format_time(artifact.created_at),
        format_time(artifact.updated_at),
        artifact.sequence,
        artifact.run_id,
    )


def _revision_row(revision: ArtifactRevision) -> tuple[Any, ...]:
    return (
        revision.artifact_id,
        revision.revision,
        revision.collection_id,
        revision.name,
        revision.artifact_type,
        revision.media_type,
        revision.digest,
        revision.size,
        revision.metadata_json,
        revision.provenance_json,
        format_time(revision.created_at),
        revision.change_sequence,
        revision.run_id,
    )


def _change_row(change: ChangeRecord) -> tuple[Any, ...]:
    return (
        change.sequence,
        change.entity_kind,
        change.entity_id,
        change.action,
        format_time(change.timestamp),
        change.revision,
        change.old_digest,
        change.new_digest,
        change.details_json,
    )


def _is_seconds(value: object) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and value >= 0
        and value != float("inf")
    )


def _unwritable_store(root: Path) -> bool:
    """An existing store this user may not write: it is opened read-only."""
    index = root / INDEX_NAME
    return index.is_file() and not (os.access(root, os.W_OK) and os.access(index, os.W_OK))


def _check_options(busy_timeout: object, text_backlog_limit: object) -> None:
    """Refuse an index that cannot work here, before anything is created."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StoreFormatError(
            f"SQLite {sqlite3.sqlite_version} is too old for the index; "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer is needed"
        )
    if not _is_seconds(busy_timeout):
        raise ValidationError(f"busy_timeout must be seconds >= 0, got {busy_timeout!r}")
    if (
        not isinstance(text_backlog_limit, int)
        or isinstance(text_backlog_limit, bool)
        or text_backlog_limit < 0
    ):
        raise ValidationError(
            f"text_backlog_limit must be an integer >= 0, got {text_backlog_limit!r}"
        )


def _require_store(root: Path) -> None:
    """Refuse a path that holds no store, so that opening never creates one.

    Only "nothing here" is :class:`StoreNotFound`: a file where the store
    should be, or a directory that has an index but lost its marker, is left
    to the object store's checks, which say what is wrong with it.
    """
    if root.is_dir():
        if os.path.lexists(root / STORE_MARKER) or os.path.lexists(root / INDEX_NAME):
            return
    elif os.path.lexists(root):
        return
    raise StoreNotFound(root)


def _error_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code for ``exc`` (None before Python 3.11)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _no_space(path: Path) -> bool:
    """Whether the filesystem holding ``path`` is (all but) full."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL_BYTES


def _is_full(exc: sqlite3.Error, root: Path) -> bool:
    """Whether ``exc`` says the filesystem holding the store is full."""
    code = _error_code(exc)
    if code == _SQLITE_FULL or "database or disk is full" in str(exc):
        return True
    return (code == _SQLITE_IOERR or "disk I/O error" in str(exc)) and _no_space(root)


def _shm_refused(exc: BaseException) -> bool:
    """Whether opening failed because SQLite could not create or map the -shm."""
    if isinstance(exc, StorageFullError):
        return True
    cause = exc.__cause__
    if not isinstance(cause, sqlite3.Error):
        return False
    return _error_code(cause) in (_SQLITE_READONLY, _SQLITE_CANTOPEN) or any(
        words in str(cause) for words in ("readonly", "unable to open")
    )


def _has_wal(index: Path) -> bool:
    """Whether a non-empty -wal waits to be replayed into ``index``."""
    try:
        return index.with_name(INDEX_NAME + "-wal").stat().st_size > 0
    except FileNotFoundError:
        return False


def _end_quietly(conn: sqlite3.Connection, sql: str) -> None:
    """End a transaction that is failing already: SQLite may have rolled it back
    itself, or fail the same way again; the error being raised is what counts."""
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute(sql)


def _statement_tables(sql: str | None) -> list[str]:
    return sorted(set(_STATEMENT_TABLE.findall(sql or "")))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    message = str(exc)
    return "locked" in message or "busy" in message


def _match_phrase(term: str) -> str:
    """An FTS5 string: every character literal, so no input is query syntax."""
    return '"' + term.replace('"', '""') + '"'


def _metadata_condition(value: Any) -> tuple[str, list[Any]]:
    """SQL over ``artifact_metadata`` testing type-exact equality with ``value``.

    Mirrors :func:`..contract.metadata_value_matches`: the Python type must be
    exactly the JSON type of the stored value, and arrays and objects compare
    by canonical JSON. A value of any other Python type (a tuple, a bool
    subclass...) can never equal decoded JSON.
    """
    if type(value) not in (type(None), bool, int, float, str, list, dict):
        return "0", []
    kind, cell = schema.metadata_cell(value)
    if cell is None:
        return "type = ?", [kind]
    return "type = ? AND value = ?", [kind, cell]


class _NotUnicode(ValidationError):
    """A bound string that cannot be encoded as UTF-8 (it has a lone surrogate)."""


class _Mapped:
    """``with _Mapped(repo, sql):`` around any use of the connection turns what
    SQLite raises into the repository's typed error (:meth:`_typed_error`)."""

    __slots__ = ("repo", "sql")

    def __init__(self, repo: SQLiteIndex, sql: str | None) -> None:
        self.repo = repo
        self.sql = sql

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, (sqlite3.Error, UnicodeEncodeError)):
            raise self.repo._typed_error(exc, self.sql) from exc


class SQLiteIndex(IndexBackend):
    """The index of a store directory: ``<store>/index.sqlite``, one connection.

    Opened by :class:`SQLiteKnowledgeRepository`, which decides whether the
    store may be written (``read_only``, and ``read_only_reason`` says why
    not) and passes ``has_objects`` so that a missing index is not started
    afresh over existing bodies.

    Searchable text is written to a backlog and indexed in batches (ADR
    0004); text queries read the index and the backlog, so they see every
    write. ``text_backlog_limit`` is how many backlog rows a text query scans
    before it indexes them first; :meth:`index_text` indexes them on demand.
    """

    def __init__(
        self,
        root: Path,
        durability: Durability,
        *,
        read_only: bool,
        read_only_reason: str,
        has_objects: Callable[[], bool],
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        text_backlog_limit: int = DEFAULT_TEXT_BACKLOG_LIMIT,
    ) -> None:
        _check_options(busy_timeout, text_backlog_limit)
        self.text_backlog_limit = text_backlog_limit
        self.root = root
        self.durability = durability
        self.read_only = read_only
        self._read_only_reason = read_only_reason
        self._has_objects = has_objects
        self.busy_timeout = float(busy_timeout)
        self._lock = threading.RLock()
        self._depth = 0
        self._last: int | None = None  # newest sequence, valid inside a transaction
        self._bulk = 0
        self._pending: dict[str, list[tuple[Any, ...]]] = {}
        self._pending_rows = 0
        self._pending_names: dict[tuple[str, str], Artifact] = {}
        self._full: StorageFullError | None = None  # why a full disk refuses writes
        try:
            self._conn: sqlite3.Connection | None = self._connect()
        except StorageFullError as exc:
            if self.read_only:
                raise
            # A full filesystem: SQLite cannot set up a writer (its -wal and -shm),
            # but the index can still be read. Writes say the disk is full.
            self.read_only = True
            self._full = exc
            self._conn = self._connect()
        # The identity (st_dev, st_ino) of the -wal this connection writes to,
        # and the error that stops writes once it was deleted or replaced.
        self._wal_identity: tuple[int, int] | None = None
        self._wal_lost: DamagedStoreError | None = None
        if not self.read_only:
            self._wal_identity = self._current_wal()

    def __repr__(self) -> str:
        return f"SQLiteIndex({str(self.index_path)!r})"

    # -- lifecycle ---------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def _connect(self) -> sqlite3.Connection:
        index = self.index_path
        try:
            st = os.lstat(index)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
            raise StoreFormatError(
                f"{index} is {kind}; refusing to open an index outside the store"
            )
        if st is None or st.st_size == 0:
            if self.read_only:
                raise StoreFormatError(f"store {self.root} has no {INDEX_NAME}")
            if self._has_objects():
                state = "is empty" if st is not None else "is missing"
                raise StoreFormatError(
                    f"store {self.root} has objects but its {INDEX_NAME} {state}; refusing "
                    "to start an empty index over them (restore the index from a snapshot "
                    "or a backup)"
                )
        try:
            return self._open_connection(immutable=False)
        except (StoreFormatError, StorageFullError) as exc:
            # A closed store in a directory this user cannot write, on read-only
            # media or on a full filesystem: SQLite cannot create (or grow) the
            # -shm a WAL reader needs. With no -wal to replay there is nothing to
            # recover, so the file can be read as it is ("immutable": SQLite then
            # assumes that nobody writes it while it is open).
            if self.read_only and _shm_refused(exc) and not _has_wal(index):
                return self._open_connection(immutable=True)
            raise

    def _open_connection(self, *, immutable: bool) -> sqlite3.Connection:
        index = self.index_path
        if self.read_only:
            flags = "mode=ro&immutable=1" if immutable else "mode=ro"
            target, uri = f"{index.resolve().as_uri()}?{flags}", True
        else:
            target, uri = str(index), False
        try:
            conn = sqlite3.connect(
                target,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                uri=uri,
            )
        except sqlite3.Error as exc:
            raise StoreFormatError(f"cannot open {index}: {exc}") from exc
        try:
            self._configure(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        index = self.index_path
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            self._retry(lambda: conn.execute("SELECT count(*) FROM sqlite_master").fetchone())
            if not self.read_only:
                mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                if str(mode).lower() != "wal":
                    raise StoreFormatError(f"cannot put {index} in WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.durability]}")
            conn.execute(f"PRAGMA cache_size = -{CACHE_SIZE_KIB}")
            if not self._retry(lambda: schema.pending(conn, str(index))):
                return
            if self.read_only:
                raise StoreFormatError(
                    f"{index} needs a schema upgrade; open the store writable once"
                )
            self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            try:
                schema.pending(conn, str(index))  # another process may have migrated
                schema.migrate(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
                raise self._busy_error() from exc
            if _is_full(exc, self.root):
                raise self._full_error(exc) from exc
            raise StoreFormatError(f"{index} is not a usable SQLite index: {exc}") from exc

    def has_running_runs(self) -> bool:
        """Whether any run is marked running: a cheap read that spares every open
        the write lock of recovering abandoned runs when none runs."""
        row = self._one("SELECT 1 FROM runs WHERE status = ? LIMIT 1", (RunStatus.RUNNING.value,))
        return row is not None

    def _current_wal(self) -> tuple[int, int] | None:
        """The identity of the -wal now next to the index, or None if there is none."""
        try:
            st = os.stat(self.index_path.with_name(INDEX_NAME + "-wal"))
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _check_wal(self, conn: sqlite3.Connection) -> None:
        """Refuse to commit when the -wal this connection writes to is no longer the
        file next to the index (deleted or replaced while the store was open).

        SQLite would go on writing to the unlinked file, and every write committed
        there vanishes when the process ends. So the transaction is rolled back,
        the frames already in that file are checkpointed into ``index.sqlite`` (the
        connection can still read them), and this repository refuses every later
        write with :class:`DamagedStoreError`.
        """
        now = self._current_wal()
        if self._wal_identity is None:
            self._wal_identity = now  # no -wal at open: this is the first one
            return
        if now == self._wal_identity:
            return
        _end_quietly(conn, "ROLLBACK")
        try:
            busy, log, copied = conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
            saved = (
                "the writes committed before it were copied into the index"
                if busy == 0 and log == copied
                else f"only {copied} of {log} WAL frames could be copied into the index"
            )
        except sqlite3.Error as exc:
            saved = f"the writes committed before it could not be copied into the index ({exc})"
        what = "was deleted" if now is None else "was replaced by another file"
        self._wal_lost = DamagedStoreError(
            f"{self.index_path.name}-wal of store {self.root} {what} while the store was "
            f"open; this write was not committed and {saved}; no further writes are "
            "accepted by this process. Close and reopen the store, then run "
            "`kontextual fsck --full`; if anything is missing, restore from a backup "
            "(`kontextual backup`) or a snapshot"
        )
        raise self._wal_lost

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close. Closing twice is fine."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return
            if self._depth:
                raise KontextualError("cannot close a repository inside its own transaction")
            self._conn = None
            try:
                if not self.read_only:
                    conn.execute(f"PRAGMA busy_timeout = {CLOSE_CHECKPOINT_TIMEOUT_MS}")
                    try:
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                    except sqlite3.OperationalError as exc:
                        # Busy: the last process to close checkpoints. Read-only:
                        # this user cannot write the index, so there is nothing of
                        # ours to checkpoint.
                        if not _is_busy(exc) and "readonly" not in str(exc):
                            raise
            finally:
                conn.close()

    # -- connection helpers ------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise KontextualError(f"repository {self.root} is closed")
        return conn

    def _busy_error(self) -> ConflictError:
        return ConflictError(
            f"store {self.root} stayed locked by another writer for more than "
            f"{self.busy_timeout:g} s"
        )

    def _retry(self, action: Callable[[], _T]) -> _T:
        """Run ``action``, retrying with jittered backoff while SQLite reports busy.

        The busy handler (``timeout=``) covers most waits, but SQLite returns
        SQLITE_BUSY without consulting it in some cases (WAL recovery by
        another connection, for one), so ``BEGIN IMMEDIATE`` retries here too.
        """
        deadline = time.monotonic() + self.busy_timeout
        delay = FIRST_BACKOFF
        while True:
            try:
                return action()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, MAX_BACKOFF)

    def _run(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        """Execute one statement after writing any buffered rows.

        Outside a transaction the statement is a read; WAL readers can still
        meet SQLITE_BUSY (during another connection's recovery), so it retries.
        """
        with self._lock:
            conn = self._connection()
            if self._pending:
                self._flush_pending(conn)
            values = tuple(params)
            with _Mapped(self, sql):
                if self._depth:
                    return conn.execute(sql, values)
                return self._retry(lambda: conn.execute(sql, values))

    def _typed_error(self, exc: BaseException, sql: str | None) -> BaseException:
        """The typed error for what SQLite (or the filesystem under it) reported
        while running ``sql``; anything that is not such an error is returned as
        it is. Every statement the repository runs goes through here (via
        :class:`_Mapped`), so no raw ``sqlite3`` error reaches a caller."""
        if isinstance(exc, UnicodeEncodeError):
            return _NotUnicode(f"string is not valid Unicode text: {exc}")
        if isinstance(exc, sqlite3.IntegrityError):
            return _constraint_error(exc)
        if not isinstance(exc, sqlite3.Error):
            return exc
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return self._busy_error()
        if _is_full(exc, self.root):
            return self._full_error(exc)
        code = _error_code(exc)
        message = str(exc)
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in message:
            return self._damaged_error(exc, sql)
        if code == _SQLITE_READONLY or "readonly" in message:
            return ReadOnlyStoreError(f"cannot write to {self.index_path}: {exc}")
        return StoreFormatError(
            f"{self.index_path} cannot be read: {exc}; run `kontextual fsck` and restore "
            "the index from a backup or snapshot if it is damaged"
        )

    def _damaged_error(self, exc: BaseException, sql: str | None) -> DamagedStoreError:
        """:class:`DamagedStoreError` naming the damaged tables."""
        tables = self._damaged_tables(sql)
        where = f" (table {', '.join(tables)})" if tables else ""
        return DamagedStoreError(
            f"the index {self.index_path} is damaged{where}: {exc}; {DAMAGE_ADVICE}"
        )

    def _damaged_tables(self, sql: str | None) -> list[str]:
        """The tables that fail ``PRAGMA quick_check(table)``: of those ``sql`` reads
        (with the shadow tables of a virtual table), or of all when it names none;
        if none fails (or the check cannot run), the tables ``sql`` names."""
        named = _statement_tables(sql)
        conn = self._conn
        if conn is None:
            return named
        try:
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND rootpage > 0"
                )
            ]
        except sqlite3.Error:
            return named
        candidates = [
            table for table in tables if any(table == n or table.startswith(f"{n}_") for n in named)
        ]
        damaged = []
        for table in candidates or tables:
            try:
                ok = conn.execute(f'PRAGMA quick_check("{table}")').fetchall() == [("ok",)]
            except sqlite3.Error:
                ok = False
            if not ok:
                damaged.append(table)
        return damaged or named

    def _full_error(self, exc: BaseException) -> StorageFullError:
        return storage_full(self.root, str(exc))

    def _missing_row(self, what: str, table: str) -> DamagedStoreError:
        """A row the schema guarantees is not there: the index is damaged."""
        return DamagedStoreError(
            f"the index {self.index_path} is damaged (table {table}): {what} is missing; "
            f"{DAMAGE_ADVICE}"
        )

    def _run_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """``executemany`` inside a transaction, with the errors :meth:`_run` maps."""
        with self._lock:
            conn = self._connection()
            if self._pending:
                self._flush_pending(conn)
            with _Mapped(self, sql):
                conn.executemany(sql, rows)

    # A string with a lone surrogate cannot be stored, so a read that binds one
    # finds nothing, as in the reference backend.

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                cursor = self._run(sql, params)
                with _Mapped(self, sql):
                    return cursor.fetchall()
            except _NotUnicode:
                return []

    def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        with self._lock:
            try:
                cursor = self._run(sql, params)
                with _Mapped(self, sql):
                    return cursor.fetchone()
            except _NotUnicode:
                return None

    def _defer(self, sql: str, row: tuple[Any, ...]) -> None:
        self._pending.setdefault(sql, []).append(row)
        self._pending_rows += 1

    def _flush_pending(self, conn: sqlite3.Connection) -> None:
        pending, self._pending = self._pending, {}
        self._pending_rows = 0
        self._pending_names.clear()
        for sql, rows in pending.items():
            with _Mapped(self, sql):
                conn.executemany(sql, rows)

    def _discard_pending(self) -> None:
        self._pending = {}
        self._pending_rows = 0
        self._pending_names.clear()

    # -- transactions ------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[bool]:
        with self._lock:
            conn = self._connection()
            if self.read_only:
                if self._full is not None:
                    raise self._full_error(self._full.__cause__ or self._full)
                raise ReadOnlyStoreError(f"store {self.root} {self._read_only_reason}")
            if self._depth:
                yield from self._savepoint(conn)
                return
            if self._wal_lost is not None:
                raise self._wal_lost
            with _Mapped(self, "BEGIN IMMEDIATE"):
                self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            self._depth = 1
            self._last = None
            try:
                yield True
                if self._pending:
                    self._flush_pending(conn)
                self._check_wal(conn)
                with _Mapped(self, "COMMIT"):
                    conn.execute("COMMIT")
            except BaseException:
                self._discard_pending()
                _end_quietly(conn, "ROLLBACK")
                raise
            finally:
                self._depth = 0
                self._last = None

    @contextmanager
    def read_view(self) -> Iterator[None]:
        """Several SELECTs that see one state: a deferred read transaction (which a
        read-only store can open too, and which blocks no writer), unless one is open."""
        with self._lock:
            conn = self._connection()
            if conn.in_transaction:
                yield
                return
            with _Mapped(self, "BEGIN"):
                self._retry(lambda: conn.execute("BEGIN"))
            try:
                yield
            except BaseException:
                _end_quietly(conn, "ROLLBACK")  # the read's own error is the one to report
                raise
            if conn.in_transaction:
                with _Mapped(self, "COMMIT"):
                    conn.execute("COMMIT")

    def _savepoint(self, conn: sqlite3.Connection) -> Iterator[bool]:
        if self._pending:
            self._flush_pending(conn)
        name = f"level{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield False
            if self._pending:
                self._flush_pending(conn)
        except BaseException:
            self._discard_pending()
            self._last = None
            if conn.in_transaction:  # some errors make SQLite roll back everything
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
            raise
        else:
            conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    # -- bulk --------------------------------------------------------------

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """New artifacts' rows (artifact, first revision, text, change record) are
        buffered and written with ``executemany``; any other statement writes the
        buffer first, so every read sees every write."""
        self._bulk += 1
        try:
            yield
        finally:
            self._bulk -= 1

    # -- primitives --------------------------------------------------------

    def next_sequence(self) -> int:
        return self.last_sequence() + 1

    def last_sequence(self) -> int:
        with self._lock:
            if self._last is not None:
                return self._last
            last: int = self._one("SELECT coalesce(max(sequence), 0) FROM changes")[0]
            if self._depth:
                self._last = last
            return last

    def insert_collection(self, collection: Collection) -> None:
        self._run(
            f"INSERT INTO collections ({_COLLECTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            (
                collection.id,
                collection.name,
                collection.description,
                collection.metadata_json,
                format_time(collection.created_at),
                collection.sequence,
            ),
        )

    def find_collection(self, collection_id: str) -> Collection | None:
        row = self._one(
            f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE id = ? AND deleted_at IS NULL",
            (collection_id,),
        )
        return None if row is None else _collection(row)

    def find_collection_by_name(self, name: str) -> Collection | None:
        row = self._one(
            f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE name = ? AND deleted_at IS NULL",
            (name,),
        )
        return None if row is None else _collection(row)

    def list_collections(self) -> list[Collection]:
        rows = self._all(
            f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE deleted_at IS NULL "
            "ORDER BY sequence"
        )
        return [_collection(row) for row in rows]

    def count_live_artifacts(self, collection_id: str) -> int:
        count: int = self._one(
            "SELECT count(*) FROM artifacts WHERE collection_id = ? AND deleted_at IS NULL",
            (collection_id,),
        )[0]
        return count

    def delete_collection(self, collection_id: str, now: datetime) -> None:
        self._run(
            "UPDATE collections SET deleted_at = ? WHERE id = ?", (format_time(now), collection_id)
        )

    def insert_artifact(
        self, artifact: Artifact, revision: ArtifactRevision, searchable: str | None
    ) -> None:
        rows: list[tuple[str, tuple[Any, ...]]] = [
            (_INSERT_ARTIFACT, _artifact_row(artifact)),
            (_INSERT_REVISION, _revision_row(revision)),
        ]
        if searchable is not None:
            rows.append((_INSERT_TEXT, (artifact.sequence, searchable)))
        rows += [
            (_INSERT_METADATA, row)
            for row in schema.metadata_rows(artifact.sequence, artifact.metadata_json)
        ]
        if not self._bulk:
            for sql, row in rows:
                self._run(sql, row)
            return
        for sql, row in rows:
            self._defer(sql, row)
        self._pending_names[(artifact.collection_id, artifact.name)] = artifact

    def replace_artifact(
        self,
        artifact: Artifact,
        revision: ArtifactRevision,
        content_changed: bool,
        searchable: str | None,
    ) -> None:
        self._run(
            "UPDATE artifacts SET name = ?, artifact_type = ?, media_type = ?, digest = ?, "
            "size = ?, revision = ?, metadata = ?, provenance = ?, updated_at = ?, run_id = ? "
            "WHERE id = ?",
            (
                artifact.name,
                artifact.artifact_type,
                artifact.media_type,
                artifact.digest,
                artifact.size,
                artifact.revision,
                artifact.metadata_json,
                artifact.provenance_json,
                format_time(artifact.updated_at),
                artifact.run_id,
                artifact.id,
            ),
        )
        self._run(_INSERT_REVISION, _revision_row(revision))
        self._run("DELETE FROM artifact_metadata WHERE artifact_sequence = ?", (artifact.sequence,))
        self._run_many(
            _INSERT_METADATA, schema.metadata_rows(artifact.sequence, artifact.metadata_json)
        )
        if content_changed:
            self._forget_text(artifact.sequence)
            if searchable is not None:
                self._run(_INSERT_TEXT, (artifact.sequence, searchable))

    def find_artifact(self, artifact_id: str) -> Artifact | None:
        row = self._one(
            f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a WHERE a.id = ? AND a.deleted_at IS NULL",
            (artifact_id,),
        )
        return None if row is None else _artifact(row)

    def find_artifact_by_name(self, collection_id: str, name: str) -> Artifact | None:
        sql = (
            f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a "
            "WHERE a.collection_id = ? AND a.name = ? AND a.deleted_at IS NULL"
        )
        with self._lock:
            if not self._pending:
                row = self._one(sql, (collection_id, name))
            else:
                # Buffered rows are only creations, all listed in _pending_names,
                # so the index plus that map is the whole truth without a flush.
                pending = self._pending_names.get((collection_id, name))
                if pending is not None:
                    return pending
                try:
                    with _Mapped(self, sql):
                        row = self._connection().execute(sql, (collection_id, name)).fetchone()
                except _NotUnicode:
                    return None
            return None if row is None else _artifact(row)

    def find_artifacts_by_names(self, collection_id: str, names: list[str]) -> dict[str, Artifact]:
        found: dict[str, Artifact] = {}
        with self._lock:
            # As in _find_artifact_by_name: buffered creations plus the index are
            # the whole truth, so this reads without flushing the buffer.
            rest = []
            for name in names:
                pending = self._pending_names.get((collection_id, name))
                if pending is None:
                    rest.append(name)
                else:
                    found[name] = pending
            conn = self._connection()
            for start in range(0, len(rest), NAMES_PER_QUERY):
                part = rest[start : start + NAMES_PER_QUERY]
                sql = (
                    f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a WHERE a.collection_id = ? "
                    f"AND a.deleted_at IS NULL AND a.name IN ({', '.join('?' * len(part))})"
                )
                with _Mapped(self, sql):
                    rows = conn.execute(sql, [collection_id, *part]).fetchall()
                found.update((artifact.name, artifact) for artifact in map(_artifact, rows))
        return found

    def delete_artifact(self, artifact_id: str, now: datetime) -> None:
        row = self._one("SELECT sequence FROM artifacts WHERE id = ?", (artifact_id,))
        if row is None:  # the contract found the artifact a moment ago
            raise self._missing_row(f"the row of artifact {artifact_id}", "artifacts")
        sequence = row[0]
        self._forget_text(sequence)
        self._run("DELETE FROM artifact_metadata WHERE artifact_sequence = ?", (sequence,))
        self._run(
            "UPDATE artifacts SET deleted_at = ? WHERE id = ?", (format_time(now), artifact_id)
        )

    def _forget_text(self, sequence: int) -> None:
        """Drop an artifact's searchable text, indexed or still in the backlog."""
        self._run("DELETE FROM artifact_text WHERE rowid = ?", (sequence,))
        self._run("DELETE FROM text_backlog WHERE sequence = ?", (sequence,))

    def query(self, query: Query) -> list[Artifact]:
        where = ["a.deleted_at IS NULL"]
        params: list[Any] = []
        if query.ids is not None:
            where.append("a.id IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(query.ids)))
        for column, value in (
            ("collection_id", query.collection_id),
            ("name", query.name),
            ("digest", None if query.digest is None else parse_digest(query.digest)),
            ("artifact_type", query.artifact_type),
        ):
            if value is not None:
                where.append(f"a.{column} = ?")
                params.append(value)
        if query.metadata is not None:
            for key, value in query.metadata.items():
                condition, values = _metadata_condition(value)
                where.append(f"{_METADATA_FILTER} artifact_metadata WHERE key = ? AND {condition})")
                params += [key, *values]
        if query.related_to is not None:
            related = query.related_to
            of_type = "" if related.relationship_type is None else " AND relationship_type = ?"
            parts = []
            if related.direction != "incoming":
                parts.append(f"SELECT target_id FROM relationships WHERE source_id = ?{of_type}")
            if related.direction != "outgoing":
                parts.append(f"SELECT source_id FROM relationships WHERE target_id = ?{of_type}")
            where.append(f"a.id IN ({' UNION '.join(parts)})")
            for _ in parts:
                params.append(related.artifact_id)
                if related.relationship_type is not None:
                    params.append(related.relationship_type)
        if query.text is None:
            return self._select(query, "artifacts a", "a.sequence", where, params)
        self._index_text_if_behind()
        terms = text.parse_terms(query.text)
        # index_text() in another process moves rows from the backlog into
        # FTS5; one read transaction sees each row in exactly one of the two.
        found = []
        with self.read_view():
            for backlog in (False, True):
                source, order, conditions, values = self._text_source(query, terms, backlog=backlog)
                if backlog:
                    # "+" keeps SQLite from driving the backlog half by the
                    # metadata matches (thousands of probes into a small
                    # table); the backlog is scanned and each row checked.
                    where = ["+" + c if c.startswith(_METADATA_FILTER) else c for c in where]
                found.append(
                    self._select(query, source, order, where + conditions, params + values)
                )
        merged = list(heapq.merge(*found, key=lambda artifact: artifact.sequence))
        return merged if query.limit is None else merged[: query.limit]

    def _text_source(
        self, query: Query, terms: Sequence[str], *, backlog: bool
    ) -> tuple[str, str, list[str], list[Any]]:
        """FROM, ORDER BY and conditions that match ``terms`` in FTS5 or in the backlog."""
        table, key = ("text_backlog", "t.sequence") if backlog else ("artifact_text", "t.rowid")
        if (
            query.ids is not None
            or query.name is not None
            or query.digest is not None
            or query.related_to is not None
        ):
            # A few candidates from an index of artifacts, each checked
            # against its own text row (CROSS JOIN fixes the loop order).
            source, order = f"artifacts a CROSS JOIN {table} t ON {key} = a.sequence", "a.sequence"
        else:
            # The text table drives and yields rows in sequence order, so a
            # LIMIT stops the scan early instead of sorting every match
            # (CROSS JOIN: the planner would rather scan artifacts otherwise).
            source, order = f"{table} t CROSS JOIN artifacts a ON a.sequence = {key}", key
        conditions: list[str] = []
        values: list[Any] = []
        indexed = [] if backlog else [term for term in terms if len(term) >= _TRIGRAM]
        if indexed:
            conditions.append("t.artifact_text MATCH ?")
            values.append(" AND ".join(_match_phrase(term) for term in indexed))
        for term in terms:
            if term not in indexed:
                conditions.append("instr(t.folded, ?) > 0")
                values.append(term)
        return source, order, conditions, values

    def _select(
        self, query: Query, source: str, order: str, where: list[str], params: list[Any]
    ) -> list[Artifact]:
        if query.after is not None:
            where, params = [*where, f"{order} > ?"], [*params, query.after]
        sql = (
            f"SELECT {_ARTIFACT_COLUMNS} FROM {source} WHERE {' AND '.join(where)} ORDER BY {order}"
        )
        if query.limit is not None:
            sql, params = sql + " LIMIT ?", [*params, query.limit]
        return [_artifact(row) for row in self._all(sql, params)]

    # -- text backlog (ADR 0004) -------------------------------------------

    def index_text(self, *, progress: Callable[[int], None] | None = None) -> int:
        """Move every backlog row into the FTS5 index; return how many moved.

        Runs in transactions of :data:`INDEX_TEXT_BATCH` rows and calls
        ``progress(rows)`` after each. Queries return the same results before
        and after; afterwards they read the index instead of scanning.
        """
        moved = 0
        while True:
            with self.transaction():
                last, count = self._one(
                    "SELECT max(sequence), count(*) FROM "
                    "(SELECT sequence FROM text_backlog ORDER BY sequence LIMIT ?)",
                    (INDEX_TEXT_BATCH,),
                )
                if count:
                    self._run(
                        "INSERT INTO artifact_text (rowid, folded) SELECT sequence, "
                        "folded FROM text_backlog WHERE sequence <= ? ORDER BY sequence",
                        (last,),
                    )
                    self._run("DELETE FROM text_backlog WHERE sequence <= ?", (last,))
            if not count:
                return moved
            moved += count
            if progress is not None:
                progress(count)

    def count_text_backlog(self) -> int:
        """Documents whose text waits in the backlog for :meth:`index_text`."""
        count: int = self._one("SELECT count(*) FROM text_backlog")[0]
        return count

    def text_index_behind(self) -> bool:
        """True when more than ``text_backlog_limit`` documents wait in the backlog:
        a text query on a writable store then indexes them before it runs."""
        return (
            self._one("SELECT 1 FROM text_backlog LIMIT 1 OFFSET ?", (self.text_backlog_limit,))
            is not None
        )

    def _index_text_if_behind(self) -> None:
        """Index the backlog before a text query when it holds more than the limit."""
        with self._lock:
            if self.read_only or self._depth or self._connection().in_transaction:
                return
            behind = self.text_index_behind()
        if behind:
            # Another writer kept the lock past the busy timeout: scanning the
            # backlog still gives the right answer, only slower.
            with suppress(ConflictError):
                self.index_text()

    def list_revisions(self, artifact_id: str) -> list[ArtifactRevision]:
        rows = self._all(
            f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE artifact_id = ? ORDER BY revision",
            (artifact_id,),
        )
        return [_revision(row) for row in rows]

    def find_revision(self, artifact_id: str, revision: int) -> ArtifactRevision | None:
        row = self._one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE artifact_id = ? AND revision = ?",
            (artifact_id, revision),
        )
        return None if row is None else _revision(row)

    def insert_relationship(self, relationship: Relationship) -> None:
        self._run(
            f"INSERT INTO relationships ({_RELATIONSHIP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                relationship.id,
                relationship.source_id,
                relationship.target_id,
                relationship.relationship_type,
                relationship.metadata_json,
                format_time(relationship.created_at),
                relationship.sequence,
            ),
        )

    def find_relationship(self, relationship_id: str) -> Relationship | None:
        row = self._one(
            f"SELECT {_RELATIONSHIP_COLUMNS} FROM relationships WHERE id = ?", (relationship_id,)
        )
        return None if row is None else _relationship(row)

    def find_relationship_by_key(
        self, source_id: str, target_id: str, relationship_type: str
    ) -> Relationship | None:
        row = self._one(
            f"SELECT {_RELATIONSHIP_COLUMNS} FROM relationships "
            "WHERE source_id = ? AND target_id = ? AND relationship_type = ?",
            (source_id, target_id, relationship_type),
        )
        return None if row is None else _relationship(row)

    def list_relationships(
        self, artifact_id: str | None, direction: str, relationship_type: str | None
    ) -> list[Relationship]:
        where: list[str] = []
        params: list[Any] = []
        if artifact_id is not None:
            sides = []
            if direction != "incoming":
                sides.append("source_id = ?")
            if direction != "outgoing":
                sides.append("target_id = ?")
            where.append(f"({' OR '.join(sides)})")
            params += [artifact_id] * len(sides)
        if relationship_type is not None:
            where.append("relationship_type = ?")
            params.append(relationship_type)
        sql = f"SELECT {_RELATIONSHIP_COLUMNS} FROM relationships"
        if where:
            sql += f" WHERE {' AND '.join(where)}"
        return [_relationship(row) for row in self._all(sql + " ORDER BY sequence", params)]

    def delete_relationship(self, relationship_id: str) -> None:
        self._run("DELETE FROM relationships WHERE id = ?", (relationship_id,))

    def append_change(self, change: ChangeRecord) -> None:
        if self._bulk:
            self._defer(_INSERT_CHANGE, _change_row(change))
            if self._pending_rows >= BULK_ROWS:
                self._flush_pending(self._connection())
        else:
            self._run(_INSERT_CHANGE, _change_row(change))
        self._last = change.sequence

    def list_changes(
        self, since: int, entity_id: str | None, limit: int | None
    ) -> list[ChangeRecord]:
        sql = f"SELECT {_CHANGE_COLUMNS} FROM changes WHERE sequence > ?"
        params: list[Any] = [since]
        if entity_id is not None:
            sql += " AND entity_id = ?"
            params.append(entity_id)
        sql += " ORDER BY sequence"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_change(row) for row in self._all(sql, params)]

    def all_collections(self) -> list[tuple[Collection, datetime | None]]:
        rows = self._all(
            f"SELECT {_COLLECTION_COLUMNS}, deleted_at FROM collections ORDER BY sequence"
        )
        return [(_collection(row), _maybe_time(row[6])) for row in rows]

    def all_artifacts(self) -> list[tuple[Artifact, datetime | None]]:
        rows = self._all(
            f"SELECT {_ARTIFACT_COLUMNS}, a.deleted_at FROM artifacts a ORDER BY a.sequence"
        )
        return [(_artifact(row), _maybe_time(row[14])) for row in rows]

    def all_revisions(self) -> list[ArtifactRevision]:
        rows = self._all(f"SELECT {_REVISION_COLUMNS} FROM revisions ORDER BY change_sequence")
        return [_revision(row) for row in rows]

    def all_steps(self) -> list[WorkflowStep]:
        return [
            _step(row) for row in self._all(f"SELECT {_STEP_COLUMNS} FROM steps ORDER BY sequence")
        ]

    # -- runs and context --------------------------------------------------

    def insert_run(self, run: OperationRun) -> None:
        self._run(_INSERT_RUN, (run.id, *_run_values(run)))

    def replace_run(self, run: OperationRun) -> None:
        self._run(_UPDATE_RUN, (*_run_values(run), run.id))

    def find_run(self, run_id: str) -> OperationRun | None:
        row = self._one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return None if row is None else _run_record(row)

    def find_runs(self, run_ids: list[str]) -> list[OperationRun]:
        rows = self._all(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(run_ids),),
        )
        return [_run_record(row) for row in rows]

    def list_runs(self, status: str | None) -> list[OperationRun]:
        if status is None:
            rows = self._all(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY sequence")
        else:
            rows = self._all(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = ? ORDER BY sequence", (status,)
            )
        return [_run_record(row) for row in rows]

    def insert_step(self, step: WorkflowStep) -> None:
        self._run(_INSERT_STEP, (step.id, *_step_values(step)))

    def replace_step(self, step: WorkflowStep) -> None:
        self._run(_UPDATE_STEP, (*_step_values(step), step.id))

    def find_step(self, step_id: str) -> WorkflowStep | None:
        row = self._one(f"SELECT {_STEP_COLUMNS} FROM steps WHERE id = ?", (step_id,))
        return None if row is None else _step(row)

    def list_steps(self, run_id: str) -> list[WorkflowStep]:
        rows = self._all(
            f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY position", (run_id,)
        )
        return [_step(row) for row in rows]

    def insert_bundle(self, bundle: InputBundle) -> None:
        self._run(
            "INSERT INTO bundles (id, run_id, parameters, created_at, sequence) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                bundle.id,
                bundle.run_id,
                bundle.parameters_json,
                format_time(bundle.created_at),
                bundle.sequence,
            ),
        )
        self._run_many(
            "INSERT INTO bundle_inputs (bundle_id, position, artifact_id, revision, digest, role) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                (bundle.id, position, ref.artifact_id, ref.revision, ref.digest, ref.role)
                for position, ref in enumerate(bundle.inputs, 1)
            ],
        )

    def list_bundles(self, run_id: str | None) -> list[InputBundle]:
        if run_id is None:
            return _bundles(self._all(f"{_BUNDLE_SELECT} ORDER BY b.sequence, i.position"))
        return _bundles(
            self._all(
                f"{_BUNDLE_SELECT} WHERE b.run_id = ? ORDER BY b.sequence, i.position", (run_id,)
            )
        )

    def bundles_consuming(
        self, artifact_id: str | None, revision: int | None, digest: str | None
    ) -> list[InputBundle]:
        where: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("artifact_id", artifact_id),
            ("revision", revision),
            ("digest", digest),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        matching = "SELECT bundle_id FROM bundle_inputs"
        if where:
            matching += f" WHERE {' AND '.join(where)}"
        return _bundles(
            self._all(
                f"{_BUNDLE_SELECT} WHERE b.id IN ({matching}) ORDER BY b.sequence, i.position",
                params,
            )
        )

    def list_outputs(self, run_id: str) -> list[ArtifactRevision]:
        rows = self._all(
            f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE run_id = ? ORDER BY change_sequence",
            (run_id,),
        )
        return [_revision(row) for row in rows]

    def revisions_with_digest(self, digest: str) -> list[ArtifactRevision]:
        rows = self._all(
            f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE digest = ? ORDER BY change_sequence",
            (digest,),
        )
        return [_revision(row) for row in rows]

    def store_manifest(self, manifest: RunManifest) -> None:
        self._run("DELETE FROM manifest_refs WHERE run_id = ?", (manifest.run_id,))
        self._run("DELETE FROM manifests WHERE run_id = ?", (manifest.run_id,))
        self._run(
            "INSERT INTO manifests (run_id, operation, status, parameters, steps, diagnostics, "
            "error, created_at, started_at, finished_at, final) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                manifest.run_id,
                manifest.operation,
                manifest.status,
                manifest.parameters_json,
                json.dumps(list(manifest.steps), separators=(",", ":"), ensure_ascii=False),
                manifest.diagnostics_json,
                manifest.error,
                format_time(manifest.created_at),
                _format_maybe(manifest.started_at),
                _format_maybe(manifest.finished_at),
                int(manifest.final),
            ),
        )
        self._run_many(
            "INSERT INTO manifest_refs (run_id, direction, position, artifact_id, revision, "
            "digest, role) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    manifest.run_id,
                    direction,
                    position,
                    ref.artifact_id,
                    ref.revision,
                    ref.digest,
                    ref.role,
                )
                for direction, refs in (("input", manifest.inputs), ("output", manifest.outputs))
                for position, ref in enumerate(refs, 1)
            ],
        )

    def find_manifest(self, run_id: str) -> RunManifest | None:
        with self.read_view():
            row = self._one(
                f"SELECT {_MANIFEST_COLUMNS} FROM manifests m WHERE m.run_id = ?", (run_id,)
            )
            if row is None:
                return None
            refs = self._all(
                f"SELECT {_MANIFEST_REF_COLUMNS} FROM manifest_refs WHERE run_id = ? "
                "ORDER BY direction, position",
                (run_id,),
            )
        return _manifest(row, refs)

    def list_manifests(self) -> list[RunManifest]:
        with self.read_view():
            rows = self._all(
                f"SELECT {_MANIFEST_COLUMNS} FROM manifests m JOIN runs r ON r.id = m.run_id "
                "ORDER BY r.sequence"
            )
            refs: dict[str, list[Any]] = {}
            for ref in self._all(
                f"SELECT {_MANIFEST_REF_COLUMNS} FROM manifest_refs "
                "ORDER BY run_id, direction, position"
            ):
                refs.setdefault(ref[0], []).append(ref)
        return [_manifest(row, refs.get(row[0], [])) for row in rows]

    def insert_context_package(self, package: ContextPackage) -> None:
        self._run(
            "INSERT INTO context_packages (id, name, metadata, created_at, sequence) "
            "VALUES (?, ?, ?, ?, ?)",
            (
                package.id,
                package.name,
                package.metadata_json,
                format_time(package.created_at),
                package.sequence,
            ),
        )
        self._run_many(
            "INSERT INTO context_references (package_id, position, kind, target_id, revision, "
            "digest, system, uri, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    package.id,
                    position,
                    ref.kind,
                    ref.target_id,
                    ref.revision,
                    ref.digest,
                    ref.system,
                    ref.uri,
                    ref.note,
                )
                for position, ref in enumerate(package.references, 1)
            ],
        )

    def find_context_package(self, package_id: str) -> ContextPackage | None:
        found = _packages(
            self._all(f"{_PACKAGE_SELECT} WHERE p.id = ? ORDER BY r.position", (package_id,))
        )
        return found[0] if found else None

    def list_context_packages(self) -> list[ContextPackage]:
        return _packages(self._all(f"{_PACKAGE_SELECT} ORDER BY p.sequence, r.position"))

    def insert_external_reference(self, reference: ExternalMemoryReference) -> None:
        self._run(
            f"INSERT INTO external_references ({_EXTERNAL_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                reference.id,
                reference.system,
                reference.external_id,
                reference.uri,
                reference.artifact_id,
                reference.revision,
                reference.digest,
                reference.recorded_by,
                reference.metadata_json,
                format_time(reference.recorded_at),
                reference.sequence,
            ),
        )

    def find_external_reference(self, reference_id: str) -> ExternalMemoryReference | None:
        row = self._one(
            f"SELECT {_EXTERNAL_COLUMNS} FROM external_references WHERE id = ?", (reference_id,)
        )
        return None if row is None else _external(row)

    def list_external_references(self) -> list[ExternalMemoryReference]:
        return [
            _external(row)
            for row in self._all(
                f"SELECT {_EXTERNAL_COLUMNS} FROM external_references ORDER BY sequence"
            )
        ]


class SQLiteKnowledgeRepository(KnowledgeRepository):
    """The durable repository: ``<store>/objects`` for bodies (:class:`ObjectStore`),
    ``<store>/index.sqlite`` for everything else (:class:`SQLiteIndex`).

    Open with :meth:`open` (or the constructor, which takes the same
    arguments). An existing store is opened (and its index migrated); a path
    that holds no store raises :class:`StoreNotFound` and nothing is created.
    Creating is explicit: with ``create=True`` a missing or empty directory
    becomes a new store. Anything else is refused with
    :class:`StoreFormatError`. ``read_only`` opens without writing anything;
    a store this process cannot write is opened read-only by itself.
    """

    index: SQLiteIndex
    bodies: ObjectStore

    def __init__(
        self,
        path: str | Path,
        durability: Durability | str = Durability.FULL,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        read_only: bool = False,
        create: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        text_backlog_limit: int = DEFAULT_TEXT_BACKLOG_LIMIT,
    ) -> None:
        _check_options(busy_timeout, text_backlog_limit)
        root = Path(path)
        if not create:
            _require_store(root)
        writable = not read_only and not _unwritable_store(root)
        objects = ObjectStore(root, durability=durability, create=writable, read_only=not writable)
        try:
            index = SQLiteIndex(
                root,
                objects.durability,
                read_only=not writable,
                # Why writes are refused: asked for, or the store cannot be written here.
                read_only_reason="is open read-only"
                if read_only
                else "cannot be written here (a read-only filesystem or no write permission), "
                "so it was opened read-only",
                has_objects=lambda: next(objects.all(), None) is not None,
                busy_timeout=busy_timeout,
                text_backlog_limit=text_backlog_limit,
            )
        except BaseException:
            objects.close()
            raise
        super().__init__(index, objects, clock=clock, ids=ids)
        if not index.read_only:
            try:
                # Runs left running by dead holders or expired leases are
                # abandoned; recover_abandoned re-reads under the write lock, so
                # two processes opening at once recover each run once.
                if index.has_running_runs():
                    self.recover_abandoned()
            except BaseException:
                self.close()
                raise

    @classmethod
    def open(
        cls,
        path: str | Path,
        durability: Durability | str = Durability.FULL,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        read_only: bool = False,
        create: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        text_backlog_limit: int = DEFAULT_TEXT_BACKLOG_LIMIT,
    ) -> SQLiteKnowledgeRepository:
        """Open the store at ``path``; with ``create=True``, make it first if it is
        missing (a missing or empty directory). Without it, a path that holds no
        store raises :class:`StoreNotFound` and nothing is created."""
        return cls(
            path,
            durability,
            clock=clock,
            ids=ids,
            read_only=read_only,
            create=create,
            busy_timeout=busy_timeout,
            text_backlog_limit=text_backlog_limit,
        )

    def __repr__(self) -> str:
        return f"SQLiteKnowledgeRepository({str(self.root)!r}, {self.durability.value!r})"

    @property
    def root(self) -> Path:
        return self.index.root

    @property
    def objects(self) -> ObjectStore:
        return self.bodies

    @property
    def index_path(self) -> Path:
        return self.index.index_path

    @property
    def durability(self) -> Durability:
        return self.bodies.durability

    @property
    def read_only(self) -> bool:
        return self.index.read_only

    @property
    def text_backlog_limit(self) -> int:
        return self.index.text_backlog_limit

    def count_text_backlog(self) -> int:
        return self.index.count_text_backlog()

    def text_index_behind(self) -> bool:
        return self.index.text_index_behind()

    def object_path(self, digest: str) -> Path | None:
        """The object file of ``digest``, or None if it is not (yet) in place."""
        parsed = parse_digest(digest)
        path = self.bodies.path(parsed)
        return path if self.bodies.exists(parsed) and path.is_file() else None
