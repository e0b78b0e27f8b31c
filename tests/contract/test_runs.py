from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from kontextual_engine.errors import (
    ArtifactNotFound,
    IllegalTransitionError,
    IntegrityError,
    RunNotFound,
    StepNotFound,
    ValidationError,
)
from kontextual_engine.models import TRANSITIONS, RunStatus
from kontextual_engine.storage import KnowledgeRepository
from kontextual_engine.storage.runs import Pin

from .conftest import Backend, MakeArtifact


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_run_lifecycle(repo: KnowledgeRepository) -> None:
    run = repo.create_run("summarize", parameters={"model": "x", "k": 3})
    assert run.status == "pending"
    assert run.parameters == {"model": "x", "k": 3}
    running = repo.start_run(run.id)
    assert running.status == "running"
    assert running.started_at is not None
    assert running.holder["pid"] > 0
    assert running.lease_expires_at is not None
    done = repo.finish_run(run.id, "succeeded", diagnostics={"tokens": 10})
    assert done.status == "succeeded"
    assert done.finished_at is not None
    assert done.diagnostics == {"tokens": 10}
    assert repo.get_run(run.id) == done
    transitions = [
        c.details for c in repo.list_changes(entity_id=run.id) if c.action == "transition"
    ]
    assert transitions == [
        {"from": "pending", "to": "running"},
        {"from": "running", "to": "succeeded"},
    ]


@pytest.mark.parametrize("source", list(RunStatus))
@pytest.mark.parametrize("target", [s for s in RunStatus if s is not RunStatus.ABANDONED])
def test_transition_table(repo: KnowledgeRepository, source: RunStatus, target: RunStatus) -> None:
    run = repo.create_run("op")
    path = {
        RunStatus.PENDING: [],
        RunStatus.RUNNING: ["start"],
        RunStatus.SUCCEEDED: ["start", "succeeded"],
        RunStatus.FAILED: ["start", "failed"],
        RunStatus.CANCELLED: ["cancelled"],
        RunStatus.ABANDONED: ["start-short", "recover"],
    }[source]
    for step in path:
        if step == "start":
            repo.start_run(run.id)
        elif step == "start-short":
            repo.start_run(run.id, holder={"host": socket.gethostname(), "pid": dead_pid()})
        elif step == "recover":
            assert [r.id for r in repo.recover_abandoned()] == [run.id]
        else:
            repo.finish_run(run.id, step)
    assert repo.get_run(run.id).status == source.value
    before = (repo.get_run(run.id), repo.last_sequence())
    allowed = target in TRANSITIONS[source]

    def move() -> None:
        if target is RunStatus.RUNNING:
            repo.start_run(run.id)
        elif target is RunStatus.PENDING:
            raise IllegalTransitionError("no way back to pending")
        else:
            repo.finish_run(run.id, target.value)

    if allowed:
        move()
        assert repo.get_run(run.id).status == target.value
    else:
        with pytest.raises((IllegalTransitionError, ValidationError)):
            move()
        assert (repo.get_run(run.id), repo.last_sequence()) == before


def test_finish_run_needs_terminal_status(repo: KnowledgeRepository) -> None:
    run = repo.create_run("op")
    with pytest.raises(ValidationError):
        repo.finish_run(run.id, "running")
    with pytest.raises(ValidationError):
        repo.finish_run(run.id, "exploded")


def test_missing_runs_and_steps(repo: KnowledgeRepository) -> None:
    with pytest.raises(RunNotFound):
        repo.get_run("run_missing")
    with pytest.raises(RunNotFound):
        repo.start_run("run_missing")
    with pytest.raises(StepNotFound):
        repo.get_step("stp_missing")
    with pytest.raises(RunNotFound):
        repo.create_run("child", parent_run_id="run_missing")


