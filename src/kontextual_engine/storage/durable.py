"""Writing files durably: the one place that fsyncs, links into place and unlinks.

Everything in the store that writes a file (the object store, the store
marker, backup and adopt) goes through these helpers, so that what "durable"
means is decided once:

- a file's bytes are durable after :func:`fsync_path` (or ``os.fsync`` of its
  descriptor), its name after :func:`fsync_dir` of the directory holding it;
- :func:`sync_filesystem` makes everything written on one filesystem durable
  at once (syncfs(2) where there is one), which is cheaper than an fsync per
  file once there are many;
- a file appears under its final name only by :func:`link` (or
  :func:`link_or_copy`), which never overwrites what is already there.

Files are opened with :data:`NOFOLLOW` (a symbolic link planted at a path
is refused, never followed) and :data:`CLOEXEC`.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import io
import os
import sys
from collections.abc import Callable

from ..digests import CHUNK_SIZE
from ..errors import ReadOnlyStoreError, StorageFullError, ValidationError

__all__ = [
    "CLOEXEC",
    "DIR_FLAGS",
    "FOLLOW_READ_FLAGS",
    "FULL_ERRNOS",
    "NOFOLLOW",
    "NO_HARDLINK_ERRNOS",
    "READ_FLAGS",
    "READ_ONLY_ERRNOS",
    "WRITE_FLAGS",
    "Durability",
    "call_syncfs",
    "fsync_dir",
    "fsync_file",
    "fsync_path",
    "hard_link",
    "link",
    "link_or_copy",
    "open_beneath",
    "parse_durability",
    "storage_full",
    "sync_filesystem",
    "syncfs",
    "unlink_quietly",
    "write_all",
    "write_error",
]

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
# O_NONBLOCK only so that a FIFO planted at a path cannot block open(); it has no
# effect on regular files.
READ_FLAGS = os.O_RDONLY | NOFOLLOW | CLOEXEC | getattr(os, "O_NONBLOCK", 0)
# As READ_FLAGS, but following a symbolic link: only for a path a person named
# (a snapshot to import), never for a path inside a store or a snapshot.
FOLLOW_READ_FLAGS = READ_FLAGS & ~NOFOLLOW
# A new file, never one that is there already (nor a symbolic link planted there).
WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
DIR_FLAGS = os.O_RDONLY | _DIRECTORY | CLOEXEC

# errno values that mean "this cannot be written here".
READ_ONLY_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
# errno values that mean "the filesystem (or the user's quota) is full".
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# errno values of link(2) that mean "this filesystem has no hard links".
NO_HARDLINK_ERRNOS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, getattr(errno, "ENOSYS", errno.ENOTSUP)}
)


class Durability(str, enum.Enum):
    """How hard a write works to survive a crash; see docs/store-format.md.

    ``full``: every object and its directory entry are fsynced before the write
    returns. ``batch``: objects are staged and become durable and visible
    together at :meth:`ObjectStore.flush
    <kontextual_engine.storage.objects.ObjectStore.flush>`. ``none``: no fsync at all.
    """

    FULL = "full"
    BATCH = "batch"
    NONE = "none"


def parse_durability(value: Durability | str) -> Durability:
    try:
        return Durability(value)
    except ValueError:
        choices = ", ".join(repr(mode.value) for mode in Durability)
        raise ValidationError(f"invalid durability {value!r}: expected one of {choices}") from None


def write_error(exc: OSError, root: str | os.PathLike[str], what: str) -> Exception:
    """The typed error for a write to ``what`` at ``root`` (say, ``object store``)
    that failed with ``exc``: :class:`ReadOnlyStoreError` where it cannot be
    written at all, :class:`StorageFullError` where the filesystem is full, else
    ``exc`` itself."""
    if exc.errno in READ_ONLY_ERRNOS:
        where = exc.filename if exc.filename is not None else os.fspath(root)
        return ReadOnlyStoreError(
            f"cannot write to {what} {os.fspath(root)}: {exc.strerror or exc} ({where})"
        )
    if exc.errno in FULL_ERRNOS:
        return storage_full(root, exc.strerror or str(exc))
    return exc


def storage_full(where: str | os.PathLike[str], reason: str) -> StorageFullError:
    """The error for a write refused because the filesystem holding ``where`` is full."""
    return StorageFullError(
        f"no space left on the filesystem holding {os.fspath(where)}: {reason}; "
        "nothing was written or acknowledged (free some space and retry)"
    )


def write_all(fd: int, view: memoryview) -> None:
    """Write all of ``view`` to ``fd``, however many ``write`` calls that takes."""
    written = os.write(fd, view)
    while written < view.nbytes:
        written += os.write(fd, view[written:])


def unlink_quietly(path: str) -> None:
    """Remove ``path``; a file that is already gone is fine."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def fsync_file(fd: int) -> None:
    """Make the bytes of the open file ``fd`` durable."""
    os.fsync(fd)


