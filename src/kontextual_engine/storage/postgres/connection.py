"""Connections, transactions and the bulk buffer of :class:`~.index.PostgresIndex`.

A :class:`psycopg_pool.ConnectionPool` of autocommit connections. A thread
that opens a transaction holds one connection until the outermost level ends;
inner levels are SAVEPOINTs (psycopg's nested ``Connection.transaction()``),
so an exception leaving a level undoes exactly that level. Reads outside a
transaction borrow a connection for one statement; :meth:`Connection.read_view`
is a REPEATABLE READ, READ ONLY transaction.

Change sequences (ADR 0008): the first :meth:`Connection.next_sequence` of a
transaction locks the one row of ``sequence_counter`` (``SELECT ... FOR
UPDATE``) and holds it until commit or rollback, so writers assign sequences
one transaction at a time, in commit order: the feed has no gap and no
duplicate however transactions interleave. The counter is written back when
the outermost level commits; a rolled-back level gives its numbers back.

A server that stops, restarts or drops a connection: the statement that meets
it raises :class:`~kontextual_engine.errors.RemoteStoreUnreachableError`
naming the server (never its password); the transaction it was part of is
rolled back by the server, so nothing unacknowledged is kept. Every
connection the pool hands out answers first (:meth:`Connection.borrow`): a
connection broken while it sat in the pool is discarded for a new one, so
the same repository carries on once the server is back, and while it is down
the caller learns so at once (libpq's reason) instead of after the pool's
timeout.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import (
    IntegrityError,
    KontextualError,
    RemoteStoreAccessError,
    RemoteStoreUnreachableError,
    StoreNotFound,
)
from . import schema

# Rows buffered inside bulk() before they are written anyway.
BULK_ROWS = 5000
# How long a thread waits for a pooled connection in all, and after how long
# of that it checks whether the server answers at all.
POOL_TIMEOUT = 30.0
PROBE_AFTER = 2.0
# A pooled connection idle for longer than this is checked (one empty query)
# before it is lent: a server restarted meanwhile has dropped it. One used more
# recently is lent as it is; a loss then still ends in the typed error of
# translate(), and the pool replaces the broken connection when it is returned.
# The check is a round trip, as much as a lookup by id costs.
CHECK_IDLE_SECONDS = 1.0
# SQLSTATEs of a lost server: class 08 (connection exception) and the shutdowns.
_GONE_STATES = ("57P01", "57P02", "57P03")
# libpq's text for a server that answered that the database does not exist.
_MISSING_DATABASE = re.compile(r'FATAL:\s+database ".*" does not exist')


@dataclass
class _Buffered:
    """Rows of one table waiting to be written with COPY."""

    table: str
    columns: tuple[str, ...]
    rows: list[Sequence[Any]] = field(default_factory=list)


@dataclass
class _State:
    """One thread's transaction: its connection, depth, counter and buffer."""

    conn: psycopg.Connection[Any] | None = None
    depth: int = 0
    read_only: bool = False
    # The last sequence handed out, once the counter row is locked.
    last: int | None = None
    counter_last: int | None = None
    bulk: int = 0
    buffers: dict[str, _Buffered] = field(default_factory=dict)
    buffered_rows: int = 0
    # Artifacts created in the bulk buffer, by (collection id, name).
    noted: dict[tuple[str, str], Any] = field(default_factory=dict)