def test_steps(repo: KnowledgeRepository) -> None:
    run = repo.create_run("pipeline")
    first = repo.add_step(run.id, "fetch")
    second = repo.add_step(run.id, "parse", diagnostics={"note": "x"})
    assert [s.position for s in repo.list_steps(run.id)] == [1, 2]
    repo.start_run(run.id)
    repo.set_step_status(first.id, "running")
    done = repo.set_step_status(first.id, "succeeded", diagnostics={"rows": 5})
    assert done.diagnostics == {"rows": 5}
    assert done.started_at is not None and done.finished_at is not None
    with pytest.raises(IllegalTransitionError):
        repo.set_step_status(first.id, "running")
    with pytest.raises(IllegalTransitionError):
        repo.set_step_status(second.id, "succeeded")
    with pytest.raises(ValidationError):
        repo.set_step_status(second.id, "abandoned")
    repo.finish_run(run.id, "failed", error="parse failed")
    assert repo.get_run(run.id).error == "parse failed"
    with pytest.raises(IllegalTransitionError):
        repo.add_step(run.id, "late")


def test_parent_runs(repo: KnowledgeRepository) -> None:
    parent = repo.create_run("batch")
    child = repo.create_run("item", parent_run_id=parent.id)
    repo.create_run("other")
    assert repo.list_runs(parent_run_id=parent.id) == [child]
    assert [r.operation for r in repo.list_runs()] == ["batch", "item", "other"]
    assert [r.operation for r in repo.list_runs(operation="item")] == ["item"]
    repo.start_run(child.id)
    assert repo.list_runs(status="running") == [repo.get_run(child.id)]


def test_heartbeat_extends_lease(repo: KnowledgeRepository) -> None:
    run = repo.start_run(repo.create_run("op").id, lease_seconds=10)
    beat = repo.heartbeat(run.id, lease_seconds=60)
    assert beat.lease_expires_at is not None and run.lease_expires_at is not None
    assert beat.lease_expires_at > run.lease_expires_at
    assert beat.status == "running"
    repo.finish_run(run.id)
    with pytest.raises(IllegalTransitionError):
        repo.heartbeat(run.id)


def test_recover_expired_lease(repo: KnowledgeRepository) -> None:
    expiring = repo.start_run(repo.create_run("op").id, lease_seconds=0.0005)
    healthy = repo.start_run(repo.create_run("op").id, lease_seconds=3600)
    step = repo.add_step(expiring.id, "s")
    repo.set_step_status(step.id, "running")
    recovered = repo.recover_abandoned()
    assert [r.id for r in recovered] == [expiring.id]
    assert repo.get_run(expiring.id).status == "abandoned"
    assert "lease expired" in (repo.get_run(expiring.id).error or "")
    assert repo.get_step(step.id).status == "abandoned"
    assert repo.get_run(healthy.id).status == "running"
    assert repo.recover_abandoned() == []
    resumed = repo.start_run(expiring.id)
    assert resumed.status == "running" and resumed.error is None


def test_recover_dead_holder(repo: KnowledgeRepository) -> None:
    gone = repo.start_run(
        repo.create_run("op").id, holder={"host": socket.gethostname(), "pid": dead_pid()}
    )
    remote = repo.start_run(
        repo.create_run("op").id, holder={"host": "another-host.invalid", "pid": 1}
    )
    mine = repo.start_run(repo.create_run("op").id)
    assert [r.id for r in repo.recover_abandoned()] == [gone.id]
    assert "holder process is gone" in (repo.get_run(gone.id).error or "")
    assert repo.get_run(remote.id).status == "running"
    assert repo.get_run(mine.id).status == "running"
    manifest = repo.get_manifest(gone.id)
    assert manifest.final and manifest.status == "abandoned"


