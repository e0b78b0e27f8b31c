"""Any reachable state restores: the differential state machine, with round trips.

:class:`RestoreMachine` runs every operation of
:class:`~tests.test_differential.Differential` (both backends, every error
compared) and, at random points and at the end of every run, exports the
state and imports it into a fresh in-memory and a fresh SQLite repository.
Each import must succeed, re-export byte for byte the same snapshot, and then
take further writes of every kind: collections, artifacts (create, update,
rename, delete), relationships, runs with steps, inputs and outputs,
context packages and external references. A state the API can reach that a
snapshot cannot carry, or a restore that leaves a store refusing writes,
fails here.

The normal suite runs it at a small size; the long reliability run (the
``slow`` marker) at a large one.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import rule, run_state_machine_as_test

from kontextual_engine import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    SQLiteKnowledgeRepository,
)
from kontextual_engine.models import ContextReference
from kontextual_engine.snapshot import export_snapshot, import_snapshot
from kontextual_engine.storage import SequentialIds, TickingClock
from kontextual_engine.storage.runs import Pin

from .test_differential import Differential


def tree_digest(root: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        hasher.update(path.relative_to(root).as_posix().encode() + b"\0")
        if path.is_file():
            hasher.update(path.read_bytes())
    return hasher.hexdigest()


def write_everything(repo: KnowledgeRepository) -> None:
    """Writes of every kind on a restored repository, touching restored records too."""
    collection = repo.create_collection("after-restore", metadata={"n": 1})
    made = repo.create_artifact(collection.id, "new", b"new body", artifact_type="note")
    repo.update_artifact(made.id, content=b"new body v2", name="renamed")
    other = repo.create_artifact(collection.id, "other", b"other", artifact_type="note")
    link = repo.create_relationship(made.id, other.id, "cites")
    restored = [a for a in repo.list_artifacts() if a.collection_id != collection.id]
    for artifact in restored[:2]:
        repo.update_artifact(artifact.id, content=b"rewritten after restore")
        repo.create_relationship(made.id, artifact.id, "derived-from")
    run = repo.start_run(repo.create_run("after-restore").id)
    step = repo.add_step(run.id, "work")
    repo.set_step_status(step.id, "running")
    repo.add_inputs(run.id, [Pin(made.id, role="doc"), *(a.id for a in restored[:1])])
    output = repo.create_artifact(
        collection.id, "output", b"produced", artifact_type="output", run_id=run.id
    )
    repo.heartbeat(run.id)
    repo.set_step_status(step.id, "succeeded")
    repo.finish_run(run.id)
    repo.recover_abandoned()
    for old in repo.list_runs(status="pending")[:1]:
        repo.finish_run(old.id, "cancelled")
    repo.create_context_package(
        "after-restore",
        [
            ContextReference("artifact", made.id, revision=1),
            ContextReference("relationship", link.id),
            ContextReference("run", run.id),
        ],
    )
    repo.record_external_reference("pm", "after", recorded_by="sync", artifact_id=output.id)
    repo.delete_relationship(link.id)
    if restored:
        repo.delete_artifact(restored[-1].id)
    repo.delete_artifact(other.id)
    for artifact in repo.list_artifacts(collection.id):
        repo.delete_artifact(artifact.id)
    repo.delete_collection(collection.id)


class RestoreMachine(Differential):
    def __init__(self) -> None:
        super().__init__()
        self.round_trips = itertools.count()

    @rule()
    def export_and_restore(self) -> None:
        self.round_trip()

    def teardown(self) -> None:
        try:
            self.round_trip()
        finally:
            super().teardown()

    def round_trip(self) -> None:
        where = self.tmp / f"trip-{next(self.round_trips)}"
        export_snapshot(self.memory, where / "memory")
        export_snapshot(self.other, where / "sqlite")
        first = tree_digest(where / "memory")
        assert tree_digest(where / "sqlite") == first
        # Fresh ids far from the restored ones, so new records never collide with them.
        ids, clock = SequentialIds(start=10**9), TickingClock()
        targets: list[KnowledgeRepository] = [
            InMemoryKnowledgeRepository(clock=clock, ids=ids),
            SQLiteKnowledgeRepository.open(
                where / "restored", "none", clock=clock, ids=ids, create=True
            ),
        ]
        try:
            for number, target in enumerate(targets):
                import_snapshot(where / "memory", target)
                export_snapshot(target, where / f"again-{number}")
                assert tree_digest(where / f"again-{number}") == first
                write_everything(target)
                # What the writes left exports and restores too.
                export_snapshot(target, where / f"after-{number}")
                import_snapshot(where / f"after-{number}", InMemoryKnowledgeRepository())
        finally:
            for target in targets:
                target.close()


def machine_settings(examples: int, steps: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def test_any_reachable_state_restores() -> None:
    run_state_machine_as_test(RestoreMachine, settings=machine_settings(15, 30))


@pytest.mark.slow
def test_any_reachable_state_restores_long() -> None:
    run_state_machine_as_test(RestoreMachine, settings=machine_settings(200, 60))
