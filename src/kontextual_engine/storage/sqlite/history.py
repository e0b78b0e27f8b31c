"""Change sets and reads as of a point in history, in the SQLite index (ADR 0007).

``change_sets`` holds one row per change set; each change record names its
set in ``changes.change_set``. The state as of a change sequence is read
from ``revisions`` (the revision of each artifact current then), ``changes``
(whether it was deleted by then) and ``relationships`` plus
``deleted_relationships`` (which keeps a deleted relationship with the
sequence of its deletion). These reads scan the revisions; no index by time
is kept.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from ...models import Artifact, ChangeRecord, ChangeSet, Relationship, format_time
from .. import sql_text
from ..history import artifact_at
from .connection import Connection
from .rows import CHANGE_SETS, CHANGES, DELETED_RELATIONSHIPS, RELATIONSHIPS, REVISIONS, Columns

R = TypeVar("R")


class HistoryQueries:
    """The change-set and history primitives of :class:`~.index.SQLiteIndex`, of
    which this class is a part (it provides ``connection``)."""

    connection: Connection

    def _records(self, columns: Columns[R], rest: str, *params: Any) -> list[R]:
        sql = f"SELECT {columns.select} FROM {columns.source} {rest}"
        return [columns.read(row) for row in self.connection.rows(sql, params)]

    def insert_change_set(self, change_set: ChangeSet) -> None:
        conn = self.connection
        if conn.is_buffering:
            conn.defer(CHANGE_SETS.insert, CHANGE_SETS.values(change_set))
        else:
            self.connection.execute(CHANGE_SETS.insert, CHANGE_SETS.values(change_set))

    def find_change_set(self, change_set_id: str) -> ChangeSet | None:
        found = self._records(CHANGE_SETS, "WHERE id = ?", change_set_id)
        return found[0] if found else None

    def list_change_sets(self, after: int, limit: int | None) -> list[ChangeSet]:
        rest, params = sql_text.limited("WHERE sequence > ? ORDER BY sequence", [after], limit, "?")
        return self._records(CHANGE_SETS, rest, *params)

    def last_change_set(self) -> ChangeSet | None:
        found = self._records(CHANGE_SETS, "ORDER BY sequence DESC LIMIT 1")
        return found[0] if found else None

    def change_set_changes(self, change_set_id: str) -> list[ChangeRecord]:
        return self._records(CHANGES, "WHERE change_set = ? ORDER BY sequence", change_set_id)

    def sequence_at(self, moment: datetime) -> int:
        # Timestamps are stored in one fixed-width UTC form, so text order is time order.
        row = self.connection.row(
            "SELECT max(sequence) FROM changes WHERE timestamp <= ?", (format_time(moment),)
        )
        return int(row[0] or 0)

    def artifacts_as_of(
        self, sequence: int, collection_id: str | None, name: str | None
    ) -> list[Artifact]:
        where, params = sql_text.live_revision_as_of(sequence, collection_id, name, "?")
        sql = (
            f"SELECT {REVISIONS.select_as('r')}, {REVISIONS.select_as('f')} FROM revisions r "
            "JOIN revisions f ON f.artifact_id = r.artifact_id AND f.revision = 1 "
            f"WHERE {where} ORDER BY f.change_sequence"
        )
        width = len(REVISIONS.names)
        return [
            artifact_at(REVISIONS.read(row[width:]), REVISIONS.read(row[:width]))
            for row in self.connection.rows(sql, params)
        ]

    def all_deleted_relationships(self) -> list[tuple[Relationship, int]]:
        rows = self.connection.rows(
            f"SELECT {DELETED_RELATIONSHIPS.select}, deleted_sequence "
            "FROM deleted_relationships ORDER BY sequence"
        )
        return [(DELETED_RELATIONSHIPS.read(row[:-1]), row[-1]) for row in rows]

    def relationships_as_of(self, sequence: int) -> list[Relationship]:
        live = self._records(RELATIONSHIPS, "WHERE sequence <= ?", sequence)
        gone = self._records(
            DELETED_RELATIONSHIPS,
            "WHERE sequence <= ? AND deleted_sequence > ?",
            sequence,
            sequence,
        )
        return sorted(live + gone, key=lambda relationship: relationship.sequence)

    def artifacts_named(self, collection_id: str, name: str) -> list[str]:
        rows = self.connection.rows(
            "SELECT f.artifact_id FROM revisions f WHERE f.revision = 1 AND f.artifact_id IN "
            "(SELECT artifact_id FROM revisions WHERE collection_id = ? AND name = ?) "
            "ORDER BY f.change_sequence",
            (collection_id, name),
        )
        return [artifact_id for (artifact_id,) in rows]
