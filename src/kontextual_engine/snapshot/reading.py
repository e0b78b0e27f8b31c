"""Reading a snapshot: regular files only, never through a link, bounded, a tar in place.

:func:`open_source` opens a snapshot directory or ``.tar`` as a
:class:`Source` of members. Building one refuses anything that is not a part
of a snapshot (``format.is_file_member`` / ``is_directory_member``): links,
FIFOs, devices, sockets, unknown names, unsafe or repeated tar members. A
directory's members are opened component by component without following a
link (``storage.durable.open_beneath``); a tar's are streamed from the
archive, never extracted. Any failure to read a member is a
:class:`~kontextual_engine.errors.SnapshotError` naming it.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import io
import os
import stat
import tarfile
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..digests import CHUNK_SIZE
from ..errors import SnapshotError
from ..storage.durable import DIR_FLAGS, FOLLOW_READ_FLAGS, open_beneath
from ..storage.objects.layout import kind
from .format import is_directory_member, is_file_member, object_digest


def describe(mode: int) -> str:
    """What a file of ``mode`` is, after "it is": ``a FIFO``, ``a symbolic link``..."""
    return f"a {kind(mode)}"


class _MemberReader(io.RawIOBase):
    """A member's bytes; any failure to read them is a :class:`SnapshotError`."""

    def __init__(self, inner: BinaryIO, member: str) -> None:
        super().__init__()
        self._inner = inner
        self._member = member

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return self._inner.readinto(buffer)  # type: ignore[attr-defined, no-any-return]
        except (OSError, tarfile.TarError) as exc:
            raise SnapshotError(f"snapshot file {self._member} cannot be read: {exc}") from None

    def close(self) -> None:
        self._inner.close()
        super().close()


def _reader(inner: BinaryIO, member: str) -> BinaryIO:
    return typing.cast(BinaryIO, io.BufferedReader(_MemberReader(inner, member), CHUNK_SIZE))


class Source(abc.ABC):
    """The members of a snapshot, whether a directory or a tar.

    ``objects`` is the digests of the bodies it holds, ``files`` the names of
    its other files (the manifest and index files); building it has refused
    anything that is not a part of a snapshot.
    """

    objects: set[str]
    files: set[str]

    @abc.abstractmethod
    def open(self, member: str) -> tuple[BinaryIO, int]:
        """A reader of a regular-file member and its size."""

    @abc.abstractmethod
    def close(self) -> None: ...


class _DirectorySource(Source):
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self._fd = os.open(root, DIR_FLAGS)
        except OSError as exc:
            raise SnapshotError(f"snapshot {root} cannot be opened: {exc.strerror}") from None
        self.files: set[str] = set()
        try:
            self.objects = self._scan()
        except BaseException:
            os.close(self._fd)
            raise

    def _scan(self) -> set[str]:
        """Every entry, without following links; anything unexpected is refused."""
        found: set[str] = set()
        pending = [""]
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(self.root / directory if directory else self.root) as scan:
                    entries = sorted(scan, key=lambda entry: entry.name)
            except OSError as exc:
                raise SnapshotError(
                    f"snapshot directory {directory} cannot be read: {exc}"
                ) from None
            for entry in entries:
                name = f"{directory}/{entry.name}" if directory else entry.name
                mode = entry.stat(follow_symlinks=False).st_mode
                if is_directory_member(name):
                    if not stat.S_ISDIR(mode):
                        raise SnapshotError(
                            f"snapshot entry {name} should be a directory, it is {describe(mode)}"
                        )
                    pending.append(name)
                    continue
                if not is_file_member(name):
                    raise SnapshotError(f"snapshot holds an unexpected entry {name}")
                if not stat.S_ISREG(mode):
                    raise SnapshotError(
                        f"snapshot file {name} is not a regular file: it is {describe(mode)}"
                    )
                digest = object_digest(name)
                if digest is not None:
                    found.add(digest)
                else:
                    self.files.add(name)
        return found

    def open(self, member: str) -> tuple[BinaryIO, int]:
        try:
            fd = open_beneath(self._fd, member)
        except FileNotFoundError:
            raise SnapshotError(f"snapshot file {member} is missing") from None
        except OSError as exc:
            reason = (
                "is (or passes through) a symbolic link"
                if exc.errno == errno.ELOOP
                else (f"cannot be opened: {exc.strerror}")
            )
            raise SnapshotError(f"snapshot file {member} {reason}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SnapshotError(
                f"snapshot file {member} is not a regular file: it is {describe(st.st_mode)}"
            )
        # The caller closes the reader, and with it the file.
        return _reader(open(fd, "rb", buffering=0), member), st.st_size

    def close(self) -> None:
        os.close(self._fd)


