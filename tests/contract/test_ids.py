from __future__ import annotations

import pytest

from kontextual_engine import NewArtifact
from kontextual_engine.errors import IntegrityError, ValidationError
from kontextual_engine.models import ContextReference
from kontextual_engine.storage import KnowledgeRepository
from kontextual_engine.storage.ids import PREFIXES

from .conftest import Backend


class RepeatingIds:
    """An id source gone wrong: the same id for every entity of a kind."""

    def __call__(self, kind: str) -> str:
        return f"{PREFIXES[kind]}_{'0' * 31}1"


def test_an_id_handed_out_twice_is_an_integrity_error(backend: Backend) -> None:
    backend.ids = RepeatingIds()  # type: ignore[assignment]
    repo = backend.new()
    cid = repo.create_collection("c").id
    a = repo.create_artifact(cid, "a", b"a", artifact_type="t").id
    run = repo.start_run(repo.create_run("op").id).id
    repo.add_step(run, "s")
    repo.add_inputs(run, [a])
    repo.create_context_package("p", [])
    repo.record_external_reference("s", "e", recorded_by="me")
    attempts = {
        "collection": lambda: repo.create_collection("d"),
        "artifact": lambda: repo.create_artifact(cid, "b", b"b", artifact_type="t"),
        "bulk artifact": lambda: repo.put_artifacts(cid, [NewArtifact("x", b"x", "t")]),
        "run": lambda: repo.create_run("op"),
        "step": lambda: repo.add_step(run, "t"),
        "bundle": lambda: repo.add_inputs(run, [a]),
        "context package": lambda: repo.create_context_package("q", []),
        "external reference": lambda: repo.record_external_reference("s", "f", recorded_by="me"),
    }
    before = repo.export_records()
    for what, attempt in attempts.items():
        with pytest.raises(IntegrityError, match="already exists"):
            attempt()
        assert repo.export_records() == before, what


LONE = "\ud800"


@pytest.mark.parametrize(
    "attempt",
    [
        lambda repo: repo.create_collection("c", description=LONE),
        lambda repo: repo.finish_run(repo.create_run("op").id, "failed", error=LONE),
        lambda repo: repo.create_context_package(
            "p", [ContextReference("external", LONE, system="s")]
        ),
        lambda repo: repo.create_context_package(
            "p", [ContextReference("external", "x", system="s", note=LONE)]
        ),
        lambda repo: repo.record_external_reference("s", LONE, recorded_by="me"),
        lambda repo: repo.record_external_reference("s", "x", recorded_by="me", uri="u\x00"),
    ],
    ids=["description", "run error", "target", "note", "external id", "uri"],
)
def test_free_text_must_be_storable(repo: KnowledgeRepository, attempt: object) -> None:
    before = repo.last_sequence()
    with pytest.raises(ValidationError):
        attempt(repo)  # type: ignore[operator]
    assert repo.list_context_packages() == []
    assert repo.list_external_references() == []
    assert repo.last_sequence() <= before + 1  # at most the run the attempt created
