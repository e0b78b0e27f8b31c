"""Staging files in ``tmp/`` and who owns them.

A store writes every file to a fresh file in ``tmp/`` first and links it into
place when it is complete (see store.py). Each writer (one store object in one
process) names its files ``tmp/<owner>.<n>.tmp``, ``<owner>`` being
``<pid>.<16 hex>``, and holds an exclusive ``flock`` on ``tmp/<owner>.lock``
for as long as it may still use them. gc and fsck test that lock: a file
whose writer's lock is free belongs to a process that is gone and is garbage
at once, whatever its age; a file not named after a writer is judged by its
age. See "Who owns a file in tmp/" in ``docs/store-format.md``.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import os
import re
import threading
import time
import weakref
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..durable import READ_FLAGS, WRITE_FLAGS, unlink_quietly
from .layout import TMP_DIR, ensure_dir, kind

# Staging files are named after their writer, which holds a lock on tmp/<owner>.lock
# while it may still use them; see Staging.collect. Only a file in tmp/ that is
# not named so (left by an older version, or put there by hand) is judged by its age:
# younger than this it may belong to a write in progress, older it is a leftover.
TMP_GRACE_SECONDS = 24 * 3600.0

# <pid>.<16 hex> names one writer (one ObjectStore in one process): its lock file
# is <owner>.lock, its staging files <owner>.<n>.tmp.
_OWNED_TMP = re.compile(r"(\d+\.[0-9a-f]{16})\.(?:\d+\.tmp|lock)")
_LOCK_SUFFIX = ".lock"
# Unique tmp names per process without a syscall; O_EXCL settles any clash with a
# leftover of an earlier process that had the same pid.
_tmp_counter = itertools.count()


@dataclass(frozen=True)
class TmpFile:
    """A file in ``tmp/`` as :meth:`Staging.collect` judged it.

    ``garbage`` is True when no write can still use it (its writer's process is
    gone, or, for a file not named after a writer, it is older than the grace
    period); ``reason`` says which, for people.
    """

    path: Path
    size: int
    garbage: bool
    reason: str


class Staging:
    """The staging directory ``tmp/`` of one store, as one writer sees it.

    A writer is one :class:`Staging` in one process. It takes its owner lock
    (``tmp/<owner>.lock``) when it creates its first file and keeps it until
    :meth:`release`.
    """

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self._owner: _Owner | None = None  # the lock that marks our files as in use
        self._owner_lock = threading.Lock()  # guards _owner

    def new_file(self, mode: int) -> tuple[int, str]:
        """A new file in ``tmp/`` named after this writer, open for writing: (fd, path)."""
        for attempt in itertools.count():
            owner = self._own()
            name = f"{self.tmp}/{owner.prefix}.{next(_tmp_counter)}.tmp"
            try:
                return os.open(name, WRITE_FLAGS, mode), name
            except FileExistsError:
                continue
            except FileNotFoundError:
                if attempt:
                    raise
                # tmp/ was removed, and our lock file with it: recreate both once.
                ensure_dir(self.tmp, create=True, strict=True)
                with self._owner_lock:
                    if self._owner is owner:
                        self._owner = None
                        owner.release()
        raise AssertionError("unreachable")  # pragma: no cover

    def release(self) -> None:
        """Give up the owner lock (the next file taken takes a new one). The
        caller must know that none of this writer's files is still in use."""
        with self._owner_lock:
            owner, self._owner = self._owner, None
            if owner is not None:
                owner.release()

    def _own(self) -> _Owner:
        """This writer's owner lock in this process, taken on first use."""
        with self._owner_lock:
            owner = self._owner
            if owner is None or owner.pid != os.getpid():
                owner = self._owner = _take_ownership(self.tmp)
            return owner

    def files(self) -> list[Path]:
        """What is in ``tmp/`` but the writers' lock files: staging files of writes
        in progress and leftovers."""
        try:
            with os.scandir(self.tmp) as entries:
                return sorted(
                    Path(entry.path) for entry in entries if not _is_owner_lock(entry.name)
                )
        except FileNotFoundError:
            return []

    def collect(
        self,
        *,
        grace_seconds: float = TMP_GRACE_SECONDS,
        remove: bool = False,
        exclude: Collection[str] = (),
    ) -> list[TmpFile]:
        """Judge every file in ``tmp/``; with ``remove``, delete the garbage.

        Each writer (one store object in one process) names its staging files
        ``<owner>.<n>.tmp`` and holds an exclusive ``flock`` on
        ``tmp/<owner>.lock`` for as long as it may use them. A file whose
        owner's lock can be taken here, or whose lock file is gone, belongs to a
        process that is gone: it is garbage at once, whatever its age. The lock
        is held while such files are removed (the lock file last), so no new
        writer can start under that name meanwhile. Files with other names are
        garbage once older than ``grace_seconds``. The paths in ``exclude``
        (a store's own staged files) are left out.
        """
        now = time.time()
        groups: dict[str | None, list[tuple[str, os.stat_result]]] = {}
        try:
            with os.scandir(self.tmp) as entries:
                listed = sorted(entries, key=lambda entry: entry.name)
        except FileNotFoundError:
            listed = []
        for entry in listed:
            if entry.path in exclude:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            match = _OWNED_TMP.fullmatch(entry.name)
            owner = match.group(1) if match else None
            groups.setdefault(owner, []).append((entry.path, st))
        found: list[TmpFile] = []
        for owner, files in groups.items():
            # The lock file is removed last: until then it keeps the name taken.
            files.sort(key=lambda item: _is_owner_lock(os.path.basename(item[0])))
            with _writer_gone(self.tmp, owner) as gone:
                for path, st in files:
                    age = now - st.st_mtime
                    if gone is None:
                        garbage = age > grace_seconds
                        reason = (
                            f"{kind(st.st_mode)} not named after a writer, "
                            f"last modified {age:.0f} s ago"
                        )
                    elif gone:
                        garbage = True
                        reason = (
                            f"{kind(st.st_mode)} of a write whose process is gone "
                            f"(no process holds {TMP_DIR}/{owner}{_LOCK_SUFFIX})"
                        )
                    else:
                        garbage = False
                        reason = f"in use by a live writer ({TMP_DIR}/{owner}{_LOCK_SUFFIX})"
                    if garbage and remove:
                        unlink_quietly(path)
                    found.append(TmpFile(Path(path), st.st_size, garbage, reason))
        found.sort(key=lambda item: item.path)
        return found


