from __future__ import annotations

import pytest

from kontextual_engine.errors import (
    CollectionNotEmptyError,
    CollectionNotFound,
    DuplicateNameError,
    KontextualError,
    ValidationError,
)
from kontextual_engine.storage import KnowledgeRepository

from .conftest import Backend, MakeArtifact


def test_create_and_get(repo: KnowledgeRepository) -> None:
    made = repo.create_collection("papers", description="reading list", metadata={"k": [1, 2]})
    assert repo.get_collection(made.id) == made
    assert repo.get_collection_by_name("papers") == made
    assert made.metadata == {"k": [1, 2]}
    assert made.description == "reading list"
    assert made.created_at.tzinfo is not None


def test_names_are_unique(repo: KnowledgeRepository) -> None:
    repo.create_collection("papers")
    with pytest.raises(DuplicateNameError, match="papers"):
        repo.create_collection("papers")
    assert len(repo.list_collections()) == 1


def test_listing_is_in_creation_order(repo: KnowledgeRepository) -> None:
    names = ["zeta", "alpha", "mid", "beta"]
    for name in names:
        repo.create_collection(name)
    assert [c.name for c in repo.list_collections()] == names


def test_missing_collection(repo: KnowledgeRepository) -> None:
    with pytest.raises(CollectionNotFound, match="col_nope"):
        repo.get_collection("col_nope")
    with pytest.raises(CollectionNotFound, match="nope"):
        repo.get_collection_by_name("nope")


def test_delete_only_when_empty(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    artifact_id = make("a.md")
    with pytest.raises(CollectionNotEmptyError, match="notes"):
        repo.delete_collection(collection_id)
    repo.delete_artifact(artifact_id)
    repo.delete_collection(collection_id)
    with pytest.raises(CollectionNotFound):
        repo.get_collection(collection_id)
    assert repo.list_collections() == []
    # The name is free again, and the deleted artifact's history is still readable.
    again = repo.create_collection("notes")
    assert again.id != collection_id
    assert repo.list_revisions(artifact_id)[0].collection_id == collection_id


@pytest.mark.parametrize("bad", ["", " padded", "tab\there", "nul\x00", "x" * 2000, 7, None])
def test_bad_collection_names(repo: KnowledgeRepository, bad: object) -> None:
    with pytest.raises(ValidationError):
        repo.create_collection(bad)  # type: ignore[arg-type]
    assert repo.list_collections() == []
    assert repo.list_changes() == []


def test_errors_share_one_base(repo: KnowledgeRepository) -> None:
    with pytest.raises(KontextualError):
        repo.get_collection("col_missing")


def test_collections_survive_reopen(backend: Backend) -> None:
    repo = backend.new()
    made = repo.create_collection("kept", metadata={"ü": "ñ"})
    repo = backend.reopen(repo)
    assert repo.list_collections() == [made]
