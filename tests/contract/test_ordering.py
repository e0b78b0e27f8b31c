from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kontextual_engine.storage import InMemoryKnowledgeRepository, KnowledgeRepository
from kontextual_engine.storage.ids import MonotonicIds

from .conftest import Backend


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.text("abcxyz/._-", min_size=1, max_size=6).filter(lambda n: n.strip() == n),
        unique=True,
        min_size=1,
        max_size=12,
    )
)
def test_listing_order_is_creation_order(backend: Backend, names: list[str]) -> None:
    with backend.example() as repo:
        cid = repo.create_collection("c").id
        for name in names:
            repo.create_artifact(cid, name, name.encode(), artifact_type="t")
        assert [a.name for a in repo.list_artifacts(cid)] == names
        assert [a.name for a in repo.query(collection_id=cid)] == names
        sequences = [a.sequence for a in repo.query()]
        assert sequences == sorted(sequences)


def test_default_ids_are_unique_and_time_ordered() -> None:
    source = MonotonicIds()
    made = [source("artifact") for _ in range(5000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)
    assert all(re.fullmatch(r"art_[0-9a-f]{32}", value) for value in made)


def test_default_repository_ids(repo: KnowledgeRepository) -> None:
    fresh = InMemoryKnowledgeRepository()
    cid = fresh.create_collection("c").id
    assert cid.startswith("col_")
    first = fresh.create_artifact(cid, "a", b"1", artifact_type="t")
    second = fresh.create_artifact(cid, "b", b"2", artifact_type="t")
    assert first.id < second.id
    assert first.created_at <= second.created_at
