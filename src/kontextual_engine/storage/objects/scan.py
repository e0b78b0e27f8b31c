"""The scan behind fsck: everything under ``objects/`` that is damaged or misplaced.

Each finding is a :class:`Problem`. Files in ``tmp/`` are judged by
:meth:`Staging.collect <kontextual_engine.storage.objects.staging.Staging.collect>`;
:meth:`ObjectStore.scan` reports the garbage among them as ``stale-tmp``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ...digests import Digest
from ..durable import READ_FLAGS
from .layout import FAN, NAME, OBJECTS_DIR, digest_at, kind
from .reader import hash_fd, mismatch

ProblemKind = Literal["corrupt", "not-a-file", "writable", "stray", "bad-fanout", "stale-tmp"]


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


def scan_objects(objects: str, *, file_mode: int, rehash: bool = True) -> Iterator[Problem]:
    """Check every entry under the ``objects`` directory, in name order.

    Yields a :class:`Problem` for each damaged or misplaced thing; with
    ``rehash`` every object is re-hashed, without it only names, file types
    and modes are checked. ``file_mode`` is the mode objects should have (a
    ``writable`` finding names it).
    """
    try:
        with os.scandir(objects) as it:
            top = sorted(it, key=lambda entry: entry.name)
    except FileNotFoundError:
        top = []
    for entry in top:
        path = Path(entry.path)
        st = entry.stat(follow_symlinks=False)
        if not FAN.fullmatch(entry.name):
            yield Problem("stray", path, None, f"unexpected {kind(st.st_mode)} in {OBJECTS_DIR}/")
            continue
        if not stat.S_ISDIR(st.st_mode):
            yield Problem(
                "bad-fanout",
                path,
                None,
                f"fan-out path is a {kind(st.st_mode)}, expected a directory",
            )
            continue
        with os.scandir(entry.path) as it:
            inner = sorted(it, key=lambda item: item.name)
        for item in inner:
            yield from _check_item(entry.name, item, rehash, file_mode)


def _check_item(
    fan: str, item: os.DirEntry[str], rehash: bool, file_mode: int
) -> Iterator[Problem]:
    path = Path(item.path)
    try:
        st = item.stat(follow_symlinks=False)
    except FileNotFoundError:  # deleted since the listing
        return
    if not NAME.fullmatch(item.name):
        yield Problem(
            "stray",
            path,
            None,
            f"unexpected {kind(st.st_mode)} in fan-out directory: "
            f"{item.name!r} is not an object name",
        )
        return
    digest = digest_at(fan, item.name)
    if not stat.S_ISREG(st.st_mode):
        yield Problem("not-a-file", path, digest, f"object path is a {kind(st.st_mode)}")
        return
    if rehash:
        try:
            fd = os.open(item.path, READ_FLAGS)
        except FileNotFoundError:  # deleted since the listing
            return
        actual, size = hash_fd(fd)
        if actual != digest:
            yield Problem("corrupt", path, digest, mismatch(actual, size))
            return
    if st.st_mode & 0o222:
        yield Problem(
            "writable",
            path,
            digest,
            f"mode {stat.S_IMODE(st.st_mode):04o}, objects should be read-only ({file_mode:04o})",
        )
