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
from collections.abc import Callable
from pathlib import Path

from ...digests import parse_digest
from ...errors import StoreNotFound
from ..contract import KnowledgeRepository
from ..ids import Clock, IdSource
from ..objects import STORE_MARKER, Durability, ObjectStore
from .connection import INDEX_NAME
from .index import SQLiteIndex
from .options import CACHE_SIZE_KIB, DEFAULT_BUSY_TIMEOUT, check_busy_timeout, check_cache_kib

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

    Opening a store written before word search (schema ``0005_words``) for
    writing derives every artifact's words from its body and compacts the
    index once; ``rebuild_progress(done, total)`` is called as that goes.
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
        rebuild_progress: Callable[[int, int], None] | None = None,
        cache_kib: int = CACHE_SIZE_KIB,
    ) -> None:
        check_busy_timeout(busy_timeout)
        check_cache_kib(cache_kib)
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
                cache_kib=cache_kib,
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
                self._finish_text_rebuild(rebuild_progress)
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
        rebuild_progress: Callable[[int, int], None] | None = None,
        cache_kib: int = CACHE_SIZE_KIB,
    ) -> SQLiteKnowledgeRepository:
        """Open the store at ``path``; with ``create=True``, make it first if it is
        missing (a missing or empty directory). Without it, a path that holds no
        store raises :class:`StoreNotFound` and nothing is created. ``cache_kib`` is
        the index's page cache (KiB, allocated only as pages are used): the default
        suits bulk ingest into large stores; a smaller one bounds the memory of a
        short-lived process."""
        return cls(
            path,
            durability,
            clock=clock,
            ids=ids,
            read_only=read_only,
            create=create,
            busy_timeout=busy_timeout,
            rebuild_progress=rebuild_progress,
            cache_kib=cache_kib,
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

    def _finish_text_rebuild(self, progress: Callable[[int, int], None] | None) -> None:
        """Derive the words of artifacts left pending by an upgrade (or a rebuild
        that was interrupted), then compact the index once if it does not yet
        vacuum incrementally (stores made before ``0005_words``)."""
        total = self.index.text.count_pending()
        if total:
            done = 0

            def advance(count: int) -> None:
                nonlocal done
                done += count
                if progress is not None:
                    progress(done, total)

            self.rebuild_text(progress=advance)
        self.index.connection.enable_incremental_vacuum()

    def object_path(self, digest: str) -> Path | None:
        """The object file of ``digest``, or None if it is not (yet) in place."""
        parsed = parse_digest(digest)
        path = self.bodies.path(parsed)
        return path if self.bodies.exists(parsed) and path.is_file() else None
