"""Text search in the SQLite index (ADR 0004).

Searchable text (folded by :mod:`..text`) is written to the backlog table
``text_backlog`` and moved in batches into the FTS5 trigram table
``artifact_text`` by :meth:`TextIndex.index_text`. A text query reads both
halves in one read transaction, so it sees every write: the FTS5 half with
``MATCH`` (terms of three characters or more) and ``instr``, the backlog half
by scanning it. A query on a writable store whose backlog holds more than
``backlog_limit`` rows indexes the backlog first.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from ...errors import ConflictError, ValidationError
from ...models import Artifact, Query
from .. import text
from .connection import Connection
from .filters import METADATA_FILTER

# A term shorter than this cannot go through a trigram MATCH.
_TRIGRAM = 3
# Backlog rows a text query reads without an index (ADR 0004): an instr()
# scan of 1,000 documents of 1 KiB takes about a millisecond. Past this, a
# text query on a writable store indexes the backlog before it runs.
DEFAULT_TEXT_BACKLOG_LIMIT = 1000
# Backlog rows moved into FTS5 per transaction by index_text(): large batches
# make few FTS5 segments to merge; each batch commits, so progress survives an
# interruption and other writers get the lock in between.
INDEX_TEXT_BATCH = 5000
_INSERT_TEXT = "INSERT INTO text_backlog (sequence, folded) VALUES (?, ?)"

# (query, FROM, ORDER BY, conditions, values) -> the artifacts that match, in order.
Select = Callable[[Query, str, str, list[str], list[Any]], list[Artifact]]


def check_backlog_limit(limit: object) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise ValidationError(f"text_backlog_limit must be an integer >= 0, got {limit!r}")


def _match_phrase(term: str) -> str:
    """An FTS5 string: every character literal, so no input is query syntax."""
    return '"' + term.replace('"', '""') + '"'


class TextIndex:
    """The searchable text of the artifacts of one index, over its connection."""

    def __init__(self, connection: Connection, backlog_limit: int) -> None:
        check_backlog_limit(backlog_limit)
        self.connection = connection
        self.backlog_limit = backlog_limit

    # -- writing -----------------------------------------------------------

    @staticmethod
    def statements(sequence: int, folded: str) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements that store the text of the artifact ``sequence`` (which a
        bulk write may buffer with the artifact's other rows)."""
        return [(_INSERT_TEXT, (sequence, folded))]

    def add(self, sequence: int, folded: str) -> None:
        for sql, row in self.statements(sequence, folded):
            self.connection.execute(sql, row)

    def forget(self, sequence: int) -> None:
        """Drop an artifact's searchable text, indexed or still in the backlog."""
        self.connection.execute("DELETE FROM artifact_text WHERE rowid = ?", (sequence,))
        self.connection.execute("DELETE FROM text_backlog WHERE sequence = ?", (sequence,))

    # -- the backlog -------------------------------------------------------

    def index_text(self, *, progress: Callable[[int], None] | None = None) -> int:
        """Move every backlog row into the FTS5 index; return how many moved.

        Runs in transactions of :data:`INDEX_TEXT_BATCH` rows and calls
        ``progress(rows)`` after each. Queries return the same results before
        and after; afterwards they read the index instead of scanning.
        """
        conn = self.connection
        moved = 0
        while True:
            with conn.transaction():
                last, count = conn.row(
                    "SELECT max(sequence), count(*) FROM "
                    "(SELECT sequence FROM text_backlog ORDER BY sequence LIMIT ?)",
                    (INDEX_TEXT_BATCH,),
                )
                if count:
                    conn.execute(
                        "INSERT INTO artifact_text (rowid, folded) SELECT sequence, "
                        "folded FROM text_backlog WHERE sequence <= ? ORDER BY sequence",
                        (last,),
                    )
                    conn.execute("DELETE FROM text_backlog WHERE sequence <= ?", (last,))
            if not count:
                return moved
            moved += count
            if progress is not None:
                progress(count)

    def count_backlog(self) -> int:
        """Documents whose text waits in the backlog for :meth:`index_text`."""
        count: int = self.connection.row("SELECT count(*) FROM text_backlog")[0]
        return count

    def behind(self) -> bool:
        """True when more than ``backlog_limit`` documents wait in the backlog: a
        text query on a writable store then indexes them before it runs."""
        return (
            self.connection.row(
                "SELECT 1 FROM text_backlog LIMIT 1 OFFSET ?", (self.backlog_limit,)
            )
            is not None
        )

    def _index_if_behind(self) -> None:
        """Index the backlog before a text query when it holds more than the limit."""
        conn = self.connection
        with conn.lock:
            if conn.read_only or conn.depth or conn.in_transaction:
                return
            behind = self.behind()
        if behind:
            # Another writer kept the lock past the busy timeout: scanning the
            # backlog still gives the right answer, only slower.
            with suppress(ConflictError):
                self.index_text()

    def check(self) -> list[tuple[str, int, str]]:
        """What is wrong with the stored text, as ``(kind, sequence, message)``:
        text both indexed and in the backlog (``text-duplicate``), and text kept
        for an artifact that is deleted or missing (``stale-text``)."""
        conn = self.connection
        found = [
            (
                "text-duplicate",
                sequence,
                "text is both indexed and in the backlog; queries would return it twice",
            )
            for (sequence,) in conn.rows(
                "SELECT b.sequence FROM text_backlog b JOIN artifact_text t ON t.rowid = b.sequence"
            )
        ]
        for table, key in (("artifact_text", "rowid"), ("text_backlog", "sequence")):
            found += [
                (
                    "stale-text",
                    sequence,
                    f"{table} holds text of an artifact that is deleted or missing",
                )
                for (sequence,) in conn.rows(
                    f"SELECT {key} FROM {table} WHERE {key} NOT IN "
                    "(SELECT sequence FROM artifacts WHERE deleted_at IS NULL)"
                )
            ]
        return found

    # -- queries -----------------------------------------------------------

    def query(
        self, query: Query, where: list[str], params: list[Any], select: Select
    ) -> list[Artifact]:
        """The artifacts that match ``query.text`` and the index's other conditions
        (``where``, ``params``), in sequence order, at most ``query.limit``."""
        assert query.text is not None
        self._index_if_behind()
        terms = text.parse_terms(query.text)
        # index_text() in another process moves rows from the backlog into
        # FTS5; one read transaction sees each row in exactly one of the two.
        found = []
        with self.connection.read_view():
            for backlog in (False, True):
                source, order, conditions, values = self._source(query, terms, backlog=backlog)
                if backlog:
                    # "+" keeps SQLite from driving the backlog half by the
                    # metadata matches (thousands of probes into a small
                    # table); the backlog is scanned and each row checked.
                    where = ["+" + c if c.startswith(METADATA_FILTER) else c for c in where]
                found.append(select(query, source, order, where + conditions, params + values))
        merged = list(heapq.merge(*found, key=lambda artifact: artifact.sequence))
        return merged if query.limit is None else merged[: query.limit]

    def _source(
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
