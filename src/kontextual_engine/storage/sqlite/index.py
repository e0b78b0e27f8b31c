"""``SQLiteIndex``: the primitives of :class:`~..backend.IndexBackend` over SQLite.

Each primitive is one or a few statements on the index's :class:`Connection`
(transactions, retries, typed errors, the bulk buffer); :mod:`.rows` maps
records to rows, :class:`TextIndex` does text search. Records with ordered
parts (input bundles, context packages, manifests) keep them in child tables
keyed by position, read with the parents in one ``LEFT JOIN`` (manifests: two
statements in one read transaction), never a statement per record.

Bulk writes: inside :meth:`SQLiteIndex.bulk`, the rows of newly created
artifacts are buffered and written with ``executemany``; any other statement
writes the buffer first, so every read sees every write. Lookups by name
answer from the buffered creations and the index together.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ...models import (
    Artifact,
    ArtifactRevision,
    ChangeRecord,
    Collection,
    ContextPackage,
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
from .. import sql_text
from ..backend import IndexBackend
from ..objects import Durability
from ..text import NotSearchable
from . import schema
from .connection import Connection
from .filters import conditions
from .history import HistoryQueries
from .options import CACHE_SIZE_KIB, DEFAULT_BUSY_TIMEOUT
from .rows import (
    ARTIFACT_UPDATE,
    ARTIFACTS,
    BUNDLE_INPUTS,
    BUNDLE_SELECT,
    BUNDLES,
    CHANGES,
    COLLECTIONS,
    CONTEXT_PACKAGES,
    CONTEXT_REFERENCES,
    EXTERNAL_REFERENCES,
    MANIFEST_REF_SELECT,
    MANIFEST_REFS,
    MANIFESTS,
    PACKAGE_SELECT,
    RELATIONSHIPS,
    REVISIONS,
    RUN_UPDATE,
    RUNS,
    STEP_UPDATE,
    STEPS,
    Columns,
    parse_maybe_time,
    read_bundles,
    read_manifest,
    read_packages,
)
from .text_index import TextIndex

# Names bound in one IN (...) lookup: well under SQLite's 32766 variables,
# large enough that a put_artifacts chunk is one query.
NAMES_PER_QUERY = 500
_INSERT_METADATA = "INSERT INTO artifact_metadata VALUES (?, ?, ?, ?)"

R = TypeVar("R")


class SQLiteIndex(HistoryQueries, IndexBackend):
    """The index of a store directory: ``<store>/index.sqlite``, one connection.

    Opened by :class:`~.repository.SQLiteKnowledgeRepository`, which decides
    whether the store may be written (``read_only``, and ``read_only_reason``
    says why not) and passes ``has_objects`` so that a missing index is not
    started afresh over existing bodies.

    Words of searchable bodies are indexed in the write transaction
    (:class:`TextIndex`, ADR 0006).
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
        self.connection = Connection(
            root,
            durability,
            read_only=read_only,
            read_only_reason=read_only_reason,
            has_objects=has_objects,
            busy_timeout=busy_timeout,
            cache_kib=cache_kib,
        )
        self.text = TextIndex(self.connection)
        self._last: int | None = None  # newest sequence, valid inside a transaction

    def __repr__(self) -> str:
        return f"SQLiteIndex({str(self.index_path)!r})"

    # -- lifecycle ---------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.connection.root

    @property
    def index_path(self) -> Path:
        return self.connection.index_path

    @property
    def read_only(self) -> bool:
        """Whether writes are refused: asked for, not possible here, or a full disk."""
        return self.connection.read_only

    def close(self) -> None:
        """Checkpoint the WAL into the database file and close. Closing twice is fine."""
        self.connection.close()

    def has_running_runs(self) -> bool:
        """Whether any run is marked running: a cheap read that spares every open
        the write lock of recovering abandoned runs when none runs."""
        row = self.connection.row(
            "SELECT 1 FROM runs WHERE status = ? LIMIT 1", (RunStatus.RUNNING.value,)
        )
        return row is not None

    # -- transactions ------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[bool]:
        with self.connection.transaction() as outermost:
            if outermost:
                self._last = None
            try:
                yield outermost
            except BaseException:
                self._last = None  # the sequences of the undone level are free again
                raise
            finally:
                if outermost:
                    self._last = None

    @contextmanager
    def read_view(self) -> Iterator[None]:
        """Several SELECTs that see one state: a deferred read transaction (which a
        read-only store can open too, and which blocks no writer), unless one is open."""
        with self.connection.read_view():
            yield

    def bulk(self) -> AbstractContextManager[None]:
        """New artifacts' rows (artifact, first revision, text, metadata, change
        record) are buffered and written with ``executemany``; any other
        statement writes the buffer first, so every read sees every write."""
        return self.connection.buffering()

    # -- primitives --------------------------------------------------------

    def next_sequence(self) -> int:
        return self.last_sequence() + 1

    def last_sequence(self) -> int:
        with self.connection.lock:
            if self._last is not None:
                return self._last
            last: int = self.connection.row("SELECT coalesce(max(sequence), 0) FROM changes")[0]
            if self.connection.depth:
                self._last = last
            return last

    def _find(self, columns: Columns[R], where: str, *params: Any) -> R | None:
        """The record of the first row of ``columns.table`` that matches ``where``."""
        sql = f"SELECT {columns.select} FROM {columns.source} WHERE {where}"
        row = self.connection.row(sql, params)
        return None if row is None else columns.read(row)

    def _list(self, columns: Columns[R], rest: str, *params: Any) -> list[R]:
        """The records of the rows of ``columns.table`` that ``rest`` (WHERE,
        ORDER BY) selects."""
        sql = f"SELECT {columns.select} FROM {columns.source} {rest}"
        return [columns.read(row) for row in self.connection.rows(sql, params)]

    def _insert(self, columns: Columns[R], record: R) -> None:
        self.connection.execute(columns.insert, columns.values(record))

    def _insert_parts(self, columns: Columns[R], rows: Iterable[tuple[R, tuple[Any, ...]]]) -> None:
        """Insert child rows: each a part of a record and its keys (parent, position)."""
        self.connection.execute_many(
            columns.insert, [columns.values(part, *keys) for part, keys in rows]
        )

    def insert_collection(self, collection: Collection) -> None:
        self._insert(COLLECTIONS, collection)

    def find_collection(self, collection_id: str) -> Collection | None:
        return self._find(COLLECTIONS, "id = ? AND deleted_at IS NULL", collection_id)

    def find_collection_by_name(self, name: str) -> Collection | None:
        return self._find(COLLECTIONS, "name = ? AND deleted_at IS NULL", name)

    def list_collections(self) -> list[Collection]:
        return self._list(COLLECTIONS, "WHERE deleted_at IS NULL ORDER BY sequence")

    def count_live_artifacts(self, collection_id: str) -> int:
        count: int = self.connection.row(
            "SELECT count(*) FROM artifacts WHERE collection_id = ? AND deleted_at IS NULL",
            (collection_id,),
        )[0]
        return count

    def delete_collection(self, collection_id: str, now: datetime) -> None:
        self.connection.execute(
            "UPDATE collections SET deleted_at = ? WHERE id = ?", (format_time(now), collection_id)
        )

    def insert_artifact(
        self, artifact: Artifact, revision: ArtifactRevision, searchable: str | NotSearchable
    ) -> None:
        rows: list[tuple[str, tuple[Any, ...]]] = [
            (ARTIFACTS.insert, ARTIFACTS.values(artifact)),
            (REVISIONS.insert, REVISIONS.values(revision)),
            *self.text.statements(artifact.sequence, searchable),
        ]
        rows += [
            (_INSERT_METADATA, row)
            for row in schema.metadata_rows(artifact.sequence, artifact.metadata_json)
        ]
        conn = self.connection
        if not conn.is_buffering:
            for sql, row in rows:
                conn.execute(sql, row)
            return
        for sql, row in rows:
            conn.defer(sql, row)
        conn.note((artifact.collection_id, artifact.name), artifact)

    def replace_artifact(
        self,
        artifact: Artifact,
        revision: ArtifactRevision,
        content_changed: bool,
        searchable: str | NotSearchable | None,
    ) -> None:
        conn = self.connection
        conn.execute(ARTIFACT_UPDATE.sql, ARTIFACT_UPDATE.values(artifact))
        self._insert(REVISIONS, revision)
        conn.execute(
            "DELETE FROM artifact_metadata WHERE artifact_sequence = ?", (artifact.sequence,)
        )
        conn.execute_many(
            _INSERT_METADATA, schema.metadata_rows(artifact.sequence, artifact.metadata_json)
        )
        if content_changed:
            assert searchable is not None
            self.text.replace(artifact.sequence, searchable)

    def find_artifact(self, artifact_id: str) -> Artifact | None:
        return self._find(ARTIFACTS, "a.id = ? AND a.deleted_at IS NULL", artifact_id)

    def find_artifact_by_name(self, collection_id: str, name: str) -> Artifact | None:
        sql = (
            f"SELECT {ARTIFACTS.select} FROM artifacts a "
            "WHERE a.collection_id = ? AND a.name = ? AND a.deleted_at IS NULL"
        )
        conn = self.connection
        with conn.lock:
            # Buffered rows are only creations, each noted by its name, so the
            # index plus those notes is the whole truth without writing the buffer.
            pending: Artifact | None = conn.noted((collection_id, name))
            if pending is not None:
                return pending
            row = conn.row(sql, (collection_id, name), flush=False)
            return None if row is None else ARTIFACTS.read(row)

    def find_artifacts_by_names(self, collection_id: str, names: list[str]) -> dict[str, Artifact]:
        found: dict[str, Artifact] = {}
        conn = self.connection
        with conn.lock:
            # As in find_artifact_by_name: buffered creations plus the index are
            # the whole truth, so this reads without writing the buffer.
            rest = []
            for name in names:
                pending: Artifact | None = conn.noted((collection_id, name))
                if pending is None:
                    rest.append(name)
                else:
                    found[name] = pending
            for start in range(0, len(rest), NAMES_PER_QUERY):
                part = rest[start : start + NAMES_PER_QUERY]
                sql = (
                    f"SELECT {ARTIFACTS.select} FROM artifacts a WHERE a.collection_id = ? "
                    f"AND a.deleted_at IS NULL AND a.name IN ({', '.join('?' * len(part))})"
                )
                rows = conn.rows(sql, [collection_id, *part], flush=False)
                found.update((artifact.name, artifact) for artifact in map(ARTIFACTS.read, rows))
        return found

    def delete_artifact(self, artifact_id: str, now: datetime) -> None:
        conn = self.connection
        row = conn.row("SELECT sequence FROM artifacts WHERE id = ?", (artifact_id,))
        if row is None:  # the contract found the artifact a moment ago
            raise conn.missing_row(f"the row of artifact {artifact_id}", "artifacts")
        sequence = row[0]
        self.text.forget(sequence)
        conn.execute("DELETE FROM artifact_metadata WHERE artifact_sequence = ?", (sequence,))
        conn.execute(
            "UPDATE artifacts SET deleted_at = ? WHERE id = ?", (format_time(now), artifact_id)
        )

    def query(self, query: Query) -> list[Artifact]:
        where, params = conditions(query, probe=query.text is not None)
        source, order = "artifacts a", "a.sequence"
        if query.text is not None:
            source, order, matches, values = self.text.source(query)
            where, params = [*where, *matches], [*params, *values]
        if query.after is not None:
            where, params = [*where, f"{order} > ?"], [*params, query.after]
        sql = (
            f"SELECT {ARTIFACTS.select} FROM {source} WHERE {' AND '.join(where)} ORDER BY {order}"
        )
        if query.limit is not None:
            sql, params = sql + " LIMIT ?", [*params, query.limit]
        return [ARTIFACTS.read(row) for row in self.connection.rows(sql, params)]

    def rank(self, query: Query) -> list[tuple[Artifact, float]]:
        where, params = conditions(query, probe=True)
        source, _, matches, values = self.text.source(query)
        # -bm25() is exactly the reference's score. Text alone (the words table
        # holds live artifacts only): rank rowids, then join only the page.
        if len(where) == 1 and query.limit is not None:
            sql = (
                f"SELECT {ARTIFACTS.select}, t.score FROM (SELECT rowid, "
                "-bm25(artifact_words) AS score FROM artifact_words WHERE artifact_words "
                "MATCH ? ORDER BY score DESC, rowid LIMIT ?) t JOIN artifacts a "
                "ON a.sequence = t.rowid ORDER BY t.score DESC, a.sequence"
            )
            rows = self.connection.rows(sql, [*values, query.limit])
            return [(ARTIFACTS.read(row[:-1]), row[-1]) for row in rows]
        sql = (
            f"SELECT {ARTIFACTS.select}, -bm25(t.artifact_words) AS score FROM {source} "
            f"WHERE {' AND '.join([*where, *matches])} ORDER BY score DESC, a.sequence"
        )
        params = [*params, *values]
        if query.limit is not None:
            sql, params = sql + " LIMIT ?", [*params, query.limit]
        return [(ARTIFACTS.read(row[:-1]), row[-1]) for row in self.connection.rows(sql, params)]

    # -- text state --------------------------------------------------------

    def text_status(self, artifact_id: str) -> NotSearchable | None:
        artifact = self.find_artifact(artifact_id)
        return None if artifact is None else self.text.status(artifact.sequence)

    def text_counts(self) -> dict[str, int]:
        return self.text.counts()

    def pending_text(self, limit: int) -> list[Artifact]:
        return self.text.pending_artifacts(limit)

    def set_text(self, artifact: Artifact, searchable: str | NotSearchable) -> None:
        self.text.replace(artifact.sequence, searchable)

    def request_text_rebuild(self) -> int:
        return self.text.request_rebuild()

    def list_revisions(self, artifact_id: str) -> list[ArtifactRevision]:
        return self._list(REVISIONS, "WHERE artifact_id = ? ORDER BY revision", artifact_id)

    def find_revision(self, artifact_id: str, revision: int) -> ArtifactRevision | None:
        return self._find(REVISIONS, "artifact_id = ? AND revision = ?", artifact_id, revision)

    def insert_relationship(self, relationship: Relationship) -> None:
        self._insert(RELATIONSHIPS, relationship)

    def find_relationship(self, relationship_id: str) -> Relationship | None:
        return self._find(RELATIONSHIPS, "id = ?", relationship_id)

    def find_relationship_by_key(
        self, source_id: str, target_id: str, relationship_type: str
    ) -> Relationship | None:
        return self._find(
            RELATIONSHIPS,
            "source_id = ? AND target_id = ? AND relationship_type = ?",
            source_id,
            target_id,
            relationship_type,
        )

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
        rest = f"WHERE {' AND '.join(where)} " if where else ""
        return self._list(RELATIONSHIPS, rest + "ORDER BY sequence", *params)

    def delete_relationship(self, relationship_id: str, sequence: int) -> None:
        conn = self.connection
        conn.execute(
            "INSERT INTO deleted_relationships SELECT sequence, id, source_id, target_id, "
            "relationship_type, metadata, created_at, ? FROM relationships WHERE id = ?",
            (sequence, relationship_id),
        )
        conn.execute("DELETE FROM relationships WHERE id = ?", (relationship_id,))

    def append_change(self, change: ChangeRecord) -> None:
        conn = self.connection
        if conn.is_buffering:
            conn.defer(CHANGES.insert, CHANGES.values(change))
            conn.flush_if_full()
        else:
            self._insert(CHANGES, change)
        self._last = change.sequence

    def list_changes(
        self, since: int, entity_id: str | None, limit: int | None
    ) -> list[ChangeRecord]:
        rest, params = sql_text.after_sequence(since, entity_id, limit, "?")
        return self._list(CHANGES, rest, *params)

    def all_collections(self) -> list[tuple[Collection, datetime | None]]:
        rows = self.connection.rows(
            f"SELECT {COLLECTIONS.select}, deleted_at FROM collections ORDER BY sequence"
        )
        return [(COLLECTIONS.read(row[:-1]), parse_maybe_time(row[-1])) for row in rows]

    def all_artifacts(self) -> list[tuple[Artifact, datetime | None]]:
        rows = self.connection.rows(
            f"SELECT {ARTIFACTS.select}, a.deleted_at FROM artifacts a ORDER BY a.sequence"
        )
        return [(ARTIFACTS.read(row[:-1]), parse_maybe_time(row[-1])) for row in rows]

    def all_revisions(self) -> list[ArtifactRevision]:
        return self._list(REVISIONS, "ORDER BY change_sequence")

    def all_steps(self) -> list[WorkflowStep]:
        return self._list(STEPS, "ORDER BY sequence")

    # -- runs and context --------------------------------------------------

    def insert_run(self, run: OperationRun) -> None:
        self._insert(RUNS, run)

    def replace_run(self, run: OperationRun) -> None:
        self.connection.execute(RUN_UPDATE.sql, RUN_UPDATE.values(run))

    def find_run(self, run_id: str) -> OperationRun | None:
        return self._find(RUNS, "id = ?", run_id)

    def find_runs(self, run_ids: list[str]) -> list[OperationRun]:
        return self._list(RUNS, "WHERE id IN (SELECT value FROM json_each(?))", json.dumps(run_ids))

    def list_runs(self, status: str | None) -> list[OperationRun]:
        if status is None:
            return self._list(RUNS, "ORDER BY sequence")
        return self._list(RUNS, "WHERE status = ? ORDER BY sequence", status)

    def insert_step(self, step: WorkflowStep) -> None:
        self._insert(STEPS, step)

    def replace_step(self, step: WorkflowStep) -> None:
        self.connection.execute(STEP_UPDATE.sql, STEP_UPDATE.values(step))

    def find_step(self, step_id: str) -> WorkflowStep | None:
        return self._find(STEPS, "id = ?", step_id)

    def list_steps(self, run_id: str) -> list[WorkflowStep]:
        return self._list(STEPS, "WHERE run_id = ? ORDER BY position", run_id)

    def insert_bundle(self, bundle: InputBundle) -> None:
        self._insert(BUNDLES, bundle)
        self._insert_parts(
            BUNDLE_INPUTS,
            ((ref, (bundle.id, position)) for position, ref in enumerate(bundle.inputs, 1)),
        )

    def _bundles(self, where: str, *params: Any) -> list[InputBundle]:
        return read_bundles(
            self.connection.rows(f"{BUNDLE_SELECT} {where}ORDER BY b.sequence, i.position", params)
        )

    def list_bundles(self, run_id: str | None) -> list[InputBundle]:
        if run_id is None:
            return self._bundles("")
        return self._bundles("WHERE b.run_id = ? ", run_id)

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
        return self._bundles(f"WHERE b.id IN ({matching}) ", *params)

    def list_outputs(self, run_id: str) -> list[ArtifactRevision]:
        return self._list(REVISIONS, "WHERE run_id = ? ORDER BY change_sequence", run_id)

    def revisions_with_digest(self, digest: str) -> list[ArtifactRevision]:
        # The keys come from the digest index alone; a WITHOUT ROWID table
        # would otherwise be searched for every row of the digest's bucket.
        sql = (
            f"SELECT {REVISIONS.select_as('r')} FROM (SELECT artifact_id, revision "
            f"FROM revisions WHERE {schema.bucket_sql('digest')} = ? AND +digest = ?) "
            "JOIN revisions r USING (artifact_id, revision) ORDER BY r.change_sequence"
        )
        rows = self.connection.rows(sql, (schema.digest_bucket(digest), digest))
        return [REVISIONS.read(row) for row in rows]

    def store_manifest(self, manifest: RunManifest) -> None:
        self.connection.execute("DELETE FROM manifest_refs WHERE run_id = ?", (manifest.run_id,))
        self.connection.execute("DELETE FROM manifests WHERE run_id = ?", (manifest.run_id,))
        self._insert(MANIFESTS, manifest)
        self._insert_parts(
            MANIFEST_REFS,
            (
                (ref, (manifest.run_id, direction, position))
                for direction, refs in (("input", manifest.inputs), ("output", manifest.outputs))
                for position, ref in enumerate(refs, 1)
            ),
        )

    def find_manifest(self, run_id: str) -> RunManifest | None:
        with self.read_view():
            row = self.connection.row(
                f"SELECT {MANIFESTS.select} FROM manifests m WHERE m.run_id = ?", (run_id,)
            )
            if row is None:
                return None
            refs = self.connection.rows(
                f"{MANIFEST_REF_SELECT} WHERE run_id = ? ORDER BY direction, position",
                (run_id,),
            )
        return read_manifest(row, refs)

    def list_manifests(self) -> list[RunManifest]:
        with self.read_view():
            rows = self.connection.rows(
                f"SELECT {MANIFESTS.select} FROM manifests m JOIN runs r ON r.id = m.run_id "
                "ORDER BY r.sequence"
            )
            refs: dict[str, list[Any]] = {}
            for ref in self.connection.rows(
                f"{MANIFEST_REF_SELECT} ORDER BY run_id, direction, position"
            ):
                refs.setdefault(ref[0], []).append(ref)
        return [read_manifest(row, refs.get(row[0], [])) for row in rows]

    def insert_context_package(self, package: ContextPackage) -> None:
        self._insert(CONTEXT_PACKAGES, package)
        self._insert_parts(
            CONTEXT_REFERENCES,
            ((ref, (package.id, position)) for position, ref in enumerate(package.references, 1)),
        )

    def find_context_package(self, package_id: str) -> ContextPackage | None:
        found = read_packages(
            self.connection.rows(
                f"{PACKAGE_SELECT} WHERE p.id = ? ORDER BY r.position", (package_id,)
            )
        )
        return found[0] if found else None

    def list_context_packages(self) -> list[ContextPackage]:
        return read_packages(
            self.connection.rows(f"{PACKAGE_SELECT} ORDER BY p.sequence, r.position")
        )

    def insert_external_reference(self, reference: ExternalMemoryReference) -> None:
        self._insert(EXTERNAL_REFERENCES, reference)

    def find_external_reference(self, reference_id: str) -> ExternalMemoryReference | None:
        return self._find(EXTERNAL_REFERENCES, "id = ?", reference_id)

    def list_external_references(self) -> list[ExternalMemoryReference]:
        return self._list(EXTERNAL_REFERENCES, "ORDER BY sequence")
