"""The contract for workflow runs: steps, inputs, outputs, manifests, impact.

``KnowledgeRepository`` inherits these methods; like the rest of the contract
they implement every rule once and call backend primitives.

Run lifecycle (``models.TRANSITIONS``; steps follow the same table)::

    pending   -> running | cancelled
    running   -> succeeded | failed | cancelled | abandoned
    abandoned -> running (resumed by a new holder) | failed | cancelled
    succeeded, failed, cancelled: terminal

``abandoned`` is set only by :meth:`RunsContract.recover_abandoned`: a running
run whose lease expired, or whose holder process on this host is gone. Every
transition, heartbeat, step and input bundle is a change record. A run's
manifest is stored when it leaves ``running`` for a terminal or abandoned
state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from .. import digests
from ..errors import (
    ArtifactNotFound,
    IllegalTransitionError,
    IntegrityError,
    RunNotFound,
    StepNotFound,
    ValidationError,
)
from ..models import (
    TERMINAL,
    ArtifactRef,
    ArtifactRevision,
    ChangeAction,
    ChangeRecord,
    EntityKind,
    Impact,
    InputBundle,
    OperationRun,
    Pin,
    RunManifest,
    RunStatus,
    WorkflowStep,
    canonical_object,
    check_input_role,
    check_operation,
    check_relationship_type,
    check_run_error,
    check_step_name,
    check_transition,
    format_time,
)
from . import holders
from .backend import IndexBackend

# Long enough that a busy worker heartbeating every minute never loses its
# run, short enough that a crashed one on another host is noticed soon.
DEFAULT_LEASE_SECONDS = 300.0
# The impact walk stops here; real derivation chains are far shorter, and a
# bound keeps a cycle through relationships from running forever.
MAX_IMPACT_DEPTH = 64


def _status(value: object, what: str) -> RunStatus:
    try:
        return RunStatus(value)
    except ValueError:
        raise ValidationError(
            f"{what} {value!r} is not one of {[s.value for s in RunStatus]}"
        ) from None


def _lease(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 86400 * 7:
        raise ValidationError(f"lease_seconds must be a number in (0, 604800], got {value!r}")
    return float(value)


class RunsContract:
    """Runs, steps, input bundles, manifests, context packages, external references."""

    # -- runs --------------------------------------------------------------

    def create_run(
        self,
        operation: str,
        *,
        parameters: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> OperationRun:
        check_operation(operation)
        parameters_json = canonical_object(parameters, "run parameters")
        with self.transaction():
            if parent_run_id is not None:
                self.get_run(parent_run_id)
            now = self._now()
            run = OperationRun(
                id=self._ids("run"),
                operation=operation,
                status=RunStatus.PENDING.value,
                parameters_json=parameters_json,
                parent_run_id=parent_run_id,
                created_at=now,
                started_at=None,
                finished_at=None,
                error=None,
                diagnostics_json="{}",
                holder_json="{}",
                lease_expires_at=None,
                heartbeat_at=None,
                sequence=self.index.next_sequence(),
            )
            self.index.insert_run(run)
            self._record(
                run.sequence,
                EntityKind.RUN,
                run.id,
                ChangeAction.CREATE,
                now,
                details={"operation": operation, "status": run.status},
            )
            return run

    def get_run(self, run_id: str) -> OperationRun:
        if not isinstance(run_id, str):
            raise ValidationError(f"run id must be a string, got {run_id!r}")
        run = self.index.find_run(run_id)
        if run is None:
            raise RunNotFound(run_id)
        return run

    def list_runs(
        self,
        *,
        status: str | None = None,
        operation: str | None = None,
        parent_run_id: str | None = None,
    ) -> list[OperationRun]:
        """Runs in creation order, optionally filtered."""
        if status is not None:
            _status(status, "status")
        return [
            run
            for run in self.index.list_runs(status)
            if (operation is None or run.operation == operation)
            and (parent_run_id is None or run.parent_run_id == parent_run_id)
        ]

    def start_run(
        self,
        run_id: str,
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        holder: Mapping[str, Any] | None = None,
    ) -> OperationRun:
        """Move a pending (or abandoned) run to running, held by ``holder``.

        ``holder`` defaults to this process (host, pid, start time). The lease
        must be renewed with :meth:`heartbeat` before it expires.
        """
        lease = _lease(lease_seconds)
        holder_json = canonical_object(
            holders.current_holder() if holder is None else holder, "holder"
        )
        with self.transaction():
            run = self.get_run(run_id)
            now = self._now()
            return self._transition_run(
                run,
                RunStatus.RUNNING,
                now,
                started_at=run.started_at or now,
                holder_json=holder_json,
                lease_expires_at=now + timedelta(seconds=lease),
                heartbeat_at=now,
            )

    def heartbeat(
        self, run_id: str, *, lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> OperationRun:
        """Renew the lease of a running run."""
        lease = _lease(lease_seconds)
        with self.transaction():
            run = self.get_run(run_id)
            if run.status != RunStatus.RUNNING.value:
                raise IllegalTransitionError(
                    f"run {run_id} is {run.status}; only a running run takes heartbeats"
                )
            now = self._now()
            renewed = replace(
                run, heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease)
            )
            self.index.replace_run(renewed)
            self._record(
                self.index.next_sequence(),
                EntityKind.RUN,
                run_id,
                ChangeAction.UPDATE,
                now,
                details={"heartbeat": True, "lease_expires_at": _iso(renewed.lease_expires_at)},
            )
            return renewed

    def finish_run(
        self,
        run_id: str,
        status: str = RunStatus.SUCCEEDED.value,
        *,
        error: str | None = None,
        diagnostics: Mapping[str, Any] | None = None,
    ) -> OperationRun:
        """End a run: succeeded, failed or cancelled. Stores its manifest."""
        target = _status(status, "status")
        if target not in TERMINAL:
            raise ValidationError(f"finish_run takes a terminal status, not {target.value!r}")
        check_run_error(error)
        diagnostics_json = (
            None if diagnostics is None else canonical_object(diagnostics, "run diagnostics")
        )
        with self.transaction():
            run = self.get_run(run_id)
            return self._transition_run(
                run,
                target,
                self._now(),
                error=error,
                diagnostics_json=diagnostics_json or run.diagnostics_json,
            )

    def recover_abandoned(self) -> list[OperationRun]:
        """Mark running runs whose holder is gone or whose lease expired as abandoned.

        Called when a durable repository is opened; call it any time. Running
        steps of an abandoned run become abandoned too.
        """
        with self.transaction():
            now = self._now()
            recovered = []
            for run in self.index.list_runs(RunStatus.RUNNING.value):
                expired = run.lease_expires_at is not None and run.lease_expires_at <= now
                if not expired and not holders.holder_is_gone(run.holder):
                    continue
                reason = "lease expired" if expired else "holder process is gone"
                for step in self.index.list_steps(run.id):
                    if step.status == RunStatus.RUNNING.value:
                        self._transition_step(step, RunStatus.ABANDONED, now)
                recovered.append(
                    self._transition_run(
                        run, RunStatus.ABANDONED, now, error=f"abandoned: {reason}"
                    )
                )
            return recovered

    def _transition_run(
        self, run: OperationRun, target: RunStatus, now: datetime, **fields: Any
    ) -> OperationRun:
        current = RunStatus(run.status)
        check_transition(f"run {run.id}", current, target)
        if target in TERMINAL or target is RunStatus.ABANDONED:
            fields.setdefault("finished_at", now)
            fields.setdefault("lease_expires_at", None)
        elif target is RunStatus.RUNNING:
            fields.setdefault("finished_at", None)
            fields.setdefault("error", None)
        changed = replace(run, status=target.value, **fields)
        self.index.replace_run(changed)
        self._record(
            self.index.next_sequence(),
            EntityKind.RUN,
            run.id,
            ChangeAction.TRANSITION,
            now,
            details={"from": current.value, "to": target.value},
        )
        if target in TERMINAL or target is RunStatus.ABANDONED:
            self.index.store_manifest(self._assemble_manifest(changed, final=True))
        return changed

    # -- steps -------------------------------------------------------------

    def add_step(
        self, run_id: str, name: str, *, diagnostics: Mapping[str, Any] | None = None
    ) -> WorkflowStep:
        """Append a pending step to a run that has not ended."""
        check_step_name(name)
        diagnostics_json = canonical_object(diagnostics, "step diagnostics")
        with self.transaction():
            run = self.get_run(run_id)
            if RunStatus(run.status) in TERMINAL:
                raise IllegalTransitionError(f"run {run_id} is {run.status}; cannot add steps")
            now = self._now()
            step = WorkflowStep(
                id=self._ids("step"),
                run_id=run_id,
                position=len(self.index.list_steps(run_id)) + 1,
                name=name,
                status=RunStatus.PENDING.value,
                created_at=now,
                started_at=None,
                finished_at=None,
                diagnostics_json=diagnostics_json,
                sequence=self.index.next_sequence(),
            )
            self.index.insert_step(step)
            self._record(
                step.sequence,
                EntityKind.STEP,
                step.id,
                ChangeAction.CREATE,
                now,
                details={"run_id": run_id, "name": name, "position": step.position},
            )
            return step

    def set_step_status(
        self, step_id: str, status: str, *, diagnostics: Mapping[str, Any] | None = None
    ) -> WorkflowStep:
        target = _status(status, "status")
        if target is RunStatus.ABANDONED:
            raise ValidationError("abandoned is set by recover_abandoned, not by callers")
        diagnostics_json = (
            None if diagnostics is None else canonical_object(diagnostics, "step diagnostics")
        )
        with self.transaction():
            step = self.get_step(step_id)
            return self._transition_step(
                step, target, self._now(), diagnostics_json=diagnostics_json
            )

    def get_step(self, step_id: str) -> WorkflowStep:
        if not isinstance(step_id, str):
            raise ValidationError(f"step id must be a string, got {step_id!r}")
        step = self.index.find_step(step_id)
        if step is None:
            raise StepNotFound(step_id)
        return step

    def list_steps(self, run_id: str) -> list[WorkflowStep]:
        self.get_run(run_id)
        return self.index.list_steps(run_id)

    def _transition_step(
        self,
        step: WorkflowStep,
        target: RunStatus,
        now: datetime,
        diagnostics_json: str | None = None,
    ) -> WorkflowStep:
        current = RunStatus(step.status)
        check_transition(f"step {step.id}", current, target)
        started_at = step.started_at or (now if target is RunStatus.RUNNING else None)
        finished_at = now if target in TERMINAL or target is RunStatus.ABANDONED else None
        changed = WorkflowStep(
            id=step.id,
            run_id=step.run_id,
            position=step.position,
            name=step.name,
            status=target.value,
            created_at=step.created_at,
            started_at=started_at,
            finished_at=finished_at,
            diagnostics_json=diagnostics_json or step.diagnostics_json,
            sequence=step.sequence,
        )
        self.index.replace_step(changed)
        self._record(
            self.index.next_sequence(),
            EntityKind.STEP,
            step.id,
            ChangeAction.TRANSITION,
            now,
            details={"run_id": step.run_id, "from": current.value, "to": target.value},
        )
        return changed

    # -- inputs, outputs, manifests ----------------------------------------

    def add_inputs(
        self,
        run_id: str,
        inputs: Iterable[Pin | str],
        *,
        parameters: Mapping[str, Any] | None = None,
    ) -> InputBundle:
        """Record what a run consumed, each artifact pinned to a revision and digest."""
        parameters_json = canonical_object(parameters, "bundle parameters")
        with self.transaction():
            run = self.get_run(run_id)
            if RunStatus(run.status) in TERMINAL:
                raise IllegalTransitionError(f"run {run_id} is {run.status}; cannot add inputs")
            pinned = tuple(self._pin(item) for item in inputs)
            now = self._now()
            bundle = InputBundle(
                id=self._ids("bundle"),
                run_id=run_id,
                inputs=pinned,
                parameters_json=parameters_json,
                created_at=now,
                sequence=self.index.next_sequence(),
            )
            self.index.insert_bundle(bundle)
            self._record(
                bundle.sequence,
                EntityKind.BUNDLE,
                bundle.id,
                ChangeAction.CREATE,
                now,
                details={"run_id": run_id, "inputs": len(pinned)},
            )
            return bundle

    def list_bundles(self, run_id: str) -> list[InputBundle]:
        self.get_run(run_id)
        return self.index.list_bundles(run_id)

    def run_outputs(self, run_id: str) -> list[ArtifactRevision]:
        """Every artifact revision the run produced, in the order it produced them."""
        self.get_run(run_id)
        return self.index.list_outputs(run_id)

    def producing_run(self, artifact_id: str, revision: int | None = None) -> OperationRun | None:
        """The run that produced this revision (default: the current one), if any."""
        found = self._revision_or_current(artifact_id, revision)
        return None if found.run_id is None else self.get_run(found.run_id)

    def consuming_runs(self, artifact_id: str, revision: int | None = None) -> list[OperationRun]:
        """Runs whose input bundles pinned this artifact (any revision, or the one given)."""
        if revision is not None:
            self._revision_or_current(artifact_id, revision)
        run_ids = dict.fromkeys(
            bundle.run_id for bundle in self.index.bundles_consuming(artifact_id, revision, None)
        )
        return sorted(self.index.find_runs(list(run_ids)), key=lambda r: r.sequence)

    def get_manifest(self, run_id: str) -> RunManifest:
        """The stored manifest of an ended run, or the live one of a run in progress."""
        run = self.get_run(run_id)
        stored = self.index.find_manifest(run_id)
        if stored is not None and stored.status == run.status:
            return stored
        return self._assemble_manifest(run, final=False)

    def _assemble_manifest(self, run: OperationRun, *, final: bool) -> RunManifest:
        inputs = tuple(ref for bundle in self.index.list_bundles(run.id) for ref in bundle.inputs)
        outputs = tuple(
            ArtifactRef(r.artifact_id, r.revision, r.digest)
            for r in self.index.list_outputs(run.id)
        )
        return RunManifest(
            run_id=run.id,
            operation=run.operation,
            status=run.status,
            parameters_json=run.parameters_json,
            inputs=inputs,
            outputs=outputs,
            steps=tuple(step.id for step in self.index.list_steps(run.id)),
            diagnostics_json=run.diagnostics_json,
            error=run.error,
            created_at=run.created_at,
            started_at=run.started_at,
            finished_at=run.finished_at,
            final=final,
        )

    def _pin(self, item: Pin | str) -> ArtifactRef:
        if isinstance(item, str):
            item = Pin(item)
        if not isinstance(item, Pin):
            raise ValidationError(f"an input must be a Pin or an artifact id, got {item!r}")
        check_input_role(item.role)
        found = self._revision_or_current(item.artifact_id, item.revision)
        return ArtifactRef(found.artifact_id, found.revision, found.digest, item.role)

    def _revision_or_current(self, artifact_id: str, revision: int | None) -> ArtifactRevision:
        if not isinstance(artifact_id, str):
            raise ValidationError(f"artifact id must be a string, got {artifact_id!r}")
        if revision is None:
            artifact = self.index.find_artifact(artifact_id)
            if artifact is None:
                raise ArtifactNotFound(artifact_id)
            revision = artifact.revision
        if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
            raise ValidationError(f"revision must be a positive integer, got {revision!r}")
        found = self.index.find_revision(artifact_id, revision)
        if found is None:
            raise IntegrityError(f"artifact {artifact_id!r} has no revision {revision}")
        return found

    def _check_producing_run(self, run_id: str | None) -> None:
        """Only a running run can be recorded as the producer of a revision."""
        if run_id is None:
            return
        run = self.get_run(run_id)
        if run.status != RunStatus.RUNNING.value:
            raise IllegalTransitionError(
                f"run {run_id} is {run.status}; only a running run can produce outputs"
            )

    # -- impact ------------------------------------------------------------

    def impact(
        self,
        artifact_id: str | None = None,
        *,
        revision: int | None = None,
        digest: str | None = None,
        relationship_types: Sequence[str] = (),
    ) -> list[Impact]:
        """What was derived from an input, transitively: what to recompute if it was wrong.

        Start from an artifact revision (``artifact_id`` and optional
        ``revision``; without one, every revision) or from a ``digest`` (every
        revision with that body). Follow runs (a run that consumed a node
        produced its outputs) and relationships of ``relationship_types``
        (``A -[type]-> B`` means A was derived from B, so B's impact includes
        A's current revision). Results are in breadth-first order, each
        artifact revision once, with the depth and what led to it.
        """
        if (artifact_id is None) == (digest is None):
            raise ValidationError("impact takes either artifact_id or digest")
        types = tuple(relationship_types)
        for relationship_type in types:
            check_relationship_type(relationship_type)
        if digest is not None:
            digest = digests.parse_digest(digest)
            frontier = [
                (ref.artifact_id, ref.revision)
                for bundle in self.index.bundles_consuming(None, None, digest)
                for ref in bundle.inputs
                if ref.digest == digest
            ]
            frontier += [
                (r.artifact_id, r.revision) for r in self.index.revisions_with_digest(digest)
            ]
        else:
            assert artifact_id is not None
            if revision is not None:
                self._revision_or_current(artifact_id, revision)
                frontier = [(artifact_id, revision)]
            else:
                history = self.index.list_revisions(artifact_id)
                if not history:
                    raise ArtifactNotFound(artifact_id)
                frontier = [(artifact_id, r.revision) for r in history]
        seen = set(frontier)
        found: list[Impact] = []
        depth = 0
        while frontier and depth < MAX_IMPACT_DEPTH:
            depth += 1
            following: list[tuple[str, int]] = []
            for node_id, node_revision in frontier:
                for derived, via, via_id in self._derived_from(node_id, node_revision, types):
                    key = (derived.artifact_id, derived.revision)
                    if key in seen:
                        continue
                    seen.add(key)
                    following.append(key)
                    found.append(
                        Impact(
                            derived.artifact_id,
                            derived.revision,
                            derived.digest,
                            depth,
                            via,
                            via_id,
                        )
                    )
            frontier = following
        return found

    def _derived_from(
        self, artifact_id: str, revision: int, types: tuple[str, ...]
    ) -> list[tuple[ArtifactRevision, str, str]]:
        derived: list[tuple[ArtifactRevision, str, str]] = []
        run_ids = dict.fromkeys(
            b.run_id for b in self.index.bundles_consuming(artifact_id, revision, None)
        )
        for run_id in run_ids:
            derived += [(output, "run", run_id) for output in self.index.list_outputs(run_id)]
        for relationship_type in types:
            for relationship in self.index.list_relationships(
                artifact_id, "incoming", relationship_type
            ):
                source = self.index.find_artifact(relationship.source_id)
                if source is not None:
                    current = self.index.find_revision(source.id, source.revision)
                    assert current is not None
                    derived.append((current, "relationship", relationship.id))
        return derived

    # -- provided by KnowledgeRepository, of which this class is a part ------

    index: IndexBackend
    _ids: Any
    transaction: Callable[[], AbstractContextManager[None]]
    _now: Callable[[], datetime]
    _record: Callable[..., ChangeRecord]


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)