class _Owner:
    """An exclusive flock on ``tmp/<prefix>.lock``: while it is held, the files
    ``tmp/<prefix>.<n>.tmp`` belong to a live writer."""

    def __init__(self, fd: int, prefix: str, path: str) -> None:
        self.fd = fd
        self.prefix = prefix
        self.path = path
        self.pid = os.getpid()
        _owners.add(self)

    def release(self) -> None:
        """Remove the lock file (while still holding it), then let go of the lock."""
        if self.fd < 0:
            return
        if self.pid == os.getpid():  # a forked child must not end its parent's claim
            unlink_quietly(self.path)
        os.close(self.fd)
        self.fd = -1

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)


# Every lock held in this process, so that a process that exits without closing
# its stores leaves no lock files behind.
_owners: weakref.WeakSet[_Owner] = weakref.WeakSet()


@atexit.register
def _release_owners() -> None:
    for owner in list(_owners):
        with contextlib.suppress(OSError):
            owner.release()


def _take_ownership(tmp: str) -> _Owner:
    """Create ``tmp/<pid>.<random>.lock`` and hold an exclusive flock on it.

    A gc or fsck that looks at the new file before it is locked takes it for a
    dead writer's and may remove it; so once the lock is held the name is
    checked to still be this file, and a fresh name is taken otherwise.
    """
    for attempt in itertools.count():
        prefix = f"{os.getpid()}.{os.urandom(8).hex()}"
        path = f"{tmp}/{prefix}{_LOCK_SUFFIX}"
        try:
            fd = os.open(path, WRITE_FLAGS, 0o444)
        except FileExistsError:
            continue
        except FileNotFoundError:
            if attempt:
                raise
            ensure_dir(tmp, create=True, strict=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a gc or fsck tests it
            mine = os.fstat(fd)
            try:
                named = os.lstat(path)
            except FileNotFoundError:
                named = None
        except BaseException:
            os.close(fd)
            raise
        if named is not None and (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
            return _Owner(fd, prefix, path)
        os.close(fd)
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def _writer_gone(tmp: str, owner: str | None) -> Iterator[bool | None]:
    """Whether the writer ``owner`` is gone: True (its lock is free, and held by
    this block until it ends, or its lock file is missing), False (a live process
    holds it) or None (no owner, or the lock file cannot be opened: judge by age)."""
    if owner is None:
        yield None
        return
    try:
        fd = os.open(f"{tmp}/{owner}{_LOCK_SUFFIX}", READ_FLAGS)
    except FileNotFoundError:
        yield True
        return
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            gone = True
        except BlockingIOError:
            gone = False
        yield gone
    finally:
        os.close(fd)


def _is_owner_lock(name: str) -> bool:
    return name.endswith(_LOCK_SUFFIX) and _OWNED_TMP.fullmatch(name) is not None
