"""The on-disk layout of a store: names, modes, digest <-> path, and the format marker.

Specified in ``docs/store-format.md`` (store format version 1)::

    <root>/kontextual.json        {"format": "kontextual-store", "version": 1, "digest": "blake3"}
    <root>/objects/ab/cdef...     the raw bytes whose BLAKE3 is blake3:abcdef...
    <root>/tmp/                   staging for atomic writes (see staging.py)

A digest becomes a path only through :func:`digest_hex`, which validates it
first with :func:`~kontextual_engine.digests.parse_digest`; nothing else ever
becomes a path.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import stat
from collections.abc import Callable

from ...digests import ALGORITHM, PREFIX, Digest, parse_digest
from ...errors import CorruptObjectError, StoreFormatError, ValidationError
from ..durable import (
    READ_FLAGS,
    READ_ONLY_ERRNOS,
    fsync_dir,
    fsync_file,
    link,
    unlink_quietly,
    write_all,
)

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
# The marker is a few dozen bytes; refuse to slurp anything absurd.
MAX_MARKER_BYTES = 1 << 16

# A store holds private documents: only its owner may list or read it.
ROOT_MODE = 0o700
# Directories inside the root: the root's 0700 already gates access, and 0755 keeps
# a store readable by others once its owner deliberately opens up the root.
DIR_MODE = 0o755
# Objects never change once written; read-only files stop tools that open for
# writing from editing them by accident.
FILE_MODE = 0o444

# A fan-out directory: the first 2 hex digits of a digest.
FAN = re.compile(r"[0-9a-f]{2}")
# An object file in a fan-out directory: the remaining 62 hex digits.
NAME = re.compile(r"[0-9a-f]{62}")
# Where the hex digits of a canonical digest start.
HEX_START = len(PREFIX)


def digest_hex(digest: object) -> str:
    """The 64 hex digits of a validated digest: the only way a digest reaches a path."""
    return parse_digest(digest)[HEX_START:]


def digest_at(fan: str, name: str) -> Digest:
    """The digest of the object file ``name`` in the fan-out directory ``fan``
    (both already matched by :data:`FAN` and :data:`NAME`): the inverse of
    :func:`object_path`."""
    return Digest(PREFIX + fan + name)


# What a file is, for messages, by the first test its mode passes.
_KINDS = (
    (stat.S_ISREG, "regular file"),
    (stat.S_ISDIR, "directory"),
    (stat.S_ISLNK, "symbolic link"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


def kind(mode: int) -> str:
    """What a file of ``mode`` is, for messages: ``regular file``, ``FIFO``..."""
    return next((name for test, name in _KINDS if test(mode)), "special file")


def require_regular(st: os.stat_result, digest: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise CorruptObjectError(digest, f"object path is a {kind(st.st_mode)}, not a regular file")


def check_marker(root: str, marker: str) -> None:
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


def ensure_dir(path: str, *, create: bool, strict: bool = False) -> bool:
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
        raise StoreFormatError(f"{path} is a {kind(st.st_mode)}, expected a directory")
    return True


def object_path(objects: str, hexd: str) -> str:
    """The path of the object with hex digits ``hexd`` (from :func:`digest_hex`)
    under the ``objects`` directory: ``objects/<2 hex>/<62 hex>``."""
    return f"{objects}/{hexd[:2]}/{hexd[2:]}"


def write_marker(root: str, fd: int, tmp: str, *, mode: int, sync: bool) -> None:
    """Write the marker of ``root`` through the fresh staging file ``fd`` (at
    ``tmp``, on the filesystem of ``root``) and link it into place; close ``fd``
    and remove ``tmp``.

    The marker appears whole or not at all. If another process wrote it
    meanwhile, theirs is kept and checked. With ``sync``, the marker's bytes
    and its directory entry are made durable.
    """
    marker = os.path.join(root, STORE_MARKER)
    try:
        try:
            write_all(fd, memoryview(MARKER_TEXT.encode("ascii")))
            # The umask may have narrowed the mode given to open().
            os.fchmod(fd, mode)
            if sync:
                fsync_file(fd)
        finally:
            os.close(fd)
        if not link(tmp, marker):
            check_marker(root, marker)  # initialised concurrently
    finally:
        unlink_quietly(tmp)
    if sync:
        fsync_dir(root)


def check_file_mode(file_mode: object) -> int:
    """``file_mode`` if it is a valid mode for object files, else ValidationError."""
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
    return file_mode


def open_root(
    root: str,
    *,
    create: bool,
    adopt: bool,
    write_marker: Callable[[], None],
    map_error: Callable[[OSError], Exception],
) -> None:
    """Check that ``root`` is a store of a format this version reads.

    With ``create``, a missing or empty directory is made a store (the marker
    written last, by ``write_marker``); with ``adopt``, the marker of a store
    that lost it is written again (the caller has checked that it is a store).
    Anything else raises :class:`StoreFormatError`. ``map_error`` turns an
    OSError of creating the root into the error to raise.
    """
    marker = os.path.join(root, STORE_MARKER)
    objects = os.path.join(root, OBJECTS_DIR)
    tmp = os.path.join(root, TMP_DIR)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        if not create:
            raise StoreFormatError(
                f"no kontextual store at {root}: the directory does not exist"
            ) from None
        _make_root(root, map_error)
        st = os.stat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise StoreFormatError(f"{root} is not a directory, so it cannot be a store")
    if os.path.lexists(marker):
        check_marker(root, marker)
    elif adopt:
        write_marker()
    elif not create:
        hint = ""
        if os.path.isdir(objects):
            hint = (
                f"; if it is a store that lost its {STORE_MARKER}, "
                "`kontextual init --adopt` checks it and writes the marker again"
            )
        raise StoreFormatError(f"{root} is not a kontextual store: {STORE_MARKER} is missing{hint}")
    elif _initialisable(root, marker, objects):
        write_marker()
    has_objects = ensure_dir(objects, create=create)
    has_tmp = ensure_dir(tmp, create=create)
    if has_objects and has_tmp and os.lstat(objects).st_dev != os.lstat(tmp).st_dev:
        raise StoreFormatError(
            f"{tmp} and {objects} are on different filesystems; atomic writes need them on one"
        )


def _make_root(root: str, map_error: Callable[[OSError], Exception]) -> None:
    parent = os.path.dirname(os.path.abspath(root))
    try:
        os.makedirs(parent, exist_ok=True)
        os.mkdir(root, ROOT_MODE)
    except FileExistsError:
        pass  # created concurrently
    except OSError as exc:
        raise map_error(exc) from exc


def _initialisable(root: str, marker: str, objects: str) -> bool:
    """Whether ``root`` (without a marker) may be turned into a store: True if
    it is empty, False if another process initialised it meanwhile; anything
    else is refused."""
    entries = set(os.listdir(root))
    if STORE_MARKER in entries:  # another process initialised it meanwhile
        check_marker(root, marker)
        return False
    unexpected = sorted(entries - {OBJECTS_DIR, TMP_DIR})
    if unexpected:
        shown = ", ".join(unexpected[:5]) + (", ..." if len(unexpected) > 5 else "")
        raise StoreFormatError(
            f"{root} is not a kontextual store ({STORE_MARKER} is missing) and is "
            f"not empty ({shown}); refusing to initialise a store there"
        )
    if OBJECTS_DIR in entries:
        st = os.lstat(objects)
        if not stat.S_ISDIR(st.st_mode) or os.listdir(objects):
            raise StoreFormatError(
                f"{root} has {OBJECTS_DIR}/ with content but no {STORE_MARKER}; "
                "refusing to guess its format"
            )
    return True
