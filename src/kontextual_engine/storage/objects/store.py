"""The content-addressed object directory: one file per body, named by its BLAKE3 digest.

Layout and protocol are specified in ``docs/store-format.md`` (store format
version 1); this module is the reference implementation of that document and
knows nothing of SQL.

::

    <root>/kontextual.json        {"format": "kontextual-store", "version": 1, "digest": "blake3"}
    <root>/objects/ab/cdef...     the raw bytes whose BLAKE3 is blake3:abcdef...
    <root>/tmp/                   staging for atomic writes; leftovers are garbage

Every digest passes :func:`~kontextual_engine.digests.parse_digest` before it
becomes a path (see :meth:`ObjectStore.path`), object paths are opened without
following symbolic links, and nothing is ever written outside ``<root>``.

Writes are atomic: the bytes go to a fresh file in ``tmp/`` (hashed while they
are written), are made durable as the :class:`Durability` mode asks, and are
then hard-linked into place. An object that already exists is never
rewritten; its mtime is refreshed so that a concurrent gc's grace period
protects it.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import errno
import fcntl
import io
import itertools
import json
import os
import re
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from ...digests import (
    ALGORITHM,
    CHUNK_SIZE,
    PREFIX,
    Digest,
    digest_bytes,
    finish,
    new_hasher,
    parse_digest,
    parse_prefix,
)
from ...errors import (
    AmbiguousPrefixError,
    CorruptObjectError,
    ObjectNotFound,
    ReadOnlyStoreError,
    StoreFormatError,
    ValidationError,
)
from .. import durable
from ..durable import (
    FULL_ERRNOS,
    READ_FLAGS,
    READ_ONLY_ERRNOS,
    WRITE_FLAGS,
    call_syncfs,
    fsync_dir,
    fsync_path,
    link,
    storage_full,
    unlink_quietly,
    write_all,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "FILE_MODE",
    "FULL_ERRNOS",
    "OBJECTS_DIR",
    "STORE_FORMAT",
    "STORE_MARKER",
    "STORE_VERSION",
    "TMP_DIR",
    "TMP_GRACE_SECONDS",
    "VERIFY_IN_MEMORY",
    "Durability",
    "ObjectStats",
    "ObjectStore",
    "Problem",
    "ProblemKind",
    "TmpFile",
]

STORE_MARKER = "kontextual.json"
STORE_FORMAT = "kontextual-store"
# Bumped only for changes an older reader would misread; readers refuse newer versions.
STORE_VERSION = 1
OBJECTS_DIR = "objects"
TMP_DIR = "tmp"
# Key order as in docs/store-format.md, so a fresh store's marker is byte-identical everywhere.
MARKER_TEXT = (
    json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION, "digest": ALGORITHM}) + "\n"
)

# A store holds private documents: only its owner may list or read it.
ROOT_MODE = 0o700
# Directories inside the root: the root's 0700 already gates access, and 0755 keeps
# a store readable by others once its owner deliberately opens up the root.
DIR_MODE = 0o755
# Objects never change once written; read-only files stop tools that open for
# writing from editing them by accident.
FILE_MODE = 0o444
# Staging files are named after their writer, which holds a lock on tmp/<owner>.lock
# while it may still use them; see ObjectStore.collect_tmp. Only a file in tmp/ that is
# not named so (left by an older version, or put there by hand) is judged by its age:
# younger than this it may belong to a write in progress, older it is a leftover.
TMP_GRACE_SECONDS = 24 * 3600.0
# A batch flushes early once this many objects are staged: it bounds memory and the
# size of tmp/, and an early flush never weakens the guarantee.
MAX_STAGED = 10_000
# Below this many staged files, flush() fsyncs each one; from here on one syncfs(2)
# per phase is far cheaper, at the price of also flushing unrelated dirty data of
# the same filesystem, which is why small batches do not use it.
SYNCFS_MIN = 16
# A verified open() reads an object up to this size into memory and checks it;
# a larger one is hashed in a first pass over the file, then streamed.
VERIFY_IN_MEMORY = CHUNK_SIZE
# The marker is a few dozen bytes; refuse to slurp anything absurd.
MAX_MARKER_BYTES = 1 << 16

_FAN = re.compile(r"[0-9a-f]{2}")
# <pid>.<16 hex> names one writer (one ObjectStore in one process): its lock file
# is <owner>.lock, its staging files <owner>.<n>.tmp.
_OWNED_TMP = re.compile(r"(\d+\.[0-9a-f]{16})\.(?:\d+\.tmp|lock)")
_LOCK_SUFFIX = ".lock"
_NAME = re.compile(r"[0-9a-f]{62}")
_HEX_START = len(PREFIX)

# Unique tmp names per process without a syscall; O_EXCL settles any clash with a
# leftover of an earlier process that had the same pid.
_tmp_counter = itertools.count()


class Durability(str, enum.Enum):
    """How hard a write works to survive a crash; see docs/store-format.md.

    ``full``: every object and its directory entry are fsynced before the write
    returns. ``batch``: objects are staged and become durable and visible
    together at :meth:`ObjectStore.flush`. ``none``: no fsync at all.
    """

    FULL = "full"
    BATCH = "batch"
    NONE = "none"


@dataclass(frozen=True)
class ObjectStats:
    count: int
    bytes: int


ProblemKind = Literal["corrupt", "not-a-file", "writable", "stray", "bad-fanout", "stale-tmp"]


@dataclass(frozen=True)
class TmpFile:
    """A file in ``tmp/`` as :meth:`ObjectStore.collect_tmp` judged it.

    ``garbage`` is True when no write can still use it (its writer's process is
    gone, or, for a file not named after a writer, it is older than the grace
    period); ``reason`` says which, for people.
    """

    path: Path
    size: int
    garbage: bool
    reason: str


@dataclass(frozen=True)
class Problem:
    """One finding of :meth:`ObjectStore.scan`.

    ``kind`` is one of: ``corrupt`` (the bytes do not hash to the name: flipped
    bits, truncation, or a file under another object's name; ``detail`` says what
    the content hashes to), ``not-a-file`` (a symlink, directory or other
    non-regular file at an object path), ``writable`` (an object file that is
    not read-only), ``stray`` (a file or directory whose name is not part of the
    layout), ``bad-fanout`` (a fan-out path that is not a directory) and
    ``stale-tmp`` (a file in ``tmp/`` that no write can still use: see
    :meth:`ObjectStore.collect_tmp`). ``size`` is the file's size in bytes
    where that is what the finding costs (``stale-tmp``), else 0.
    """

    kind: ProblemKind
    path: Path
    digest: Digest | None
    detail: str
    size: int = 0


class ObjectStore:
    """A content-addressed directory of immutable bodies keyed by BLAKE3 digest.

    ``durability`` is the default mode (see :class:`Durability`); :meth:`batch`
    switches to batch behaviour for a block. ``create`` initialises a missing or
    empty directory; ``read_only`` opens without creating or writing anything.
    ``file_mode`` is the permission of object files. ``adopt`` writes the marker
    of a directory that lost it instead of refusing it; the caller must have
    checked that the directory is a store (``maintenance.adopt`` does).
    """

    root: Path
    durability: Durability
    read_only: bool
    file_mode: int

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        durability: Durability | str = Durability.FULL,
        create: bool = True,
        read_only: bool = False,
        file_mode: int = FILE_MODE,
        adopt: bool = False,
    ) -> None:
        self.root = Path(root)
        self.durability = _parse_durability(durability)
        self.read_only = bool(read_only)
        if (
            not isinstance(file_mode, int)
            or isinstance(file_mode, bool)
            or file_mode & ~0o555
            or not file_mode & 0o400
        ):
            raise ValidationError(
                f"invalid file_mode {file_mode!r}: objects are immutable, so expected "
                "read (and execute) bits only, including owner read, such as 0o444"
            )
        self.file_mode = file_mode
        base = os.fspath(self.root)
        self._objects = os.path.join(base, OBJECTS_DIR)
        self._tmp = os.path.join(base, TMP_DIR)
        self._fans: set[str] = set()  # fan-out dirs seen to be real directories
        self._lock = threading.Lock()  # guards _staged and _depth
        self._flush_lock = threading.Lock()  # one flush at a time
        self._depth = 0  # nesting of batch() blocks
        # hex -> (tmp path, size, replace): objects written but not yet in place.
        self._staged: dict[str, tuple[str, int, bool]] = {}
        self._owner: _Owner | None = None  # the lock that marks our tmp files as in use
        self._owner_lock = threading.Lock()  # guards _owner
        self._writers = 0  # writes in progress (guarded by _lock)
        self._open_root(create=create and not self.read_only, adopt=adopt and not self.read_only)

    def __repr__(self) -> str:
        return f"ObjectStore({os.fspath(self.root)!r}, durability={self.durability.value!r})"

    # -- paths -------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the object ``digest`` lives: ``objects/<2 hex>/<62 hex>``.

        The digest is validated first; nothing else ever becomes a path. In
        batch mode an object is only there after :meth:`flush`.
        """
        hexd = _hex(digest)
        return self.root / OBJECTS_DIR / hexd[:2] / hexd[2:]

    def _target(self, hexd: str) -> str:
        return f"{self._objects}/{hexd[:2]}/{hexd[2:]}"

    # -- writing -----------------------------------------------------------------

    def add(self, data: bytes) -> Digest:
        """Store ``data``; return its digest. Existing objects are not rewritten."""
        self._check_writable()
        with self._writing():
            view = _byte_view(data, "object data")
            hasher = new_hasher()
            hasher.update(view)
            digest = finish(hasher)
            hexd = digest[_HEX_START:]
            size = view.nbytes
            mode = self._mode()
            try:
                if mode is Durability.BATCH and hexd in self._staged:
                    return digest
                if mode is Durability.FULL and self._staged:
                    self.flush()
                # One lstat settles the common dedup case before any file is created.
                present = self._present(digest, hexd, size)
                if present:
                    return digest
                fd, tmp = self._new_tmp()
                try:
                    try:
                        write_all(fd, view)
                        self._seal(fd, mode)
                    finally:
                        os.close(fd)
                except BaseException:
                    unlink_quietly(tmp)
                    raise
                self._place(tmp, digest, size, replace=present is False, mode=mode)
            except OSError as exc:
                raise self._map_write_error(exc) from exc
            return digest

    def add_stream(self, stream: BinaryIO) -> tuple[Digest, int]:
        """Store everything ``stream`` yields, hashing while writing, in constant memory."""
        self._check_writable()
        with self._writing():
            mode = self._mode()
            try:
                if mode is Durability.FULL and self._staged:
                    self.flush()
                fd, tmp = self._new_tmp()
                try:
                    try:
                        hasher = new_hasher()
                        size = 0
                        while chunk := stream.read(CHUNK_SIZE):
                            view = _byte_view(chunk, "what the stream's read() returned")
                            hasher.update(view)
                            write_all(fd, view)
                            size += view.nbytes
                        digest = finish(hasher)
                        hexd = digest[_HEX_START:]
                        present: bool | None = True
                        if not (mode is Durability.BATCH and hexd in self._staged):
                            present = self._present(digest, hexd, size)
                        if not present:
                            self._seal(fd, mode)
                    finally:
                        os.close(fd)
                    if present:
                        unlink_quietly(tmp)
                        return digest, size
                except BaseException:
                    unlink_quietly(tmp)
                    raise
                self._place(tmp, digest, size, replace=present is False, mode=mode)
            except OSError as exc:
                raise self._map_write_error(exc) from exc
            return digest, size

    def add_file(self, path: str | os.PathLike[str]) -> tuple[Digest, int]:
        """Store the contents of the file at ``path``."""
        self._check_writable()
        with open(path, "rb") as source:
            return self.add_stream(source)

    def delete(self, digest: str) -> bool:
        """Remove an object; return whether there was one. For gc only."""
        self._check_writable()
        hexd = _hex(digest)
        with self._lock:
            staged = self._staged.pop(hexd, None)
        removed = False
        if staged is not None:
            unlink_quietly(staged[0])
            removed = True
        if not self._fan(hexd[:2]):
            return removed
        try:
            os.unlink(self._target(hexd))
        except FileNotFoundError:
            return removed
        except IsADirectoryError:
            raise CorruptObjectError(
                Digest(PREFIX + hexd), "object path is a directory, not a regular file"
            ) from None
        except OSError as exc:
            raise self._map_write_error(exc) from exc
        return True

    # -- durability --------------------------------------------------------------

    def flush(self) -> None:
        """Make every object staged since the last flush durable, then visible.

        Phase 1 makes the staged files' bytes durable, phase 2 links them into
        place, phase 3 makes the new directory entries durable; so no object ever
        appears under ``objects/`` before its bytes are on disk.
        """
        if self.read_only:
            return
        with self._flush_lock:
            with self._lock:
                items = list(self._staged.items())
            if not items:
                return
            whole_fs = durable.syncfs() if len(items) >= SYNCFS_MIN else None
            try:
                if whole_fs is not None:
                    call_syncfs(whole_fs, self._tmp)
                else:
                    for _, (tmp, _size, _replace) in items:
                        fsync_path(tmp, missing_ok=True)
                fans: set[str] = set()
                created = False
                for hexd, (tmp, size, replace) in items:
                    created |= self._install(tmp, Digest(PREFIX + hexd), size, replace=replace)
                    fans.add(hexd[:2])
                if whole_fs is not None:
                    call_syncfs(whole_fs, self._objects)
                else:
                    for fan in sorted(fans):
                        fsync_dir(f"{self._objects}/{fan}")
                    if created:
                        fsync_dir(self._objects)
            except OSError as exc:
                raise self._map_write_error(exc) from exc
            with self._lock:
                for hexd, entry in items:
                    if self._staged.get(hexd) == entry:
                        del self._staged[hexd]

    @contextlib.contextmanager
    def batch(self) -> Iterator[ObjectStore]:
        """Stage objects written inside the block; flush them when it ends.

        Nested blocks are fine; every exit flushes, so objects written inside a
        block are durable once it is left (also when it is left by an exception,
        unless the flush itself fails). A ``none`` store stays ``none``.
        """
        with self._lock:
            self._depth += 1
        try:
            yield self
        except BaseException:
            self._leave_batch(raising=True)
            raise
        self._leave_batch(raising=False)

    def _leave_batch(self, *, raising: bool) -> None:
        with self._lock:
            self._depth -= 1
        if raising:
            # The block's own error is the one worth reporting; staged objects that
            # fail to flush here stay staged and are retried by the next flush.
            with contextlib.suppress(Exception):
                self.flush()
        else:
            self.flush()

    def close(self) -> None:
        """Flush staged objects. The store stays usable; closing twice is harmless.

        Once nothing is staged and no write is in progress, the lock on
        ``tmp/<owner>.lock`` is given up (the next write takes a new one).
        """
        self.flush()
        self._release_owner()

    def __enter__(self) -> ObjectStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Like an io buffer: staged objects are not silently dropped on the floor.
        if getattr(self, "_staged", None):
            with contextlib.suppress(Exception):
                self.flush()
        if getattr(self, "_owner", None) is not None:
            with contextlib.suppress(Exception):
                self._release_owner()

    # -- reading -----------------------------------------------------------------

    def open(self, digest: str, *, verify: bool = False) -> BinaryIO:
        """Open an object for reading.

        With ``verify=True`` no byte that fails the digest is ever returned: the
        object is checked before ``open`` returns, and a damaged one raises
        :class:`CorruptObjectError` here, before the caller has read anything.
        Objects of up to :data:`VERIFY_IN_MEMORY` bytes are read into memory and
        checked; larger ones are hashed in a first pass over the open file and
        then streamed from its start in a second pass, which re-hashes what it
        returns and raises at end of file if the file changed between the passes
        (possible only if someone made the read-only file writable and edited it).
        """
        parsed = parse_digest(digest)
        fd, size = self._open_object(parsed)
        if not verify:
            return os.fdopen(fd, "rb")
        if size <= VERIFY_IN_MEMORY:
            with io.FileIO(fd, "rb") as source:
                data = source.readall()
            _check_bytes(parsed, data)
            return io.BytesIO(data)
        try:
            actual, count = _hash_open(fd)
            if actual != parsed:
                raise CorruptObjectError(parsed, _mismatch(actual, count))
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        return io.BufferedReader(_VerifyingReader(fd, parsed, count), CHUNK_SIZE)

    def get(self, digest: str, *, verify: bool = False) -> bytes:
        """Return an object's bytes; ``verify=True`` re-hashes them first."""
        parsed = parse_digest(digest)
        fd, _ = self._open_object(parsed)
        with io.FileIO(fd, "rb") as source:
            data = source.readall()
        if verify:
            _check_bytes(parsed, data)
        return data

    def exists(self, digest: str) -> bool:
        """Whether the object is present (staged objects of this store count)."""
        hexd = _hex(digest)
        if hexd in self._staged:
            return True
        if not self._fan(hexd[:2]):
            return False
        try:
            st = os.lstat(self._target(hexd))
        except FileNotFoundError:
            return False
        _require_regular(st, PREFIX + hexd)
        return True

    def __contains__(self, digest: object) -> bool:
        return self.exists(parse_digest(digest))

    def size(self, digest: str) -> int:
        hexd = _hex(digest)
        staged = self._staged.get(hexd)
        if staged is not None:
            return staged[1]
        if self._fan(hexd[:2]):
            try:
                st = os.lstat(self._target(hexd))
            except FileNotFoundError:
                pass
            else:
                _require_regular(st, PREFIX + hexd)
                return st.st_size
        raise ObjectNotFound(PREFIX + hexd)

    def verify(self, digest: str) -> None:
        """Re-hash one object; raise CorruptObjectError naming it if it is damaged."""
        parsed = parse_digest(digest)
        fd, _ = self._open_object(parsed)
        actual, size = _hash_fd(fd)
        if actual != parsed:
            raise CorruptObjectError(parsed, _mismatch(actual, size))

    def resolve(self, prefix: str) -> Digest:
        """The one object whose digest starts with ``prefix`` (4 to 64 hex digits)."""
        hexp = parse_prefix(prefix)
        if len(hexp) == 64:
            full = Digest(PREFIX + hexp)
            if self.exists(full):
                return full
            raise ObjectNotFound(prefix, f"no object matches digest prefix {prefix!r}")
        matches = {hexd for hexd in list(self._staged) if hexd.startswith(hexp)}
        fan, rest = hexp[:2], hexp[2:]
        if self._fan(fan):
            with os.scandir(f"{self._objects}/{fan}") as entries:
                for entry in entries:
                    name = entry.name
                    if (
                        name.startswith(rest)
                        and _NAME.fullmatch(name)
                        and entry.is_file(follow_symlinks=False)
                    ):
                        matches.add(fan + name)
        if not matches:
            raise ObjectNotFound(prefix, f"no object matches digest prefix {prefix!r}")
        if len(matches) > 1:
            shown = ", ".join(PREFIX + hexd for hexd in sorted(matches)[:5])
            more = "" if len(matches) <= 5 else f" and {len(matches) - 5} more"
            raise AmbiguousPrefixError(
                f"digest prefix {prefix!r} is ambiguous: it matches {len(matches)} "
                f"objects ({shown}{more}); give more digits"
            )
        return Digest(PREFIX + matches.pop())

    def all(self) -> Iterator[Digest]:
        """Every object under ``objects/``, in digest order; other files are skipped."""
        for fan, entries in self._walk():
            for entry in entries:
                if _NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    yield Digest(PREFIX + fan + entry.name)

    def stats(self) -> ObjectStats:
        count = total = 0
        for _, entries in self._walk():
            for entry in entries:
                if _NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                    count += 1
                    total += entry.stat(follow_symlinks=False).st_size
        return ObjectStats(count=count, bytes=total)

    def tmp_files(self) -> list[Path]:
        """What is in ``tmp/`` but the writers' lock files: staging files of writes
        in progress and leftovers."""
        try:
            with os.scandir(self._tmp) as entries:
                return sorted(
                    Path(entry.path) for entry in entries if not _is_owner_lock(entry.name)
                )
        except FileNotFoundError:
            return []

    def collect_tmp(
        self, *, grace_seconds: float = TMP_GRACE_SECONDS, remove: bool = False
    ) -> list[TmpFile]:
        """Judge every file in ``tmp/``; with ``remove``, delete the garbage.

        Each writer (one store object in one process) names its staging files
        ``<owner>.<n>.tmp`` and holds an exclusive ``flock`` on
        ``tmp/<owner>.lock`` for as long as it may use them. A file whose
        owner's lock can be taken here, or whose lock file is gone, belongs to a
        process that is gone: it is garbage at once, whatever its age. The lock
        is held while such files are removed (the lock file last), so no new
        writer can start under that name meanwhile. Files with other names are
        garbage once older than ``grace_seconds``. This store's own staged
        files are left out.
        """
        now = time.time()
        staged = {tmp for tmp, _size, _replace in list(self._staged.values())}
        groups: dict[str | None, list[tuple[str, os.stat_result]]] = {}
        try:
            with os.scandir(self._tmp) as entries:
                listed = sorted(entries, key=lambda entry: entry.name)
        except FileNotFoundError:
            listed = []
        for entry in listed:
            if entry.path in staged:
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
            with _writer_gone(self._tmp, owner) as gone:
                for path, st in files:
                    age = now - st.st_mtime
                    if gone is None:
                        garbage = age > grace_seconds
                        reason = (
                            f"{_kind(st.st_mode)} not named after a writer, "
                            f"last modified {age:.0f} s ago"
                        )
                    elif gone:
                        garbage = True
                        reason = (
                            f"{_kind(st.st_mode)} of a write whose process is gone "
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

    def scan(
        self, *, tmp_grace_seconds: float = TMP_GRACE_SECONDS, rehash: bool = True
    ) -> Iterator[Problem]:
        """Check the whole directory for fsck, re-hashing every object if ``rehash``.

        Yields a :class:`Problem` for each damaged or misplaced thing under
        ``objects/`` and for each file in ``tmp/`` that no write can still use
        (:meth:`collect_tmp`; ``tmp_grace_seconds`` applies to files not named
        after a writer).
        Objects still staged by this store are not reported. Without
        ``rehash`` only names, file types and modes are checked.
        """
        try:
            with os.scandir(self._objects) as it:
                top = sorted(it, key=lambda entry: entry.name)
        except FileNotFoundError:
            top = []
        for entry in top:
            path = Path(entry.path)
            st = entry.stat(follow_symlinks=False)
            if not _FAN.fullmatch(entry.name):
                yield Problem(
                    "stray", path, None, f"unexpected {_kind(st.st_mode)} in {OBJECTS_DIR}/"
                )
                continue
            if not stat.S_ISDIR(st.st_mode):
                yield Problem(
                    "bad-fanout",
                    path,
                    None,
                    f"fan-out path is a {_kind(st.st_mode)}, expected a directory",
                )
                continue
            with os.scandir(entry.path) as it:
                inner = sorted(it, key=lambda item: item.name)
            for item in inner:
                yield from self._check_item(entry.name, item, rehash)
        for tmp in self.collect_tmp(grace_seconds=tmp_grace_seconds):
            if tmp.garbage:
                yield Problem("stale-tmp", tmp.path, None, tmp.reason, tmp.size)

    def _check_item(
        self, fan: str, item: os.DirEntry[str], rehash: bool = True
    ) -> Iterator[Problem]:
        path = Path(item.path)
        try:
            st = item.stat(follow_symlinks=False)
        except FileNotFoundError:  # deleted since the listing
            return
        if not _NAME.fullmatch(item.name):
            yield Problem(
                "stray",
                path,
                None,
                f"unexpected {_kind(st.st_mode)} in fan-out directory: "
                f"{item.name!r} is not an object name",
            )
            return
        digest = Digest(PREFIX + fan + item.name)
        if not stat.S_ISREG(st.st_mode):
            yield Problem("not-a-file", path, digest, f"object path is a {_kind(st.st_mode)}")
            return
        if rehash:
            try:
                fd = os.open(item.path, READ_FLAGS)
            except FileNotFoundError:  # deleted since the listing
                return
            actual, size = _hash_fd(fd)
            if actual != digest:
                yield Problem("corrupt", path, digest, _mismatch(actual, size))
                return
        if st.st_mode & 0o222:
            yield Problem(
                "writable",
                path,
                digest,
                f"mode {stat.S_IMODE(st.st_mode):04o}, objects should be read-only "
                f"({self.file_mode:04o})",
            )

    # -- internals ---------------------------------------------------------------

    def _mode(self) -> Durability:
        if self.durability is Durability.NONE:
            return Durability.NONE
        if self._depth:
            return Durability.BATCH
        return self.durability

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"object store {os.fspath(self.root)} is open read-only")

    def _map_write_error(self, exc: OSError) -> Exception:
        if exc.errno in READ_ONLY_ERRNOS:
            where = exc.filename if exc.filename is not None else os.fspath(self.root)
            return ReadOnlyStoreError(
                f"cannot write to object store {os.fspath(self.root)}: "
                f"{exc.strerror or exc} ({where})"
            )
        if exc.errno in FULL_ERRNOS:
            return storage_full(self.root, exc.strerror or str(exc))
        return exc

    def _fan(self, fan: str) -> bool:
        """Whether the fan-out directory exists; raise if something else is there."""
        if fan in self._fans:
            return True
        path = f"{self._objects}/{fan}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            raise StoreFormatError(
                f"{path} should be a fan-out directory but is a {_kind(st.st_mode)}; "
                "the store is damaged (run fsck)"
            )
        self._fans.add(fan)
        return True

    def _make_fan(self, fan: str) -> bool:
        """Create a fan-out directory; return whether this call created it."""
        path = f"{self._objects}/{fan}"
        try:
            os.mkdir(path, DIR_MODE)
            created = True
        except FileExistsError:
            created = False
        except FileNotFoundError:
            raise StoreFormatError(
                f"{self._objects} is missing; the store is damaged or was never initialised"
            ) from None
        self._fans.discard(fan)
        if not self._fan(fan):
            raise StoreFormatError(f"{path} vanished while it was being created")
        return created

    def _present(self, digest: Digest, hexd: str, size: int) -> bool | None:
        """True: a whole-looking object is there (mtime refreshed). None: absent.
        False: a file of the wrong size is there, to be replaced."""
        if not self._fan(hexd[:2]):
            return None
        target = self._target(hexd)
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            return None
        _require_regular(st, digest)
        if st.st_size != size:
            return False
        os.utime(target)
        return True

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Count a write in progress, so that close() keeps the owner lock meanwhile."""
        with self._lock:
            self._writers += 1
        try:
            yield
        finally:
            with self._lock:
                self._writers -= 1

    def _own(self) -> _Owner:
        """This store's owner lock in this process, taken on first use."""
        with self._owner_lock:
            owner = self._owner
            if owner is None or owner.pid != os.getpid():
                owner = self._owner = _take_ownership(self._tmp)
            return owner

    def _release_owner(self) -> None:
        with self._owner_lock, self._lock:
            owner = self._owner
            if owner is not None and not self._staged and not self._writers:
                self._owner = None
                owner.release()

    def _new_tmp(self) -> tuple[int, str]:
        for attempt in itertools.count():
            owner = self._own()
            name = f"{self._tmp}/{owner.prefix}.{next(_tmp_counter)}.tmp"
            try:
                return os.open(name, WRITE_FLAGS, self.file_mode), name
            except FileExistsError:
                continue
            except FileNotFoundError:
                if attempt:
                    raise
                # tmp/ was removed, and our lock file with it: recreate both once.
                _ensure_dir(self._tmp, create=True, strict=True)
                with self._owner_lock:
                    if self._owner is owner:
                        self._owner = None
                        owner.release()
        raise AssertionError("unreachable")  # pragma: no cover

    def _seal(self, fd: int, mode: Durability) -> None:
        # The umask may have narrowed the mode given to open(); objects are file_mode.
        os.fchmod(fd, self.file_mode)
        if mode is Durability.FULL:
            os.fsync(fd)

    def _place(
        self, tmp: str, digest: Digest, size: int, *, replace: bool, mode: Durability
    ) -> None:
        """Move a complete tmp file into place, or stage it in batch mode."""
        hexd = digest[_HEX_START:]
        if mode is Durability.BATCH:
            with self._lock:
                self._staged[hexd] = (tmp, size, replace)
                full = len(self._staged) >= MAX_STAGED
            if full:
                self.flush()
            return
        try:
            created = self._install(tmp, digest, size, replace=replace)
        except BaseException:
            unlink_quietly(tmp)
            raise
        if mode is Durability.FULL:
            fsync_dir(f"{self._objects}/{hexd[:2]}")
            if created:
                fsync_dir(self._objects)

    def _install(self, tmp: str, digest: Digest, size: int, *, replace: bool) -> bool:
        """Link ``tmp`` to the object path (never overwriting a good object) and
        remove ``tmp``. Return whether a fan-out directory was created."""
        hexd = digest[_HEX_START:]
        fan = hexd[:2]
        target = self._target(hexd)
        created = False
        if not self._fan(fan):
            created = self._make_fan(fan)
        for attempt in range(3):
            try:
                if replace:
                    os.replace(tmp, target)
                    return created
                linked = link(tmp, target)
            except FileNotFoundError:
                if not os.path.lexists(tmp):
                    # Installed by an earlier, interrupted flush, or taken by gc.
                    try:
                        st = os.lstat(target)
                    except FileNotFoundError:
                        raise CorruptObjectError(
                            digest,
                            f"its staged file {tmp} vanished before it was put in place "
                            "(was tmp/ cleaned while a write was in progress?)",
                        ) from None
                    _require_regular(st, digest)
                    return created
                if attempt:
                    raise
                # The fan-out directory was removed since we last saw it.
                self._fans.discard(fan)
                created |= self._make_fan(fan)
                continue
            if not linked:
                # Someone else put it there first: keep theirs unless it is damaged.
                st = os.lstat(target)
                _require_regular(st, digest)
                if st.st_size != size:
                    os.replace(tmp, target)
                    return created
                os.utime(target)
            unlink_quietly(tmp)
            return created
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_object(self, digest: Digest) -> tuple[int, int]:
        """An fd open for reading on a regular object file, and its size."""
        hexd = digest[_HEX_START:]
        staged = self._staged.get(hexd)
        if staged is not None:
            with contextlib.suppress(FileNotFoundError):  # flushed meanwhile
                return _open_regular(staged[0], digest)
        if not self._fan(hexd[:2]):
            raise ObjectNotFound(digest)
        try:
            return _open_regular(self._target(hexd), digest)
        except FileNotFoundError:
            raise ObjectNotFound(digest) from None

    def _walk(self) -> Iterator[tuple[str, list[os.DirEntry[str]]]]:
        """(fan, sorted entries) for every real fan-out directory, in order."""
        try:
            with os.scandir(self._objects) as it:
                fans = sorted(
                    (entry for entry in it if _FAN.fullmatch(entry.name)),
                    key=lambda entry: entry.name,
                )
        except FileNotFoundError:
            return
        for fan in fans:
            if not fan.is_dir(follow_symlinks=False):
                continue
            with os.scandir(fan.path) as it:
                entries = sorted(it, key=lambda entry: entry.name)
            yield fan.name, entries

    def _open_root(self, *, create: bool, adopt: bool = False) -> None:
        root = os.fspath(self.root)
        marker = os.path.join(root, STORE_MARKER)
        try:
            st = os.stat(root)
        except FileNotFoundError:
            if not create:
                raise StoreFormatError(
                    f"no kontextual store at {root}: the directory does not exist"
                ) from None
            self._make_root(root)
            st = os.stat(root)
        if not stat.S_ISDIR(st.st_mode):
            raise StoreFormatError(f"{root} is not a directory, so it cannot be a store")
        if os.path.lexists(marker):
            _check_marker(root, marker)
        elif adopt:
            self._write_marker(root, marker)
        elif not create:
            hint = ""
            if os.path.isdir(self._objects):
                hint = (
                    f"; if it is a store that lost its {STORE_MARKER}, "
                    "`kontextual init --adopt` checks it and writes the marker again"
                )
            raise StoreFormatError(
                f"{root} is not a kontextual store: {STORE_MARKER} is missing{hint}"
            )
        else:
            self._initialise(root, marker)
        has_objects = _ensure_dir(self._objects, create=create)
        has_tmp = _ensure_dir(self._tmp, create=create)
        if has_objects and has_tmp and os.lstat(self._objects).st_dev != os.lstat(self._tmp).st_dev:
            raise StoreFormatError(
                f"{self._tmp} and {self._objects} are on different filesystems; "
                "atomic writes need them on one"
            )

    def _make_root(self, root: str) -> None:
        parent = os.path.dirname(os.path.abspath(root))
        try:
            os.makedirs(parent, exist_ok=True)
            os.mkdir(root, ROOT_MODE)
        except FileExistsError:
            pass  # created concurrently
        except OSError as exc:
            raise self._map_write_error(exc) from exc

    def _initialise(self, root: str, marker: str) -> None:
        """Turn an empty directory into a store; the marker is written last."""
        entries = set(os.listdir(root))
        if STORE_MARKER in entries:  # another process initialised it meanwhile
            _check_marker(root, marker)
            return
        unexpected = sorted(entries - {OBJECTS_DIR, TMP_DIR})
        if unexpected:
            shown = ", ".join(unexpected[:5]) + (", ..." if len(unexpected) > 5 else "")
            raise StoreFormatError(
                f"{root} is not a kontextual store ({STORE_MARKER} is missing) and is "
                f"not empty ({shown}); refusing to initialise a store there"
            )
        if OBJECTS_DIR in entries:
            st = os.lstat(self._objects)
            if not stat.S_ISDIR(st.st_mode) or os.listdir(self._objects):
                raise StoreFormatError(
                    f"{root} has {OBJECTS_DIR}/ with content but no {STORE_MARKER}; "
                    "refusing to guess its format"
                )
        self._write_marker(root, marker)

    def _write_marker(self, root: str, marker: str) -> None:
        """Create objects/ and tmp/ where missing, then the marker, last and atomically."""
        try:
            _ensure_dir(self._objects, create=True, strict=True)
            _ensure_dir(self._tmp, create=True, strict=True)
            fd, tmp = self._new_tmp()
            try:
                os.write(fd, MARKER_TEXT.encode("ascii"))
                self._seal(fd, Durability.NONE)
                if self.durability is not Durability.NONE:
                    os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, marker)
            except FileExistsError:
                _check_marker(root, marker)  # initialised concurrently
            finally:
                unlink_quietly(tmp)
            if self.durability is not Durability.NONE:
                fsync_dir(root)
        except OSError as exc:
            raise self._map_write_error(exc) from exc
        finally:
            self._release_owner()


