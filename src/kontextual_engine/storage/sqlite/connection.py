"""``Connection``: the one ``sqlite3`` connection of an index, and how it is used.

Opening: the index file must be a regular file inside the store; the
connection is configured (foreign keys, WAL mode, synchronous level, cache)
and the schema migrated (:mod:`.schema`). A store whose filesystem is full
opens for reading and says so on every write; a closed store that cannot be
written (read-only media, no -shm possible) is read as it is.

Discipline: autocommit mode (``isolation_level=None``) with every write
transaction opened by ``BEGIN IMMEDIATE``, retried with backoff while another
process holds the write lock; nested :meth:`Connection.transaction` levels are
SAVEPOINTs. A re-entrant lock serialises use of the connection across
threads; a transaction holds it from ``BEGIN`` to ``COMMIT``.

Errors: every statement runs under :class:`_Mapped`, which turns what SQLite
raises into the project's typed errors (:mod:`.failures`), never a raw
``sqlite3`` error.

Bulk writes: inside :meth:`Connection.buffering`, rows handed to
:meth:`Connection.defer` wait in a buffer and are written with
``executemany``; any other statement writes the buffer first, so every read
sees every write.
"""

from __future__ import annotations

import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from ...errors import (
    DamagedStoreError,
    KontextualError,
    ReadOnlyStoreError,
    StorageFullError,
    StoreFormatError,
)
from ..objects import Durability, storage_full
from . import failures, schema
from .failures import NotUnicode, is_busy, is_full, shm_refused
from .options import (
    CACHE_SIZE_KIB,
    DEFAULT_BUSY_TIMEOUT,
    check_busy_timeout,
    check_cache_kib,
)

INDEX_NAME = "index.sqlite"
# Closing only tries to checkpoint; if other processes keep the store busy the
# last one to close checkpoints, so there is no point waiting long here.
CLOSE_CHECKPOINT_TIMEOUT_MS = 2000
# Backoff between BEGIN IMMEDIATE attempts that failed without the busy
# handler being consulted: short first, capped so waiters notice a free lock.
FIRST_BACKOFF = 0.001
MAX_BACKOFF = 0.05
# Rows buffered before an executemany: large enough to amortise per-statement
# overhead, small enough to bound memory.
BULK_ROWS = 1000
# Free pages a commit leaves before it vacuums them away (PRAGMA
# incremental_vacuum): 1 MiB of 4 KiB pages, so small commits never pay for it.
RECLAIM_FREE_PAGES = 256
_SYNCHRONOUS = {
    Durability.FULL: "FULL",
    Durability.BATCH: "NORMAL",
    Durability.NONE: "OFF",
}

_T = TypeVar("_T")


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


class _Mapped:
    """``with _Mapped(connection, sql):`` around any use of the connection turns
    what SQLite raises into the typed error (:meth:`Connection.typed_error`)."""

    __slots__ = ("connection", "sql")

    def __init__(self, connection: Connection, sql: str | None) -> None:
        self.connection = connection
        self.sql = sql

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if isinstance(exc, (sqlite3.Error, UnicodeEncodeError)):
            raise self.connection.typed_error(exc, self.sql) from exc


