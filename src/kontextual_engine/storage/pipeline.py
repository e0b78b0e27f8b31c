"""Bodies read, hashed and written in chunks, and a pipelined bulk ingest.

:class:`StoredBody` is a body already in a repository's body store: its
digest, its size, and (when it is small enough to be searchable) its bytes.
The contract takes one wherever it takes content, and then neither hashes
nor stores the bytes again. :func:`store_body` makes one from a file or a
stream, a chunk at a time, so a body of any size costs about one chunk of
memory.

:func:`pipelined` runs such work on a few threads ahead of the caller and
hands back the results in order, never more than a bounded number of items
and bytes ahead (back-pressure): reading, hashing and writing the object
files release the GIL, so they overlap with the index transaction that
consumes the results on the calling thread.

The ordering rule of :mod:`~.bodies` holds because the workers only write
bodies: inside a transaction every body they store is staged in the body
store's batch, which is made durable when the outermost transaction's block
ends, before the index commits; and :func:`pipelined` waits for every worker
before it returns or raises, so no body is written after that flush.
"""

from __future__ import annotations

import io
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Mapping
from contextvars import copy_context
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar, cast

from ..digests import Digest
from ..errors import ValidationError
from ..models import NewArtifact
from . import text
from .bodies import BodyStore

if TYPE_CHECKING:
    from concurrent.futures import Future


__all__ = [
    "INGEST_WORKERS",
    "NewFile",
    "Source",
    "StoredBody",
    "pipelined",
    "store_body",
    "stored_artifacts",
]

# Threads that read, hash and write bodies ahead of the index transaction: the
# machines this runs on have few cores, and the index takes one of them.
INGEST_WORKERS = 2
# How far the workers may run ahead of the consumer: items, and bytes of their
# sources (an item larger than this still goes, on its own). 1024 items (more
# than a chunk of put_artifacts) measured no faster than 64 on tmpfs (17.4-18.1 s
# against 16.6-16.7 s for 20,000 documents), and held more.
AHEAD_ITEMS = 64
AHEAD_BYTES = 16 << 20

T = TypeVar("T")
R = TypeVar("R")

# What a body can be read from: a file's path, or a binary stream (read to its end,
# not closed).
Source = str | os.PathLike[str] | BinaryIO


@dataclass(frozen=True, slots=True)
class StoredBody:
    """A body in ``bodies`` under ``digest``; ``content`` is its bytes when it is at
    most :data:`~.text.MAX_TEXT_BYTES` long (a larger body is not searchable, and is
    never held whole), else ``None``.

    Made by :func:`store_body`; the contract accepts one in place of content
    (``NewArtifact.content``, ``update_artifact(content=...)``) of a repository
    whose body store is ``bodies``.
    """

    digest: Digest
    size: int
    content: bytes | None
    bodies: BodyStore

    def __repr__(self) -> str:
        return f"StoredBody({self.digest!r}, size={self.size})"

    def text(self) -> str | text.NotSearchable:
        """The body's text for search, or why it has none."""
        if self.content is None:
            return text.NotSearchable.TOO_LARGE
        return text.text_of(self.content)


def store_body(bodies: BodyStore, source: Source | bytes) -> StoredBody:
    """Store a body from bytes, a file's path or a binary stream, a chunk at a time.

    Durable as :meth:`BodyStore.add_stream` is: when this returns outside a batch,
    else when the batch ends. A source of at most
    :data:`~.text.MAX_TEXT_BYTES` is held whole (it is indexed for text).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        content = bytes(source)
        return StoredBody(bodies.add(content), len(content), _searchable(content), bodies)
    if isinstance(source, (str, os.PathLike)):
        try:
            stream = open(source, "rb")  # noqa: SIM115  # closed below
        except OSError as exc:
            raise ValidationError(
                f"cannot read {os.fsdecode(source)}: {exc.strerror or exc}"
            ) from None
        with stream:
            return _store_stream(bodies, stream)
    if not callable(getattr(source, "read", None)):
        raise ValidationError(
            f"a body is read from bytes, a path or a binary stream, not {type(source).__name__}"
        )
    return _store_stream(bodies, source)


def _searchable(content: bytes) -> bytes | None:
    return content if len(content) <= text.MAX_TEXT_BYTES else None


def _store_stream(bodies: BodyStore, stream: BinaryIO) -> StoredBody:
    """Read a head of one byte more than a searchable body; store it whole if the
    stream ends there, else stream the head and the rest into the store."""
    want = text.MAX_TEXT_BYTES + 1
    head = bytearray()
    while len(head) < want:
        chunk = stream.read(want - len(head))
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise ValidationError(
                f"what the stream's read() returned must be bytes, not {type(chunk).__name__}"
            )
        if not chunk:
            content = bytes(head)
            return StoredBody(bodies.add(content), len(content), content, bodies)
        head += chunk
    digest, size = bodies.add_stream(cast(BinaryIO, _Rejoined(bytes(head), stream)))
    return StoredBody(digest, size, None, bodies)


class _Rejoined(io.RawIOBase):
    """``head`` followed by the rest of ``stream``, as one reader."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        super().__init__()
        self._head: bytes | None = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            head, self._head = self._head, None
            return head
        return self._stream.read(size)