class _VerifyingReader(io.RawIOBase):
    """A raw reader that hashes what passes through and checks it at end of file."""

    def __init__(self, fd: int, digest: Digest, size: int) -> None:
        super().__init__()
        self._file = io.FileIO(fd, "rb")
        self._digest = digest
        self._size = size
        self._hasher = new_hasher()
        self._count = 0
        self._error: CorruptObjectError | None = None
        self._checked = False

    def readable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._file.fileno()

    def readinto(self, buffer: WriteableBuffer) -> int:
        count = self._file.readinto(buffer) or 0
        if count:
            with memoryview(buffer) as view:
                self._hasher.update(view[:count])
            self._count += count
            return count
        self._check()
        return 0

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._checked:
            return
        self._checked = True
        actual = finish(self._hasher)
        if actual != self._digest:
            self._error = CorruptObjectError(self._digest, _mismatch(actual, self._count))
        elif self._count != self._size:
            self._error = CorruptObjectError(
                self._digest,
                f"read {self._count} bytes but the file had {self._size} when opened",
            )
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


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
        prefix = f"{os.getpid()}.{secrets.token_hex(8)}"
        path = f"{tmp}/{prefix}{_LOCK_SUFFIX}"
        try:
            fd = os.open(path, WRITE_FLAGS, 0o444)
        except FileExistsError:
            continue
        except FileNotFoundError:
            if attempt:
                raise
            _ensure_dir(tmp, create=True, strict=True)
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


