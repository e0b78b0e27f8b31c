"""The backends every backend-neutral test runs against.

A backend is added here once and the whole contract suite (and the snapshot
tests) run on it. The kinds:

- ``memory``: the in-memory reference.
- ``sqlite``: the local SQLite store.
- ``postgres``: a ``PostgresIndex`` with its bodies in memory.
- ``shared``: the shared store, a ``PostgresIndex`` with its bodies in an
  ``S3BodyStore`` on the session's SeaweedFS, under a prefix of its own in
  the session's bucket.

A PostgreSQL database is leased from the session's server and given back
(emptied) when the backend is closed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from kontextual_engine.storage import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    SequentialIds,
    TickingClock,
)

BACKENDS = ["memory", "sqlite", "postgres", "shared"]
# The kinds that need the session's PostgreSQL server, and the S3 server.
POSTGRES_KINDS = {"postgres", "shared"}
S3_KINDS = {"shared"}
SQLITE_KINDS: dict[str, dict[str, object]] = {"sqlite": {}}


@dataclass(frozen=True)
class SharedS3:
    """Where the shared kind keeps bodies: the session's SeaweedFS, a bucket, and
    the boto3 session its clients are made from."""

    server: Any
    bucket: str
    session: Any

    def bodies(self, prefix: str) -> Any:
        """A new client on ``prefix`` of the bucket."""
        from kontextual_engine.storage.s3 import S3BodyStore

        return S3BodyStore(
            self.bucket, prefix, endpoint_url=self.server.endpoint, session=self.session
        )


class Backend:
    """Makes repositories of one kind, and reopens them where that means something."""

    def __init__(
        self, kind: str, root: Path, server: Any = None, s3: SharedS3 | None = None
    ) -> None:
        self.kind = kind
        # postgres, shared: the session's PostgresServer (tests/servers.py).
        self.server = server
        # shared: the session's SeaweedFS bucket (tests/s3server.py).
        self.s3 = s3
        self.leased: list[str] = []
        self.databases: dict[int, tuple[str, Any]] = {}
        self.root = root
        self.clock = TickingClock()
        self.ids = SequentialIds()
        self.opened: list[KnowledgeRepository] = []
        self.paths: dict[int, Path] = {}
        # Numbers the SQLite stores' directories (repositories are closed and
        # forgotten after each example of a hypothesis test).
        self._stores = itertools.count()

    def new(self) -> KnowledgeRepository:
        if self.kind == "memory":
            repo: KnowledgeRepository = InMemoryKnowledgeRepository(clock=self.clock, ids=self.ids)
            self.opened.append(repo)
            return repo
        if self.kind in POSTGRES_KINDS:
            self.leased.append(self.server.lease())
            return self._open_postgres(self.leased[-1], self._new_bodies())
        return self._open(self.root / f"store{next(self._stores)}", create=True)

    @contextmanager
    def example(self) -> Iterator[KnowledgeRepository]:
        """A new repository for one example of a hypothesis test, closed (and its
        database given back) when the example ends: otherwise each example would
        hold a database of its own until the test ends."""
        try:
            yield self.new()
        finally:
            self.close_all()

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

    def _new_bodies(self) -> Any:
        """Bodies of a new PostgreSQL-indexed store: in memory, or (shared) under a new
        prefix in the session's bucket."""
        if self.kind == "postgres":
            from kontextual_engine.storage.bodies import MemoryBodyStore

            return MemoryBodyStore()
        if self.s3 is None:
            raise AssertionError("the shared backend needs the session's S3 server")
        return self.s3.bodies(f"store-{uuid4().hex}")

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
        if self.kind in POSTGRES_KINDS:
            dsn, bodies = self.databases[id(repo)]
            if self.s3 is not None:
                # A new client on the same bucket and prefix: nothing is shared
                # with the closed repository but what the servers hold.
                bodies = self.s3.bodies(bodies.prefix)
            return self._open_postgres(dsn, bodies)
        return self._open(self.paths[id(repo)])

    def close_all(self) -> None:
        """Close every repository made, then give the leased databases back."""
        opened, self.opened = self.opened, []
        try:
            for repo in opened:
                repo.close()
        finally:
            leased, self.leased = self.leased, []
            for dsn in leased:
                self.server.release(dsn)
