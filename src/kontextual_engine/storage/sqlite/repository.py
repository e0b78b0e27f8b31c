"""``SQLiteKnowledgeRepository``: bodies in the object store, the rest in SQLite.

The contract (:mod:`..contract`) implements every rule; this module composes
its two parts over one store directory: :class:`SQLiteIndex` (``index.sqlite``,
:mod:`.index`) and :class:`ObjectStore` (``objects/``).

Write ordering: bodies written inside a transaction are staged by the object
store in batch mode (for ``full`` as well as ``batch`` durability: one flush
makes them all durable, which is cheaper than an fsync per body and gives the
same guarantee) and flushed before ``COMMIT``, so the index never references a
body that is not durable.

Runs: opening a store for writing recovers abandoned runs (the contract's
:meth:`recover_abandoned`) once migrations are done.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...digests import parse_digest
from ...errors import StoreNotFound
from ..contract import KnowledgeRepository
from ..ids import Clock, IdSource
from ..objects import STORE_MARKER, Durability, ObjectStore
from .connection import DEFAULT_BUSY_TIMEOUT, INDEX_NAME, check_busy_timeout
from .index import SQLiteIndex
from .text_index import DEFAULT_TEXT_BACKLOG_LIMIT, check_backlog_limit

__all__ = ["DEFAULT_BUSY_TIMEOUT", "INDEX_NAME", "SQLiteIndex", "SQLiteKnowledgeRepository"]


def _unwritable_store(root: Path) -> bool:
    """An existing store this user may not write: it is opened read-only."""
    index = root / INDEX_NAME
    return index.is_file() and not (os.access(root, os.W_OK) and os.access(index, os.W_OK))


def _require_store(root: Path) -> None:
    """Refuse a path that holds no store, so that opening never creates one.

    Only "nothing here" is :class:`StoreNotFound`: a file where the store
    should be, or a directory that has an index but lost its marker, is left
    to the object store's checks, which say what is wrong with it.
    """
    if root.is_dir():
        if os.path.lexists(root / STORE_MARKER) or os.path.lexists(root / INDEX_NAME):
            return
    elif os.path.lexists(root):
        return
    raise StoreNotFound(root)


class SQLiteKnowledgeRepository(KnowledgeRepository):
    """The durable repository: ``<store>/objects`` for bodies (:class:`ObjectStore`),
    ``<store>/index.sqlite`` for everything else (:class:`SQLiteIndex`).

    Open with :meth:`open` (or the constructor, which takes the same
    arguments). An existing store is opened (and its index migrated); a path
    that holds no store raises :class:`StoreNotFound` and nothing is created.
    Creating is explicit: with ``create=True`` a missing or empty directory
    becomes a new store. Anything else is refused with
    :class:`StoreFormatError`. ``read_only`` opens without writing anything;
    a store this process cannot write is opened read-only by itself.
    """

    index: SQLiteIndex
    bodies: ObjectStore

    def __init__(
        self,
        path: str | Path,
        durability: Durability | str = Durability.FULL,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        read_only: bool = False,
        create: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        text_backlog_limit: int = DEFAULT_TEXT_BACKLOG_LIMIT,
    ) -> None:
        check_busy_timeout(busy_timeout)
        check_backlog_limit(text_backlog_limit)
        root = Path(path)
        if not create:
            _require_store(root)
        writable = not read_only and not _unwritable_store(root)
        objects = ObjectStore(root, durability=durability, create=writable, read_only=not writable)
        try:
            index = SQLiteIndex(
                root,
                objects.durability,
                read_only=not writable,
                # Why writes are refused: asked for, or the store cannot be written here.
                read_only_reason="is open read-only"
                if read_only
                else "cannot be written here (a read-only filesystem or no write permission), "
                "so it was opened read-only",
                has_objects=lambda: next(objects.all(), None) is not None,
                busy_timeout=busy_timeout,
                text_backlog_limit=text_backlog_limit,
            )
        except BaseException:
            objects.close()
            raise
        super().__init__(index, objects, clock=clock, ids=ids)
        if not index.read_only:
            try:
                # Runs left running by dead holders or expired leases are
                # abandoned; recover_abandoned re-reads under the write lock, so
                # two processes opening at once recover each run once.
                if index.has_running_runs():
                    self.recover_abandoned()
            except BaseException:
                self.close()
                raise

    @classmethod
    def open(
        cls,
        path: str | Path,
        durability: Durability | str = Durability.FULL,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
        read_only: bool = False,
        create: bool = False,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        text_backlog_limit: int = DEFAULT_TEXT_BACKLOG_LIMIT,
    ) -> SQLiteKnowledgeRepository:
        """Open the store at ``path``; with ``create=True``, make it first if it is
        missing (a missing or empty directory). Without it, a path that holds no
        store raises :class:`StoreNotFound` and nothing is created."""
        return cls(
            path,
            durability,
            clock=clock,
            ids=ids,
            read_only=read_only,
            create=create,
            busy_timeout=busy_timeout,
            text_backlog_limit=text_backlog_limit,
        )

    def __repr__(self) -> str:
        return f"SQLiteKnowledgeRepository({str(self.root)!r}, {self.durability.value!r})"

    @property
    def root(self) -> Path:
        return self.index.root

    @property
    def objects(self) -> ObjectStore:
        return self.bodies

    @property
    def index_path(self) -> Path:
        return self.index.index_path

    @property
    def durability(self) -> Durability:
        return self.bodies.durability

    @property
    def read_only(self) -> bool:
        return self.index.read_only

    @property
    def text_backlog_limit(self) -> int:
        return self.index.text_backlog_limit

    def count_text_backlog(self) -> int:
        """Documents whose text waits in the backlog for :meth:`index_text`."""
        return self.index.text.count_backlog()

    def text_index_behind(self) -> bool:
        """True when more than ``text_backlog_limit`` documents wait in the backlog:
        a text query on a writable store then indexes them before it runs."""
        return self.index.text.behind()

    def object_path(self, digest: str) -> Path | None:
        """The object file of ``digest``, or None if it is not (yet) in place."""
        parsed = parse_digest(digest)
        path = self.bodies.path(parsed)
        return path if self.bodies.exists(parsed) and path.is_file() else None
