"""Export: a repository written as a snapshot, verified before it is renamed into place.

Export reads through the repository contract (``export_records``), so it
works from every backend. It is deterministic: the same state gives the same
bytes (sorted lines and members, a tar with no owners or times), and so does
export -> import -> export.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sqlite3
import tarfile
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import digests
from ..errors import CorruptObjectError, DamagedStoreError, KontextualError, SnapshotError
from ..models import canonical_json
from ..storage.contract import KnowledgeRepository
from ..storage.durable import READ_FLAGS, fsync_dir, hard_link, sync_filesystem
from .format import (
    FORMAT,
    INDEX_DIR,
    KINDS,
    MANIFEST,
    VERSION,
    SnapshotSummary,
    encode_line,
    index_member,
    object_member,
)
from .restore import verify_snapshot


def export_snapshot(
    repo: KnowledgeRepository,
    destination: str | os.PathLike[str],
    *,
    tar: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SnapshotSummary:
    """Write a snapshot of ``repo`` to a new directory, or a ``.tar`` file if ``tar``.

    The snapshot is written under a temporary name beside ``destination``,
    checked with import's own checks, and only then renamed into place: a
    store whose records would not import (a damaged index) raises
    :class:`DamagedStoreError` and leaves nothing at ``destination``.
    ``progress`` is called with the number of bodies written so far.
    """
    destination = Path(destination)
    if os.path.lexists(destination) and (
        tar or destination.is_symlink() or not destination.is_dir() or any(destination.iterdir())
    ):
        raise SnapshotError(f"snapshot destination {destination} exists and is not empty")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    )
    try:
        records = _from_store(repo.export_records)
        tree = staging / "snapshot"
        summary = _export_directory(repo, records, tree, progress)
        written = tree
        if tar:
            written = staging / "snapshot.tar"
            _write_tar(tree, written)
        try:
            verify_snapshot(written)
        except SnapshotError as exc:
            raise DamagedStoreError(
                f"the store's records do not form a snapshot that imports ({exc}); nothing "
                "was exported: run `kontextual fsck` to find the damage"
            ) from exc
        # Durable before it is in place, and its name durable after: a snapshot
        # that export reported is never lost or half-written by a crash.
        sync_filesystem(staging)
        os.replace(written, destination)  # a directory replaces only an empty one
        fsync_dir(os.fspath(destination.parent))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(summary, path=destination)


_T = typing.TypeVar("_T")


def _from_store(read: Callable[[], _T]) -> _T:
    """``read()``, with a failure to read the store reported as damage (exit 5)."""
    try:
        return read()
    except (DamagedStoreError, CorruptObjectError):
        raise
    except (KontextualError, sqlite3.DatabaseError) as exc:
        raise DamagedStoreError(
            f"cannot read the store to export it: {exc}; run `kontextual fsck` to find the damage"
        ) from exc


def _export_directory(
    repo: KnowledgeRepository,
    records: dict[str, list[Any]],
    root: Path,
    progress: Callable[[int], None] | None,
) -> SnapshotSummary:
    (root / INDEX_DIR).mkdir(parents=True)
    files: dict[str, str] = {}
    for kind in KINDS:
        member = index_member(kind)
        data = "".join(encode_line(kind, item) + "\n" for item in records[kind]).encode("utf-8")
        (root / member).write_bytes(data)
        files[member] = digests.digest_bytes(data)
    body_digests = sorted({revision.digest for revision in records["revisions"]})
    total = 0
    for count, digest in enumerate(body_digests, 1):
        total += _export_body(repo, digest, root / object_member(digest))
        if progress is not None:
            progress(count)
    counts = {kind: len(records[kind]) for kind in KINDS}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "digest": digests.ALGORITHM,
        "counts": counts,
        "objects": len(body_digests),
        "files": files,
    }
    (root / MANIFEST).write_text(canonical_json(manifest) + "\n", encoding="utf-8")
    return SnapshotSummary(root, counts, len(body_digests), total)


def _export_body(repo: KnowledgeRepository, digest: str, target: Path) -> int:
    """Put the body ``digest`` at ``target``: a hard link to the store's file where
    there is one and linking works, else a copy through the repository; return its size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    source = _from_store(lambda: repo.object_path(digest))
    if source is not None and hard_link(os.fspath(source), os.fspath(target)):
        # A link copies no bytes, so nothing has checked them yet: a snapshot
        # must not carry a damaged body silently.
        with open(os.open(target, READ_FLAGS), "rb") as reader:
            actual, size = digests.digest_stream(reader)
        if actual != digest:
            raise CorruptObjectError(
                digest,
                f"its {size} bytes hash to {actual}; refusing to export it "
                "(run `kontextual fsck` to find the damage)",
            )
        return size
    # open_object of a backend that keeps bodies in files verifies as it reads.
    with _from_store(lambda: repo.open_object(digest)) as reader, open(target, "wb") as writer:
        _from_store(lambda: shutil.copyfileobj(reader, writer, digests.CHUNK_SIZE))
        return writer.tell()


def _write_tar(root: Path, destination: Path) -> None:
    """A deterministic tar: sorted members, no owners, no times, fixed modes."""
    members = sorted(path for path in root.rglob("*"))
    with tarfile.open(destination, "w", format=tarfile.USTAR_FORMAT) as archive:
        for path in members:
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            else:
                info.mode = 0o644
                info.size = path.stat().st_size
                with open(path, "rb") as body:
                    archive.addfile(info, body)
