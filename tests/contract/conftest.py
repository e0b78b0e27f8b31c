"""Fixtures of the contract suite; the backends themselves are in ``tests/backends.py``."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kontextual_engine.storage import KnowledgeRepository

from ..backends import Backend

__all__ = ["Backend", "MakeArtifact"]


@pytest.fixture
def repo(backend: Backend) -> KnowledgeRepository:
    return backend.new()


@pytest.fixture
def collection_id(repo: KnowledgeRepository) -> str:
    return repo.create_collection("notes").id


MakeArtifact = Callable[..., str]


@pytest.fixture
def make(repo: KnowledgeRepository, collection_id: str) -> MakeArtifact:
    """Create an artifact with defaults; return its id."""

    def _make(name: str, content: bytes = b"body", **kwargs: object) -> str:
        kwargs.setdefault("artifact_type", "note")
        cid = kwargs.pop("collection", collection_id)
        return repo.create_artifact(cid, name, content, **kwargs).id  # type: ignore[arg-type]

    return _make
