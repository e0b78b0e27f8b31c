"""Body stores: where a repository keeps the bytes of its revisions, by digest.

A repository is an index backend plus a body store. The index holds every
record and refers to bodies by their BLAKE3 digest (``blake3:<64 hex>``); the
body store holds the bytes under that name, immutable once written.
:class:`BodyStore` is what an index may rely on; two implementations satisfy
it:

- :class:`~kontextual_engine.storage.objects.ObjectStore`, the content-addressed
  ``objects/`` directory of a store on disk;
- :class:`MemoryBodyStore`, a dict, for tests and in-memory repositories.

**The ordering rule.** A body is durable when :meth:`BodyStore.add` (or
``add_stream``) returns outside a batch, or, for bodies added inside
:meth:`BodyStore.batch`, when the batch exits (or :meth:`BodyStore.flush`
returns). An index must not commit a record that references a body before
that point: after a crash, a committed reference to a body that was never
made durable would be a missing body, while a durable body that no record
references is only garbage, which gc removes.

Every digest a body store is given passes
:func:`~kontextual_engine.digests.parse_digest` first: a malformed one raises
:class:`~kontextual_engine.errors.ValidationError`, a missing body
:class:`~kontextual_engine.errors.ObjectNotFound`, and a body whose bytes no
longer hash to its name :class:`~kontextual_engine.errors.CorruptObjectError`.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from ..digests import (
    CHUNK_SIZE,
    Digest,
    digest_bytes,
    finish,
    hex_of,
    new_hasher,
    one_match,
    parse_digest,
    parse_prefix,
)
from ..errors import ObjectNotFound
from .objects.reader import check_bytes
from .objects.store import ObjectStore, byte_view

__all__ = ["BodyStore", "MemoryBodyStore"]


@runtime_checkable
class BodyStore(Protocol):
    """Immutable bodies keyed by BLAKE3 digest; see the module docstring for
    the ordering rule an index must follow."""

    def add(self, data: bytes) -> Digest:
        """Store ``data``; return its digest. Adding a body twice stores it once.

        Outside a batch the body is durable when this returns."""
        ...

    def add_stream(self, stream: BinaryIO) -> tuple[Digest, int]:
        """Store everything ``stream`` yields, read in chunks; return the digest
        and size. Durable when it returns, as :meth:`add`."""
        ...

    def open(self, digest: str, *, verify: bool = False) -> BinaryIO:
        """A reader of the body. With ``verify``, a damaged body raises
        CorruptObjectError before a byte of it is returned."""
        ...

    def get(self, digest: str, *, verify: bool = False) -> bytes:
        """The body's bytes; ``verify`` re-hashes them first."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether the body is there."""
        ...

    def delete(self, digest: str) -> bool:
        """Remove the body; return whether there was one. For gc only."""
        ...

    def resolve(self, prefix: str) -> Digest:
        """The one body whose digest starts with ``prefix`` (4 to 64 hex digits);
        ObjectNotFound for none, AmbiguousPrefixError for several."""
        ...

    def all(self) -> Iterator[Digest]:
        """Every body's digest, in digest order."""
        ...

    def batch(self) -> contextlib.AbstractContextManager[object]:
        """A block whose bodies become durable together when it exits, before
        the caller commits anything that references them."""
        ...

    def flush(self) -> None:
        """Make every body added in the current batch durable now."""
        ...

    def verify(self, digest: str) -> None:
        """Re-hash the body; raise CorruptObjectError naming it if it is damaged."""
        ...

    def size(self, digest: str) -> int:
        """The body's size in bytes."""
        ...

    def close(self) -> None:
        """Flush; the store stays usable and closing twice is harmless."""
        ...


class MemoryBodyStore:
    """A :class:`BodyStore` in a dict keyed by ``blake3:<hex>``.

    Nothing is ever lost before the process ends, so every body is "durable"
    when ``add`` returns and :meth:`batch` and :meth:`flush` do nothing.
    Digests are validated, and errors typed, exactly as by
    :class:`~kontextual_engine.storage.objects.ObjectStore`.
    """

    def __init__(self) -> None:
        self._bodies: dict[Digest, bytes] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryBodyStore({len(self._bodies)} bodies)"

    def add(self, data: bytes) -> Digest:
        body = bytes(byte_view(data, "object data"))
        digest = digest_bytes(body)
        with self._lock:
            self._bodies.setdefault(digest, body)
        return digest

    def add_stream(self, stream: BinaryIO) -> tuple[Digest, int]:
        hasher = new_hasher()
        body = bytearray()
        while chunk := stream.read(CHUNK_SIZE):
            view = byte_view(chunk, "what the stream's read() returned")
            hasher.update(view)
            body += view
        digest = finish(hasher)
        with self._lock:
            self._bodies.setdefault(digest, bytes(body))
        return digest, len(body)

    def open(self, digest: str, *, verify: bool = False) -> BinaryIO:
        return io.BytesIO(self.get(digest, verify=verify))

    def get(self, digest: str, *, verify: bool = False) -> bytes:
        parsed = parse_digest(digest)
        try:
            body = self._bodies[parsed]
        except KeyError:
            raise ObjectNotFound(parsed) from None
        if verify:
            check_bytes(parsed, body)
        return body

    def exists(self, digest: str) -> bool:
        return parse_digest(digest) in self._bodies

    def __contains__(self, digest: object) -> bool:
        return parse_digest(digest) in self._bodies

    def resolve(self, prefix: str) -> Digest:
        hexp = parse_prefix(prefix)
        with self._lock:
            known = [hex_of(digest) for digest in self._bodies]
        return one_match(prefix, {hexd for hexd in known if hexd.startswith(hexp)})

    def delete(self, digest: str) -> bool:
        parsed = parse_digest(digest)
        with self._lock:
            return self._bodies.pop(parsed, None) is not None

    def all(self) -> Iterator[Digest]:
        with self._lock:
            digests = sorted(self._bodies)
        yield from digests

    @contextlib.contextmanager
    def batch(self) -> Iterator[MemoryBodyStore]:
        yield self

    def flush(self) -> None:
        pass

    def verify(self, digest: str) -> None:
        self.get(digest, verify=True)

    def size(self, digest: str) -> int:
        return len(self.get(digest))

    def close(self) -> None:
        pass

    def __enter__(self) -> MemoryBodyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if TYPE_CHECKING:  # mypy checks here that both classes satisfy BodyStore
    _OBJECT_STORE: type[BodyStore] = ObjectStore
    _MEMORY_STORE: type[BodyStore] = MemoryBodyStore
