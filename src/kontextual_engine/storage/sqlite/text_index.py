"""Word search in the SQLite index (ADR 0006).

``artifact_words`` is an FTS5 table whose ``ascii`` tokenizer (``tokenchars
'_'``) splits :func:`..text.indexed_form` into exactly the words of
:func:`..text.words`, so FTS5 sees the tokens the in-memory reference sees and
its ``bm25()`` is the score :func:`..text.bm25_scores` mirrors. Its rowid is
the artifact's sequence; only live artifacts with searchable text have a row,
written in the same transaction as the artifact. ``unsearchable`` says why a
live artifact has none, and ``text_pending`` lists artifacts whose words must
be derived from their bodies again (after an upgrade, or a rebuild asked for):
the repository does that work (:meth:`..contract.KnowledgeRepository.rebuild_text`).
"""

from __future__ import annotations

import json
from typing import Any

from ...errors import DamagedStoreError, StoreFormatError
from ...models import Artifact, Query
from .. import text
from . import schema
from .connection import Connection
from .rows import ARTIFACTS

_INSERT_WORDS = "INSERT INTO artifact_words (rowid, words) VALUES (?, ?)"
_INSERT_UNSEARCHABLE = "INSERT INTO unsearchable (sequence, reason) VALUES (?, ?)"

Statements = list[tuple[str, tuple[Any, ...]]]


