from __future__ import annotations

import pytest

from kontextual_engine.errors import (
    ContextPackageNotFound,
    ExternalReferenceNotFound,
    IntegrityError,
    ValidationError,
)
from kontextual_engine.models import ContextReference
from kontextual_engine.storage import KnowledgeRepository

from .conftest import Backend, MakeArtifact


def test_package_with_every_kind(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    a = make("a", b"v1")
    b = make("b")
    repo.update_artifact(a, content=b"v2")
    rel = repo.create_relationship(a, b, "cites")
    run = repo.create_run("op")
    package = repo.create_context_package(
        "briefing",
        [
            ContextReference("artifact", a, revision=1, note="as first written"),
            ContextReference("artifact", b),
            ContextReference("relationship", rel.id),
            ContextReference("run", run.id),
            ContextReference("external", "mem-42", system="phase-memory", uri="pm://mem-42"),
        ],
        metadata={"purpose": "answer question 7"},
    )
    assert package.references[0].digest == repo.get_revision(a, 1).digest
    assert [r.kind for r in package.references] == [
        "artifact",
        "artifact",
        "relationship",
        "run",
        "external",
    ]
    assert package.metadata == {"purpose": "answer question 7"}
    assert repo.get_context_package(package.id) == package
    assert repo.list_context_packages() == [package]
    assert repo.list_changes(entity_id=package.id)[0].entity_kind == "context_package"


@pytest.mark.parametrize(
    "ref",
    [
        ContextReference("artifact", "art_missing"),
        ContextReference("artifact", "art_missing", revision=1),
        ContextReference("relationship", "rel_missing"),
        ContextReference("run", "run_missing"),
    ],
)
def test_missing_targets_refused(repo: KnowledgeRepository, ref: ContextReference) -> None:
    before = repo.last_sequence()
    with pytest.raises(IntegrityError):
        repo.create_context_package("p", [ref])
    assert repo.list_context_packages() == []
    assert repo.last_sequence() == before


def test_pinned_revision_must_exist_and_match(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    a = make("a")
    with pytest.raises(IntegrityError):
        repo.create_context_package("p", [ContextReference("artifact", a, revision=2)])
    with pytest.raises(IntegrityError):
        repo.create_context_package(
            "p", [ContextReference("artifact", a, revision=1, digest="blake3:" + "0" * 64)]
        )


@pytest.mark.parametrize(
    "ref",
    [
        ContextReference("bogus", "x"),
        ContextReference("external", "x"),  # no system
        ContextReference("external", "x", system="s", revision=1),
        ContextReference("run", "x", revision=1),
        ContextReference("artifact", ""),
    ],
)
def test_malformed_references(repo: KnowledgeRepository, ref: ContextReference) -> None:
    with pytest.raises(ValidationError):
        repo.create_context_package("p", [ref])


def test_deleted_artifact_still_pinnable_by_revision(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    a = make("a")
    repo.delete_artifact(a)
    with pytest.raises(IntegrityError):
        repo.create_context_package("p", [ContextReference("artifact", a)])
    package = repo.create_context_package("p", [ContextReference("artifact", a, revision=1)])
    assert package.references[0].revision == 1


def test_external_references(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    a = make("a")
    ref = repo.record_external_reference(
        "phase-memory",
        "episode/9",
        recorded_by="importer",
        uri="pm://episode/9",
        artifact_id=a,
        metadata={"phase": "opaque to us"},
    )
    assert ref.revision == 1 and ref.digest == repo.get_artifact(a).digest
    loose = repo.record_external_reference("other", "x", recorded_by="me")
    assert loose.artifact_id is None
    assert repo.get_external_reference(ref.id) == ref
    assert repo.list_external_references() == [ref, loose]
    assert repo.list_external_references(system="other") == [loose]
    assert repo.list_external_references(artifact_id=a) == [ref]
    with pytest.raises(ExternalReferenceNotFound):
        repo.get_external_reference("ext_missing")
    with pytest.raises(ValidationError):
        repo.record_external_reference("", "x", recorded_by="me")
    with pytest.raises(ArtifactNotFoundOrIntegrity):
        repo.record_external_reference("s", "x", recorded_by="me", artifact_id="art_missing")


ArtifactNotFoundOrIntegrity = (IntegrityError, LookupError)


def test_missing_package(repo: KnowledgeRepository) -> None:
    with pytest.raises(ContextPackageNotFound):
        repo.get_context_package("ctx_missing")


def test_context_survives_reopen(backend: Backend) -> None:
    repo = backend.new()
    cid = repo.create_collection("c").id
    a = repo.create_artifact(cid, "a", b"x", artifact_type="t").id
    package = repo.create_context_package(
        "p",
        [
            ContextReference("artifact", a, revision=1),
            ContextReference("external", "e", system="s"),
        ],
    )
    ref = repo.record_external_reference("s", "e", recorded_by="me", artifact_id=a)
    repo = backend.reopen(repo)
    assert repo.list_context_packages() == [package]
    assert repo.list_external_references() == [ref]