@dataclass(frozen=True, slots=True)
class NewFile:
    """Input to :meth:`~.contract.KnowledgeRepository.put_files`: one artifact to
    create or update by name, its body read from ``source`` (a file's path or a
    binary stream) in chunks. The other fields are those of
    :class:`~kontextual_engine.models.NewArtifact`."""

    name: str
    source: Source
    artifact_type: str
    media_type: str | None = None
    metadata: Mapping[str, Any] | None = None
    provenance: Mapping[str, Any] | None = None


def held_size(size: int) -> int:
    """The bytes a :class:`StoredBody` of a body of ``size`` bytes holds at most
    (a larger body is streamed: about one chunk while it is read)."""
    return min(size, text.MAX_TEXT_BYTES + 1)


def source_size(source: object) -> int:
    """What a source weighs for back-pressure: what its StoredBody will hold."""
    if isinstance(source, (str, os.PathLike)):
        try:
            return held_size(os.stat(source).st_size)
        except OSError:
            return 0
    return text.MAX_TEXT_BYTES + 1


def pipelined(
    items: Iterable[T],
    work: Callable[[T], R],
    *,
    weight: Callable[[T], int] = lambda _item: 1,
    workers: int = INGEST_WORKERS,
    ahead_items: int = AHEAD_ITEMS,
    ahead_bytes: int = AHEAD_BYTES,
) -> Generator[R, None, None]:
    """``work(item)`` for each item, run on ``workers`` threads, results in item order.

    At most ``ahead_items`` items, and ``ahead_bytes`` of their ``weight`` (but
    always one item), are submitted and not yet taken by the consumer, so
    memory stays bounded however many items there are. An exception of
    ``work`` is raised when its item's turn comes; the items after it are
    cancelled or awaited. The generator returns (or raises) only when no
    worker is running any more. ``workers`` of 0 runs everything on the
    calling thread.
    """
    if workers <= 0:
        for item in items:
            yield work(item)
        return
    # Imported here: every command imports this module, few run a pipeline.
    from concurrent.futures import ThreadPoolExecutor

    pending: deque[tuple[Future[R], int]] = deque()
    held = 0
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        try:
            exhausted = False
            while True:
                while not exhausted and len(pending) < ahead_items:
                    if pending and held >= ahead_bytes:
                        break
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    size = max(0, weight(item))
                    # Each item runs in a copy of the caller's context: what the
                    # caller's transaction keeps in context variables (a shared
                    # store's upload intents) is the workers' too.
                    pending.append((pool.submit(copy_context().run, work, item), size))
                    held += size
                if not pending:
                    return
                future, size = pending.popleft()
                result = future.result()
                held -= size
                yield result
        finally:
            for future, _ in pending:
                future.cancel()
            # Leaving the pool's block waits for the workers that already started.


def stored_artifacts(
    bodies: BodyStore, items: Iterable[NewFile], *, workers: int = INGEST_WORKERS
) -> Generator[NewArtifact, None, None]:
    """The :class:`NewArtifact` of each :class:`NewFile`, in order, its body already
    in ``bodies``: ``workers`` threads read, hash and store the bodies in chunks
    ahead of the consumer (:func:`pipelined`). Close the generator (or exhaust
    it) before the transaction's bodies are flushed: that waits for the workers.
    """

    def stored(item: NewFile) -> NewArtifact:
        if not isinstance(item, NewFile):
            raise ValidationError(f"expected a NewFile, got {type(item).__name__}")
        body = store_body(bodies, item.source)
        return NewArtifact(
            item.name, body, item.artifact_type, item.media_type, item.metadata, item.provenance
        )

    def weight(item: NewFile) -> int:
        return source_size(item.source) if isinstance(item, NewFile) else 0

    return pipelined(items, stored, weight=weight, workers=workers)
