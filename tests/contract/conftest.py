"""The backend fixture every contract test runs against.

A backend is added here once and the whole suite runs on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kontextual_engine.storage import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    SequentialIds,
    TickingClock,
)

BACKENDS = ["memory", "sqlite"]


class Backend:
    """Makes repositories of one kind, and reopens them where that means something."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.clock = TickingClock()
        self.ids = SequentialIds()
        self.opened: list[KnowledgeRepository] = []
        self.paths: dict[int, Path] = {}

    def new(self) -> KnowledgeRepository:
        if self.kind == "memory":
            repo: KnowledgeRepository = InMemoryKnowledgeRepository(
                clock=self.clock, ids=self.ids
            )
            self.opened.append(repo)
            return repo
        return self._open(self.root / f"store{len(self.opened)}")

    def _open(self, path: Path) -> KnowledgeRepository:
        if self.kind != "sqlite":
            raise AssertionError(f"unknown backend {self.kind}")
        from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

        repo = SQLiteKnowledgeRepository.open(
            path, durability="none", clock=self.clock, ids=self.ids
        )
        self.opened.append(repo)
        self.paths[id(repo)] = path
        return repo

    def reopen(self, repo: KnowledgeRepository) -> KnowledgeRepository:
        """The same store seen through a new repository object (memory: itself)."""
        if self.kind == "memory":
            return repo
        repo.close()
        return self._open(self.paths[id(repo)])

    def close_all(self) -> None:
        for repo in self.opened:
            repo.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    made = Backend(request.param, tmp_path)
    yield made
    made.close_all()


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