def fsync_dir(path: str) -> None:
    """Make the entries of the directory ``path`` (names created or removed) durable."""
    fd = os.open(path, DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str, *, missing_ok: bool = False) -> None:
    """Make the bytes of the file ``path`` durable (not following a symbolic link)."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | CLOEXEC)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def syncfs() -> Callable[[int], int] | None:
    """syncfs(2) where the C library has it (Linux), else None.

    On Linux, syncfs gives the same guarantee as fsync on every file of the
    filesystem (see sync(2)) and reports writeback errors since Linux 5.8.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def sync_filesystem(path: str | os.PathLike[str]) -> None:
    """Make everything written on the filesystem holding ``path`` durable.

    syncfs(2) of that filesystem alone where there is one, else sync(2) of
    every filesystem.
    """
    function = syncfs()
    if function is None:
        os.sync()
    else:
        call_syncfs(function, os.fspath(path))


def call_syncfs(function: Callable[[int], int], path: str) -> None:
    """Run ``function`` (:func:`syncfs`) on the directory ``path``; OSError if it fails."""
    import ctypes

    fd = os.open(path, DIR_FLAGS)
    try:
        if function(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def link(tmp: str, target: str) -> bool:
    """Hard-link ``tmp`` to ``target``; False if ``target`` already exists.

    On a filesystem without hard links, ``tmp`` is renamed to ``target``
    instead (a rename is atomic too); ``target`` is still never replaced.
    Nothing is fsynced: that is the caller's to decide.
    """
    try:
        os.link(tmp, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in NO_HARDLINK_ERRNOS:
            raise
        # A filesystem without hard links: a rename is atomic too, and replacing a
        # file with identical bytes that raced us in is harmless.
        if os.path.lexists(target):
            return False
        os.rename(tmp, target)
    return True


def hard_link(source: str, target: str) -> bool:
    """Hard-link the file ``source`` (a symbolic link itself, never what it points
    to) at ``target``; False where that cannot be done (another filesystem, no
    hard links, not permitted). ``target`` is never replaced (FileExistsError).
    Nothing is fsynced: that is the caller's to decide.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        return False
    return True


def open_beneath(directory: int, relative: str) -> int:
    """Open the file at ``relative`` (``a/b/c``) under the open directory
    ``directory`` for reading, following no symbolic link in any component.

    Each component is opened with :data:`NOFOLLOW`, so a link anywhere on the
    way raises OSError (ELOOP), as a missing one raises FileNotFoundError. The
    file is opened with :data:`READ_FLAGS`: check its type with ``fstat``.
    """
    parts = relative.split("/")
    opened: list[int] = []
    try:
        parent = directory
        for part in parts[:-1]:
            parent = os.open(part, DIR_FLAGS | NOFOLLOW, dir_fd=parent)
            opened.append(parent)
        return os.open(parts[-1], READ_FLAGS, dir_fd=parent)
    finally:
        for fd in opened:
            os.close(fd)


def link_or_copy(
    source: str, target: str, *, new_file: Callable[[], tuple[int, str]], mode: int
) -> int:
    """Put the file ``source`` at ``target`` as a hard link, or a copy where
    linking fails (another filesystem, no hard links); return its size.

    A copy is written to a fresh file from ``new_file`` (``(fd, path)``, on the
    filesystem of ``target``), given ``mode``, and then linked into place, so
    ``target`` never holds a partial copy; the fresh file is removed in every
    case. ``target`` is never replaced (FileExistsError). Nothing is fsynced:
    that is the caller's to decide.
    """
    if hard_link(source, target):
        return os.lstat(target).st_size
    with io.FileIO(os.open(source, READ_FLAGS), "rb") as reader:
        fd, tmp = new_file()
        try:
            try:
                size = 0
                while chunk := reader.read(CHUNK_SIZE):
                    write_all(fd, memoryview(chunk))
                    size += len(chunk)
                os.fchmod(fd, mode)  # the umask may have narrowed the mode given to open()
            finally:
                os.close(fd)
            if not link(tmp, target):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
        finally:
            unlink_quietly(tmp)
    return size