class _TarSource(Source):
    """A tar read in place: members are checked, then streamed; nothing is extracted."""

    def __init__(self, path: Path, fd: int) -> None:
        self._file = open(fd, "rb")  # noqa: SIM115 (closed by close())
        try:
            size = os.fstat(fd).st_size
            self._archive = tarfile.open(fileobj=self._file, mode="r:")  # noqa: SIM115
            self._members: dict[str, tarfile.TarInfo] = {}
            self._seen: set[str] = set()
            for member in self._archive:
                self._check_member(member, size)
        except (tarfile.TarError, OSError) as exc:
            self._file.close()
            raise SnapshotError(f"{path} is not a readable tar file: {exc}") from None
        except BaseException:
            self._file.close()
            raise
        self.objects = {
            digest for digest in map(object_digest, self._members) if digest is not None
        }
        self.files = {name for name in self._members if object_digest(name) is None}

    def _check_member(self, member: tarfile.TarInfo, archive_size: int) -> None:
        name = member.name
        if name in self._seen:
            raise SnapshotError(f"tar member {name!r} appears twice")
        self._seen.add(name)
        parts = name.split("/")
        if (
            name.startswith("/")
            or "\\" in name
            or ".." in parts
            or "" in parts
            or name != os.path.normpath(name)
        ):
            raise SnapshotError(f"tar member {name!r} has an unsafe path")
        if not (member.isfile() or member.isdir()) or member.issparse():
            # A sparse member expands to its declared size whatever the archive's:
            # a few bytes of tar could fill the disk.
            raise SnapshotError(f"tar member {name!r} is not a regular file or directory")
        if member.isdir():
            if not is_directory_member(name):
                raise SnapshotError(f"tar member {name!r} is not part of a snapshot")
            return
        if not is_file_member(name):
            raise SnapshotError(f"tar member {name!r} is not part of a snapshot")
        if member.offset_data + member.size > archive_size:
            raise SnapshotError(f"tar member {name!r} runs past the end of the archive")
        self._members[name] = member

    def open(self, member: str) -> tuple[BinaryIO, int]:
        info = self._members.get(member)
        if info is None:
            raise SnapshotError(f"snapshot file {member} is missing")
        inner = self._archive.extractfile(info)
        assert inner is not None  # a regular file, checked above
        return _reader(typing.cast(BinaryIO, inner), member), info.size

    def close(self) -> None:
        self._archive.close()
        self._file.close()


@contextlib.contextmanager
def open_source(path: Path) -> Iterator[Source]:
    """The snapshot at ``path``: a directory, or a regular file holding a tar.

    ``path`` itself may be a symbolic link (a person named it); nothing in it is followed.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {path} not found") from None
    except OSError as exc:
        raise SnapshotError(f"snapshot {path} cannot be read: {exc.strerror}") from None
    source: Source
    if stat.S_ISDIR(mode):
        source = _DirectorySource(path)
    elif stat.S_ISREG(mode):
        try:
            fd = os.open(path, FOLLOW_READ_FLAGS)
        except OSError as exc:
            raise SnapshotError(f"snapshot {path} cannot be opened: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the stat
            os.close(fd)
            raise SnapshotError(f"snapshot {path} is not a regular file")
        source = _TarSource(path, fd)
    else:
        raise SnapshotError(
            f"snapshot {path} is neither a directory nor a tar file: it is {describe(mode)}"
        )
    try:
        yield source
    finally:
        source.close()


# -- bounded reads ---------------------------------------------------------


def read_bounded(source: Source, member: str, limit: int) -> bytes:
    """All of a member of at most ``limit`` bytes; a larger one is refused unread."""
    reader, size = source.open(member)
    with reader:
        if size > limit:
            raise SnapshotError(f"{member} is {size} bytes, more than {limit}")
        return reader.read(limit + 1)


def read_lines(source: Source, member: str, limit: int) -> Iterator[bytes]:
    """The lines of a member, each with its newline and at most ``limit`` bytes long."""
    reader, _ = source.open(member)
    with reader:
        number = 0
        while line := reader.readline(limit + 1):
            number += 1
            if not line.endswith(b"\n"):
                if len(line) > limit:
                    raise SnapshotError(f"{member}:{number} is longer than {limit} bytes")
                raise SnapshotError(f"{member}:{number} does not end with a newline")
            yield line
