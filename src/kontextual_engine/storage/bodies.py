"""``BodyStore``: where a repository keeps artifact bodies, keyed by digest.

:class:`~.objects.ObjectStore` keeps them as files in a store directory;
:class:`MemoryBodyStore` keeps them in a dictionary (tests, throwaway work).

Ordering rule: a body is durable when :meth:`BodyStore.add` returns outside a
batch, or when the :meth:`BodyStore.batch` it was added in exits. An index
must not commit a reference to a body before that.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import BinaryIO, Protocol, runtime_checkable

from .. import digests
from ..digests import Digest
from ..errors import CorruptObjectError, ObjectNotFound


@runtime_checkable
class BodyStore(Protocol):
    def add(self, data: bytes) -> Digest: ...

    def get(self, digest: str, *, verify: bool = False) -> bytes: ...

    def open(self, digest: str, *, verify: bool = False) -> BinaryIO: ...

    def exists(self, digest: str) -> bool: ...

    def batch(self) -> AbstractContextManager[object]: ...

    def close(self) -> None: ...


class MemoryBodyStore:
    """Bodies in a dictionary: nothing is durable, so a batch has nothing to do."""

    def __init__(self) -> None:
        self._bodies: dict[str, bytes] = {}

    def add(self, data: bytes) -> Digest:
        digest = digests.digest_bytes(data)
        self._bodies.setdefault(digest, bytes(data))  # unreferenced bodies are garbage
        return digest

    def get(self, digest: str, *, verify: bool = False) -> bytes:
        key = digests.parse_digest(digest)
        try:
            data = self._bodies[key]
        except KeyError:
            raise ObjectNotFound(key) from None
        if verify and digests.digest_bytes(data) != key:
            raise CorruptObjectError(key, "its bytes do not hash to its name")
        return data

    def open(self, digest: str, *, verify: bool = False) -> BinaryIO:
        return io.BytesIO(self.get(digest, verify=verify))

    def exists(self, digest: str) -> bool:
        return digests.parse_digest(digest) in self._bodies

    def batch(self) -> AbstractContextManager[object]:
        return nullcontext(self)

    def close(self) -> None:
        pass

    def all(self) -> Iterator[Digest]:
        return iter(sorted(Digest(d) for d in self._bodies))
