"""``PostgresIndex``: the primitives of :class:`~..backend.IndexBackend` over PostgreSQL.

Each record is stored whole as JSON text (:mod:`.records`) beside the key
columns its lookups and orderings use (:mod:`.schema`). Transactions, the
change-sequence lock and the bulk buffer are :class:`~.connection.Connection`'s.

Text search (:mod:`..text`) returns exactly what the reference returns: each
live artifact's words are stored as a ``text[]``, with their distinct forms
(cut to :data:`LEXEME_CHARS` characters) as a GIN-indexed ``tsvector``. The
index finds the candidates that hold every required word (``:*`` for a
prefix); phrases, exclusions and BM25 are then computed in Python from the
stored words, with the statistics FTS5 uses (document count, total words and
per-phrase document counts over every searchable live artifact).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, TypeVar

from ... import digests
from ...errors import StoreFormatError
from ...models import (
    Artifact,
    ArtifactRevision,
    ChangeRecord,
    ChangeSet,
    Collection,
    ContextPackage,
    ExternalMemoryReference,
    InputBundle,
    OperationRun,
    Query,
    Relationship,
    RunManifest,
    WorkflowStep,
    canonical_json,
    format_time,
    parse_time,
)
from .. import sql_text, text
from ..backend import IndexBackend
from ..history import artifact_at
from ..queries import metadata_matches
from . import records
from .connection import Connection, shown_dsn

R = TypeVar("R")

# A word longer than this is indexed by its first LEXEME_CHARS characters
# (a tsvector lexeme holds at most 2046 bytes); matches are checked on the
# whole words afterwards, so the cut only widens the candidates.
LEXEME_CHARS = 400
# A tsvector holds at most 1 MiB of lexemes; a body with more distinct word
# bytes than this is kept without lexemes and is a candidate of every search.
LEXEME_BYTES = 900_000

_ARTIFACT_COLUMNS = (
    "id",
    "sequence",
    "collection_id",
    "name",
    "artifact_type",
    "digest",
    "record",
)
_REVISION_COLUMNS = (
    "artifact_id",
    "revision",
    "change_sequence",
    "collection_id",
    "name",
    "digest",
    "run_id",
    "record",
)
_TEXT_COLUMNS = ("artifact_sequence", "reason", "pending", "words", "lexemes")
_CHANGE_COLUMNS = ("sequence", "entity_id", "action", "change_set_id", "timestamp", "record")
_CHANGE_SET_COLUMNS = ("id", "sequence", "record")


def _insert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"


def _artifact_row(artifact: Artifact) -> tuple[Any, ...]:
    return (
        artifact.id,
        artifact.sequence,
        artifact.collection_id,
        artifact.name,
        artifact.artifact_type,
        artifact.digest,
        records.dumps(artifact),
    )


def _revision_row(revision: ArtifactRevision) -> tuple[Any, ...]:
    return (
        revision.artifact_id,
        revision.revision,
        revision.change_sequence,
        revision.collection_id,
        revision.name,
        revision.digest,
        revision.run_id,
        records.dumps(revision),
    )


def _text_row(sequence: int, searchable: str | text.NotSearchable) -> tuple[Any, ...]:
    if isinstance(searchable, text.NotSearchable):
        return (sequence, searchable.value, False, [], [])
    found = text.words(searchable)
    lexemes: list[str] | None = sorted({word[:LEXEME_CHARS] for word in found})
    assert lexemes is not None
    if sum(len(lexeme.encode()) for lexeme in lexemes) > LEXEME_BYTES:
        lexemes = None
    return (sequence, None, False, found, lexemes)


def _change_row(change: ChangeRecord) -> tuple[Any, ...]:
    return (
        change.sequence,
        change.entity_id,
        change.action,
        change.change_set_id,
        format_time(change.timestamp),
        records.dumps(change),
    )


def _lexeme(word: str) -> str:
    return "'" + word[:LEXEME_CHARS].replace("\\", "\\\\").replace("'", "''") + "'"


def tsquery(phrases: Iterable[text.Phrase]) -> str:
    """A tsquery every document holding all ``phrases`` matches (a superset:
    word order and adjacency are checked afterwards)."""
    parts = []
    for phrase in phrases:
        last = len(phrase.words) - 1
        for position, word in enumerate(phrase.words):
            prefix = phrase.prefix and position == last
            parts.append(_lexeme(word) + (":*" if prefix else ""))
    return " & ".join(parts)


# Documents whose words hold every required word of a tsquery, or that have
# no lexemes (too many distinct words) and so must be checked whole.
_TEXT_MATCH = "t.reason IS NULL AND (t.indexed @@ %s::tsquery OR t.lexemes IS NULL)"


class PostgresIndex(IndexBackend):
    """The index of a repository in a PostgreSQL database (see the module docstring)."""

    def __init__(self, dsn: str, *, pool_size: int = 4, create: bool = True) -> None:
        """Open the index in the database ``dsn`` names, migrating it; without
        ``create``, a database that holds no store raises StoreNotFound."""
        self.connection = Connection(dsn, pool_size=pool_size, create=create)

    def close(self) -> None:
        self.connection.close()

    @property
    def shown_dsn(self) -> str:
        """The connection string without its password, for messages."""
        return shown_dsn(self.connection.dsn)

    def setting(self, name: str) -> str | None:
        row = self.connection.row("SELECT value FROM store_settings WHERE name = %s", (name,))
        return None if row is None else str(row[0])

    def set_setting(self, name: str, value: str) -> None:
        with self.connection.transaction():
            self.connection.execute(
                "INSERT INTO store_settings (name, value) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, value),
            )

    # -- transactions ------------------------------------------------------

    def transaction(self) -> AbstractContextManager[bool]:
        return self.connection.transaction()

    def read_view(self) -> AbstractContextManager[None]:  # type: ignore[override]
        return self.connection.read_view()

    def bulk(self) -> AbstractContextManager[None]:
        return self.connection.bulk()

    # -- helpers -----------------------------------------------------------

    def _records(self, cls: type[R], table: str, rest: str, *params: Any) -> list[R]:
        rows = self.connection.rows(f"SELECT record FROM {table} {rest}", params)
        return [records.loads(cls, row[0], table) for row in rows]

    def _record(self, cls: type[R], table: str, rest: str, *params: Any) -> R | None:
        found = self._records(cls, table, rest, *params)
        return found[0] if found else None

    def _insert(self, table: str, columns: Sequence[str], row: Sequence[Any]) -> None:
        self.connection.execute(_insert_sql(table, columns), row)

    # -- change sequence ---------------------------------------------------

    def next_sequence(self) -> int:
        return self.connection.next_sequence()

    def last_sequence(self) -> int:
        return self.connection.last_sequence()

    def append_change(self, change: ChangeRecord) -> None:
        conn = self.connection
        if conn.is_buffering:
            conn.defer("changes", _CHANGE_COLUMNS, _change_row(change))
        else:
            self._insert("changes", _CHANGE_COLUMNS, _change_row(change))
        conn.sequence_used(change.sequence)

    def list_changes(
        self, since: int, entity_id: str | None, limit: int | None
    ) -> list[ChangeRecord]:
        rest, params = sql_text.after_sequence(since, entity_id, limit, "%s")
        return self._records(ChangeRecord, "changes", rest, *params)

    # -- change sets and history -------------------------------------------

    def insert_change_set(self, change_set: ChangeSet) -> None:
        row = (change_set.id, change_set.sequence, records.dumps(change_set))
        if self.connection.is_buffering:
            self.connection.defer("change_sets", _CHANGE_SET_COLUMNS, row)
        else:
            self._insert("change_sets", _CHANGE_SET_COLUMNS, row)

    def find_change_set(self, change_set_id: str) -> ChangeSet | None:
        return self._record(ChangeSet, "change_sets", "WHERE id = %s", change_set_id)

    def list_change_sets(self, after: int, limit: int | None) -> list[ChangeSet]:
        rest, params = sql_text.limited(
            "WHERE sequence > %s ORDER BY sequence", [after], limit, "%s"
        )
        return self._records(ChangeSet, "change_sets", rest, *params)

    def last_change_set(self) -> ChangeSet | None:
        return self._record(ChangeSet, "change_sets", "ORDER BY sequence DESC LIMIT 1")

    def change_set_changes(self, change_set_id: str) -> list[ChangeRecord]:
        return self._records(
            ChangeRecord, "changes", "WHERE change_set_id = %s ORDER BY sequence", change_set_id
        )

    def sequence_at(self, moment: datetime) -> int:
        # One fixed-width UTC form: byte order ("C") is time order.
        row = self.connection.row(
            'SELECT max(sequence) FROM changes WHERE timestamp COLLATE "C" <= %s',
            (format_time(moment),),
        )
        return int(row[0] or 0) if row else 0

    def artifacts_as_of(
        self, sequence: int, collection_id: str | None, name: str | None
    ) -> list[Artifact]:
        where, params = sql_text.live_revision_as_of(sequence, collection_id, name, "%s")
        rows = self.connection.rows(
            "SELECT f.record, r.record FROM revisions r "
            "JOIN revisions f ON f.artifact_id = r.artifact_id AND f.revision = 1 "
            f"WHERE {where} ORDER BY f.change_sequence",
            params,
        )
        return [
            artifact_at(
                records.loads(ArtifactRevision, first, "revisions"),
                records.loads(ArtifactRevision, current, "revisions"),
            )
            for first, current in rows
        ]

    def all_deleted_relationships(self) -> list[tuple[Relationship, int]]:
        rows = self.connection.rows(
            "SELECT record, deleted_sequence FROM relationships "
            "WHERE deleted_sequence IS NOT NULL ORDER BY sequence",
            (),
        )
        return [(records.loads(Relationship, row[0], "relationships"), row[1]) for row in rows]

    def relationships_as_of(self, sequence: int) -> list[Relationship]:
        return self._records(
            Relationship,
            "relationships",
            "WHERE sequence <= %s AND (deleted_sequence IS NULL OR deleted_sequence > %s) "
            "ORDER BY sequence",
            sequence,
            sequence,
        )

    def artifacts_named(self, collection_id: str, name: str) -> list[str]:
        rows = self.connection.rows(
            "SELECT f.artifact_id FROM revisions f WHERE f.revision = 1 AND f.artifact_id IN "
            "(SELECT artifact_id FROM revisions WHERE collection_id = %s AND name = %s) "
            "ORDER BY f.change_sequence",
            (collection_id, name),
        )
        return [artifact_id for (artifact_id,) in rows]

    # -- collections -------------------------------------------------------

    def insert_collection(self, collection: Collection) -> None:
        self._insert(
            "collections",
            ("id", "name", "sequence", "record"),
            (collection.id, collection.name, collection.sequence, records.dumps(collection)),
        )

    def find_collection(self, collection_id: str) -> Collection | None:
        return self._record(
            Collection, "collections", "WHERE id = %s AND deleted_at IS NULL", collection_id
        )

    def find_collection_by_name(self, name: str) -> Collection | None:
        return self._record(
            Collection, "collections", "WHERE name = %s AND deleted_at IS NULL", name
        )

    def list_collections(self) -> list[Collection]:
        return self._records(
            Collection, "collections", "WHERE deleted_at IS NULL ORDER BY sequence"
        )

    def count_live_artifacts(self, collection_id: str) -> int:
        row = self.connection.row(
            "SELECT count(*) FROM artifacts WHERE collection_id = %s AND deleted_at IS NULL",
            (collection_id,),
        )
        return int(row[0]) if row else 0

    def delete_collection(self, collection_id: str, now: datetime) -> None:
        self.connection.execute(
            "UPDATE collections SET deleted_at = %s WHERE id = %s",
            (format_time(now), collection_id),
        )

    def all_collections(self) -> list[tuple[Collection, datetime | None]]:
        rows = self.connection.rows("SELECT record, deleted_at FROM collections ORDER BY sequence")
        return [
            (records.loads(Collection, record, "collections"), _maybe_time(deleted))
            for record, deleted in rows
        ]

    # -- artifacts and revisions -------------------------------------------

    def insert_artifact(
        self, artifact: Artifact, revision: ArtifactRevision, searchable: str | text.NotSearchable
    ) -> None:
        conn = self.connection
        rows = (
            ("artifacts", _ARTIFACT_COLUMNS, _artifact_row(artifact)),
            ("revisions", _REVISION_COLUMNS, _revision_row(revision)),
            ("artifact_text", _TEXT_COLUMNS, _text_row(artifact.sequence, searchable)),
        )
        if conn.is_buffering:
            key = (artifact.collection_id, artifact.name)
            if conn.noted(key) is not None:
                conn.flush()  # a duplicate name: let the index refuse it now
            for table, columns, row in rows:
                conn.defer(table, columns, row)
            conn.note(key, artifact)
            return
        for table, columns, row in rows:
            self._insert(table, columns, row)

    def replace_artifact(
        self,
        artifact: Artifact,
        revision: ArtifactRevision,
        content_changed: bool,
        searchable: str | text.NotSearchable | None,
    ) -> None:
        conn = self.connection
        conn.execute(
            "UPDATE artifacts SET collection_id = %s, name = %s, artifact_type = %s, "
            "digest = %s, record = %s WHERE id = %s",
            (
                artifact.collection_id,
                artifact.name,
                artifact.artifact_type,
                artifact.digest,
                records.dumps(artifact),
                artifact.id,
            ),
        )
        self._insert("revisions", _REVISION_COLUMNS, _revision_row(revision))
        if content_changed:
            assert searchable is not None
            self.set_text(artifact, searchable)

    def find_artifact(self, artifact_id: str) -> Artifact | None:
        return self._record(
            Artifact, "artifacts", "WHERE id = %s AND deleted_at IS NULL", artifact_id
        )

    def find_artifact_by_name(self, collection_id: str, name: str) -> Artifact | None:
        return self.find_artifacts_by_names(collection_id, [name]).get(name)

    def find_artifacts_by_names(self, collection_id: str, names: list[str]) -> dict[str, Artifact]:
        conn = self.connection
        found: dict[str, Artifact] = {}
        rest = []
        # Buffered rows are only creations, each noted by its name: the index
        # plus those notes is the whole truth without writing the buffer.
        for name in names:
            pending: Artifact | None = conn.noted((collection_id, name))
            if pending is None:
                rest.append(name)
            else:
                found[name] = pending
        if rest:
            rows = conn.rows(
                "SELECT record FROM artifacts WHERE collection_id = %s "
                "AND deleted_at IS NULL AND name = ANY(%s)",
                (collection_id, rest),
                flush=False,
            )
            for (record,) in rows:
                artifact = records.loads(Artifact, record, "artifacts")
                found[artifact.name] = artifact
        return found

    def delete_artifact(self, artifact_id: str, now: datetime) -> None:
        conn = self.connection
        conn.execute(
            "DELETE FROM artifact_text WHERE artifact_sequence = "
            "(SELECT sequence FROM artifacts WHERE id = %s)",
            (artifact_id,),
        )
        conn.execute(
            "UPDATE artifacts SET deleted_at = %s WHERE id = %s", (format_time(now), artifact_id)
        )

    def _matching(self, query: Query) -> list[tuple[Artifact, list[str] | None]]:
        """Live artifacts matching every filter (text exactly), by sequence, with
        their words when the query has text; ``after`` and ``limit`` applied."""
        where = ["a.deleted_at IS NULL"]
        params: list[Any] = []
        source = "artifacts a"
        if query.ids is not None:
            where.append("a.id = ANY(%s)")
            params.append(list(query.ids))
        for column, value in (
            ("collection_id", query.collection_id),
            ("name", query.name),
            ("artifact_type", query.artifact_type),
        ):
            if value is not None:
                where.append(f"a.{column} = %s")
                params.append(value)
        if query.digest is not None:
            where.append("a.digest = %s")
            params.append(digests.parse_digest(query.digest))
        if query.related_to is not None:
            related = query.related_to
            sides = []
            kind = "" if related.relationship_type is None else " AND relationship_type = %s"
            kinds = [] if related.relationship_type is None else [related.relationship_type]
            if related.direction != "incoming":
                sides.append(
                    "SELECT target_id FROM relationships WHERE deleted_sequence IS NULL "
                    f"AND source_id = %s{kind}"
                )
                params += [related.artifact_id, *kinds]
            if related.direction != "outgoing":
                sides.append(
                    "SELECT source_id FROM relationships WHERE deleted_sequence IS NULL "
                    f"AND target_id = %s{kind}"
                )
                params += [related.artifact_id, *kinds]
            where.append(f"a.id IN ({' UNION '.join(sides)})")
        parsed = None
        columns = "a.record"
        if query.text is not None:
            self._refuse_while_waiting()
            parsed = text.parse_query(query.text)
            source += " JOIN artifact_text t ON t.artifact_sequence = a.sequence"
            columns += ", t.words"
            where.append(_TEXT_MATCH)
            params.append(tsquery(parsed.required))
        if query.metadata is not None:
            # jsonb containment finds a superset of the type-exact matches (1 and
            # 1.0 are one jsonb number, a list contains its sub-lists); for
            # strings, booleans and null it is exact, and LIMIT can stay in SQL.
            where.append("a.metadata @> %s::jsonb")
            params.append(canonical_json(dict(query.metadata)))
        in_sql = parsed is None and (
            query.metadata is None
            or all(value is None or type(value) in (str, bool) for value in query.metadata.values())
        )
        if in_sql and query.after is not None:
            where.append("a.sequence > %s")
            params.append(query.after)
        sql = f"SELECT {columns} FROM {source} WHERE {' AND '.join(where)} ORDER BY a.sequence"
        if in_sql and query.limit is not None:
            sql += " LIMIT %s"
            params.append(query.limit)
        found: list[tuple[Artifact, list[str] | None]] = []
        for row in self.connection.rows(sql, params):
            artifact = records.loads(Artifact, row[0], "artifacts")
            words = row[1] if parsed is not None else None
            if parsed is not None and not parsed.matches(words or []):
                continue
            if query.metadata is not None and not metadata_matches(artifact, query.metadata):
                continue
            found.append((artifact, words))
        if not in_sql:
            if query.after is not None:
                found = [item for item in found if item[0].sequence > query.after]
            if query.limit is not None:
                found = found[: query.limit]
        return found

    def query(self, query: Query) -> list[Artifact]:
        return [artifact for artifact, _ in self._matching(query)]

    def rank(self, query: Query) -> list[tuple[Artifact, float]]:
        assert query.text is not None
        with self.read_view():
            found = self._matching(dataclasses.replace(query, limit=None))
            parsed = text.parse_query(query.text)
            scores = self._bm25(parsed, [(a.sequence, words or []) for a, words in found])
        ranked = sorted(found, key=lambda item: (-scores[item[0].sequence], item[0].sequence))
        if query.limit is not None:
            ranked = ranked[: query.limit]
        return [(artifact, scores[artifact.sequence]) for artifact, _ in ranked]

    def _bm25(
        self, query: text.TextQuery, candidates: list[tuple[int, list[str]]]
    ) -> dict[int, float]:
        """:func:`..text.bm25_scores` with the statistics read from the index."""
        conn = self.connection
        row = conn.row(
            "SELECT count(*), coalesce(sum(cardinality(words)), 0) FROM artifact_text "
            "WHERE reason IS NULL"
        )
        assert row is not None
        rows, total = int(row[0]), int(row[1])
        average = total / rows if rows else 0.0
        idf = []
        phrases = query.required + query.excluded
        for phrase in phrases:
            holding = conn.rows(
                f"SELECT t.words FROM artifact_text t WHERE {_TEXT_MATCH}", (tsquery([phrase]),)
            )
            hits = sum(1 for (words,) in holding if phrase.occurrences(words))
            value = math.log((rows - hits + 0.5) / (hits + 0.5))
            idf.append(value if value > 0.0 else text.BM25_MIN_IDF)
        scores = {}
        for key, document in candidates:
            length = float(len(document))
            score = 0.0
            for weight, phrase in zip(idf, phrases, strict=True):
                frequency = float(len(phrase.occurrences(document)))
                score += weight * (
                    (frequency * (text.BM25_K1 + 1.0))
                    / (
                        frequency
                        + text.BM25_K1 * (1 - text.BM25_B + text.BM25_B * length / average)
                    )
                )
            scores[key] = score
        return scores

    def _refuse_while_waiting(self) -> None:
        if self.connection.row("SELECT 1 FROM artifact_text WHERE pending LIMIT 1") is not None:
            raise StoreFormatError(
                "the text index is being rebuilt and would miss documents; "
                "finish it with rebuild_text() and search again"
            )

    # -- text state --------------------------------------------------------

    def text_status(self, artifact_id: str) -> text.NotSearchable | None:
        row = self.connection.row(
            "SELECT t.reason FROM artifacts a JOIN artifact_text t "
            "ON t.artifact_sequence = a.sequence "
            "WHERE a.id = %s AND a.deleted_at IS NULL AND NOT t.pending",
            (artifact_id,),
        )
        return None if row is None or row[0] is None else text.NotSearchable(row[0])

    def text_counts(self) -> dict[str, int]:
        counts = {reason.value: 0 for reason in text.NotSearchable}
        counts["searchable"] = 0
        counts["pending"] = 0
        for reason, pending, count in self.connection.rows(
            "SELECT reason, pending, count(*) FROM artifact_text GROUP BY reason, pending"
        ):
            key = "pending" if pending else (reason or "searchable")
            counts[key] += int(count)
        return counts

    def pending_text(self, limit: int) -> list[Artifact]:
        return self._records(
            Artifact,
            "artifacts a",
            "JOIN artifact_text t ON t.artifact_sequence = a.sequence "
            "WHERE t.pending AND a.deleted_at IS NULL ORDER BY a.sequence LIMIT %s",
            limit,
        )

    def set_text(self, artifact: Artifact, searchable: str | text.NotSearchable) -> None:
        self.connection.execute(
            "INSERT INTO artifact_text (artifact_sequence, reason, pending, words, lexemes) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (artifact_sequence) DO UPDATE SET "
            "reason = EXCLUDED.reason, pending = EXCLUDED.pending, words = EXCLUDED.words, "
            "lexemes = EXCLUDED.lexemes",
            _text_row(artifact.sequence, searchable),
        )

    def request_text_rebuild(self) -> int:
        row = self.connection.row(
            "WITH marked AS (UPDATE artifact_text SET reason = NULL, pending = true, "
            "words = '{}', lexemes = '{}' RETURNING 1) SELECT count(*) FROM marked"
        )
        return int(row[0]) if row else 0

    def list_revisions(self, artifact_id: str) -> list[ArtifactRevision]:
        return self._records(
            ArtifactRevision, "revisions", "WHERE artifact_id = %s ORDER BY revision", artifact_id
        )

    def find_revision(self, artifact_id: str, revision: int) -> ArtifactRevision | None:
        return self._record(
            ArtifactRevision,
            "revisions",
            "WHERE artifact_id = %s AND revision = %s",
            artifact_id,
            revision,
        )

    def revisions_with_digest(self, digest: str) -> list[ArtifactRevision]:
        return self._records(
            ArtifactRevision, "revisions", "WHERE digest = %s ORDER BY change_sequence", digest
        )

    def all_artifacts(self) -> list[tuple[Artifact, datetime | None]]:
        rows = self.connection.rows("SELECT record, deleted_at FROM artifacts ORDER BY sequence")
        return [
            (records.loads(Artifact, record, "artifacts"), _maybe_time(deleted))
            for record, deleted in rows
        ]

    def all_revisions(self) -> list[ArtifactRevision]:
        return self._records(ArtifactRevision, "revisions", "ORDER BY change_sequence")

    # -- relationships -----------------------------------------------------

    def insert_relationship(self, relationship: Relationship) -> None:
        self._insert(
            "relationships",
            ("id", "source_id", "target_id", "relationship_type", "sequence", "record"),
            (
                relationship.id,
                relationship.source_id,
                relationship.target_id,
                relationship.relationship_type,
                relationship.sequence,
                records.dumps(relationship),
            ),
        )

    def find_relationship(self, relationship_id: str) -> Relationship | None:
        return self._record(
            Relationship,
            "relationships",
            "WHERE id = %s AND deleted_sequence IS NULL",
            relationship_id,
        )

    def find_relationship_by_key(
        self, source_id: str, target_id: str, relationship_type: str
    ) -> Relationship | None:
        return self._record(
            Relationship,
            "relationships",
            "WHERE source_id = %s AND target_id = %s AND relationship_type = %s "
            "AND deleted_sequence IS NULL",
            source_id,
            target_id,
            relationship_type,
        )

    def list_relationships(
        self, artifact_id: str | None, direction: str, relationship_type: str | None
    ) -> list[Relationship]:
        where = ["deleted_sequence IS NULL"]
        params: list[Any] = []
        if artifact_id is not None:
            sides = []
            if direction != "incoming":
                sides.append("source_id = %s")
            if direction != "outgoing":
                sides.append("target_id = %s")
            where.append(f"({' OR '.join(sides)})")
            params += [artifact_id] * len(sides)
        if relationship_type is not None:
            where.append("relationship_type = %s")
            params.append(relationship_type)
        return self._records(
            Relationship,
            "relationships",
            f"WHERE {' AND '.join(where)} ORDER BY sequence",
            *params,
        )

    def delete_relationship(self, relationship_id: str, sequence: int) -> None:
        self.connection.execute(
            "UPDATE relationships SET deleted_sequence = %s WHERE id = %s",
            (sequence, relationship_id),
        )

    # -- runs, steps, bundles, manifests -----------------------------------

    def insert_run(self, run: OperationRun) -> None:
        self._insert(
            "runs",
            ("id", "sequence", "status", "record"),
            (run.id, run.sequence, run.status, records.dumps(run)),
        )

    def replace_run(self, run: OperationRun) -> None:
        self.connection.execute(
            "UPDATE runs SET status = %s, record = %s WHERE id = %s",
            (run.status, records.dumps(run), run.id),
        )

    def find_run(self, run_id: str) -> OperationRun | None:
        return self._record(OperationRun, "runs", "WHERE id = %s", run_id)

    def find_runs(self, run_ids: list[str]) -> list[OperationRun]:
        return self._records(
            OperationRun, "runs", "WHERE id = ANY(%s) ORDER BY sequence", list(run_ids)
        )

    def list_runs(self, status: str | None) -> list[OperationRun]:
        if status is None:
            return self._records(OperationRun, "runs", "ORDER BY sequence")
        return self._records(OperationRun, "runs", "WHERE status = %s ORDER BY sequence", status)

    def insert_step(self, step: WorkflowStep) -> None:
        self._insert(
            "steps",
            ("id", "run_id", "position", "sequence", "record"),
            (step.id, step.run_id, step.position, step.sequence, records.dumps(step)),
        )

    def replace_step(self, step: WorkflowStep) -> None:
        self.connection.execute(
            "UPDATE steps SET record = %s WHERE id = %s", (records.dumps(step), step.id)
        )

    def find_step(self, step_id: str) -> WorkflowStep | None:
        return self._record(WorkflowStep, "steps", "WHERE id = %s", step_id)

    def list_steps(self, run_id: str) -> list[WorkflowStep]:
        return self._records(WorkflowStep, "steps", "WHERE run_id = %s ORDER BY position", run_id)

    def all_steps(self) -> list[WorkflowStep]:
        return self._records(WorkflowStep, "steps", "ORDER BY sequence")

    def insert_bundle(self, bundle: InputBundle) -> None:
        inputs = [
            {"artifact_id": ref.artifact_id, "revision": ref.revision, "digest": ref.digest}
            for ref in bundle.inputs
        ]
        self._insert(
            "bundles",
            ("id", "run_id", "sequence", "inputs", "record"),
            (bundle.id, bundle.run_id, bundle.sequence, json.dumps(inputs), records.dumps(bundle)),
        )

    def list_bundles(self, run_id: str | None) -> list[InputBundle]:
        if run_id is None:
            return self._records(InputBundle, "bundles", "ORDER BY sequence")
        return self._records(InputBundle, "bundles", "WHERE run_id = %s ORDER BY sequence", run_id)

    def bundles_consuming(
        self, artifact_id: str | None, revision: int | None, digest: str | None
    ) -> list[InputBundle]:
        wanted: dict[str, Any] = {}
        for key, value in (
            ("artifact_id", artifact_id),
            ("revision", revision),
            ("digest", digest),
        ):
            if value is not None:
                wanted[key] = value
        return self._records(
            InputBundle,
            "bundles",
            "WHERE inputs @> %s::jsonb ORDER BY sequence",
            json.dumps([wanted]),
        )

    def list_outputs(self, run_id: str) -> list[ArtifactRevision]:
        return self._records(
            ArtifactRevision, "revisions", "WHERE run_id = %s ORDER BY change_sequence", run_id
        )

    def store_manifest(self, manifest: RunManifest) -> None:
        self.connection.execute(
            "INSERT INTO manifests (run_id, record) VALUES (%s, %s) "
            "ON CONFLICT (run_id) DO UPDATE SET record = EXCLUDED.record",
            (manifest.run_id, records.dumps(manifest)),
        )

    def find_manifest(self, run_id: str) -> RunManifest | None:
        return self._record(RunManifest, "manifests", "WHERE run_id = %s", run_id)

    def list_manifests(self) -> list[RunManifest]:
        rows = self.connection.rows(
            "SELECT m.record FROM manifests m JOIN runs r ON r.id = m.run_id ORDER BY r.sequence"
        )
        return [records.loads(RunManifest, record, "manifests") for (record,) in rows]

    # -- context packages and external references ---------------------------

    def insert_context_package(self, package: ContextPackage) -> None:
        self._insert(
            "context_packages",
            ("id", "sequence", "record"),
            (package.id, package.sequence, records.dumps(package)),
        )

    def find_context_package(self, package_id: str) -> ContextPackage | None:
        return self._record(ContextPackage, "context_packages", "WHERE id = %s", package_id)

    def list_context_packages(self) -> list[ContextPackage]:
        return self._records(ContextPackage, "context_packages", "ORDER BY sequence")

    def insert_external_reference(self, reference: ExternalMemoryReference) -> None:
        self._insert(
            "external_references",
            ("id", "sequence", "record"),
            (reference.id, reference.sequence, records.dumps(reference)),
        )

    def find_external_reference(self, reference_id: str) -> ExternalMemoryReference | None:
        return self._record(
            ExternalMemoryReference, "external_references", "WHERE id = %s", reference_id
        )

    def list_external_references(self) -> list[ExternalMemoryReference]:
        return self._records(ExternalMemoryReference, "external_references", "ORDER BY sequence")


def _maybe_time(value: str | None) -> datetime | None:
    return None if value is None else parse_time(value)
