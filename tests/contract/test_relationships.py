from __future__ import annotations

import pytest

from kontextual_engine.errors import (
    DuplicateRelationshipError,
    IntegrityError,
    RelationshipNotFound,
    ValidationError,
)
from kontextual_engine.storage import KnowledgeRepository

from .conftest import Backend, MakeArtifact


@pytest.fixture
def abc(make: MakeArtifact) -> tuple[str, str, str]:
    return make("a"), make("b"), make("c")


def test_create_get_list(repo: KnowledgeRepository, abc: tuple[str, str, str]) -> None:
    a, b, c = abc
    ab = repo.create_relationship(a, b, "cites", metadata={"weight": 0.5})
    ca = repo.create_relationship(c, a, "summarizes")
    ac = repo.create_relationship(a, c, "cites")
    assert repo.get_relationship(ab.id) == ab
    assert ab.metadata == {"weight": 0.5}
    assert repo.list_relationships() == [ab, ca, ac]
    assert repo.list_relationships(a) == [ab, ca, ac]
    assert repo.list_relationships(a, direction="outgoing") == [ab, ac]
    assert repo.list_relationships(a, direction="incoming") == [ca]
    assert repo.list_relationships(a, relationship_type="cites") == [ab, ac]
    assert repo.list_relationships(b, direction="outgoing") == []


def test_unique_triple(repo: KnowledgeRepository, abc: tuple[str, str, str]) -> None:
    a, b, _ = abc
    repo.create_relationship(a, b, "cites")
    with pytest.raises(DuplicateRelationshipError, match="cites"):
        repo.create_relationship(a, b, "cites")
    repo.create_relationship(b, a, "cites")  # the reverse is another relationship
    repo.create_relationship(a, b, "mentions")  # so is another type
    assert len(repo.list_relationships()) == 3


def test_endpoints_must_be_live(repo: KnowledgeRepository, abc: tuple[str, str, str]) -> None:
    a, _, c = abc
    with pytest.raises(IntegrityError, match="art_missing"):
        repo.create_relationship(a, "art_missing", "cites")
    with pytest.raises(IntegrityError, match="art_missing"):
        repo.create_relationship("art_missing", a, "cites")
    repo.delete_artifact(c)
    with pytest.raises(IntegrityError, match=c):
        repo.create_relationship(a, c, "cites")
    assert repo.list_relationships() == []


def test_delete_artifact_removes_its_relationships(
    repo: KnowledgeRepository, abc: tuple[str, str, str]
) -> None:
    a, b, c = abc
    ab = repo.create_relationship(a, b, "cites")
    bc = repo.create_relationship(b, c, "cites")
    ca = repo.create_relationship(c, a, "cites")
    repo.delete_artifact(a)
    assert repo.list_relationships() == [bc]
    for gone in (ab, ca):
        with pytest.raises(RelationshipNotFound):
            repo.get_relationship(gone.id)
        assert [ch.action for ch in repo.list_changes(entity_id=gone.id)] == ["create", "delete"]


def test_delete_relationship(repo: KnowledgeRepository, abc: tuple[str, str, str]) -> None:
    a, b, _ = abc
    ab = repo.create_relationship(a, b, "cites")
    repo.delete_relationship(ab.id)
    assert repo.list_relationships() == []
    with pytest.raises(RelationshipNotFound):
        repo.delete_relationship(ab.id)
    again = repo.create_relationship(a, b, "cites")
    assert again.id != ab.id


def test_deleted_relationships_are_kept_with_their_deletion(
    repo: KnowledgeRepository, abc: tuple[str, str, str]
) -> None:
    a, b, c = abc
    ab = repo.create_relationship(a, b, "cites", metadata={"w": 1})
    bc = repo.create_relationship(b, c, "cites")
    ca = repo.create_relationship(c, a, "cites")
    repo.delete_relationship(bc.id)
    repo.delete_artifact(a)
    deleted = repo.index.all_deleted_relationships()
    assert deleted == [
        (ab, repo.list_changes(entity_id=ab.id)[-1].sequence),
        (bc, repo.list_changes(entity_id=bc.id)[-1].sequence),
        (ca, repo.list_changes(entity_id=ca.id)[-1].sequence),
    ]
    assert [change.action for change in repo.list_changes(entity_id=ca.id)] == [
        "create",
        "delete",
    ]


def test_bad_relationship_input(repo: KnowledgeRepository, abc: tuple[str, str, str]) -> None:
    a, b, _ = abc
    with pytest.raises(ValidationError):
        repo.create_relationship(a, b, "")
    with pytest.raises(ValidationError):
        repo.create_relationship(a, b, "cites", metadata={"x": float("nan")})
    with pytest.raises(ValidationError):
        repo.list_relationships(a, direction="up")
    assert repo.list_relationships() == []


def test_relationships_survive_reopen(backend: Backend) -> None:
    repo = backend.new()
    cid = repo.create_collection("c").id
    a = repo.create_artifact(cid, "a", b"1", artifact_type="t").id
    b = repo.create_artifact(cid, "b", b"2", artifact_type="t").id
    made = repo.create_relationship(a, b, "cites", metadata={"k": [1]})
    repo = backend.reopen(repo)
    assert repo.list_relationships(a) == [made]