def test_outputs_and_producers(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    source = make("source.md", b"input text")
    run = repo.create_run("summarize")
    with pytest.raises(IllegalTransitionError):
        repo.create_artifact(collection_id, "early", b"x", artifact_type="t", run_id=run.id)
    repo.start_run(run.id)
    bundle = repo.add_inputs(run.id, [Pin(source, role="document")], parameters={"len": 10})
    assert bundle.inputs[0].revision == 1
    assert bundle.inputs[0].digest == repo.get_artifact(source).digest
    assert bundle.inputs[0].role == "document"
    out = repo.create_artifact(
        collection_id, "summary.md", b"short", artifact_type="summary", run_id=run.id
    )
    assert out.run_id == run.id
    updated = repo.update_artifact(source, content=b"edited by run", run_id=run.id)
    assert updated.run_id == run.id
    assert [(r.artifact_id, r.revision) for r in repo.run_outputs(run.id)] == [
        (out.id, 1),
        (source, 2),
    ]
    assert repo.producing_run(out.id) == repo.get_run(run.id)
    assert repo.producing_run(source, 1) is None
    assert repo.producing_run(source, 2) == repo.get_run(run.id)
    assert repo.consuming_runs(source) == [repo.get_run(run.id)]
    assert repo.consuming_runs(source, 2) == []
    assert repo.consuming_runs(out.id) == []
    later = repo.update_artifact(out.id, content=b"by hand")
    assert later.run_id is None
    assert repo.get_revision(out.id, 1).run_id == run.id


def test_manifest_roundtrip(backend: Backend) -> None:
    repo = backend.new()
    cid = repo.create_collection("c").id
    doc = repo.create_artifact(cid, "doc", b"text", artifact_type="t")
    run = repo.create_run("extract", parameters={"p": [1, 2]})
    repo.start_run(run.id)
    repo.add_inputs(run.id, [doc.id])
    step = repo.add_step(run.id, "only")
    out = repo.create_artifact(cid, "out", b"result", artifact_type="t", run_id=run.id)
    live = repo.get_manifest(run.id)
    assert not live.final and live.status == "running"
    repo.finish_run(run.id, diagnostics={"warnings": ["w1"]})
    manifest = repo.get_manifest(run.id)
    assert manifest.final
    assert [(i.artifact_id, i.revision, i.digest) for i in manifest.inputs] == [
        (doc.id, 1, doc.digest)
    ]
    assert [(o.artifact_id, o.revision, o.digest) for o in manifest.outputs] == [
        (out.id, 1, out.digest)
    ]
    assert manifest.steps == (step.id,)
    assert manifest.diagnostics == {"warnings": ["w1"]}
    assert manifest.parameters == {"p": [1, 2]}
    assert manifest.finished_at is not None
    repo = backend.reopen(repo)
    assert repo.get_manifest(run.id) == manifest
    assert repo.get_run(run.id).status == "succeeded"
    assert repo.list_steps(run.id)[0].id == step.id


def test_inputs_must_exist(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    doc = make("doc")
    run = repo.create_run("op")
    before = repo.last_sequence()
    with pytest.raises(ArtifactNotFound, match="art_missing"):
        repo.add_inputs(run.id, [doc, "art_missing"])
    with pytest.raises(IntegrityError):
        repo.add_inputs(run.id, [Pin(doc, revision=7)])
    assert repo.list_bundles(run.id) == []
    assert repo.last_sequence() == before


def test_impact_follows_runs_and_relationships(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    raw = make("raw", b"raw data")
    other = make("other", b"unrelated")
    first = repo.start_run(repo.create_run("clean").id)
    repo.add_inputs(first.id, [raw])
    clean = repo.create_artifact(
        collection_id, "clean", b"clean data", artifact_type="t", run_id=first.id
    )
    repo.finish_run(first.id)
    second = repo.start_run(repo.create_run("summarize").id)
    repo.add_inputs(second.id, [clean.id, other])
    summary = repo.create_artifact(
        collection_id, "summary", b"sum", artifact_type="t", run_id=second.id
    )
    repo.finish_run(second.id)
    note = make("note", b"a note on the summary")
    repo.create_relationship(note, summary.id, "derived_from")
    repo.create_relationship(make("unrelated"), raw, "cites")

    impacts = repo.impact(raw, relationship_types=["derived_from"])
    assert [(i.artifact_id, i.depth, i.via) for i in impacts] == [
        (clean.id, 1, "run"),
        (summary.id, 2, "run"),
        (note, 3, "relationship"),
    ]
    assert impacts[0].via_id == first.id
    assert [i.artifact_id for i in repo.impact(raw)] == [clean.id, summary.id]
    assert [i.artifact_id for i in repo.impact(digest=repo.get_artifact(raw).digest)] == [
        clean.id,
        summary.id,
    ]
    assert repo.impact(other, revision=1)[0].artifact_id == summary.id
    assert repo.impact(note) == []
    with pytest.raises(ValidationError):
        repo.impact()
