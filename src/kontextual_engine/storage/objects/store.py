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

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ...digests import (
    CHUNK_SIZE,
    PREFIX,
    Digest,
    finish,
    new_hasher,
    one_match,
    parse_digest,
    parse_prefix,
)
from ...errors import (
    CorruptObjectError,
    ObjectNotFound,
    ReadOnlyStoreError,
    ValidationError,
)
from .. import durable
from ..durable import (
    Durability,
    call_syncfs,
    fsync_dir,
    fsync_file,
    fsync_path,
    link_or_copy,
    parse_durability,
    unlink_quietly,
    write_all,
    write_error,
)
from .directory import ObjectDirectory
from .layout import (
    FILE_MODE,
    HEX_START,
    OBJECTS_DIR,
    TMP_DIR,
    check_file_mode,
    digest_at,
    digest_hex,
    ensure_dir,
    open_root,
    require_regular,
    write_marker,
)
from .reader import check_bytes, hash_fd, mismatch, open_regular, open_verified
from .scan import Problem, scan_objects
from .staging import TMP_GRACE_SECONDS, Staging, TmpFile

__all__ = ["MAX_STAGED", "SYNCFS_MIN", "ObjectStats", "ObjectStore"]

# A batch flushes early once this many objects are staged: it bounds memory and the
# size of tmp/, and an early flush never weakens the guarantee.
MAX_STAGED = 10_000
# Below this many staged files, flush() fsyncs each one; from here on one syncfs(2)
# per phase is far cheaper, at the price of also flushing unrelated dirty data of
# the same filesystem, which is why small batches do not use it.
SYNCFS_MIN = 16


