"""``IndexBackend``: every primitive an index backend provides, declared once.

A repository is an index backend plus a body store
(:class:`~.contract.KnowledgeRepository`). The contract validates input,
applies every rule and writes change records; it reaches stored state only
through the methods below. A new backend implements this class and nothing
else, and joins the contract suite as one more fixture (``tests/backends.py``).

Every primitive is called with validated arguments. Writes are called inside
:meth:`IndexBackend.transaction`; reads may be called anywhere. Records go in
and come out as the immutable values of :mod:`..models`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime

from ..models import (
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
)
from .text import NotSearchable


class IndexBackend(abc.ABC):
    """The index half of a repository: metadata, revisions, relationships,
    changes, runs, packages and references (everything but bodies)."""

    # -- lifecycle and transactions -------------------------------------------

    def close(self) -> None:  # noqa: B027 (optional: only backends with resources close)
        """Release resources. A closed backend must not be used again."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[bool]:
        """All-or-nothing group of writes; nestable.

        Yields True at the outermost level, False inside another level. An
        exception leaving a level undoes that level's writes. The outermost
        level commits when its block ends, so whatever must be durable first
        (bodies) is flushed inside it.
        """

    @contextmanager
    def read_view(self) -> Iterator[None]:
        """A view in which several reads see one point in time.

        A write transaction gives that everywhere; a backend with read
        snapshots (and read-only stores) overrides this with a read transaction.
        """
        with self.transaction():
            yield

    def bulk(self) -> AbstractContextManager[None]:
        """Inside a transaction: many creations follow, which may be buffered and
        written together (every read still sees every write)."""
        return nullcontext()

    # -- change sequence ------------------------------------------------------

    @abc.abstractmethod
    def next_sequence(self) -> int:
        """Reserve the next change sequence number (given back on rollback)."""

    @abc.abstractmethod
    def last_sequence(self) -> int: ...

    @abc.abstractmethod
    def append_change(self, change: ChangeRecord) -> None: ...

    @abc.abstractmethod
    def list_changes(
        self, since: int, entity_id: str | None, limit: int | None
    ) -> list[ChangeRecord]: ...

    # -- change sets and history ------------------------------------------------

    @abc.abstractmethod
    def insert_change_set(self, change_set: ChangeSet) -> None: ...

    @abc.abstractmethod
    def find_change_set(self, change_set_id: str) -> ChangeSet | None: ...

    @abc.abstractmethod
    def list_change_sets(self, after: int, limit: int | None) -> list[ChangeSet]:
        """Change sets whose first sequence is greater than ``after``, oldest first."""

    @abc.abstractmethod
    def last_change_set(self) -> ChangeSet | None: ...

    @abc.abstractmethod
    def change_set_changes(self, change_set_id: str) -> list[ChangeRecord]:
        """The change records of one change set, by sequence."""

    @abc.abstractmethod
    def sequence_at(self, moment: datetime) -> int:
        """The greatest change sequence whose timestamp is at or before ``moment``
        (0 when none is)."""

    @abc.abstractmethod
    def artifacts_as_of(
        self, sequence: int, collection_id: str | None, name: str | None
    ) -> list[Artifact]:
        """The artifacts live just after change ``sequence``, each as its revision
        current then (of one collection, of one name), in creation order."""

    @abc.abstractmethod
    def relationships_as_of(self, sequence: int) -> list[Relationship]:
        """The relationships live just after change ``sequence``, in creation order."""

    @abc.abstractmethod
    def artifacts_named(self, collection_id: str, name: str) -> list[str]:
        """Ids of every artifact that ever had ``name`` in the collection (deleted
        ones too), in creation order."""

    # -- collections ----------------------------------------------------------

    @abc.abstractmethod
    def insert_collection(self, collection: Collection) -> None: ...

    @abc.abstractmethod
    def find_collection(self, collection_id: str) -> Collection | None: ...

    @abc.abstractmethod
    def find_collection_by_name(self, name: str) -> Collection | None: ...

    @abc.abstractmethod
    def list_collections(self) -> list[Collection]: ...

    @abc.abstractmethod
    def count_live_artifacts(self, collection_id: str) -> int: ...

    @abc.abstractmethod
    def delete_collection(self, collection_id: str, now: datetime) -> None: ...

    @abc.abstractmethod
    def all_collections(self) -> list[tuple[Collection, datetime | None]]:
        """Every collection, deleted ones too, with its deletion time."""

    # -- artifacts and revisions ----------------------------------------------

    @abc.abstractmethod
    def insert_artifact(
        self, artifact: Artifact, revision: ArtifactRevision, searchable: str | NotSearchable
    ) -> None:
        """Store a new artifact, with the text of its body (or why it has none)."""

    @abc.abstractmethod
    def replace_artifact(
        self,
        artifact: Artifact,
        revision: ArtifactRevision,
        content_changed: bool,
        searchable: str | NotSearchable | None,
    ) -> None:
        """Store a new current revision; ``searchable`` is given when content changed."""

    @abc.abstractmethod
    def find_artifact(self, artifact_id: str) -> Artifact | None:
        """The live artifact, or None (also when deleted)."""

    @abc.abstractmethod
    def find_artifact_by_name(self, collection_id: str, name: str) -> Artifact | None: ...

    def find_artifacts_by_names(self, collection_id: str, names: list[str]) -> dict[str, Artifact]:
        """The live artifacts of these names, by name; backends may do it in one query."""
        found = {}
        for name in names:
            artifact = self.find_artifact_by_name(collection_id, name)
            if artifact is not None:
                found[name] = artifact
        return found

    @abc.abstractmethod
    def delete_artifact(self, artifact_id: str, now: datetime) -> None: ...

    @abc.abstractmethod
    def query(self, query: Query) -> list[Artifact]:
        """Live artifacts matching every filter, by sequence. ``query.text`` is a word
        query (:mod:`.text`); substring queries never reach a backend."""

    @abc.abstractmethod
    def rank(self, query: Query) -> list[tuple[Artifact, float]]:
        """Live artifacts matching a word query and every filter, with their BM25
        score (:func:`.text.bm25_scores`), best first, ties by sequence."""

    # -- text state -----------------------------------------------------------

    @abc.abstractmethod
    def text_status(self, artifact_id: str) -> NotSearchable | None:
        """Why a live artifact's body is not searchable, or None."""

    @abc.abstractmethod
    def text_counts(self) -> dict[str, int]:
        """Live artifacts by text state: ``searchable``, ``pending`` and a count per
        :class:`.text.NotSearchable` value."""

    @abc.abstractmethod
    def pending_text(self, limit: int) -> list[Artifact]:
        """Live artifacts whose words must be derived from their bodies again, by
        sequence; text queries refuse to run while any wait."""

    @abc.abstractmethod
    def set_text(self, artifact: Artifact, searchable: str | NotSearchable) -> None:
        """Store the text of a live artifact's current body, replacing what was known."""

    @abc.abstractmethod
    def request_text_rebuild(self) -> int:
        """Forget every artifact's words and mark every live artifact pending."""

    @abc.abstractmethod
    def list_revisions(self, artifact_id: str) -> list[ArtifactRevision]: ...

    @abc.abstractmethod
    def find_revision(self, artifact_id: str, revision: int) -> ArtifactRevision | None: ...

    @abc.abstractmethod
    def revisions_with_digest(self, digest: str) -> list[ArtifactRevision]: ...

    @abc.abstractmethod
    def all_artifacts(self) -> list[tuple[Artifact, datetime | None]]:
        """Every artifact (its last revision's state), deleted ones too."""

    @abc.abstractmethod
    def all_revisions(self) -> list[ArtifactRevision]:
        """Every revision, by change sequence."""

    # -- relationships --------------------------------------------------------

    @abc.abstractmethod
    def insert_relationship(self, relationship: Relationship) -> None: ...

    @abc.abstractmethod
    def find_relationship(self, relationship_id: str) -> Relationship | None: ...

    @abc.abstractmethod
    def find_relationship_by_key(
        self, source_id: str, target_id: str, relationship_type: str
    ) -> Relationship | None: ...

    @abc.abstractmethod
    def list_relationships(
        self, artifact_id: str | None, direction: str, relationship_type: str | None
    ) -> list[Relationship]: ...

    @abc.abstractmethod
    def delete_relationship(self, relationship_id: str, sequence: int) -> None:
        """Delete a relationship by the change ``sequence``; it stays readable as of
        any earlier point (:meth:`relationships_as_of`)."""

    @abc.abstractmethod
    def all_deleted_relationships(self) -> list[tuple[Relationship, int]]:
        """Every deleted relationship with the sequence of its deletion, by creation
        sequence."""

    # -- runs, steps, bundles, manifests --------------------------------------

    @abc.abstractmethod
    def insert_run(self, run: OperationRun) -> None: ...

    @abc.abstractmethod
    def replace_run(self, run: OperationRun) -> None: ...

    @abc.abstractmethod
    def find_run(self, run_id: str) -> OperationRun | None: ...

    def find_runs(self, run_ids: list[str]) -> list[OperationRun]:
        """The runs with these ids that exist; a backend may fetch them at once."""
        return [run for run in map(self.find_run, run_ids) if run is not None]

    @abc.abstractmethod
    def list_runs(self, status: str | None) -> list[OperationRun]:
        """All runs (with that status), in creation order."""

    @abc.abstractmethod
    def insert_step(self, step: WorkflowStep) -> None: ...

    @abc.abstractmethod
    def replace_step(self, step: WorkflowStep) -> None: ...

    @abc.abstractmethod
    def find_step(self, step_id: str) -> WorkflowStep | None: ...

    @abc.abstractmethod
    def list_steps(self, run_id: str) -> list[WorkflowStep]:
        """Steps of a run by position."""

    @abc.abstractmethod
    def all_steps(self) -> list[WorkflowStep]:
        """Every step, by sequence."""

    @abc.abstractmethod
    def insert_bundle(self, bundle: InputBundle) -> None: ...

    @abc.abstractmethod
    def list_bundles(self, run_id: str | None) -> list[InputBundle]:
        """Bundles of a run (or all), in creation order."""

    @abc.abstractmethod
    def bundles_consuming(
        self, artifact_id: str | None, revision: int | None, digest: str | None
    ) -> list[InputBundle]:
        """Bundles with an input matching every given (non-None) field, creation order."""

    @abc.abstractmethod
    def list_outputs(self, run_id: str) -> list[ArtifactRevision]:
        """Revisions whose producing run is ``run_id``, by change sequence."""

    @abc.abstractmethod
    def store_manifest(self, manifest: RunManifest) -> None:
        """Store (or replace) the manifest of a run."""

    @abc.abstractmethod
    def find_manifest(self, run_id: str) -> RunManifest | None: ...

    @abc.abstractmethod
    def list_manifests(self) -> list[RunManifest]: ...

    # -- context packages and external references -----------------------------

    @abc.abstractmethod
    def insert_context_package(self, package: ContextPackage) -> None: ...

    @abc.abstractmethod
    def find_context_package(self, package_id: str) -> ContextPackage | None: ...

    @abc.abstractmethod
    def list_context_packages(self) -> list[ContextPackage]: ...

    @abc.abstractmethod
    def insert_external_reference(self, reference: ExternalMemoryReference) -> None: ...

    @abc.abstractmethod
    def find_external_reference(self, reference_id: str) -> ExternalMemoryReference | None: ...

    @abc.abstractmethod
    def list_external_references(self) -> list[ExternalMemoryReference]: ...