class Connection:
    """The connection to ``<root>/index.sqlite``: opened, configured and migrated
    by the constructor, closed (with a WAL checkpoint) by :meth:`close`.

    ``read_only`` opens without writing anything (``read_only_reason`` says
    why writes are refused); ``has_objects`` tells whether bodies exist, so
    that a missing index is not started afresh over them. A full filesystem
    at open makes the connection read-only, and writes then raise
    :class:`StorageFullError`.
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
        cache_kib: int = CACHE_SIZE_KIB,
    ) -> None:
        check_busy_timeout(busy_timeout)
        check_cache_kib(cache_kib)
        self.cache_kib = cache_kib
        self.root = root
        self.durability = durability
        self.read_only = read_only
        self._read_only_reason = read_only_reason
        self._has_objects = has_objects
        self.busy_timeout = float(busy_timeout)
        self.lock = threading.RLock()
        self._depth = 0
        self._buffering = 0
        self._pending: dict[str, list[tuple[Any, ...]]] = {}
        self._pending_rows = 0
        self._notes: dict[Hashable, Any] = {}
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
        return f"Connection({str(self.index_path)!r})"

    # -- opening -----------------------------------------------------------

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
            if self.read_only and shm_refused(exc) and not _has_wal(index):
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
            objects = self._retry(
                lambda: conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            )
            if not self.read_only and not objects:
                # Only an empty database can take this without a VACUUM.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            if not self.read_only:
                mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                if str(mode).lower() != "wal":
                    raise StoreFormatError(f"cannot put {index} in WAL mode (got {mode!r})")
            conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[self.durability]}")
            conn.execute(f"PRAGMA cache_size = -{self.cache_kib}")
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
            if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                raise failures.busy_error(self.root, self.busy_timeout) from exc
            if is_full(exc, self.root):
                raise storage_full(self.root, str(exc)) from exc
            raise StoreFormatError(f"{index} is not a usable SQLite index: {exc}") from exc

    # -- the -wal this connection writes to --------------------------------

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
        connection can still read them), and this connection refuses every later
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

    # -- closing -----------------------------------------------------------

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close. Closing twice is fine."""
        with self.lock:
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
                        if not is_busy(exc) and "readonly" not in str(exc):
                            raise
            finally:
                conn.close()

    # -- statements --------------------------------------------------------

    @property
    def sqlite(self) -> sqlite3.Connection:
        """The open ``sqlite3`` connection (:class:`KontextualError` once closed), for
        what only it offers, such as tracing statements."""
        conn = self._conn
        if conn is None:
            raise KontextualError(f"repository {self.root} is closed")
        return conn

    @property
    def depth(self) -> int:
        """How many :meth:`transaction` levels are open (0: none)."""
        return self._depth

    @property
    def in_transaction(self) -> bool:
        """Whether any transaction is open, a read view's included."""
        return self.sqlite.in_transaction

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
                if not is_busy(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, MAX_BACKOFF)

    def execute(
        self, sql: str, params: Iterable[Any] = (), *, flush: bool = True
    ) -> sqlite3.Cursor:
        """Execute one statement, after writing any buffered rows (unless ``flush``
        is False: a read that knows the buffer holds nothing it looks for).

        Outside a transaction the statement is a read; WAL readers can still
        meet SQLITE_BUSY (during another connection's recovery), so it retries.
        """
        with self.lock:
            conn = self.sqlite
            if flush and self._pending:
                self._flush_pending(conn)
            values = tuple(params)
            with _Mapped(self, sql):
                if self._depth:
                    return conn.execute(sql, values)
                return self._retry(lambda: conn.execute(sql, values))

    def execute_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """``executemany`` inside a transaction, with the errors :meth:`execute` maps."""
        with self.lock:
            conn = self.sqlite
            if self._pending:
                self._flush_pending(conn)
            with _Mapped(self, sql):
                conn.executemany(sql, rows)

    def rows(self, sql: str, params: Iterable[Any] = (), *, flush: bool = True) -> list[Any]:
        """Every row ``sql`` selects."""
        found: list[Any] | None = self._read(sql, params, flush, sqlite3.Cursor.fetchall)
        return [] if found is None else found

    def row(self, sql: str, params: Iterable[Any] = (), *, flush: bool = True) -> Any:
        """The first row ``sql`` selects, or None."""
        return self._read(sql, params, flush, sqlite3.Cursor.fetchone)

    def _read(
        self,
        sql: str,
        params: Iterable[Any],
        flush: bool,
        fetch: Callable[[sqlite3.Cursor], _T],
    ) -> _T | None:
        """``fetch`` from the cursor of ``sql``. A string with a lone surrogate
        cannot be stored, so a read that binds one finds nothing (None), as in
        the reference backend."""
        with self.lock:
            try:
                cursor = self.execute(sql, params, flush=flush)
                with _Mapped(self, sql):
                    return fetch(cursor)
            except NotUnicode:
                return None

    def backup_to(self, target: sqlite3.Connection) -> None:
        """Copy the whole index, as one consistent state, into ``target``."""
        with self.lock:
            self.sqlite.backup(target)

    # -- typed errors ------------------------------------------------------

    def typed_error(self, exc: BaseException, sql: str | None) -> BaseException:
        """The typed error for what SQLite reported while running ``sql``
        (:func:`.failures.typed_error`)."""
        return failures.typed_error(
            exc, sql, index=self.index_path, busy_timeout=self.busy_timeout, conn=self._conn
        )

    def missing_row(self, what: str, table: str) -> DamagedStoreError:
        """A row the schema guarantees is not there: the index is damaged."""
        return failures.missing_row(self.index_path, what, table)

    # -- the bulk buffer ---------------------------------------------------

    @contextmanager
    def buffering(self) -> Iterator[None]:
        """Inside this block, :meth:`defer` buffers rows instead of writing them."""
        self._buffering += 1
        try:
            yield
        finally:
            self._buffering -= 1

    @property
    def is_buffering(self) -> bool:
        return self._buffering > 0

    @property
    def has_pending(self) -> bool:
        """Whether buffered rows wait to be written."""
        return bool(self._pending)

    def defer(self, sql: str, row: tuple[Any, ...]) -> None:
        """Buffer ``row`` for ``sql`` (an INSERT), written with ``executemany``
        before the next other statement or at the end of the transaction."""
        self._pending.setdefault(sql, []).append(row)
        self._pending_rows += 1

    def note(self, key: Hashable, record: Any) -> None:
        """Remember ``record``, which buffered rows create, under ``key`` until the
        buffer is written: a read may answer from it without writing the buffer."""
        self._notes[key] = record

    def noted(self, key: Hashable) -> Any:
        """What :meth:`note` remembered under ``key`` since the buffer was written."""
        return self._notes.get(key)

    def flush_if_full(self) -> None:
        """Write the buffer once it holds :data:`BULK_ROWS` rows."""
        if self._pending_rows >= BULK_ROWS:
            with self.lock:
                self._flush_pending(self.sqlite)

    def _flush_pending(self, conn: sqlite3.Connection) -> None:
        pending, self._pending = self._pending, {}
        self._pending_rows = 0
        self._notes.clear()
        for sql, rows in pending.items():
            with _Mapped(self, sql):
                conn.executemany(sql, rows)

    def _discard_pending(self) -> None:
        self._pending = {}
        self._pending_rows = 0
        self._notes.clear()

    # -- transactions ------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[bool]:
        """A write transaction (``BEGIN IMMEDIATE``), or a SAVEPOINT inside one;
        yields True at the outermost level. Buffered rows are written and the
        -wal checked before ``COMMIT``; an exception rolls the level back."""
        with self.lock:
            conn = self.sqlite
            if self.read_only:
                if self._full is not None:
                    raise storage_full(self.root, str(self._full.__cause__ or self._full))
                raise ReadOnlyStoreError(f"store {self.root} {self._read_only_reason}")
            if self._depth:
                yield from self._savepoint(conn)
                return
            if self._wal_lost is not None:
                raise self._wal_lost
            with _Mapped(self, "BEGIN IMMEDIATE"):
                self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            self._depth = 1
            try:
                yield True
                if self._pending:
                    self._flush_pending(conn)
                self._reclaim_free_pages(conn)
                self._check_wal(conn)
                with _Mapped(self, "COMMIT"):
                    conn.execute("COMMIT")
            except BaseException:
                self._discard_pending()
                _end_quietly(conn, "ROLLBACK")
                raise
            finally:
                self._depth = 0

    def _reclaim_free_pages(self, conn: sqlite3.Connection) -> None:
        """Give pages the transaction freed (FTS5 merges, deletes) back to the file
        system in the same commit, once there are enough to matter."""
        with _Mapped(self, "PRAGMA incremental_vacuum"):
            if conn.execute("PRAGMA freelist_count").fetchone()[0] >= RECLAIM_FREE_PAGES:
                conn.execute("PRAGMA incremental_vacuum").fetchall()

    def enable_incremental_vacuum(self) -> None:
        """Make an index created before incremental vacuum compact and vacuum
        incrementally from now on: one ``VACUUM``, which rewrites the file."""
        with self.lock:
            conn = self.sqlite
            if self.read_only or conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
                return
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            with _Mapped(self, "VACUUM"):
                self._retry(lambda: conn.execute("VACUUM"))

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
            if conn.in_transaction:  # some errors make SQLite roll back everything
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
            raise
        else:
            conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    @contextmanager
    def read_view(self) -> Iterator[None]:
        """Several SELECTs that see one state: a deferred read transaction (which a
        read-only store can open too, and which blocks no writer), unless one is open."""
        with self.lock:
            conn = self.sqlite
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
