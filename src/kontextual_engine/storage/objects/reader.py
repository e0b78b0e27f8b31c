"""Reading objects so that no byte failing its digest reaches the caller.

An object file is opened without following symbolic links and only if it is
a regular file (:func:`open_regular`); :func:`open_verified` checks it before
returning anything, and :func:`hash_fd` hashes an open file in constant memory
(for ``verify`` and fsck's re-hash).
"""

from __future__ import annotations

import errno
import io
import os
from typing import TYPE_CHECKING, BinaryIO

from ...digests import CHUNK_SIZE, Digest, digest_bytes, finish, new_hasher
from ...errors import CorruptObjectError
from ..durable import READ_FLAGS
from .layout import require_regular

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

# A verified open reads an object up to this size into memory and checks it;
# a larger one is hashed in a first pass over the file, then streamed.
VERIFY_IN_MEMORY = CHUNK_SIZE


def open_verified(fd: int, digest: Digest, size: int) -> BinaryIO:
    """A reader over the open object file ``fd`` (of ``size`` bytes) that never
    returns a byte failing ``digest``; takes ownership of ``fd``.

    The object is checked before this returns: a damaged one raises
    :class:`CorruptObjectError` here, before the caller has read anything.
    Objects of up to :data:`VERIFY_IN_MEMORY` bytes are read into memory and
    checked; larger ones are hashed in a first pass over the open file and
    then streamed from its start in a second pass, which re-hashes what it
    returns and raises at end of file if the file changed between the passes
    (possible only if someone made the read-only file writable and edited it).
    """
    if size <= VERIFY_IN_MEMORY:
        with io.FileIO(fd, "rb") as source:
            data = source.readall()
        check_bytes(digest, data)
        return io.BytesIO(data)
    try:
        actual, count = hash_open(fd)
        if actual != digest:
            raise CorruptObjectError(digest, mismatch(actual, count))
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return io.BufferedReader(VerifyingReader(fd, digest, count), CHUNK_SIZE)


class ReadCheck:
    """What a verified read passes on, hashed and counted, and checked once at
    its end against the digest and the size the body had when it was opened
    (``kind`` names the body in the message: "file", "object")."""

    def __init__(self, digest: Digest, size: int, kind: str) -> None:
        self.digest = digest
        self.size = size
        self.kind = kind
        self._hasher = new_hasher()
        self.count = 0
        self._error: CorruptObjectError | None = None
        self._checked = False

    def update(self, data: memoryview | bytes) -> None:
        self._hasher.update(data)
        self.count += len(data)

    def finish(self) -> None:
        """Raise :class:`CorruptObjectError` if what passed was not the body; again
        on every later call."""
        if self._error is not None:
            raise self._error
        if self._checked:
            return
        self._checked = True
        actual = finish(self._hasher)
        if actual != self.digest:
            self._error = CorruptObjectError(self.digest, mismatch(actual, self.count))
        elif self.count != self.size:
            self._error = CorruptObjectError(
                self.digest,
                f"read {self.count} bytes but the {self.kind} had {self.size} when opened",
            )
        if self._error is not None:
            raise self._error


class VerifyingReader(io.RawIOBase):
    """A raw reader that hashes what passes through and checks it at end of file."""

    def __init__(self, fd: int, digest: Digest, size: int) -> None:
        super().__init__()
        self._file = io.FileIO(fd, "rb")
        self._check = ReadCheck(digest, size, "file")

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._file.fileno()

    def readinto(self, buffer: WriteableBuffer) -> int:
        count = self._file.readinto(buffer) or 0
        if count:
            with memoryview(buffer) as view:
                self._check.update(view[:count])
            return count
        self._check.finish()
        return 0

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


def open_regular(path: str, digest: str) -> tuple[int, int]:
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptObjectError(
                digest, "object path is a symbolic link, not a regular file"
            ) from None
        raise
    try:
        st = os.fstat(fd)
        require_regular(st, digest)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def hash_fd(fd: int) -> tuple[Digest, int]:
    """Hash an open file to its end in constant memory, then close it."""
    try:
        return hash_open(fd)
    finally:
        os.close(fd)


def hash_open(fd: int) -> tuple[Digest, int]:
    """Hash an open file from its current offset to its end in constant memory."""
    hasher = new_hasher()
    size = 0
    buffer = bytearray(CHUNK_SIZE)
    with io.FileIO(fd, "rb", closefd=False) as source, memoryview(buffer) as view:
        while True:
            count = source.readinto(view) or 0
            if not count:
                break
            hasher.update(view[:count])
            size += count
    return finish(hasher), size


def check_bytes(digest: Digest, data: bytes) -> None:
    """Raise CorruptObjectError unless ``data`` hashes to ``digest``."""
    actual = digest_bytes(data)
    if actual != digest:
        raise CorruptObjectError(digest, mismatch(actual, len(data)))


def mismatch(actual: Digest, size: int) -> str:
    if size == 0:
        return f"the file is empty (truncated?) and hashes to {actual}"
    return f"its {size} bytes hash to {actual}"