@dataclass(frozen=True)
class ObjectStats:
    count: int
    bytes: int


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
        self.durability = parse_durability(durability)
        self.read_only = bool(read_only)
        self.file_mode = check_file_mode(file_mode)
        base = os.fspath(self.root)
        self._objects = os.path.join(base, OBJECTS_DIR)
        self._tmp = os.path.join(base, TMP_DIR)
        self._dir = ObjectDirectory(self._objects)
        self._lock = threading.Lock()  # guards _staged and _depth
        self._flush_lock = threading.Lock()  # one flush at a time
        self._depth = 0  # nesting of batch() blocks
        # hex -> (tmp path, size, replace): objects written but not yet in place.
        self._staged: dict[str, tuple[str, int, bool]] = {}
        self._staging = Staging(self._tmp)  # our staging files and the lock marking them in use
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
        hexd = digest_hex(digest)
        return self.root / OBJECTS_DIR / hexd[:2] / hexd[2:]

    # -- writing -----------------------------------------------------------------

    def add(self, data: bytes) -> Digest:
        """Store ``data``; return its digest. Existing objects are not rewritten."""
        self._check_writable()
        with self._writing():
            view = byte_view(data, "object data")
            hasher = new_hasher()
            hasher.update(view)
            digest = finish(hasher)
            hexd = digest[HEX_START:]
            size = view.nbytes
            mode = self._mode()
            try:
                if mode is Durability.BATCH and hexd in self._staged:
                    return digest
                if mode is Durability.FULL and self._staged:
                    self.flush()
                # One lstat settles the common dedup case before any file is created.
                present = self._dir.present(digest, hexd, size)
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
                            view = byte_view(chunk, "what the stream's read() returned")
                            hasher.update(view)
                            write_all(fd, view)
                            size += view.nbytes
                        digest = finish(hasher)
                        hexd = digest[HEX_START:]
                        present: bool | None = True
                        if not (mode is Durability.BATCH and hexd in self._staged):
                            present = self._dir.present(digest, hexd, size)
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

    def add_link(self, source: str | os.PathLike[str], digest: str) -> int:
        """Put the file ``source``, which holds the object ``digest``, into this
        store as it is (not re-hashed): a hard link, or a copy where linking
        fails; return its size. For copying a store (backup).

        A copy is staged in ``tmp/`` and linked into place whole. An object
        already present is kept. In ``full`` mode the file and its directory
        entry are fsynced before this returns; otherwise nothing is (and
        :meth:`flush` does not know of it): the caller makes the lot durable,
        as backup does with one :func:`~kontextual_engine.storage.durable.sync_filesystem`.
        """
        self._check_writable()
        hexd = digest_hex(digest)
        fan = hexd[:2]
        target = self._dir.target(hexd)
        with self._writing():
            try:
                created = False if self._dir.fan(fan) else self._dir.make_fan(fan)
                try:
                    size = link_or_copy(
                        os.fspath(source), target, new_file=self._new_tmp, mode=self.file_mode
                    )
                except FileExistsError:
                    st = os.lstat(target)
                    require_regular(st, PREFIX + hexd)
                    return st.st_size
                if self._mode() is Durability.FULL:
                    fsync_path(target)
                    fsync_dir(f"{self._objects}/{fan}")
                    if created:
                        fsync_dir(self._objects)
            except OSError as exc:
                raise self._map_write_error(exc) from exc
        return size

    def delete(self, digest: str) -> bool:
        """Remove an object; return whether there was one. For gc only."""
        self._check_writable()
        hexd = digest_hex(digest)
        with self._lock:
            staged = self._staged.pop(hexd, None)
        removed = False
        if staged is not None:
            unlink_quietly(staged[0])
            removed = True
        if not self._dir.fan(hexd[:2]):
            return removed
        try:
            os.unlink(self._dir.target(hexd))
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
                    created |= self._dir.install(tmp, Digest(PREFIX + hexd), size, replace=replace)
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
        if getattr(self, "_staging", None) is not None:
            with contextlib.suppress(Exception):
                self._release_owner()

    # -- reading -----------------------------------------------------------------

    def open(self, digest: str, *, verify: bool = False) -> BinaryIO:
        """Open an object for reading.

        With ``verify=True`` no byte that fails the digest is ever returned: the
        object is checked before ``open`` returns, and a damaged one raises
        :class:`CorruptObjectError` here, before the caller has read anything
        (see :func:`~kontextual_engine.storage.objects.reader.open_verified`).
        """
        parsed = parse_digest(digest)
        fd, size = self._open_object(parsed)
        if not verify:
            return os.fdopen(fd, "rb")
        return open_verified(fd, parsed, size)

    def get(self, digest: str, *, verify: bool = False) -> bytes:
        """Return an object's bytes; ``verify=True`` re-hashes them first."""
        parsed = parse_digest(digest)
        fd, _ = self._open_object(parsed)
        with io.FileIO(fd, "rb") as source:
            data = source.readall()
        if verify:
            check_bytes(parsed, data)
        return data

    def exists(self, digest: str) -> bool:
        """Whether the object is present (staged objects of this store count)."""
        hexd = digest_hex(digest)
        if hexd in self._staged:
            return True
        if not self._dir.fan(hexd[:2]):
            return False
        try:
            st = os.lstat(self._dir.target(hexd))
        except FileNotFoundError:
            return False
        require_regular(st, PREFIX + hexd)
        return True

    def __contains__(self, digest: object) -> bool:
        return self.exists(parse_digest(digest))

    def size(self, digest: str) -> int:
        hexd = digest_hex(digest)
        staged = self._staged.get(hexd)
        if staged is not None:
            return staged[1]
        if self._dir.fan(hexd[:2]):
            try:
                st = os.lstat(self._dir.target(hexd))
            except FileNotFoundError:
                pass
            else:
                require_regular(st, PREFIX + hexd)
                return st.st_size
        raise ObjectNotFound(PREFIX + hexd)

    def verify(self, digest: str) -> None:
        """Re-hash one object; raise CorruptObjectError naming it if it is damaged."""
        parsed = parse_digest(digest)
        fd, _ = self._open_object(parsed)
        actual, size = hash_fd(fd)
        if actual != parsed:
            raise CorruptObjectError(parsed, mismatch(actual, size))

    def resolve(self, prefix: str) -> Digest:
        """The one object whose digest starts with ``prefix`` (4 to 64 hex digits)."""
        hexp = parse_prefix(prefix)
        if len(hexp) == 64:
            full = Digest(PREFIX + hexp)
            if self.exists(full):
                return full
            raise ObjectNotFound(prefix, f"no object matches digest prefix {prefix!r}")
        matches = {hexd for hexd in list(self._staged) if hexd.startswith(hexp)}
        return one_match(prefix, matches | self._dir.matches(hexp))

    def all(self) -> Iterator[Digest]:
        """Every object under ``objects/``, in digest order; other files are skipped."""
        for fan, entry in self._dir.entries():
            yield digest_at(fan, entry.name)

    def stats(self) -> ObjectStats:
        count = total = 0
        for _, entry in self._dir.entries():
            count += 1
            total += entry.stat(follow_symlinks=False).st_size
        return ObjectStats(count=count, bytes=total)

    def tmp_files(self) -> list[Path]:
        """What is in ``tmp/`` but the writers' lock files: staging files of writes
        in progress and leftovers."""
        return self._staging.files()

    def collect_tmp(
        self, *, grace_seconds: float = TMP_GRACE_SECONDS, remove: bool = False
    ) -> list[TmpFile]:
        """Judge every file in ``tmp/``; with ``remove``, delete the garbage.

        A file whose writer's process is gone is garbage at once, whatever its
        age; one not named after a writer is garbage once older than
        ``grace_seconds`` (see :meth:`Staging.collect
        <kontextual_engine.storage.objects.staging.Staging.collect>`). This
        store's own staged files are left out.
        """
        staged = {tmp for tmp, _size, _replace in list(self._staged.values())}
        return self._staging.collect(grace_seconds=grace_seconds, remove=remove, exclude=staged)

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
        yield from scan_objects(self._objects, file_mode=self.file_mode, rehash=rehash)
        for tmp in self.collect_tmp(grace_seconds=tmp_grace_seconds):
            if tmp.garbage:
                yield Problem("stale-tmp", tmp.path, None, tmp.reason, tmp.size)

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
        return write_error(exc, self.root, "object store")

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

    def _release_owner(self) -> None:
        """Give up the lock on ``tmp/<owner>.lock`` once nothing is staged and no
        write is in progress."""
        with self._lock:
            if not self._staged and not self._writers:
                self._staging.release()

    def _new_tmp(self) -> tuple[int, str]:
        return self._staging.new_file(self.file_mode)

    def _seal(self, fd: int, mode: Durability) -> None:
        # The umask may have narrowed the mode given to open(); objects are file_mode.
        os.fchmod(fd, self.file_mode)
        if mode is Durability.FULL:
            fsync_file(fd)

    def _place(
        self, tmp: str, digest: Digest, size: int, *, replace: bool, mode: Durability
    ) -> None:
        """Move a complete tmp file into place, or stage it in batch mode."""
        hexd = digest[HEX_START:]
        if mode is Durability.BATCH:
            with self._lock:
                self._staged[hexd] = (tmp, size, replace)
                full = len(self._staged) >= MAX_STAGED
            if full:
                self.flush()
            return
        try:
            created = self._dir.install(tmp, digest, size, replace=replace)
        except BaseException:
            unlink_quietly(tmp)
            raise
        if mode is Durability.FULL:
            fsync_dir(f"{self._objects}/{hexd[:2]}")
            if created:
                fsync_dir(self._objects)

    def _open_object(self, digest: Digest) -> tuple[int, int]:
        """An fd open for reading on a regular object file, and its size."""
        hexd = digest[HEX_START:]
        staged = self._staged.get(hexd)
        if staged is not None:
            with contextlib.suppress(FileNotFoundError):  # flushed meanwhile
                return open_regular(staged[0], digest)
        if not self._dir.fan(hexd[:2]):
            raise ObjectNotFound(digest)
        try:
            return open_regular(self._dir.target(hexd), digest)
        except FileNotFoundError:
            raise ObjectNotFound(digest) from None

    def _open_root(self, *, create: bool, adopt: bool = False) -> None:
        open_root(
            os.fspath(self.root),
            create=create,
            adopt=adopt,
            write_marker=self._write_marker,
            map_error=self._map_write_error,
        )

    def _write_marker(self) -> None:
        """Create objects/ and tmp/ where missing, then the marker, last and atomically."""
        try:
            ensure_dir(self._objects, create=True, strict=True)
            ensure_dir(self._tmp, create=True, strict=True)
            fd, tmp = self._new_tmp()
            write_marker(
                os.fspath(self.root),
                fd,
                tmp,
                mode=self.file_mode,
                sync=self.durability is not Durability.NONE,
            )
        except OSError as exc:
            raise self._map_write_error(exc) from exc
        finally:
            self._release_owner()


def byte_view(data: object, what: str) -> memoryview:
    """A flat byte view of a bytes-like object, or ValidationError."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise ValidationError(f"{what} must be bytes, not {type(data).__name__}") from None
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view