class Connection:
    """The pool plus each thread's open transaction."""

    def __init__(self, dsn: str, *, pool_size: int = 4, create: bool = True) -> None:
        self.dsn = dsn
        # One connection first: it migrates, and an unreachable server fails
        # here at once with libpq's reason instead of after the pool's timeout.
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                if not create and not schema.is_store(conn):
                    raise StoreNotFound(
                        shown_dsn(dsn),
                        "the database holds no kontextual store; create one with "
                        "`kontextual --store URL init`",
                    )
                schema.migrate(conn)
        except psycopg.OperationalError as exc:
            raise refused_at_open(dsn, exc) from exc
        self.pool: ConnectionPool[Any] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            open=True,
            timeout=POOL_TIMEOUT,
        )
        self._local = threading.local()
        # When each pooled connection (by id) was last given back.
        self._returned: dict[int, float] = {}

    def close(self) -> None:
        self.pool.close()

    @contextmanager
    def borrow(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool that answers, returned when the block ends.

        A pooled connection idle for longer than :data:`CHECK_IDLE_SECONDS` that
        the server has dropped (a restart, an idle timeout) is discarded and the
        next one tried; when none answers, a new
        connection tells whether the server is up: if not, the caller gets
        :class:`RemoteStoreUnreachableError` at once with libpq's reason."""
        for _ in range(self.pool.max_size + 1):
            conn = self._getconn()
            idle = time.monotonic() - self._returned.get(id(conn), 0.0)
            if idle > CHECK_IDLE_SECONDS:
                try:
                    conn.execute("")
                except psycopg.OperationalError:
                    self.pool.putconn(conn)  # broken: the pool connects anew in its place
                    self.probe()
                    continue
            try:
                yield conn
            finally:
                self._returned[id(conn)] = time.monotonic()
                self.pool.putconn(conn)
            return
        raise unreachable(self.dsn, "no pooled connection answers although the server does")

    def _getconn(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any]
        try:
            conn = self.pool.getconn(timeout=PROBE_AFTER)
            return conn
        except PoolTimeout:
            self.probe()
        try:
            conn = self.pool.getconn(timeout=POOL_TIMEOUT - PROBE_AFTER)
            return conn
        except PoolTimeout as exc:
            raise unreachable(
                self.dsn,
                f"no connection of the pool came free in {POOL_TIMEOUT:.0f} s "
                f"({self.pool.max_size} are in use)",
            ) from exc

    def probe(self) -> None:
        """Return if the server accepts a new connection, else raise
        :class:`RemoteStoreUnreachableError` with libpq's reason."""
        try:
            psycopg.connect(self.dsn, autocommit=True).close()
        except psycopg.OperationalError as exc:
            raise unreachable(self.dsn, _first_line(exc)) from exc

    @property
    def state(self) -> _State:
        state: _State | None = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _State()
        return state

    # -- transactions ------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[bool]:
        state = self.state
        if state.conn is not None:
            saved = (state.last, dict(state.noted))
            self.flush()
            try:
                with translate(self.dsn), state.conn.transaction():
                    state.depth += 1
                    try:
                        yield False
                        self.flush()
                    finally:
                        state.depth -= 1
            except BaseException:
                self._drop_buffer()
                state.last, state.noted = saved
                raise
            return
        with self.borrow() as conn:
            state.conn, state.depth = conn, 1
            try:
                with translate(self.dsn), conn.transaction():
                    yield True
                    self.flush()
                    if state.last is not None and state.last != state.counter_last:
                        conn.execute("UPDATE sequence_counter SET last = %s", (state.last,))
            finally:
                self._local.state = _State()

    @contextmanager
    def read_view(self) -> Iterator[None]:
        state = self.state
        if state.conn is not None:
            yield
            return
        with self.borrow() as conn:
            state.conn, state.depth, state.read_only = conn, 1, True
            try:
                with translate(self.dsn), conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    yield
            finally:
                self._local.state = _State()

    # -- statements --------------------------------------------------------

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._run(sql, params, fetch=False)

    def rows(
        self, sql: str, params: Sequence[Any] = (), *, flush: bool = True
    ) -> list[tuple[Any, ...]]:
        """The rows of a query; ``flush=False`` reads without writing the bulk buffer
        first (for lookups the caller answers from the buffer's notes)."""
        return self._run(sql, params, fetch=True, flush=flush)

    def row(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        found = self.rows(sql, params)
        return found[0] if found else None

    def execute_many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if not params:
            return
        self.flush()
        state = self.state
        assert state.conn is not None, "write outside a transaction"
        with translate(self.dsn), state.conn.cursor() as cursor:
            cursor.executemany(sql, params)

    def _run(
        self, sql: str, params: Sequence[Any], *, fetch: bool, flush: bool = True
    ) -> list[tuple[Any, ...]]:
        state = self.state
        if state.conn is not None:
            if flush:
                self.flush()
            with translate(self.dsn):
                cursor = state.conn.execute(sql, params)
                return cursor.fetchall() if fetch else []
        with self.borrow() as conn, translate(self.dsn):
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if fetch else []

    # -- change sequences ----------------------------------------------------

    def next_sequence(self) -> int:
        state = self.state
        assert state.conn is not None, "next_sequence outside a transaction"
        if state.last is None:
            row = self.row("SELECT last FROM sequence_counter WHERE id = 1 FOR UPDATE")
            assert row is not None
            state.last = state.counter_last = int(row[0])
        return state.last + 1

    def sequence_used(self, sequence: int) -> None:
        state = self.state
        if state.last is None or sequence > state.last:
            state.last = sequence

    def last_sequence(self) -> int:
        state = self.state
        if state.last is not None:
            return state.last
        row = self.row("SELECT last FROM sequence_counter WHERE id = 1")
        return 0 if row is None else int(row[0])

    # -- the bulk buffer -----------------------------------------------------

    @contextmanager
    def bulk(self) -> Iterator[None]:
        state = self.state
        state.bulk += 1
        try:
            yield
            if state.bulk == 1:
                self.flush()
        finally:
            state.bulk -= 1

    @property
    def is_buffering(self) -> bool:
        state = self.state
        return state.bulk > 0 and state.conn is not None

    def defer(self, table: str, columns: tuple[str, ...], row: Sequence[Any]) -> None:
        state = self.state
        buffered = state.buffers.get(table)
        if buffered is None:
            buffered = state.buffers[table] = _Buffered(table, columns)
        buffered.rows.append(row)
        state.buffered_rows += 1
        if state.buffered_rows >= BULK_ROWS:
            self.flush()

    def note(self, key: tuple[str, str], record: Any) -> None:
        self.state.noted[key] = record

    def noted(self, key: tuple[str, str]) -> Any:
        return self.state.noted.get(key)

    def flush(self) -> None:
        """Write every buffered row, one COPY per table."""
        state = self.state
        if not state.buffers:
            return
        conn = state.conn
        assert conn is not None
        buffers, state.buffers, state.buffered_rows = state.buffers, {}, 0
        state.noted = {}
        with translate(self.dsn), conn.cursor() as cursor:
            for buffered in buffers.values():
                columns = ", ".join(buffered.columns)
                with cursor.copy(f"COPY {buffered.table} ({columns}) FROM STDIN") as copy:
                    for row in buffered.rows:
                        copy.write_row(row)

    def _drop_buffer(self) -> None:
        state = self.state
        state.buffers, state.buffered_rows = {}, 0


def shown_dsn(dsn: str) -> str:
    """The DSN without its password, to name it in errors."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(an unparsable PostgreSQL DSN)"
    parts.pop("password", None)
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in parts.items()})


def unreachable(dsn: str, reason: str) -> RemoteStoreUnreachableError:
    """The error of a PostgreSQL index that does not answer, naming it without its password."""
    return RemoteStoreUnreachableError(
        f"the PostgreSQL index at {shown_dsn(dsn)} is unreachable ({reason}): the operation "
        "was not acknowledged and nothing unacknowledged was kept; retry when the server answers"
    )


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the server is gone (stopped, restarted, unreachable)
    rather than refusing a statement (a lock timeout, a serialization failure)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _GONE_STATES


def refused_at_open(dsn: str, exc: psycopg.OperationalError) -> KontextualError:
    """The typed error of a first connection that failed, by what libpq says.

    A failed connection carries no SQLSTATE, only libpq's text: a server that
    answered and refused says ``FATAL:`` (a missing database, an unknown role, a
    wrong password); anything else (refused, timed out, no such socket or host)
    means no server answered."""
    reason = " ".join(str(exc).split())
    if "FATAL:" not in reason:
        return unreachable(dsn, reason)
    if _MISSING_DATABASE.search(reason):
        return StoreNotFound(
            shown_dsn(dsn),
            f"the PostgreSQL server has no such database ({reason}); create it "
            "(createdb), then `kontextual --store URL init`",
        )
    return RemoteStoreAccessError(
        f"the PostgreSQL server at {shown_dsn(dsn)} refused the connection ({reason}): "
        "check the user, its password (PGPASSWORD, ~/.pgpass) and pg_hba.conf"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


@contextmanager
def translate(dsn: str | None = None) -> Iterator[None]:
    """PostgreSQL's constraint errors, a lost server and a pool that hands out no
    connection as the library's typed errors (``dsn`` names the server)."""
    try:
        yield
    except psycopg.OperationalError as exc:
        if not connection_lost(exc):
            raise
        raise unreachable(dsn or "(the store's DSN)", _first_line(exc)) from exc
    except PoolTimeout as exc:
        raise unreachable(dsn or "(the store's DSN)", _first_line(exc)) from exc
    except psycopg.errors.IntegrityError as exc:
        detail = exc.diag.message_detail or ""
        raise IntegrityError(
            f"the PostgreSQL index refused a write ({exc.diag.constraint_name or 'constraint'}): "
            f"{exc.diag.message_primary or exc} {detail}".strip()
        ) from exc
