"""``InMemoryKnowledgeRepository``: the reference backend.

:class:`MemoryIndex` keeps every record in dictionaries of immutable records. Writes go through
:meth:`_put` / :meth:`_pop`, which log how to undo them, so ``transaction()``
rolls back for real (nested levels too) in time proportional to the work
undone. One re-entrant lock serialises transactions across threads.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from ..errors import IntegrityError, StoreFormatError
from ..models import (
    Artifact,
    ArtifactRevision,
    ChangeAction,
    ChangeRecord,
    ChangeSet,
    Collection,
    ContextPackage,
    EntityKind,
    ExternalMemoryReference,
    InputBundle,
    OperationRun,
    Query,
    Relationship,
    RunManifest,
    WorkflowStep,
)
from . import text
from .backend import IndexBackend
from .bodies import MemoryBodyStore
from .contract import KnowledgeRepository
from .history import artifact_at
from .ids import Clock, IdSource
from .queries import artifact_filter, related_ids, relationships_matching

_MISSING = object()
_Sequenced = TypeVar("_Sequenced")


class InMemoryKnowledgeRepository(KnowledgeRepository):
    """The reference repository: a :class:`MemoryIndex` and a :class:`MemoryBodyStore`."""

    def __init__(self, *, clock: Clock | None = None, ids: IdSource | None = None) -> None:
        super().__init__(MemoryIndex(), MemoryBodyStore(), clock=clock, ids=ids)


class MemoryIndex(IndexBackend):
    """Every record in dictionaries, with an undo log for real rollbacks."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._undo: list[list[Callable[[], None]]] = []
        self.collections: dict[str, Collection] = {}
        self.deleted_at: dict[str, datetime] = {}
        self.collection_names: dict[str, str] = {}
        self.artifacts: dict[str, Artifact] = {}
        self.artifact_names: dict[tuple[str, str], str] = {}
        # The words of each live artifact's body, or why it has none (text.py).
        self.words: dict[str, list[str] | text.NotSearchable] = {}
        self.text_waiting: dict[str, None] = {}
        self.revisions: dict[str, list[ArtifactRevision]] = {}
        self.relationships: dict[str, Relationship] = {}
        self.relationship_keys: dict[tuple[str, str, str], str] = {}
        self.changes: list[ChangeRecord] = []
        self.change_sets: dict[str, ChangeSet] = {}
        # Deleted relationships, with the sequence of their deletion.
        self.deleted_relationships: dict[str, tuple[Relationship, int]] = {}
        self.runs: dict[str, OperationRun] = {}
        self.steps: dict[str, WorkflowStep] = {}
        self.bundles: dict[str, InputBundle] = {}
        self.manifests: dict[str, RunManifest] = {}
        self.packages: dict[str, ContextPackage] = {}
        self.external_references: dict[str, ExternalMemoryReference] = {}

    # -- transactions ------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[bool]:
        with self._lock:
            self._undo.append([])
            try:
                yield len(self._undo) == 1
            except BaseException:
                for undo in reversed(self._undo.pop()):
                    undo()
                raise
            done = self._undo.pop()
            if self._undo:
                self._undo[-1].extend(done)

    def _put(self, table: dict[Any, Any], key: Any, value: Any) -> None:
        previous = table.get(key, _MISSING)
        table[key] = value
        self._log(
            lambda: table.pop(key) if previous is _MISSING else table.__setitem__(key, previous)
        )

    def _add(self, table: dict[Any, Any], key: str, value: Any) -> None:
        """Insert a new record; an id that already exists is refused, as in SQL."""
        if key in table:
            raise IntegrityError(f"a record with id {key!r} already exists")
        self._put(table, key, value)

    def _pop(self, table: dict[Any, Any], key: Any) -> None:
        previous = table.pop(key)
        self._log(lambda: table.__setitem__(key, previous))

    def _log(self, undo: Callable[[], None]) -> None:
        assert self._undo, "write outside a transaction"
        self._undo[-1].append(undo)

    # -- primitives --------------------------------------------------------

    def next_sequence(self) -> int:
        return self.last_sequence() + 1

    def last_sequence(self) -> int:
        return self.changes[-1].sequence if self.changes else 0

    def insert_collection(self, collection: Collection) -> None:
        self._add(self.collections, collection.id, collection)
        self._put(self.collection_names, collection.name, collection.id)

    def find_collection(self, collection_id: str) -> Collection | None:
        with self._lock:
            collection = self.collections.get(collection_id)
            if collection is None or self.collection_names.get(collection.name) != collection_id:
                return None
            return collection

    def find_collection_by_name(self, name: str) -> Collection | None:
        with self._lock:
            collection_id = self.collection_names.get(name)
            return None if collection_id is None else self.collections[collection_id]

    def list_collections(self) -> list[Collection]:
        with self._lock:
            return sorted(
                (self.collections[cid] for cid in self.collection_names.values()),
                key=lambda c: c.sequence,
            )

    def count_live_artifacts(self, collection_id: str) -> int:
        return sum(1 for cid, _ in self.artifact_names if cid == collection_id)

    def delete_collection(self, collection_id: str, now: datetime) -> None:
        self._pop(self.collection_names, self.collections[collection_id].name)
        self._put(self.deleted_at, collection_id, now)

    def insert_artifact(
        self, artifact: Artifact, revision: ArtifactRevision, searchable: str | text.NotSearchable
    ) -> None:
        self._add(self.artifacts, artifact.id, artifact)
        self._put(self.artifact_names, (artifact.collection_id, artifact.name), artifact.id)
        self._put(self.words, artifact.id, _words_of(searchable))
        self._put(self.revisions, artifact.id, [revision])

    def replace_artifact(
        self,
        artifact: Artifact,
        revision: ArtifactRevision,
        content_changed: bool,
        searchable: str | text.NotSearchable | None,
    ) -> None:
        previous = self.artifacts[artifact.id]
        if previous.name != artifact.name:
            self._pop(self.artifact_names, (previous.collection_id, previous.name))
            self._put(self.artifact_names, (artifact.collection_id, artifact.name), artifact.id)
        self._put(self.artifacts, artifact.id, artifact)
        if content_changed:
            assert searchable is not None
            self.set_text(artifact, searchable)
        self._put(self.revisions, artifact.id, [*self.revisions[artifact.id], revision])

    def find_artifact(self, artifact_id: str) -> Artifact | None:
        with self._lock:
            artifact = self.artifacts.get(artifact_id)
            if artifact is None:
                return None
            key = (artifact.collection_id, artifact.name)
            return artifact if self.artifact_names.get(key) == artifact_id else None

    def find_artifact_by_name(self, collection_id: str, name: str) -> Artifact | None:
        with self._lock:
            artifact_id = self.artifact_names.get((collection_id, name))
            return None if artifact_id is None else self.artifacts[artifact_id]

    def delete_artifact(self, artifact_id: str, now: datetime) -> None:
        artifact = self.artifacts[artifact_id]
        self._pop(self.artifact_names, (artifact.collection_id, artifact.name))
        self._put(self.deleted_at, artifact_id, now)
        self._pop(self.words, artifact_id)
        if artifact_id in self.text_waiting:
            self._pop(self.text_waiting, artifact_id)

    def query(self, query: Query) -> list[Artifact]:
        with self._lock:
            live = [self.artifacts[aid] for aid in self.artifact_names.values()]
            related = None
            if query.related_to is not None:
                related = related_ids(self.relationships.values(), query.related_to)
            words = None
            if query.text is not None:
                self._refuse_while_waiting()
                words = text.parse_query(query.text)
            matches = artifact_filter(query, related)
            found = [
                artifact
                for artifact in live
                if matches(artifact)
                and (words is None or _text_matches(words, self.words[artifact.id]))
            ]
            found.sort(key=lambda artifact: artifact.sequence)
            if query.after is not None:
                found = [artifact for artifact in found if artifact.sequence > query.after]
            return found if query.limit is None else found[: query.limit]

    def rank(self, query: Query) -> list[tuple[Artifact, float]]:
        with self._lock:
            assert query.text is not None
            found = self.query(dataclasses.replace(query, limit=None))
            documents = {
                self.artifacts[artifact_id].sequence: words
                for artifact_id, words in self.words.items()
                if isinstance(words, list)
            }
            scores = text.bm25_scores(
                text.parse_query(query.text), documents, (a.sequence for a in found)
            )
            ranked = sorted(found, key=lambda a: (-scores[a.sequence], a.sequence))
            if query.limit is not None:
                ranked = ranked[: query.limit]
            return [(artifact, scores[artifact.sequence]) for artifact in ranked]

    def _refuse_while_waiting(self) -> None:
        if self.text_waiting:
            raise StoreFormatError(
                "the text index is being rebuilt and would miss documents; "
                "finish it with rebuild_text() and search again"
            )

    # -- text state --------------------------------------------------------

    def text_status(self, artifact_id: str) -> text.NotSearchable | None:
        with self._lock:
            words = self.words.get(artifact_id)
            return words if isinstance(words, text.NotSearchable) else None

    def text_counts(self) -> dict[str, int]:
        with self._lock:
            counts = {reason.value: 0 for reason in text.NotSearchable}
            counts["searchable"] = 0
            for artifact_id, words in self.words.items():
                if artifact_id in self.text_waiting:
                    continue
                key = words.value if isinstance(words, text.NotSearchable) else "searchable"
                counts[key] += 1
            counts["pending"] = len(self.text_waiting)
            return counts

    def pending_text(self, limit: int) -> list[Artifact]:
        with self._lock:
            waiting = sorted(
                (self.artifacts[artifact_id] for artifact_id in self.text_waiting),
                key=lambda artifact: artifact.sequence,
            )
            return waiting[:limit]

    def set_text(self, artifact: Artifact, searchable: str | text.NotSearchable) -> None:
        self._put(self.words, artifact.id, _words_of(searchable))
        if artifact.id in self.text_waiting:
            self._pop(self.text_waiting, artifact.id)

    def request_text_rebuild(self) -> int:
        for artifact_id in self.artifact_names.values():
            self._put(self.words, artifact_id, [])
            self._put(self.text_waiting, artifact_id, None)
        return len(self.text_waiting)

    def list_revisions(self, artifact_id: str) -> list[ArtifactRevision]:
        with self._lock:
            return list(self.revisions.get(artifact_id, []))

    def find_revision(self, artifact_id: str, revision: int) -> ArtifactRevision | None:
        with self._lock:
            history = self.revisions.get(artifact_id, [])
            return history[revision - 1] if revision <= len(history) else None

    def insert_relationship(self, relationship: Relationship) -> None:
        self._add(self.relationships, relationship.id, relationship)
        key = (relationship.source_id, relationship.target_id, relationship.relationship_type)
        self._put(self.relationship_keys, key, relationship.id)

    def find_relationship(self, relationship_id: str) -> Relationship | None:
        with self._lock:
            return self.relationships.get(relationship_id)

    def find_relationship_by_key(
        self, source_id: str, target_id: str, relationship_type: str
    ) -> Relationship | None:
        relationship_id = self.relationship_keys.get((source_id, target_id, relationship_type))
        return None if relationship_id is None else self.relationships[relationship_id]

    def list_relationships(
        self, artifact_id: str | None, direction: str, relationship_type: str | None
    ) -> list[Relationship]:
        with self._lock:
            found = relationships_matching(
                self.relationships.values(), artifact_id, direction, relationship_type
            )
            return sorted(found, key=lambda relationship: relationship.sequence)

    def delete_relationship(self, relationship_id: str, sequence: int) -> None:
        relationship = self.relationships[relationship_id]
        self._put(self.deleted_relationships, relationship_id, (relationship, sequence))
        self._pop(self.relationships, relationship_id)
        self._pop(
            self.relationship_keys,
            (relationship.source_id, relationship.target_id, relationship.relationship_type),
        )

    def all_deleted_relationships(self) -> list[tuple[Relationship, int]]:
        with self._lock:
            return sorted(self.deleted_relationships.values(), key=lambda item: item[0].sequence)

    def append_change(self, change: ChangeRecord) -> None:
        self.changes.append(change)
        self._log(lambda: self.changes.__delitem__(-1))

    def list_changes(
        self, since: int, entity_id: str | None, limit: int | None
    ) -> list[ChangeRecord]:
        with self._lock:
            # Sequences are 1..n without gaps, so ``since`` is also a list index.
            found = [
                change
                for change in self.changes[since:]
                if entity_id is None or change.entity_id == entity_id
            ]
            return found if limit is None else found[:limit]

    # -- change sets and history -------------------------------------------

    def insert_change_set(self, change_set: ChangeSet) -> None:
        self._add(self.change_sets, change_set.id, change_set)

    def find_change_set(self, change_set_id: str) -> ChangeSet | None:
        with self._lock:
            return self.change_sets.get(change_set_id)

    def list_change_sets(self, after: int, limit: int | None) -> list[ChangeSet]:
        with self._lock:
            found = [cs for cs in _by_sequence(self.change_sets.values()) if cs.sequence > after]
            return found if limit is None else found[:limit]

    def last_change_set(self) -> ChangeSet | None:
        with self._lock:
            return max(self.change_sets.values(), key=lambda cs: cs.sequence, default=None)

    def change_set_changes(self, change_set_id: str) -> list[ChangeRecord]:
        with self._lock:
            return [c for c in self.changes if c.change_set_id == change_set_id]

    def sequence_at(self, moment: datetime) -> int:
        with self._lock:
            return max((c.sequence for c in self.changes if c.timestamp <= moment), default=0)

    def artifacts_as_of(
        self, sequence: int, collection_id: str | None, name: str | None
    ) -> list[Artifact]:
        with self._lock:
            deleted = {
                c.entity_id
                for c in self.changes[:sequence]
                if c.entity_kind == EntityKind.ARTIFACT.value
                and c.action == ChangeAction.DELETE.value
            }
            found = []
            for artifact_id, revisions in self.revisions.items():
                then = [r for r in revisions if r.change_sequence <= sequence]
                if not then or artifact_id in deleted:
                    continue
                current = then[-1]
                if (collection_id is None or current.collection_id == collection_id) and (
                    name is None or current.name == name
                ):
                    found.append(artifact_at(then[0], current))
            return sorted(found, key=lambda artifact: artifact.sequence)

    def relationships_as_of(self, sequence: int) -> list[Relationship]:
        with self._lock:
            live = [r for r in self.relationships.values() if r.sequence <= sequence]
            gone = [
                r
                for r, deleted in self.deleted_relationships.values()
                if r.sequence <= sequence < deleted
            ]
            return list(_by_sequence(live + gone))

    def artifacts_named(self, collection_id: str, name: str) -> list[str]:
        with self._lock:
            named = [
                revisions[0]
                for revisions in self.revisions.values()
                if any(r.collection_id == collection_id and r.name == name for r in revisions)
            ]
            return [r.artifact_id for r in sorted(named, key=lambda r: r.change_sequence)]

    def all_collections(self) -> list[tuple[Collection, datetime | None]]:
        with self._lock:
            return [(c, self.deleted_at.get(c.id)) for c in _by_sequence(self.collections.values())]

    def all_artifacts(self) -> list[tuple[Artifact, datetime | None]]:
        with self._lock:
            return [(a, self.deleted_at.get(a.id)) for a in _by_sequence(self.artifacts.values())]

    def all_revisions(self) -> list[ArtifactRevision]:
        with self._lock:
            found = [revision for history in self.revisions.values() for revision in history]
            return sorted(found, key=lambda revision: revision.change_sequence)

    def all_steps(self) -> list[WorkflowStep]:
        with self._lock:
            return _by_sequence(self.steps.values())

    # -- runs and context --------------------------------------------------

    def insert_run(self, run: OperationRun) -> None:
        self._add(self.runs, run.id, run)

    def replace_run(self, run: OperationRun) -> None:
        self._put(self.runs, run.id, run)

    def find_run(self, run_id: str) -> OperationRun | None:
        with self._lock:
            return self.runs.get(run_id)

    def list_runs(self, status: str | None) -> list[OperationRun]:
        with self._lock:
            return _by_sequence(
                run for run in self.runs.values() if status is None or run.status == status
            )

    def insert_step(self, step: WorkflowStep) -> None:
        self._add(self.steps, step.id, step)

    def replace_step(self, step: WorkflowStep) -> None:
        self._put(self.steps, step.id, step)

    def find_step(self, step_id: str) -> WorkflowStep | None:
        with self._lock:
            return self.steps.get(step_id)

    def list_steps(self, run_id: str) -> list[WorkflowStep]:
        with self._lock:
            return _by_sequence(step for step in self.steps.values() if step.run_id == run_id)

    def insert_bundle(self, bundle: InputBundle) -> None:
        self._add(self.bundles, bundle.id, bundle)

    def list_bundles(self, run_id: str | None) -> list[InputBundle]:
        with self._lock:
            return _by_sequence(
                bundle
                for bundle in self.bundles.values()
                if run_id is None or bundle.run_id == run_id
            )

    def bundles_consuming(
        self, artifact_id: str | None, revision: int | None, digest: str | None
    ) -> list[InputBundle]:
        with self._lock:
            return _by_sequence(
                bundle
                for bundle in self.bundles.values()
                if any(
                    (artifact_id is None or ref.artifact_id == artifact_id)
                    and (revision is None or ref.revision == revision)
                    and (digest is None or ref.digest == digest)
                    for ref in bundle.inputs
                )
            )

    def list_outputs(self, run_id: str) -> list[ArtifactRevision]:
        with self._lock:
            found = [
                revision
                for history in self.revisions.values()
                for revision in history
                if revision.run_id == run_id
            ]
            return sorted(found, key=lambda revision: revision.change_sequence)

    def revisions_with_digest(self, digest: str) -> list[ArtifactRevision]:
        with self._lock:
            found = [
                revision
                for history in self.revisions.values()
                for revision in history
                if revision.digest == digest
            ]
            return sorted(found, key=lambda revision: revision.change_sequence)

    def store_manifest(self, manifest: RunManifest) -> None:
        self._put(self.manifests, manifest.run_id, manifest)

    def find_manifest(self, run_id: str) -> RunManifest | None:
        with self._lock:
            return self.manifests.get(run_id)

    def list_manifests(self) -> list[RunManifest]:
        with self._lock:
            return sorted(self.manifests.values(), key=lambda m: self.runs[m.run_id].sequence)

    def insert_context_package(self, package: ContextPackage) -> None:
        self._add(self.packages, package.id, package)

    def find_context_package(self, package_id: str) -> ContextPackage | None:
        with self._lock:
            return self.packages.get(package_id)

    def list_context_packages(self) -> list[ContextPackage]:
        with self._lock:
            return _by_sequence(self.packages.values())

    def insert_external_reference(self, reference: ExternalMemoryReference) -> None:
        self._add(self.external_references, reference.id, reference)

    def find_external_reference(self, reference_id: str) -> ExternalMemoryReference | None:
        with self._lock:
            return self.external_references.get(reference_id)

    def list_external_references(self) -> list[ExternalMemoryReference]:
        with self._lock:
            return _by_sequence(self.external_references.values())


def _by_sequence(records: Iterable[_Sequenced]) -> list[_Sequenced]:
    return sorted(records, key=lambda record: record.sequence)  # type: ignore[attr-defined]


def _words_of(searchable: str | text.NotSearchable) -> list[str] | text.NotSearchable:
    return searchable if isinstance(searchable, text.NotSearchable) else text.words(searchable)


def _text_matches(query: text.TextQuery, words: list[str] | text.NotSearchable) -> bool:
    return isinstance(words, list) and query.matches(words)
