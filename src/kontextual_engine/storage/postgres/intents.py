"""Upload intents: what keeps gc on a shared store from deleting a body that a
writer on another machine is about to reference.

Before a writer stores a body it records an intent (the digest, and when the
intent expires) and commits it at once, outside the writer's transaction, so
that a gc running anywhere sees it. When the writer's transaction ends the
intents are dropped; a writer that dies leaves them to expire.

gc and intents meet under one PostgreSQL advisory lock: recording an intent
takes it shared for one statement, gc takes it exclusively while it reads
the intents and the referenced digests and deletes. So an intent is either
recorded before gc decides (and gc keeps the body) or after gc has finished
deleting (and the writer stores the body again). gc reads the intents before
the references: an intent already dropped belongs to a committed transaction,
whose references gc then reads.

The intents' connection survives a restarted server: a statement that meets a
dropped connection is sent once more on a new one (recording an intent twice
or dropping one already gone changes nothing). Dropping intents when the
server is unreachable gives up quietly: they expire by themselves, and until
then gc only keeps their bodies a little longer.
"""

from __future__ import annotations

import contextvars
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

from ...errors import RemoteStoreUnreachableError
from .connection import connection_lost, translate

# pg_advisory lock key of gc against new intents ("kontextgc" in ASCII, truncated).
GC_LOCK = 0x6B6F6E74657867
# A transaction that stores bodies for longer than this could lose one to gc;
# gc's grace period guards a newly written body for longer still.
DEFAULT_INTENT_SECONDS = 6 * 3600.0

# One statement records the intents of every body of a batch: one round trip
# and one commit, however many bodies.
_RECORD = (
    "WITH gate AS (SELECT pg_advisory_xact_lock_shared(%s)) "
    "INSERT INTO upload_intents (digest, expires_at) "
    "SELECT digest, now() + %s * interval '1 second' "
    "FROM gate, unnest(%s::text[]) AS digest RETURNING id"
)


class UploadIntents:
    """The intents of one repository's writers, on a connection of their own
    (an intent must commit while the writer's transaction is still open)."""

    def __init__(self, dsn: str, *, seconds: float = DEFAULT_INTENT_SECONDS) -> None:
        self.dsn = dsn
        self.seconds = seconds
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        # The intents to drop when the current transaction ends. A context
        # variable, not a thread-local: threads that store bodies for a
        # transaction run in a copy of its context (storage/pipeline.py) and
        # so add to the same list.
        self._held: contextvars.ContextVar[list[uuid.UUID]] = contextvars.ContextVar(
            f"upload_intents_{id(self)}"
        )

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        return self._conn

    def _execute(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows; on a connection the server
        dropped, once more on a new one."""
        with self._lock, translate(self.dsn):
            try:
                return _rows(self._connection().execute(sql, params))
            except psycopg.OperationalError as exc:
                if not connection_lost(exc) or self._conn is None:
                    raise
                self._conn.close()
                return _rows(self._connection().execute(sql, params))

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Hold the intents recorded in this context until the block ends, then
        drop them (the transaction committed or rolled back). With the server
        unreachable they are left to expire."""
        held: list[uuid.UUID] = []
        token = self._held.set(held)
        try:
            yield
        finally:
            self._held.reset(token)
            self._drop(held)

    def _drop(self, held: list[uuid.UUID]) -> None:
        if held:
            with suppress(RemoteStoreUnreachableError):
                self._execute("DELETE FROM upload_intents WHERE id = ANY(%s)", (held,))

    def record(self, digests: Sequence[str]) -> None:
        """Say that this context is about to store and reference ``digests``, in one
        statement committed before it returns. Inside :meth:`holding` the intents
        are dropped when the block ends; outside, they last until they expire."""
        if not digests:
            return
        rows = self._execute(_RECORD, (GC_LOCK, self.seconds, list(digests)))
        assert len(rows) == len(digests)
        held = self._held.get(None)
        if held is not None:
            held.extend(row[0] for row in rows)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _rows(cursor: psycopg.Cursor[Any]) -> list[tuple[Any, ...]]:
    return cursor.fetchall() if cursor.description is not None else []


@contextmanager
def gc_gate(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """A transaction on ``conn`` in which no new intent can be recorded."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (GC_LOCK,))
        yield


def live_intents(conn: psycopg.Connection[Any], *, sweep: bool) -> dict[str, float]:
    """Digests with an intent that has not expired, each with the seconds until
    its last intent expires; with ``sweep``, expired intents are deleted."""
    if sweep:
        conn.execute("DELETE FROM upload_intents WHERE expires_at <= now()")
    rows = conn.execute(
        "SELECT digest, extract(epoch FROM max(expires_at) - now()) "
        "FROM upload_intents WHERE expires_at > now() GROUP BY digest"
    ).fetchall()
    return {str(digest): float(left) for digest, left in rows}