class TextIndex:
    """The words of the artifacts of one index, over its connection."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    # -- writing -----------------------------------------------------------

    @staticmethod
    def statements(sequence: int, searchable: str | text.NotSearchable) -> Statements:
        """The statements that store the text of artifact ``sequence`` (which a bulk
        write may buffer with the artifact's other rows)."""
        if isinstance(searchable, text.NotSearchable):
            return [(_INSERT_UNSEARCHABLE, (sequence, searchable.value))]
        return [(_INSERT_WORDS, (sequence, text.indexed_form(searchable)))]

    def add(self, sequence: int, searchable: str | text.NotSearchable) -> None:
        for sql, row in self.statements(sequence, searchable):
            self.connection.execute(sql, row)

    def forget(self, sequence: int) -> None:
        """Drop whatever is known of an artifact's text."""
        conn = self.connection
        conn.execute("DELETE FROM artifact_words WHERE rowid = ?", (sequence,))
        conn.execute("DELETE FROM unsearchable WHERE sequence = ?", (sequence,))
        conn.execute("DELETE FROM text_pending WHERE sequence = ?", (sequence,))

    def replace(self, sequence: int, searchable: str | text.NotSearchable) -> None:
        self.forget(sequence)
        self.add(sequence, searchable)

    # -- what is known -----------------------------------------------------

    def status(self, sequence: int) -> text.NotSearchable | None:
        """Why this artifact's body is not searchable, or None if it is (or waits)."""
        row = self.connection.row("SELECT reason FROM unsearchable WHERE sequence = ?", (sequence,))
        return None if row is None else text.NotSearchable(row[0])

    def counts(self) -> dict[str, int]:
        """Live artifacts by text state: ``searchable``, ``pending`` and one count
        per :class:`..text.NotSearchable` reason."""
        conn = self.connection
        found = {reason.value: 0 for reason in text.NotSearchable}
        found.update(conn.rows("SELECT reason, count(*) FROM unsearchable GROUP BY reason"))
        found["searchable"] = conn.row("SELECT count(*) FROM artifact_words_docsize")[0]
        found["pending"] = self.count_pending()
        return found

    def count_pending(self) -> int:
        count: int = self.connection.row("SELECT count(*) FROM text_pending")[0]
        return count

    def pending(self, limit: int) -> list[int]:
        """Sequences of the first ``limit`` artifacts whose words wait."""
        rows = self.connection.rows(
            "SELECT sequence FROM text_pending ORDER BY sequence LIMIT ?", (limit,)
        )
        return [sequence for (sequence,) in rows]

    def pending_artifacts(self, limit: int) -> list[Artifact]:
        """The first ``limit`` live artifacts whose words wait, by sequence."""
        while True:
            sequences = self.pending(limit)
            if not sequences:
                return []
            rows = self.connection.rows(
                f"SELECT {ARTIFACTS.select} FROM artifacts a WHERE a.sequence IN "
                "(SELECT value FROM json_each(?)) AND a.deleted_at IS NULL ORDER BY a.sequence",
                (json.dumps(sequences),),
            )
            live = [ARTIFACTS.read(row) for row in rows]
            # A mark of an artifact that is gone (left by damage or an outside
            # edit: a delete clears its own) would otherwise wait forever.
            stale = set(sequences) - {artifact.sequence for artifact in live}
            if stale:
                self.forget_pending(sorted(stale))
            if live:
                return live

    def forget_pending(self, sequences: list[int]) -> None:
        self.connection.execute(
            "DELETE FROM text_pending WHERE sequence IN (SELECT value FROM json_each(?))",
            (json.dumps(sequences),),
        )

    def request_rebuild(self) -> int:
        """Forget every artifact's words and mark every live artifact pending. The
        words table is made anew, so a damaged one is replaced, not patched."""
        conn = self.connection
        conn.execute("DROP TABLE artifact_words")
        conn.execute(schema.WORDS_TABLE)
        conn.execute("DELETE FROM unsearchable")
        conn.execute(
            "INSERT OR IGNORE INTO text_pending (sequence) "
            "SELECT sequence FROM artifacts WHERE deleted_at IS NULL"
        )
        return self.count_pending()

    def check(self) -> list[tuple[str, int, str]]:
        """What is wrong with the stored text, as ``(kind, sequence, message)``:
        words kept for an artifact that is deleted or missing (``stale-text``),
        and a live artifact whose text state is unknown (``missing-text``)."""
        conn = self.connection
        found = []
        for table, key in (
            ("artifact_words", "rowid"),
            ("unsearchable", "sequence"),
            ("text_pending", "sequence"),
        ):
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
        found += [
            (
                "missing-text",
                sequence,
                "live artifact has no words, no reason it is unsearchable and is not pending; "
                "run `kontextual index --rebuild`",
            )
            for (sequence,) in conn.rows(
                "SELECT sequence FROM artifacts WHERE deleted_at IS NULL "
                "AND sequence NOT IN (SELECT rowid FROM artifact_words) "
                "AND sequence NOT IN (SELECT sequence FROM unsearchable) "
                "AND sequence NOT IN (SELECT sequence FROM text_pending)"
            )
        ]
        return found

    def integrity_problem(self) -> str | None:
        """FTS5's ``integrity-check`` of the words table: None, or what it says
        (None on a read-only store, where the check, an INSERT, cannot run)."""
        if self.connection.read_only:
            return None
        try:
            self.connection.execute(
                "INSERT INTO artifact_words (artifact_words, rank) VALUES ('integrity-check', 1)"
            )
        except DamagedStoreError as exc:
            return f"FTS5 integrity check failed ({exc}); run `kontextual index --rebuild`"
        return None

    # -- queries -----------------------------------------------------------

    def source(self, query: Query) -> tuple[str, str, list[str], list[Any]]:
        """FROM, ORDER BY (sequence), conditions and values that match ``query.text``."""
        assert query.text is not None
        if self.connection.row("SELECT 1 FROM text_pending LIMIT 1") is not None:
            raise StoreFormatError(
                "the text index is being rebuilt and would miss documents; open the store "
                "writable (or run `kontextual index`) to finish it, then search again"
            )
        if (
            query.ids is not None
            or query.name is not None
            or query.digest is not None
            or query.related_to is not None
        ):
            # A few candidates from an index of artifacts, each checked against
            # the words (CROSS JOIN fixes the loop order).
            source, order = (
                "artifacts a CROSS JOIN artifact_words t ON t.rowid = a.sequence",
                ("a.sequence"),
            )
        else:
            # The words table drives and yields rows in sequence order, so a
            # LIMIT stops the scan early instead of sorting every match.
            source, order = (
                "artifact_words t CROSS JOIN artifacts a ON a.sequence = t.rowid",
                ("t.rowid"),
            )
        match = text.parse_query(query.text).fts5()
        return source, order, ["t.artifact_words MATCH ?"], [match]
