"""Import: every check of a snapshot before anything is written, then one restore.

:func:`verify_snapshot` runs them all and writes nothing; :func:`import_snapshot`
then restores the records into an empty repository, all or nothing, streaming
each body from the snapshot. The checks, in order: the manifest; each index
file's hash and count, then its records field by field (``format.decode_line``;
a version-1 snapshot's records read as version 2's, ``version1.as_version_2``);
the records against every rule of the API (``replay.check_records``); every
body present, referenced and whole, of the size its revisions record.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import digests
from ..errors import KontextualError, SnapshotError
from ..storage.contract import KnowledgeRepository
from .format import (
    FORMAT,
    KINDS,
    MANIFEST,
    MAX_LINE_BYTES,
    MAX_MANIFEST_BYTES,
    VERSION,
    SnapshotSummary,
    decode_line,
    index_member,
    index_members,
    kinds_of,
    object_member,
)
from .reading import Source, open_source, read_bounded, read_lines
from .replay import check_records
from .version1 import as_version_2


def import_snapshot(
    source: str | os.PathLike[str],
    repo: KnowledgeRepository,
    *,
    progress: Callable[[int], None] | None = None,
) -> SnapshotSummary:
    """Verify a snapshot (directory or ``.tar``) and restore it into empty ``repo``.

    Bodies are streamed from the snapshot (a tar is read in place, never
    extracted), so memory stays bounded whatever their size.
    """
    source = Path(source)
    if not repo.is_empty():
        raise SnapshotError("import needs an empty repository; the target already has records")
    with open_source(source) as snapshot:
        records, sizes = _load(snapshot, progress)
        try:
            repo.restore(records, lambda digest: snapshot.open(object_member(digest))[0])
        except SnapshotError:
            raise
        except KontextualError as exc:
            # Something the checks missed and the repository refused (restore is
            # all or nothing): still a bad snapshot, not a bad repository.
            raise SnapshotError(f"the repository refused the snapshot's records: {exc}") from exc
    return _summary(source, records, sizes)


def verify_snapshot(source: str | os.PathLike[str]) -> SnapshotSummary:
    """Run every check of :func:`import_snapshot` without importing."""
    source = Path(source)
    with open_source(source) as snapshot:
        records, sizes = _load(snapshot, None)
    return _summary(source, records, sizes)


def _summary(path: Path, records: dict[str, list[Any]], sizes: dict[str, int]) -> SnapshotSummary:
    counts = {kind: len(records[kind]) for kind in KINDS}
    return SnapshotSummary(path, counts, len(sizes), sum(sizes.values()))


def _load(
    source: Source, progress: Callable[[int], None] | None
) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """Every check import makes before it writes: the records and each body's size."""
    manifest = _read_manifest(source)
    version = manifest["version"]
    stray = sorted(source.files - {MANIFEST} - index_members(version))
    if stray:
        raise SnapshotError(f"snapshot version {version} holds {stray[0]}, not a file of it")
    records = {kind: _read_index(source, kind, manifest) for kind in kinds_of(version)}
    if version == 1:
        records = as_version_2(records)
    check_records(records)
    body_digests = sorted({revision.digest for revision in records["revisions"]})
    sizes = _check_objects(source, body_digests, manifest["objects"], progress)
    for revision in records["revisions"]:
        if revision.size != sizes[revision.digest]:
            raise SnapshotError(
                f"revision {revision.revision} of {revision.artifact_id} records size "
                f"{revision.size}, its body {revision.digest} has {sizes[revision.digest]} bytes"
            )
    return records, sizes


def _read_manifest(source: Source) -> dict[str, Any]:
    data = read_bounded(source, MANIFEST, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):
        raise SnapshotError(f"{MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"not a kontextual snapshot ({MANIFEST} format)")
    version = manifest.get("version")
    if not _is_count(version) or version > VERSION or version < 1:
        raise SnapshotError(
            f"snapshot version {version!r} is not supported (this reads versions 1 to {VERSION})"
        )
    if manifest.get("digest") != digests.ALGORITHM:
        raise SnapshotError(f"snapshot digest {manifest.get('digest')!r} is not blake3")
    files, counts = manifest.get("files"), manifest.get("counts")
    members, kinds = index_members(version), kinds_of(version)
    if (
        not isinstance(files, dict)
        or set(files) != members
        or not all(isinstance(value, str) for value in files.values())
    ):
        raise SnapshotError(
            f"{MANIFEST} of version {version} must list exactly the files {sorted(members)}"
        )
    if (
        not isinstance(counts, dict)
        or set(counts) != set(kinds)
        or not all(_is_count(value) for value in counts.values())
    ):
        raise SnapshotError(
            f"{MANIFEST} of version {version} must count every kind {sorted(kinds)}"
        )
    if not _is_count(manifest.get("objects")):
        raise SnapshotError(f"{MANIFEST} must count its objects")
    return manifest


def _is_count(value: object) -> typing.TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_index(source: Source, kind: str, manifest: dict[str, Any]) -> list[Any]:
    """One index file: its hash and count checked first (one pass), then parsed (another)."""
    member = index_member(kind)
    hasher = digests.new_hasher()
    count = 0
    for line in read_lines(source, member, MAX_LINE_BYTES):
        hasher.update(line)
        count += 1
    if digests.finish(hasher) != manifest["files"][member]:
        raise SnapshotError(f"{member} does not match its hash in {MANIFEST}")
    if count != manifest["counts"][kind]:
        raise SnapshotError(
            f"{member} has {count} records, {MANIFEST} says {manifest['counts'][kind]}"
        )
    items = []
    for number, line in enumerate(read_lines(source, member, MAX_LINE_BYTES), 1):
        try:
            text = line[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise SnapshotError(f"{member}:{number} is not UTF-8") from None
        items.append(decode_line(kind, text, f"{member}:{number}", manifest["version"]))
    return items


def _check_objects(
    source: Source, wanted: list[str], declared: int, progress: Callable[[int], None] | None
) -> dict[str, int]:
    """Check every wanted body is there, whole; return each one's size."""
    missing = sorted(set(wanted) - source.objects)
    if missing:
        raise SnapshotError(
            f"snapshot is missing object {missing[0]} ({len(missing)} missing in all)"
        )
    extra = sorted(source.objects - set(wanted))
    if extra:
        raise SnapshotError(f"snapshot object {extra[0]} is referenced by no revision")
    if declared != len(wanted):
        raise SnapshotError(f"{MANIFEST} says {declared} objects, the snapshot has {len(wanted)}")
    sizes: dict[str, int] = {}
    for count, digest in enumerate(wanted, 1):
        reader, _ = source.open(object_member(digest))
        with reader:
            actual, sizes[digest] = digests.digest_stream(reader)
        if actual != digest:
            raise SnapshotError(f"snapshot object {digest} is corrupt: its bytes hash to {actual}")
        if progress is not None:
            progress(count)
    return sizes
