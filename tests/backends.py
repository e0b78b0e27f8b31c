"""The backends every backend-neutral test runs against.

A backend is added here once and the whole contract suite (and the snapshot
tests) run on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kontextual_engine.storage import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    SequentialIds,
    TickingClock,
)

BACKENDS = ["memory", "sqlite", "postgres"]
SQLITE_KINDS: dict[str, dict[str, object]] = {"sqlite": {}}


class Backend:
    """Makes repositories of one kind, and reopens them where that means something."""

    def __init__(self, kind: str, root: Path, server: Any = None) -> None:
        self.kind = kind
        # postgres: the session's PostgresServer (tests/servers.py).
        self.server = server
        self.databases: dict[int, tuple[str, Any]] = {}
        self.root = root
        self.clock = TickingClock()
        self.ids = SequentialIds()
        self.opened: list[KnowledgeRepository] = []
        self.paths: dict[int, Path] = {}

    def new(self) -> KnowledgeRepository:
        if self.kind == "memory":
            repo: KnowledgeRepository = InMemoryKnowledgeRepository(clock=self.clock, ids=self.ids)
            self.opened.append(repo)
            return repo
        if self.kind == "postgres":
            from kontextual_engine.storage.bodies import MemoryBodyStore

            return self._open_postgres(self.server.new_database(), MemoryBodyStore())
        return self._open(self.root / f"store{len(self.opened)}", create=True)

    def _open(self, path: Path, *, create: bool = False) -> KnowledgeRepository:
        if self.kind not in SQLITE_KINDS:
            raise AssertionError(f"unknown backend {self.kind}")
        from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

        repo = SQLiteKnowledgeRepository.open(
            path,
            durability="none",
            clock=self.clock,
            ids=self.ids,
            create=create,
            **SQLITE_KINDS[self.kind],
        )
        self.opened.append(repo)
        self.paths[id(repo)] = path
        return repo

    def _open_postgres(self, dsn: str, bodies: Any) -> KnowledgeRepository:
        from kontextual_engine.storage.postgres import PostgresIndex

        repo = KnowledgeRepository(PostgresIndex(dsn), bodies, clock=self.clock, ids=self.ids)
        self.opened.append(repo)
        self.databases[id(repo)] = (dsn, bodies)
        return repo

    def reopen(self, repo: KnowledgeRepository) -> KnowledgeRepository:
        """The same store seen through a new repository object (memory: itself)."""
        if self.kind == "memory":
            return repo
        repo.close()
        if self.kind == "postgres":
            return self._open_postgres(*self.databases[id(repo)])
        return self._open(self.paths[id(repo)])

    def close_all(self) -> None:
        for repo in self.opened:
            repo.close()
