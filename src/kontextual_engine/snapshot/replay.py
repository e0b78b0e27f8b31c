"""The records of a snapshot against every rule of the API, replayed.

A snapshot is not a second way to write records: :func:`check_records` holds
every record to the rules the API applied when it made it, through the same
functions (``models.check_*``, ``storage.contract``, ``storage.runs``), and
refuses what no sequence of API calls could have produced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import typing
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from .. import digests
from ..errors import (
    DuplicateNameError,
    DuplicateRelationshipError,
    IntegrityError,
    KontextualError,
    SnapshotError,
)
from ..models import (
    TERMINAL,
    Artifact,
    ArtifactRef,
    ArtifactRevision,
    ChangeAction,
    ChangeRecord,
    ContextPackage,
    EntityKind,
    ExternalMemoryReference,
    InputBundle,
    OperationRun,
    Relationship,
    RunStatus,
    WorkflowStep,
    check_artifact_name,
    check_artifact_type,
    check_collection_fields,
    check_external_fields,
    check_input_role,
    check_media_type,
    check_operation,
    check_package_name,
    check_relationship_type,
    check_run_error,
    check_step_name,
    check_transition,
)
from ..storage.context import ReferenceLookups, check_reference
from ..storage.contract import changed_fields, check_revision_number
from ..storage.queries import check_id
from .change_sets import check_change_set, check_change_sets
from .format import PAIRED, index_member


def check_records(records: dict[str, list[Any]]) -> None:
    """Refuse records that no sequence of API calls could have made.

    Every field passes the rule the API applies to it (the same functions);
    then the change records are replayed in order, and each creation, update,
    deletion and status change is checked against the state reached so far,
    as the API checked it when it happened: names unique among live records,
    relationships between live artifacts, lifecycles as ``TRANSITIONS`` allows,
    references to what existed then; relationships deleted by the sequence
    their deletion record has. Each change set holds a run of consecutive
    change records, as one transaction writes them. Finally each record must
    be the state the replay ends in.
    """
    replay = _Replay(records)
    with _about("snapshot records"):
        replay.check_fields()
        replay.run()
        check_change_sets(records["change_sets"], records["changes"])
        replay.check_final()
    _check_order(records)


@contextlib.contextmanager
def _about(where: str) -> Iterator[None]:
    """Report a rule's error as a :class:`SnapshotError` that says where it was
    (a ValueError too: an enum such as ChangeAction refuses a name it lacks so)."""
    try:
        yield
    except SnapshotError:
        raise
    except (KontextualError, ValueError) as exc:
        raise SnapshotError(f"{where}: {exc}") from None


def _refuse(message: str) -> typing.NoReturn:
    raise SnapshotError(message)


def _as_of_revision(record: Artifact | ArtifactRevision) -> tuple[Any, ...]:
    """The fields an artifact shares with its current revision."""
    return (
        record.collection_id,
        record.name,
        record.artifact_type,
        record.media_type,
        record.digest,
        record.size,
        record.metadata_json,
        record.provenance_json,
        record.run_id,
    )


def _check_order(records: dict[str, list[Any]]) -> None:
    """Every file in sequence order, as export writes it: a backend restores records in
    the order given, so lines out of order could silently change what is current."""
    run_sequence = {run.id: run.sequence for run in records["runs"]}
    for kind, items in records.items():
        if kind in PAIRED:
            keys = [record.sequence for record, _ in items]
        elif kind == "revisions":
            keys = [revision.change_sequence for revision in items]
        elif kind == "manifests":
            keys = [run_sequence[manifest.run_id] for manifest in items]
        else:
            keys = [item.sequence for item in items]
        if any(later <= earlier for earlier, later in itertools.pairwise(keys)):
            raise SnapshotError(f"{index_member(kind)} is not in sequence order")


class _Replay:
    """The state of the store after each change record, rebuilt from the records."""

    def __init__(self, records: dict[str, list[Any]]) -> None:
        self.records = records
        self.collections = {c.id: (c, deleted) for c, deleted in records["collections"]}
        self.artifacts = {a.id: (a, deleted) for a, deleted in records["artifacts"]}
        self.relationships = {rel.id: rel for rel in records["relationships"]}
        # Deleted relationship id -> the sequence of its deletion; popped as replayed.
        self.deleted_relationships = {
            rel.id: deleted for rel, deleted in records["deleted_relationships"]
        }
        self.runs = {run.id: run for run in records["runs"]}
        self.steps = {step.id: step for step in records["steps"]}
        # The record each change sequence created: (what, record).
        self.made: dict[int, tuple[str, Any]] = {}
        # The state reached so far.
        self.live_collections: dict[str, str] = {}  # name -> id
        self.live_collection_ids: set[str] = set()
        self.artifacts_in: Counter[str] = Counter()  # live artifacts per collection
        self.gone_collections: set[str] = set()
        self.current: dict[str, ArtifactRevision] = {}  # artifact id -> latest revision
        self.live_artifacts: dict[tuple[str, str], str] = {}  # (collection, name) -> id
        self.live_artifact_ids: set[str] = set()
        self.relationship_ends: Counter[str] = Counter()  # live relationships per artifact
        self.gone_artifacts: set[str] = set()
        self.revisions: dict[tuple[str, int], ArtifactRevision] = {}
        self.live_relationships: dict[str, tuple[str, str, str]] = {}
        self.relationship_keys: set[tuple[str, str, str]] = set()
        self.run_status: dict[str, RunStatus] = {}
        self.step_status: dict[str, RunStatus] = {}
        self.step_counts: dict[str, int] = {}

    # -- every field, by the API's own rules -------------------------------

    def check_fields(self) -> None:
        r = self.records
        self.unique("collections", [c.id for c, _ in r["collections"]])
        self.unique("artifacts", [a.id for a, _ in r["artifacts"]])
        for kind in ("relationships", "change_sets", "runs", "steps", "bundles"):
            self.unique(kind, [item.id for item in r[kind]])
        self.unique("deleted_relationships", [rel.id for rel, _ in r["deleted_relationships"]])
        both = sorted(set(self.relationships) & set(self.deleted_relationships))
        if both:
            _refuse(f"relationship {both[0]!r} is both live and deleted")
        self.unique("context_packages", [p.id for p in r["context_packages"]])
        self.unique("external_references", [e.id for e in r["external_references"]])
        self.unique("manifests", [m.run_id for m in r["manifests"]])
        for collection, _ in r["collections"]:
            with _about(f"collection {collection.id!r}"):
                check_collection_fields(collection.name, collection.description)
            self.own(collection.sequence, "collection", collection)
        for artifact, _ in r["artifacts"]:
            check_revision_number(artifact.revision, f"artifact {artifact.id!r} revision")
        for revision in r["revisions"]:
            with _about(f"revision {revision.revision} of artifact {revision.artifact_id!r}"):
                check_id(revision.artifact_id, "artifact id")
                check_revision_number(revision.revision, "revision")
                check_artifact_name(revision.name)
                check_artifact_type(revision.artifact_type)
                check_media_type(revision.media_type)
                digests.parse_digest(revision.digest)
                if revision.size < 0:
                    _refuse(f"size {revision.size} is negative")
            self.own(revision.change_sequence, "revision", revision)
        self.each("relationships", "relationship", self.relationship_fields)
        for relationship, deleted in r["deleted_relationships"]:
            with _about(f"deleted relationship {relationship.id!r}"):
                self.relationship_fields(relationship)
                if deleted <= relationship.sequence:
                    _refuse(
                        f"it is deleted at sequence {deleted}, not after its creation at "
                        f"sequence {relationship.sequence}"
                    )
            self.own(relationship.sequence, "relationship", relationship)
        for change_set in r["change_sets"]:
            with _about(f"change set {change_set.id!r}"):
                check_change_set(change_set)
        for change in r["changes"]:
            with _about(f"change record {change.sequence}"):
                check_id(change.entity_id, "entity id")
                if change.change_set_id is not None:
                    check_id(change.change_set_id, "change set id")
                EntityKind(change.entity_kind)
                ChangeAction(change.action)
                for digest in (change.old_digest, change.new_digest):
                    if digest is not None:
                        digests.parse_digest(digest)
                if change.revision is not None:
                    check_revision_number(change.revision, "revision")
        self.each("runs", "run", self.run_fields)
        self.each("steps", "step", self.step_fields)
        self.each("bundles", "bundle", self.bundle_fields)
        for manifest in r["manifests"]:
            with _about(f"manifest of run {manifest.run_id!r}"):
                self.status(manifest.status)
                check_operation(manifest.operation)
                check_run_error(manifest.error)
        self.each("context_packages", "context_package", self.package_fields)
        self.each("external_references", "external_reference", self.external_fields)
        sequences = [change.sequence for change in r["changes"]]
        if sequences != list(range(1, len(sequences) + 1)):
            _refuse("change records are not numbered 1..n without gaps")

    def each(self, kind: str, what: str, check: Callable[[Any], None]) -> None:
        """``check`` every record of ``kind`` (a ``what``), then claim its sequence."""
        for record in self.records[kind]:
            with _about(f"{what.replace('_', ' ')} {record.id!r}"):
                check(record)
            self.own(record.sequence, what, record)

    @staticmethod
    def relationship_fields(relationship: Relationship) -> None:
        check_relationship_type(relationship.relationship_type)

    def run_fields(self, run: OperationRun) -> None:
        check_operation(run.operation)
        check_run_error(run.error)
        self.status(run.status)

    def step_fields(self, step: WorkflowStep) -> None:
        check_step_name(step.name)
        self.status(step.status)

    @staticmethod
    def bundle_fields(bundle: InputBundle) -> None:
        for ref in bundle.inputs:
            check_input_role(ref.role)

    @staticmethod
    def package_fields(package: ContextPackage) -> None:
        check_package_name(package.name)

    @staticmethod
    def external_fields(external: ExternalMemoryReference) -> None:
        check_external_fields(
            external.system, external.external_id, external.recorded_by, external.uri
        )

    @staticmethod
    def unique(kind: str, ids: list[str]) -> None:
        seen: set[str] = set()
        for record_id in ids:
            check_id(record_id, f"id in {index_member(kind)}")
            if record_id in seen:
                _refuse(f"duplicate id {record_id!r} in {index_member(kind)}")
            seen.add(record_id)

    @staticmethod
    def status(value: str) -> RunStatus:
        try:
            return RunStatus(value)
        except ValueError:
            _refuse(f"status {value!r} is not one of {[s.value for s in RunStatus]}")

    def own(self, sequence: int, what: str, record: Any) -> None:
        if sequence in self.made:
            _refuse(f"two records ({self.made[sequence][0]} and {what}) claim sequence {sequence}")
        self.made[sequence] = (what, record)

    # -- the replay ------------------------------------------------------------

    def run(self) -> None:
        for change in self.records["changes"]:
            with _about(
                f"change record {change.sequence} ({change.entity_kind} {change.action} "
                f"{change.entity_id!r})"
            ):
                made = self.made.pop(change.sequence, None)
                handler = getattr(self, f"on_{change.entity_kind}_{change.action}", None)
                if handler is None:
                    _refuse("no operation makes such a change record")
                handler(change, made)
        if self.made:
            sequence, (what, _) = min(self.made.items())
            _refuse(f"a {what} has sequence {sequence}, which no change record of its creation has")

    @staticmethod
    def created(change: ChangeRecord, made: tuple[str, Any] | None, what: str, moment: str) -> Any:
        """The record a creation change made: of that kind, id and time."""
        if made is None or made[0] != what:
            _refuse(f"the snapshot holds no {what} created by it")
        record = made[1]
        record_id = record.artifact_id if what == "revision" else record.id
        if record_id != change.entity_id or getattr(record, moment) != change.timestamp:
            _refuse(f"its {what} has another id or time")
        return record

    @staticmethod
    def nothing_made(made: tuple[str, Any] | None) -> None:
        if made is not None:
            _refuse(f"a {made[0]} claims its sequence")

    def on_collection_create(self, change: ChangeRecord, made: Any) -> None:
        collection = self.created(change, made, "collection", "created_at")
        if collection.name in self.live_collections:
            raise DuplicateNameError(f"collection {collection.name!r} already exists")
        self.live_collections[collection.name] = collection.id
        self.live_collection_ids.add(collection.id)

    def on_collection_delete(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        found = self.collections.get(change.entity_id)
        if found is None or self.live_collections.get(found[0].name) != found[0].id:
            _refuse("no such live collection")
        collection, deleted_at = found
        if self.artifacts_in[collection.id]:
            _refuse("the collection still has live artifacts")
        if deleted_at != change.timestamp:
            _refuse("the collection's deletion time differs")
        del self.live_collections[collection.name]
        self.live_collection_ids.discard(collection.id)
        self.gone_collections.add(collection.id)

    def on_artifact_create(self, change: ChangeRecord, made: Any) -> None:
        revision = self.created(change, made, "revision", "created_at")
        if revision.revision != 1 or change.revision != 1 or revision.artifact_id in self.current:
            _refuse("an artifact starts at revision 1, once")
        if change.new_digest != revision.digest or change.old_digest is not None:
            _refuse("its digests differ from the revision's")
        if revision.collection_id not in self.live_collection_ids:
            _refuse(f"collection {revision.collection_id!r} is not live")
        self.take_name(revision)
        self.live_artifact_ids.add(revision.artifact_id)
        self.artifacts_in[revision.collection_id] += 1
        self.producing_run(revision)
        self.add_revision(revision)

    def on_artifact_update(self, change: ChangeRecord, made: Any) -> None:
        revision = self.created(change, made, "revision", "created_at")
        before = self.current.get(revision.artifact_id)
        if before is None or revision.artifact_id in self.gone_artifacts:
            _refuse("no such live artifact")
        if revision.revision != before.revision + 1 or change.revision != revision.revision:
            _refuse(f"revision {revision.revision} does not follow {before.revision}")
        if change.old_digest != before.digest or change.new_digest != revision.digest:
            _refuse("its digests differ from the revisions'")
        if revision.collection_id != before.collection_id:
            _refuse("an artifact never moves to another collection")
        if not changed_fields(before, dataclasses.asdict(revision)):
            _refuse("the revision changes nothing (an update that changes nothing makes none)")
        if revision.name != before.name:
            del self.live_artifacts[(before.collection_id, before.name)]
            self.take_name(revision)
        self.producing_run(revision)
        self.add_revision(revision)

    def on_artifact_delete(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        current = self.current.get(change.entity_id)
        if current is None or change.entity_id in self.gone_artifacts:
            _refuse("no such live artifact")
        if change.revision != current.revision or change.old_digest != current.digest:
            _refuse("its revision or digest differs from the artifact's")
        if self.relationship_ends[change.entity_id]:
            _refuse("the artifact still has relationships (a deletion removes them first)")
        _, deleted_at = self.artifacts.get(change.entity_id, (None, None))
        if deleted_at != change.timestamp:
            _refuse("the artifact's deletion time differs")
        del self.live_artifacts[(current.collection_id, current.name)]
        self.live_artifact_ids.discard(change.entity_id)
        self.artifacts_in[current.collection_id] -= 1
        self.gone_artifacts.add(change.entity_id)

    def take_name(self, revision: ArtifactRevision) -> None:
        key = (revision.collection_id, revision.name)
        if key in self.live_artifacts:
            raise DuplicateNameError(
                f"artifact {revision.name!r} already exists in collection {revision.collection_id}"
            )
        self.live_artifacts[key] = revision.artifact_id

    def producing_run(self, revision: ArtifactRevision) -> None:
        if revision.run_id is not None and self.run_status.get(revision.run_id) != (
            RunStatus.RUNNING
        ):
            _refuse(f"run {revision.run_id!r} was not running, so it produced nothing")

    def add_revision(self, revision: ArtifactRevision) -> None:
        self.current[revision.artifact_id] = revision
        self.revisions[(revision.artifact_id, revision.revision)] = revision

    def on_relationship_create(self, change: ChangeRecord, made: Any) -> None:
        relationship = self.created(change, made, "relationship", "created_at")
        ends = (relationship.source_id, relationship.target_id)
        triple = (*ends, relationship.relationship_type)
        for end in ends:
            if end not in self.live_artifact_ids:
                raise IntegrityError(f"relationship end {end!r} is not a live artifact")
        if triple in self.relationship_keys:
            raise DuplicateRelationshipError(f"relationship {triple} already exists")
        self.relationship_keys.add(triple)
        self.live_relationships[change.entity_id] = triple
        self.relationship_ends.update(set(ends))

    def on_relationship_delete(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        key = self.live_relationships.pop(change.entity_id, None)
        if key is None:
            _refuse("no such live relationship")
        deleted = self.deleted_relationships.pop(change.entity_id, None)
        if deleted is None:
            _refuse("the snapshot holds no deleted relationship of that id")
        if deleted != change.sequence:
            _refuse(f"the snapshot's deleted relationship says it was deleted at {deleted}")
        self.relationship_keys.discard(key)
        self.relationship_ends.subtract({key[0], key[1]})

    def on_run_create(self, change: ChangeRecord, made: Any) -> None:
        run = self.created(change, made, "run", "created_at")
        if run.parent_run_id is not None and run.parent_run_id not in self.run_status:
            raise IntegrityError(f"parent run {run.parent_run_id!r} does not exist yet")
        self.run_status[run.id] = RunStatus.PENDING

    def on_run_transition(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        self.transition(change, self.run_status, "run")

    def on_run_update(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        if self.run_status.get(change.entity_id) is not RunStatus.RUNNING:
            _refuse("only a running run takes heartbeats")

    def on_step_create(self, change: ChangeRecord, made: Any) -> None:
        step = self.created(change, made, "step", "created_at")
        self.open_run(step.run_id)
        position = self.step_counts.get(step.run_id, 0) + 1
        if step.position != position:
            _refuse(f"step position {step.position}, expected {position}")
        self.step_counts[step.run_id] = position
        self.step_status[step.id] = RunStatus.PENDING

    def on_step_transition(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        self.transition(change, self.step_status, "step")

    def transition(self, change: ChangeRecord, states: dict[str, RunStatus], what: str) -> None:
        details = change.details
        current = states.get(change.entity_id)
        if current is None:
            _refuse(f"no such {what}")
        if details.get("from") != current.value:
            _refuse(f"the {what} was {current.value}, not {details.get('from')!r}")
        target = self.status(typing.cast(str, details.get("to")))
        check_transition(f"{what} {change.entity_id}", current, target)
        states[change.entity_id] = target

    def open_run(self, run_id: str) -> None:
        status = self.run_status.get(run_id)
        if status is None:
            raise IntegrityError(f"run {run_id!r} does not exist yet")
        if status in TERMINAL:
            _refuse(f"run {run_id} had ended ({status.value})")

    def on_bundle_create(self, change: ChangeRecord, made: Any) -> None:
        bundle = self.created(change, made, "bundle", "created_at")
        self.open_run(bundle.run_id)
        self.pinned(bundle.inputs)

    def pinned(self, refs: tuple[ArtifactRef, ...]) -> None:
        for ref in refs:
            if self.revision(ref.artifact_id, ref.revision).digest != ref.digest:
                raise IntegrityError(f"{ref.artifact_id}@{ref.revision} has another digest")

    def revision(self, artifact_id: str, number: int) -> ArtifactRevision:
        found = self.revisions.get((artifact_id, number))
        if found is None:
            raise IntegrityError(f"artifact {artifact_id!r} has no revision {number}")
        return found

    def on_context_package_create(self, change: ChangeRecord, made: Any) -> None:
        package = self.created(change, made, "context_package", "created_at")
        lookups = ReferenceLookups(
            live_artifact=lambda artifact_id: artifact_id in self.live_artifact_ids,
            revision=self.revision,
            relationship=lambda relationship_id: relationship_id in self.live_relationships,
            run=lambda run_id: run_id in self.run_status,
        )
        for ref in package.references:
            if check_reference(ref, lookups) != ref:
                _refuse(f"reference {ref} is not as the API stores it")

    def on_external_reference_create(self, change: ChangeRecord, made: Any) -> None:
        external = self.created(change, made, "external_reference", "recorded_at")
        if external.artifact_id is None:
            if external.revision is not None or external.digest is not None:
                _refuse("a revision needs an artifact_id")
        elif external.revision is None or (
            self.revision(external.artifact_id, external.revision).digest != external.digest
        ):
            raise IntegrityError("it points at a missing artifact revision")

    # -- the state reached is the state held -----------------------------------

    def check_final(self) -> None:
        for collection, deleted_at in self.records["collections"]:
            if (deleted_at is not None) != (collection.id in self.gone_collections):
                _refuse(f"collection {collection.id} is deleted, or not, unlike its changes")
        if set(self.current) != set(self.artifacts):
            unknown = sorted(set(self.current) ^ set(self.artifacts))[0]
            _refuse(f"artifact {unknown!r} has revisions but no record, or the reverse")
        for artifact_id, (artifact, deleted_at) in self.artifacts.items():
            last = self.current[artifact_id]
            first = self.revisions[(artifact_id, 1)]
            if (
                last.revision != artifact.revision
                or _as_of_revision(last) != _as_of_revision(artifact)
                or last.created_at != artifact.updated_at
                or (first.created_at, first.change_sequence)
                != (artifact.created_at, artifact.sequence)
            ):
                _refuse(f"artifact {artifact_id} does not match its revisions")
            if (deleted_at is not None) != (artifact_id in self.gone_artifacts):
                _refuse(f"artifact {artifact_id} is deleted, or not, unlike its changes")
        if self.deleted_relationships:
            relationship_id, deleted = min(self.deleted_relationships.items())
            _refuse(
                f"deleted relationship {relationship_id} was deleted at sequence {deleted}, "
                "yet no change record deletes it"
            )
        if set(self.live_relationships) != set(self.relationships):
            _refuse("the relationships held are not those the changes leave")
        for run in self.records["runs"]:
            if self.run_status[run.id].value != run.status:
                _refuse(f"run {run.id} is {run.status}, unlike what its changes leave")
        for step in self.records["steps"]:
            if self.step_status[step.id].value != step.status:
                _refuse(f"step {step.id} is {step.status}, unlike what its changes leave")
        for manifest in self.records["manifests"]:
            run = self.runs.get(manifest.run_id)
            if run is None or (run.operation, run.parameters_json, run.created_at) != (
                manifest.operation,
                manifest.parameters_json,
                manifest.created_at,
            ):
                _refuse(f"manifest of {manifest.run_id!r} does not match a run")
            self.pinned(manifest.inputs + manifest.outputs)
            if any(
                step_id not in self.steps or self.steps[step_id].run_id != run.id
                for step_id in manifest.steps
            ):
                _refuse(f"manifest of {manifest.run_id} names a step of no such run")