def _byte_view(data: object, what: str) -> memoryview:
    """A flat byte view of a bytes-like object, or ValidationError."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise ValidationError(f"{what} must be bytes, not {type(data).__name__}") from None
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _hex(digest: object) -> str:
    """The 64 hex digits of a validated digest: the only way a digest reaches a path."""
    return parse_digest(digest)[_HEX_START:]


def _parse_durability(value: Durability | str) -> Durability:
    try:
        return Durability(value)
    except ValueError:
        choices = ", ".join(repr(mode.value) for mode in Durability)
        raise ValidationError(f"invalid durability {value!r}: expected one of {choices}") from None


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device or special file"


def _require_regular(st: os.stat_result, digest: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CorruptObjectError(
            digest, f"object path is a {_kind(st.st_mode)}, not a regular file"
        )


def _open_regular(path: str, digest: str) -> tuple[int, int]:
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
        _require_regular(st, digest)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _hash_fd(fd: int) -> tuple[Digest, int]:
    """Hash an open file to its end in constant memory, then close it."""
    try:
        return _hash_open(fd)
    finally:
        os.close(fd)


def _hash_open(fd: int) -> tuple[Digest, int]:
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


def _check_bytes(digest: Digest, data: bytes) -> None:
    """Raise CorruptObjectError unless ``data`` hashes to ``digest``."""
    actual = digest_bytes(data)
    if actual != digest:
        raise CorruptObjectError(digest, _mismatch(actual, len(data)))


def _mismatch(actual: Digest, size: int) -> str:
    if size == 0:
        return f"the file is empty (truncated?) and hashes to {actual}"
    return f"its {size} bytes hash to {actual}"


def _check_marker(root: str, marker: str) -> None:
    try:
        fd = os.open(marker, READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreFormatError(f"{marker} is a symbolic link, not a regular file") from None
        raise StoreFormatError(f"cannot read {marker}: {exc.strerror or exc}") from exc
    # Check the type before wrapping the fd: io.FileIO refuses a directory with
    # IsADirectoryError, which is damage to report, not a crash.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StoreFormatError(f"{marker} is not a regular file")
    with io.FileIO(fd, "rb") as source:
        raw = source.read(MAX_MARKER_BYTES + 1) or b""
    if len(raw) > MAX_MARKER_BYTES:
        raise StoreFormatError(f"{marker} is implausibly large for a store marker")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise StoreFormatError(
            f"{marker} is not valid JSON ({exc}); cannot tell what store this is"
        ) from None
    if not isinstance(doc, dict):
        raise StoreFormatError(f"{marker} must hold a JSON object")
    fmt = doc.get("format")
    if fmt != STORE_FORMAT:
        raise StoreFormatError(
            f"{root} is not a kontextual store: {STORE_MARKER} names format {fmt!r}, "
            f"expected {STORE_FORMAT!r}"
        )
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreFormatError(
            f"{marker} has an invalid format version {version!r}: expected an integer >= 1"
        )
    if version > STORE_VERSION:
        raise StoreFormatError(
            f"store {root} has format version {version}, newer than version "
            f"{STORE_VERSION} that this kontextual-engine reads; upgrade kontextual-engine"
        )
    algorithm = doc.get("digest")
    if algorithm != ALGORITHM:
        raise StoreFormatError(
            f"store {root} uses digest algorithm {algorithm!r}; only {ALGORITHM!r} is supported"
        )


def _ensure_dir(path: str, *, create: bool, strict: bool = False) -> bool:
    """Whether ``path`` is a real directory, creating it if asked. A directory that
    cannot be created for lack of permission is reported as missing unless ``strict``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if not create:
            return False
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            if exc.errno in READ_ONLY_ERRNOS and not strict:
                return False  # a store on read-only media; writes will say so
            raise
        st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StoreFormatError(f"{path} is a {_kind(st.st_mode)}, expected a directory")
    return True
