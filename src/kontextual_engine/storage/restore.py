"""Whole-repository export and restore, the part of the contract snapshots use.

:meth:`RestoreRules.export_records` reads every record in one read view;
:meth:`RestoreRules.restore` loads such records into an empty repository of
any backend, all or nothing, replaying creations, revisions and deletions in
sequence order so that every intermediate state (a name freed and taken
again) restores as it happened. The snapshot importer checks the records
against the contract's rules before it calls :meth:`RestoreRules.restore`.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, BinaryIO, cast

from ..errors import ConflictError, IntegrityError
from ..models import Artifact, ArtifactRevision, ChangeAction, ChangeRecord
from . import text
from .backend import IndexBackend
from .history import artifact_at


class RestoreRules:
    """Export and restore of every record; a part of :class:`~.contract.KnowledgeRepository`."""

    # -- provided by KnowledgeRepository, of which this class is a part ------

    index: IndexBackend
    transaction: Callable[[], AbstractContextManager[None]]
    iter_changes: Callable[..., Iterator[ChangeRecord]]
    _store_body: Callable[[bytes], tuple[str, int]]
    _store_body_stream: Callable[[BinaryIO], tuple[str, int]]

    def export_records(self) -> dict[str, list[Any]]:
        """Every record of the repository, by kind, each list in sequence order.

        ``collections`` and ``artifacts`` hold ``(record, deleted_at)`` pairs,
        since deleted ones are still referenced by history;
        ``deleted_relationships`` holds ``(relationship, deleted_sequence)``
        pairs, kept for reads as of an earlier point; ``change_sets`` every
        change set. Read in one transaction, so the result is a consistent
        point in time.
        """
        with self.index.read_view():
            return {
                "collections": self.index.all_collections(),
                "artifacts": self.index.all_artifacts(),
                "revisions": self.index.all_revisions(),
                "relationships": self.index.list_relationships(None, "both", None),
                "deleted_relationships": self.index.all_deleted_relationships(),
                "change_sets": self.index.list_change_sets(0, None),
                "changes": list(self.iter_changes()),
                "runs": self.index.list_runs(None),
                "steps": self.index.all_steps(),
                "bundles": self.index.list_bundles(None),
                "manifests": self.index.list_manifests(),
                "context_packages": self.index.list_context_packages(),
                "external_references": self.index.list_external_references(),
            }

    def is_empty(self) -> bool:
        return self.index.last_sequence() == 0

    def restore(self, records: Mapping[str, list[Any]], bodies: Callable[[str], BinaryIO]) -> None:
        """Load records exported by :meth:`export_records` into this empty repository.

        ``bodies(digest)`` opens a binary reader of the body of a digest. The
        caller (the snapshot importer) has verified the records; this inserts
        them with their ids, sequences and timestamps, all or nothing: change
        records with the change sets they name, exactly as exported (writing
        them directly, never through the contract's ``_record``, so the
        restore makes no change set of its own). Bodies
        are streamed: only the first :data:`text.MAX_TEXT_BYTES` + 1 bytes of
        one are held at a time (a larger body is not searchable anyway).
        """
        with self.transaction(), self.index.bulk():
            if not self.is_empty():
                raise ConflictError("restore needs an empty repository; this one has records")
            stored: set[str] = set()

            def store(digest: str) -> str | text.NotSearchable:
                """Store the body (the first time) and return its text (or why it has none)."""
                with bodies(digest) as reader:
                    head = reader.read(text.MAX_TEXT_BYTES + 1)
                    if digest in stored:
                        return text.text_of(head)
                    if len(head) <= text.MAX_TEXT_BYTES:
                        actual, _ = self._store_body(head)
                    else:
                        actual, _ = self._store_body_stream(cast(BinaryIO, _Rejoined(head, reader)))
                if actual != digest:
                    raise IntegrityError(f"body for {digest} hashes to {actual}")
                stored.add(digest)
                return text.text_of(head)

            # Each body is stored and made searchable from the same read, as the
            # replay meets it (one transaction: the ordering invariant holds
            # because bodies are durable before it commits).
            events = self._replay_events(records, store)
            for _, _, apply in sorted(events, key=lambda e: e[:2]):
                apply()
            for revision in records["revisions"]:
                if revision.digest not in stored:  # met by no replayed text change
                    store(revision.digest)
            for change_set in records["change_sets"]:
                self.index.insert_change_set(change_set)
            for change in records["changes"]:
                self.index.append_change(change)
            for run in records["runs"]:
                self.index.insert_run(run)
            for step in records["steps"]:
                self.index.insert_step(step)
            for bundle in records["bundles"]:
                self.index.insert_bundle(bundle)
            for manifest in records["manifests"]:
                self.index.store_manifest(manifest)
            for package in records["context_packages"]:
                self.index.insert_context_package(package)
            for reference in records["external_references"]:
                self.index.insert_external_reference(reference)

    def _replay_events(
        self,
        records: Mapping[str, list[Any]],
        searchable: Callable[[str], str | text.NotSearchable],
    ) -> Iterator[tuple[int, int, Callable[[], None]]]:
        """Each creation, revision, relationship and deletion, keyed by its sequence.

        Replaying them in sequence order rebuilds every intermediate state, so
        a name freed by a delete or rename and taken again later restores as it
        happened, and a deleted relationship is created and then deleted by the
        sequence of its deletion (kept for reads as of an earlier point). The
        second key orders events that share a sequence (an artifact's deletion
        after its relationships').
        """
        deleted = {
            change.entity_id: change.sequence
            for change in records["changes"]
            if change.action == ChangeAction.DELETE.value
        }
        for collection, deleted_at in records["collections"]:
            yield collection.sequence, 0, partial(self.index.insert_collection, collection)
            if deleted_at is not None:
                yield (
                    deleted[collection.id],
                    0,
                    partial(self.index.delete_collection, collection.id, deleted_at),
                )
        previous: dict[str, ArtifactRevision] = {}
        firsts: dict[str, ArtifactRevision] = {}
        for revision in records["revisions"]:
            # By change sequence, so an artifact's first revision comes first.
            state = artifact_at(firsts.setdefault(revision.artifact_id, revision), revision)
            before = previous.get(revision.artifact_id)
            if before is None:
                yield (
                    revision.change_sequence,
                    0,
                    partial(self._restore_first, state, revision, searchable),
                )
            else:
                yield (
                    revision.change_sequence,
                    0,
                    partial(
                        self._restore_next,
                        state,
                        revision,
                        before.digest != revision.digest,
                        searchable,
                    ),
                )
            previous[revision.artifact_id] = revision
        for artifact, deleted_at in records["artifacts"]:
            if deleted_at is not None:
                yield (
                    deleted[artifact.id],
                    1,
                    partial(self.index.delete_artifact, artifact.id, deleted_at),
                )
        for relationship in records["relationships"]:
            yield relationship.sequence, 0, partial(self.index.insert_relationship, relationship)
        for relationship, deleted_sequence in records["deleted_relationships"]:
            yield relationship.sequence, 0, partial(self.index.insert_relationship, relationship)
            yield (
                deleted_sequence,
                0,
                partial(self.index.delete_relationship, relationship.id, deleted_sequence),
            )

    def _restore_first(
        self,
        artifact: Artifact,
        revision: ArtifactRevision,
        searchable: Callable[[str], str | text.NotSearchable],
    ) -> None:
        self.index.insert_artifact(artifact, revision, searchable(revision.digest))

    def _restore_next(
        self,
        artifact: Artifact,
        revision: ArtifactRevision,
        content_changed: bool,
        searchable: Callable[[str], str | text.NotSearchable],
    ) -> None:
        self.index.replace_artifact(
            artifact,
            revision,
            content_changed,
            searchable(revision.digest) if content_changed else None,
        )


class _Rejoined(io.RawIOBase):
    """``head`` (bytes already read from ``rest``) followed by the rest of ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        if self._head.nbytes:
            count = min(target.nbytes, self._head.nbytes)
            target[:count] = self._head[:count]
            self._head = self._head[count:]
            return count
        data = self._rest.read(target.nbytes)
        target[: len(data)] = data
        return len(data)
