from __future__ import annotations

import pytest

from kontextual_engine.errors import ValidationError
from kontextual_engine.storage import KnowledgeRepository

from .conftest import Backend, MakeArtifact


def test_every_mutation_appends_one_change(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    a = make("a", b"1")
    b = make("b", b"2")
    rel = repo.create_relationship(a, b, "cites")
    repo.update_artifact(a, content=b"1b")
    repo.delete_artifact(b)  # also deletes rel
    changes = repo.list_changes()
    assert [c.sequence for c in changes] == list(range(1, 8))
    assert [(c.entity_kind, c.action, c.entity_id) for c in changes] == [
        ("collection", "create", collection_id),
        ("artifact", "create", a),
        ("artifact", "create", b),
        ("relationship", "create", rel.id),
        ("artifact", "update", a),
        ("relationship", "delete", rel.id),
        ("artifact", "delete", b),
    ]
    assert all(c.timestamp.tzinfo is not None for c in changes)
    assert repo.last_sequence() == 7


def test_changes_since_is_a_feed(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    for index in range(5):
        make(f"n{index}")
    assert [c.sequence for c in repo.list_changes(3)] == [4, 5, 6]
    assert [c.sequence for c in repo.list_changes(3, limit=2)] == [4, 5]
    assert repo.list_changes(6) == []
    assert [c.sequence for c in repo.iter_changes(0, page=2)] == [1, 2, 3, 4, 5, 6]


def test_entity_sequence_is_its_creation_change(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    artifact = repo.get_artifact(make("a"))
    creation = repo.list_changes(entity_id=artifact.id)[0]
    assert creation.sequence == artifact.sequence
    assert repo.get_revision(artifact.id, 1).change_sequence == creation.sequence


def test_bad_since(repo: KnowledgeRepository) -> None:
    for bad in (-1, "3", None, True):
        with pytest.raises(ValidationError):
            repo.list_changes(bad)  # type: ignore[arg-type]


def test_changes_survive_reopen(backend: Backend) -> None:
    repo = backend.new()
    cid = repo.create_collection("c").id
    repo.create_artifact(cid, "a", b"1", artifact_type="t")
    before = repo.list_changes()
    repo = backend.reopen(repo)
    assert repo.list_changes() == before
    repo.create_artifact(cid, "b", b"2", artifact_type="t")
    assert repo.last_sequence() == len(before) + 1
