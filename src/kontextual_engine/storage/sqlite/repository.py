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

import heapq
import json
import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from ...digests import parse_digest
from ...errors import (
    ConflictError,
    IntegrityError,
    KontextualError,
    ReadOnlyStoreError,
    StoreFormatError,
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
    NewArtifact,
    OperationRun,
    PutResult,
    Query,
    Relationship,
    RunManifest,
    RunStatus,
    WorkflowStep,
    format_time,
)
from .. import text
from ..contract import KnowledgeRepository
from ..ids import Clock, IdSource
from ..objects import Durability, ObjectStore
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


def _time(value: str) -> datetime:
    """Parse what :func:`format_time` wrote (``...T..:..:...ffffffZ``), fast."""
    return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)


def _maybe_time(value: str | None) -> datetime | None:
    return None if value is None else _time(value)


def _format_maybe(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


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


def _collection(row: Any) -> Collection:
    return Collection(row[0], row[1], row[2], row[3], _time(row[4]), row[5])


def _relationship(row: Any) -> Relationship:
    return Relationship(row[0], row[1], row[2], row[3], row[4], _time(row[5]), row[6])


def _change(row: Any) -> ChangeRecord:
    return ChangeRecord(
        row[0], row[1], row[2], row[3], _time(row[4]), row[5], row[6], row[7], row[8]
    )


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


class SQLiteKnowledgeRepository(KnowledgeRepository):
    """The durable backend: ``<store>/objects`` for bodies, ``<store>/index.sqlite``.

    Open with :meth:`open` (or the constructor, which takes the same
    arguments). A missing or empty directory becomes a new store; an existing
    store is opened (and its index migrated); anything else is refused with
    :class:`StoreFormatError`. ``read_only`` opens without writing anything.

    Searchable text is written to a backlog and indexed in batches (ADR
    0004); text queries read the index and the backlog, so they see every
    write. ``text_backlog_limit`` is how many backlog rows a text query scans
    before it indexes them first; :meth:`index_text` indexes them on demand.
    """

    def __init__(
        self,
        path: str | Path,
        durability: Durability | str = Durability.FULL,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        read_only: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        text_backlog_limit: int = DEFAULT_TEXT_BACKLOG_LIMIT,
    ) -> None:
        super().__init__(clock=clock, ids=ids)
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
        self.text_backlog_limit = text_backlog_limit
        self.root = Path(path)
        self.read_only = bool(read_only) or _unwritable_store(self.root)
        self.busy_timeout = float(busy_timeout)
        self.objects = ObjectStore(
            self.root, durability=durability, create=not self.read_only, read_only=self.read_only
        )
        self.durability = self.objects.durability
        self._lock = threading.RLock()
        self._depth = 0
        self._batch: AbstractContextManager[ObjectStore] | None = None
        self._last: int | None = None  # newest sequence, valid inside a transaction
        self._bulk = 0
        self._pending: dict[str, list[tuple[Any, ...]]] = {}
        self._pending_rows = 0
        self._pending_names: dict[tuple[str, str], Artifact] = {}
        self._conn: sqlite3.Connection | None = self._connect()
        if not self.read_only:
            try:
                self._recover_on_open()
            except BaseException:
                self._conn.close()
                self._conn = None
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
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        text_backlog_limit: int = DEFAULT_TEXT_BACKLOG_LIMIT,
    ) -> SQLiteKnowledgeRepository:
        return cls(
            path,
            durability,
            clock=clock,
            ids=ids,
            read_only=read_only,
            busy_timeout=busy_timeout,
            text_backlog_limit=text_backlog_limit,
        )

    def __repr__(self) -> str:
        return f"SQLiteKnowledgeRepository({str(self.root)!r}, {self.durability.value!r})"

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
            if next(self.objects.all(), None) is not None:
                state = "is empty" if st is not None else "is missing"
                raise StoreFormatError(
                    f"store {self.root} has objects but its {INDEX_NAME} {state}; refusing "
                    "to start an empty index over them (restore the index from a snapshot "
                    "or a backup)"
                )
        try:
            return self._open_connection(immutable=False)
        except StoreFormatError as exc:
            # A closed store in a directory this user cannot write: SQLite cannot
            # create the -shm a WAL reader needs. With no -wal there is nothing to
            # recover, so the file can be read as it is.
            if (
                self.read_only
                and "readonly" in str(exc)
                and not index.with_name(INDEX_NAME + "-wal").exists()
            ):
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
            raise StoreFormatError(f"{index} is not a usable SQLite index: {exc}") from exc

    def _recover_on_open(self) -> None:
        """Mark runs left running by dead holders or expired leases as abandoned.

        The read first spares every open the write lock when nothing runs;
        :meth:`recover_abandoned` re-reads under the lock, so two processes
        opening at once recover each run once.
        """
        if (
            self._one("SELECT 1 FROM runs WHERE status = ? LIMIT 1", (RunStatus.RUNNING.value,))
            is not None
        ):
            self.recover_abandoned()

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
                    self.objects.close()
            finally:
                conn.close()

    def __enter__(self) -> SQLiteKnowledgeRepository:
        return self

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
            try:
                if self._depth:
                    return conn.execute(sql, values)
                return self._retry(lambda: conn.execute(sql, values))
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise self._busy_error() from exc
                raise self._database_error(exc) from exc
            except sqlite3.IntegrityError as exc:
                raise _constraint_error(exc) from exc
            except sqlite3.DatabaseError as exc:
                raise self._database_error(exc) from exc
            except UnicodeEncodeError as exc:
                raise _NotUnicode(f"string is not valid Unicode text: {exc}") from exc

    def _database_error(self, exc: sqlite3.DatabaseError) -> KontextualError:
        """A typed error for what SQLite reports about the index file itself."""
        if "readonly" in str(exc):
            return ReadOnlyStoreError(f"cannot write to {self.index_path}: {exc}")
        return StoreFormatError(
            f"{self.index_path} cannot be read: {exc}; run `kontextual fsck` and restore "
            "the index from a backup or snapshot if it is damaged"
        )

    def _run_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """``executemany`` inside a transaction, with the errors :meth:`_run` maps."""
        with self._lock:
            conn = self._connection()
            if self._pending:
                self._flush_pending(conn)
            try:
                conn.executemany(sql, rows)
            except sqlite3.IntegrityError as exc:
                raise _constraint_error(exc) from exc
            except UnicodeEncodeError as exc:
                raise ValidationError(f"string is not valid Unicode text: {exc}") from exc

    # A string with a lone surrogate cannot be stored, so a read that binds one
    # finds nothing, as in the reference backend.

    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._run(sql, params).fetchall()
            except _NotUnicode:
                return []

    def _one(self, sql: str, params: Iterable[Any] = ()) -> Any:
        with self._lock:
            try:
                return self._run(sql, params).fetchone()
            except _NotUnicode:
                return None

    def _defer(self, sql: str, row: tuple[Any, ...]) -> None:
        self._pending.setdefault(sql, []).append(row)
        self._pending_rows += 1

    def _flush_pending(self, conn: sqlite3.Connection) -> None:
        pending, self._pending = self._pending, {}
        self._pending_rows = 0
        self._pending_names.clear()
        try:
            for sql, rows in pending.items():
                conn.executemany(sql, rows)
        except sqlite3.IntegrityError as exc:
            raise _constraint_error(exc) from exc
        except UnicodeEncodeError as exc:
            raise ValidationError(f"string is not valid Unicode text: {exc}") from exc

    def _discard_pending(self) -> None:
        self._pending = {}
        self._pending_rows = 0
        self._pending_names.clear()

    # -- transactions ------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._lock:
            conn = self._connection()
            if self.read_only:
                raise ReadOnlyStoreError(f"store {self.root} is open read-only")
            if self._depth:
                yield from self._savepoint(conn)
                return
            try:
                self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise self._busy_error() from exc
                raise
            self._depth = 1
            self._last = None
            try:
                yield
                if self._pending:
                    self._flush_pending(conn)
                self._end_batch(None)
                conn.execute("COMMIT")
            except BaseException as exc:
                self._discard_pending()
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                self._end_batch(exc)
                raise
            finally:
                self._depth = 0
                self._last = None

    @contextmanager
    def _consistent_read(self) -> Iterator[None]:
        """Several SELECTs that see one state: a deferred read transaction (which a
        read-only store can open too, and which blocks no writer), unless one is open."""
        with self._lock:
            conn = self._connection()
            if conn.in_transaction:
                yield
                return
            self._retry(lambda: conn.execute("BEGIN"))
            try:
                yield
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    def _savepoint(self, conn: sqlite3.Connection) -> Iterator[None]:
        if self._pending:
            self._flush_pending(conn)
        name = f"level{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        self._depth += 1
        try:
            yield
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

    def _end_batch(self, exc: BaseException | None) -> None:
        """Leave the object store's batch: flush staged bodies (also on failure)."""
        batch, self._batch = self._batch, None
        if batch is None:
            return
        if exc is None:
            batch.__exit__(None, None, None)
        else:
            batch.__exit__(type(exc), exc, exc.__traceback__)

    # -- bulk --------------------------------------------------------------

    def put_artifacts(
        self, collection_id: str, items: Iterable[NewArtifact], *, run_id: str | None = None
    ) -> list[PutResult]:
        with self.transaction():
            self._bulk += 1
            try:
                return super().put_artifacts(collection_id, items, run_id=run_id)
            finally:
                self._bulk -= 1

    def restore(self, records: Mapping[str, list[Any]], bodies: Callable[[str], BinaryIO]) -> None:
        """The contract's restore, with new artifacts and change records written in
        bulk (``executemany``) as :meth:`put_artifacts` writes them."""
        with self.transaction():
            self._bulk += 1
            try:
                super().restore(records, bodies)
            finally:
                self._bulk -= 1

    # -- primitives --------------------------------------------------------

    def _next_sequence(self) -> int:
        return self._last_sequence() + 1

    def _last_sequence(self) -> int:
        with self._lock:
            if self._last is not None:
                return self._last
            last: int = self._one("SELECT coalesce(max(sequence), 0) FROM changes")[0]
            if self._depth:
                self._last = last
            return last

    def _store_body(self, content: bytes) -> tuple[str, int]:
        self._join_batch()
        return self.objects.add(content), len(content)

    def _store_body_stream(self, stream: BinaryIO) -> tuple[str, int]:
        self._join_batch()
        return self.objects.add_stream(stream)

    def _join_batch(self) -> None:
        """Inside a transaction, bodies are staged and flushed together before it commits."""
        if self._batch is None and self._depth:
            batch = self.objects.batch()
            batch.__enter__()
            self._batch = batch

    def _load_body(self, digest: str) -> bytes:
        return self.objects.get(digest, verify=True)

    def _insert_collection(self, collection: Collection) -> None:
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

    def _find_collection(self, collection_id: str) -> Collection | None:
        row = self._one(
            f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE id = ? AND deleted_at IS NULL",
            (collection_id,),
        )
        return None if row is None else _collection(row)

    def _find_collection_by_name(self, name: str) -> Collection | None:
        row = self._one(
            f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE name = ? AND deleted_at IS NULL",
            (name,),
        )
        return None if row is None else _collection(row)

    def _list_collections(self) -> list[Collection]:
        rows = self._all(
            f"SELECT {_COLLECTION_COLUMNS} FROM collections WHERE deleted_at IS NULL "
            "ORDER BY sequence"
        )
        return [_collection(row) for row in rows]

    def _count_live_artifacts(self, collection_id: str) -> int:
        count: int = self._one(
            "SELECT count(*) FROM artifacts WHERE collection_id = ? AND deleted_at IS NULL",
            (collection_id,),
        )[0]
        return count

    def _delete_collection(self, collection_id: str, now: datetime) -> None:
        self._run(
            "UPDATE collections SET deleted_at = ? WHERE id = ?", (format_time(now), collection_id)
        )

    def _insert_artifact(
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

    def _replace_artifact(
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

    def _find_artifact(self, artifact_id: str) -> Artifact | None:
        row = self._one(
            f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a WHERE a.id = ? AND a.deleted_at IS NULL",
            (artifact_id,),
        )
        return None if row is None else _artifact(row)

    def _find_artifact_by_name(self, collection_id: str, name: str) -> Artifact | None:
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
                    row = self._connection().execute(sql, (collection_id, name)).fetchone()
                except UnicodeEncodeError:
                    return None
            return None if row is None else _artifact(row)

    def _find_artifacts_by_names(self, collection_id: str, names: list[str]) -> dict[str, Artifact]:
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
                rows = conn.execute(
                    f"SELECT {_ARTIFACT_COLUMNS} FROM artifacts a WHERE a.collection_id = ? "
                    f"AND a.deleted_at IS NULL AND a.name IN ({', '.join('?' * len(part))})",
                    [collection_id, *part],
                ).fetchall()
                found.update((artifact.name, artifact) for artifact in map(_artifact, rows))
        return found

    def _delete_artifact(self, artifact_id: str, now: datetime) -> None:
        sequence = self._one("SELECT sequence FROM artifacts WHERE id = ?", (artifact_id,))[0]
        self._forget_text(sequence)
        self._run("DELETE FROM artifact_metadata WHERE artifact_sequence = ?", (sequence,))
        self._run(
            "UPDATE artifacts SET deleted_at = ? WHERE id = ?", (format_time(now), artifact_id)
        )

    def _forget_text(self, sequence: int) -> None:
        """Drop an artifact's searchable text, indexed or still in the backlog."""
        self._run("DELETE FROM artifact_text WHERE rowid = ?", (sequence,))
        self._run("DELETE FROM text_backlog WHERE sequence = ?", (sequence,))

    def _query(self, query: Query) -> list[Artifact]:
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
        with self._consistent_read():
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

    def _list_revisions(self, artifact_id: str) -> list[ArtifactRevision]:
        rows = self._all(
            f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE artifact_id = ? ORDER BY revision",
            (artifact_id,),
        )
        return [_revision(row) for row in rows]

    def _find_revision(self, artifact_id: str, revision: int) -> ArtifactRevision | None:
        row = self._one(
            f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE artifact_id = ? AND revision = ?",
            (artifact_id, revision),
        )
        return None if row is None else _revision(row)

    def _insert_relationship(self, relationship: Relationship) -> None:
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

    def _find_relationship(self, relationship_id: str) -> Relationship | None:
        row = self._one(
            f"SELECT {_RELATIONSHIP_COLUMNS} FROM relationships WHERE id = ?", (relationship_id,)
        )
        return None if row is None else _relationship(row)

    def _find_relationship_by_key(
        self, source_id: str, target_id: str, relationship_type: str
    ) -> Relationship | None:
        row = self._one(
            f"SELECT {_RELATIONSHIP_COLUMNS} FROM relationships "
            "WHERE source_id = ? AND target_id = ? AND relationship_type = ?",
            (source_id, target_id, relationship_type),
        )
        return None if row is None else _relationship(row)

    def _list_relationships(
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

    def _delete_relationship(self, relationship_id: str) -> None:
        self._run("DELETE FROM relationships WHERE id = ?", (relationship_id,))

    def _append_change(self, change: ChangeRecord) -> None:
        if self._bulk:
            self._defer(_INSERT_CHANGE, _change_row(change))
            if self._pending_rows >= BULK_ROWS:
                self._flush_pending(self._connection())
        else:
            self._run(_INSERT_CHANGE, _change_row(change))
        self._last = change.sequence

    def _list_changes(
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

    def _all_collections(self) -> list[tuple[Collection, datetime | None]]:
        rows = self._all(
            f"SELECT {_COLLECTION_COLUMNS}, deleted_at FROM collections ORDER BY sequence"
        )
        return [(_collection(row), _maybe_time(row[6])) for row in rows]

    def _all_artifacts(self) -> list[tuple[Artifact, datetime | None]]:
        rows = self._all(
            f"SELECT {_ARTIFACT_COLUMNS}, a.deleted_at FROM artifacts a ORDER BY a.sequence"
        )
        return [(_artifact(row), _maybe_time(row[14])) for row in rows]

    def _all_revisions(self) -> list[ArtifactRevision]:
        rows = self._all(f"SELECT {_REVISION_COLUMNS} FROM revisions ORDER BY change_sequence")
        return [_revision(row) for row in rows]

    def _all_steps(self) -> list[WorkflowStep]:
        return [
            _step(row) for row in self._all(f"SELECT {_STEP_COLUMNS} FROM steps ORDER BY sequence")
        ]

    # -- objects -----------------------------------------------------------

    def open_object(self, digest: str) -> BinaryIO:
        """A reader streaming the body from its file; it re-hashes what it reads and
        raises :class:`CorruptObjectError` at the end if the bytes do not match."""
        return self.objects.open(parse_digest(digest), verify=True)

    def object_path(self, digest: str) -> Path | None:
        """The object file of ``digest``, or None if it is not (yet) in place."""
        parsed = parse_digest(digest)
        path = self.objects.path(parsed)
        return path if self.objects.exists(parsed) and path.is_file() else None

    # -- runs and context --------------------------------------------------

    def _insert_run(self, run: OperationRun) -> None:
        self._run(_INSERT_RUN, (run.id, *_run_values(run)))

    def _replace_run(self, run: OperationRun) -> None:
        self._run(_UPDATE_RUN, (*_run_values(run), run.id))

    def _find_run(self, run_id: str) -> OperationRun | None:
        row = self._one(f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        return None if row is None else _run_record(row)

    def _find_runs(self, run_ids: list[str]) -> list[OperationRun]:
        rows = self._all(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(run_ids),),
        )
        return [_run_record(row) for row in rows]

    def _list_runs(self, status: str | None) -> list[OperationRun]:
        if status is None:
            rows = self._all(f"SELECT {_RUN_COLUMNS} FROM runs ORDER BY sequence")
        else:
            rows = self._all(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE status = ? ORDER BY sequence", (status,)
            )
        return [_run_record(row) for row in rows]

    def _insert_step(self, step: WorkflowStep) -> None:
        self._run(_INSERT_STEP, (step.id, *_step_values(step)))

    def _replace_step(self, step: WorkflowStep) -> None:
        self._run(_UPDATE_STEP, (*_step_values(step), step.id))

    def _find_step(self, step_id: str) -> WorkflowStep | None:
        row = self._one(f"SELECT {_STEP_COLUMNS} FROM steps WHERE id = ?", (step_id,))
        return None if row is None else _step(row)

    def _list_steps(self, run_id: str) -> list[WorkflowStep]:
        rows = self._all(
            f"SELECT {_STEP_COLUMNS} FROM steps WHERE run_id = ? ORDER BY position", (run_id,)
        )
        return [_step(row) for row in rows]

    def _insert_bundle(self, bundle: InputBundle) -> None:
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

    def _list_bundles(self, run_id: str | None) -> list[InputBundle]:
        if run_id is None:
            return _bundles(self._all(f"{_BUNDLE_SELECT} ORDER BY b.sequence, i.position"))
        return _bundles(
            self._all(
                f"{_BUNDLE_SELECT} WHERE b.run_id = ? ORDER BY b.sequence, i.position", (run_id,)
            )
        )

    def _bundles_consuming(
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

    def _list_outputs(self, run_id: str) -> list[ArtifactRevision]:
        rows = self._all(
            f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE run_id = ? ORDER BY change_sequence",
            (run_id,),
        )
        return [_revision(row) for row in rows]

    def _revisions_with_digest(self, digest: str) -> list[ArtifactRevision]:
        rows = self._all(
            f"SELECT {_REVISION_COLUMNS} FROM revisions WHERE digest = ? ORDER BY change_sequence",
            (digest,),
        )
        return [_revision(row) for row in rows]

    def _store_manifest(self, manifest: RunManifest) -> None:
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

    def _find_manifest(self, run_id: str) -> RunManifest | None:
        with self._consistent_read():
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

    def _list_manifests(self) -> list[RunManifest]:
        with self._consistent_read():
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

    def _insert_context_package(self, package: ContextPackage) -> None:
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

    def _find_context_package(self, package_id: str) -> ContextPackage | None:
        found = _packages(
            self._all(f"{_PACKAGE_SELECT} WHERE p.id = ? ORDER BY r.position", (package_id,))
        )
        return found[0] if found else None

    def _list_context_packages(self) -> list[ContextPackage]:
        return _packages(self._all(f"{_PACKAGE_SELECT} ORDER BY p.sequence, r.position"))

    def _insert_external_reference(self, reference: ExternalMemoryReference) -> None:
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

    def _find_external_reference(self, reference_id: str) -> ExternalMemoryReference | None:
        row = self._one(
            f"SELECT {_EXTERNAL_COLUMNS} FROM external_references WHERE id = ?", (reference_id,)
        )
        return None if row is None else _external(row)

    def _list_external_references(self) -> list[ExternalMemoryReference]:
        return [
            _external(row)
            for row in self._all(
                f"SELECT {_EXTERNAL_COLUMNS} FROM external_references ORDER BY sequence"
            )
        ]
