"""Snapshots: a whole repository as a directory (or one ``.tar``), any backend.

Layout, version 1 (see ``docs/snapshot-format.md``)::

    snapshot.json          format, version, counts, BLAKE3 of every index file
    index/<kind>.jsonl     one canonical JSON record a line, in sequence order
    objects/ab/cdef...     every body that any revision references

Export reads through the repository contract (``export_records``), so it
works from every backend. It is deterministic: the same state gives the same
bytes, and so does export -> import -> export. Import verifies everything
(index hashes, every body's digest, every reference, every id) before it
writes anything, then restores all or nothing into an empty repository.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
import shutil
import tarfile
import tempfile
import types
import typing
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from . import digests
from .errors import CorruptObjectError, KontextualError, SnapshotError
from .models import (
    MAX_JSON_INT,
    MIN_JSON_INT,
    Artifact,
    ArtifactRef,
    ArtifactRevision,
    ChangeRecord,
    Collection,
    ContextPackage,
    ContextReference,
    ExternalMemoryReference,
    InputBundle,
    OperationRun,
    Relationship,
    RunManifest,
    WorkflowStep,
    canonical_dumps,
    canonical_json,
    format_time,
    parse_time,
)
from .storage.contract import KnowledgeRepository

FORMAT = "kontextual-snapshot"
VERSION = 1
MANIFEST = "snapshot.json"

# Every kind, in the order files are written and checked. Collections and
# artifacts carry a ``deleted_at`` beside their fields.
KINDS: dict[str, type] = {
    "collections": Collection,
    "artifacts": Artifact,
    "revisions": ArtifactRevision,
    "relationships": Relationship,
    "changes": ChangeRecord,
    "runs": OperationRun,
    "steps": WorkflowStep,
    "bundles": InputBundle,
    "manifests": RunManifest,
    "context_packages": ContextPackage,
    "external_references": ExternalMemoryReference,
}
_WITH_DELETION = ("collections", "artifacts")
_OBJECT_MEMBER = re.compile(r"objects/[0-9a-f]{2}/[0-9a-f]{62}")
_INDEX_MEMBER = re.compile(r"index/([a-z_]+)\.jsonl")
# Copy chunk for bodies that cannot be hard-linked.
_CHUNK = 1 << 20


# -- records <-> JSON ------------------------------------------------------


def record_to_json(record: Any) -> dict[str, Any]:
    """A record as a JSON object: ``*_json`` fields inlined, times as text."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name.endswith("_json"):
            out[field.name.removesuffix("_json")] = json.loads(value)
        elif isinstance(value, datetime):
            out[field.name] = format_time(value)
        elif isinstance(value, tuple):
            out[field.name] = [
                record_to_json(item) if dataclasses.is_dataclass(item) else item for item in value
            ]
        else:
            out[field.name] = value
    return out


# Converts one JSON value of a field (the second argument names the field
# for errors) into the field's value; NO_MATCH when the value has another type.
_Convert = Callable[[Any, str], Any]
_NO_MATCH = object()


@functools.cache
def _readers(cls: type) -> tuple[tuple[str, str, _Convert], ...]:
    """Each field of a record class: its name, its JSON key and its converter.

    Built once per class: resolving field types per record cost more than
    parsing the line.
    """
    hints = typing.get_type_hints(cls)
    return tuple(
        (field.name, field.name.removesuffix("_json"), _converter(field.name, hints[field.name]))
        for field in dataclasses.fields(cls)
    )


def record_from_json(cls: type, data: object, where: str) -> Any:
    """The inverse of :func:`record_to_json`, checking every field's type."""
    if not isinstance(data, dict):
        raise SnapshotError(f"{where}: expected a JSON object")
    readers = _readers(cls)
    if len(data) != len(readers) or any(key not in data for _, key, _ in readers):
        expected = {key for _, key, _ in readers}
        extra, missing = sorted(set(data) - expected), sorted(expected - set(data))
        raise SnapshotError(f"{where}: unexpected fields {extra}, missing fields {missing}")
    return cls(
        **{name: convert(data[key], where + f": field {key!r}") for name, key, convert in readers}
    )


def _converter(name: str, hint: Any) -> _Convert:
    if name.endswith("_json"):
        return _json_object
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    nullable = type(None) in options
    tries = [_option(option) for option in options if option is not type(None)]

    def convert(value: Any, where: str) -> Any:
        if value is None:
            if nullable:
                return None
            raise SnapshotError(f"{where}: must not be null")
        for attempt in tries:
            result = attempt(value, where)
            if result is not _NO_MATCH:
                return result
        raise SnapshotError(f"{where}: unexpected value {value!r}")

    return convert


def _json_object(value: Any, where: str) -> str:
    if not isinstance(value, dict):
        raise SnapshotError(f"{where}: expected a JSON object")
    try:
        return canonical_json(value, where)
    except KontextualError as exc:
        raise SnapshotError(str(exc)) from None


def _option(option: Any) -> _Convert:
    """The converter of one member of a field's type (``X`` of ``X | None``)."""
    if option is datetime:
        return _timestamp
    if typing.get_origin(option) is tuple:
        (item_type, _) = typing.get_args(option)
        if isinstance(item_type, type) and dataclasses.is_dataclass(item_type):

            def records(value: Any, where: str) -> Any:
                if not isinstance(value, list):
                    return _NO_MATCH
                return tuple(
                    record_from_json(item_type, item, f"{where}[{index}]")
                    for index, item in enumerate(value)
                )

            return records

        def items(value: Any, where: str) -> Any:
            if isinstance(value, list) and all(isinstance(item, item_type) for item in value):
                return tuple(value)
            return _NO_MATCH

        return items
    if option is int:
        return _integer
    if option in (bool, str):
        return lambda value, where: value if type(value) is option else _NO_MATCH
    raise TypeError(f"no snapshot converter for {option!r}")  # a new field type


def _timestamp(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return _NO_MATCH
    try:
        return parse_time(value)
    except KontextualError:
        raise SnapshotError(f"{where}: invalid timestamp {value!r}") from None


def _integer(value: Any, where: str) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        return _NO_MATCH
    if not MIN_JSON_INT <= value <= MAX_JSON_INT:
        raise SnapshotError(f"{where}: integer {value} is outside the signed 64-bit range")
    return value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


_DELETED_AT = _converter("deleted_at", datetime | None)


def _line(kind: str, item: Any) -> str:
    if kind in _WITH_DELETION:
        record, deleted_at = item
        data = record_to_json(record)
        data["deleted_at"] = None if deleted_at is None else format_time(deleted_at)
    else:
        data = record_to_json(item)
    return canonical_dumps(data)  # the store checked every field when it took the record


def _parse_line(kind: str, text: str, where: str) -> Any:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise SnapshotError(f"{where}: not valid JSON ({exc})") from None
    if kind not in _WITH_DELETION:
        return record_from_json(KINDS[kind], data, where)
    if not isinstance(data, dict) or "deleted_at" not in data:
        raise SnapshotError(f"{where}: missing field 'deleted_at'")
    deleted = data.pop("deleted_at")
    record = record_from_json(KINDS[kind], data, where)
    return record, _DELETED_AT(deleted, where)


# -- export ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SnapshotSummary:
    path: Path
    counts: dict[str, int]
    objects: int
    bytes: int


def export_snapshot(
    repo: KnowledgeRepository,
    destination: str | os.PathLike[str],
    *,
    tar: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SnapshotSummary:
    """Write a snapshot of ``repo`` to a new directory, or a ``.tar`` file if ``tar``.

    ``progress`` is called with the number of bodies written so far.
    """
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise SnapshotError(f"snapshot destination {destination} exists and is not empty")
    records = repo.export_records()
    if tar:
        with tempfile.TemporaryDirectory(dir=destination.parent) as staging:
            summary = _export_directory(repo, records, Path(staging) / "snapshot", progress)
            _write_tar(Path(staging) / "snapshot", destination)
        return dataclasses.replace(summary, path=destination)
    return _export_directory(repo, records, destination, progress)


def _export_directory(
    repo: KnowledgeRepository,
    records: dict[str, list[Any]],
    root: Path,
    progress: Callable[[int], None] | None,
) -> SnapshotSummary:
    (root / "index").mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    for kind in KINDS:
        member = f"index/{kind}.jsonl"
        data = "".join(_line(kind, item) + "\n" for item in records[kind]).encode("utf-8")
        (root / member).write_bytes(data)
        files[member] = digests.digest_bytes(data)
    body_digests = sorted({revision.digest for revision in records["revisions"]})
    total = 0
    for count, digest in enumerate(body_digests, 1):
        total += _export_body(repo, digest, root / _object_member(digest))
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


def _object_member(digest: str) -> str:
    hex_digest = digests.hex_of(digests.parse_digest(digest))
    return f"objects/{hex_digest[:2]}/{hex_digest[2:]}"


def _export_body(repo: KnowledgeRepository, digest: str, target: Path) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    source = repo.object_path(digest)
    if source is not None:
        try:
            os.link(source, target)
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
        else:
            # A link copies no bytes, so nothing has checked them yet: a snapshot
            # must not carry a damaged body silently.
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
            with open(fd, "rb") as reader:
                actual, size = digests.digest_stream(reader)
            if actual != digest:
                raise CorruptObjectError(
                    digest, f"its {size} bytes hash to {actual}; refusing to export it (run fsck)"
                )
            return size
    # open_object of a backend that keeps bodies in files verifies as it reads.
    with repo.open_object(digest) as reader, open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, _CHUNK)
        return writer.tell()


def _write_tar(root: Path, destination: Path) -> None:
    """A deterministic tar: sorted members, no owners, no times, fixed modes."""
    members = sorted(path for path in root.rglob("*"))
    partial = destination.with_name(destination.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as archive:
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
    os.replace(partial, destination)


# -- import ----------------------------------------------------------------


def import_snapshot(
    source: str | os.PathLike[str],
    repo: KnowledgeRepository,
    *,
    progress: Callable[[int], None] | None = None,
) -> SnapshotSummary:
    """Verify a snapshot (directory or ``.tar``) and restore it into empty ``repo``."""
    source = Path(source)
    if not repo.is_empty():
        raise SnapshotError("import needs an empty repository; the target already has records")
    if source.is_file():
        with tempfile.TemporaryDirectory() as staging:
            _safe_extract(source, Path(staging))
            return _import_directory(Path(staging), repo, progress)
    if not source.is_dir():
        raise SnapshotError(f"snapshot {source} not found")
    return _import_directory(source, repo, progress)


def _safe_extract(archive_path: Path, destination: Path) -> None:
    """Extract only regular files and directories with plain relative names."""
    try:
        with tarfile.open(archive_path, "r:") as archive:
            _extract_members(archive, destination)
    except (tarfile.TarError, OSError) as exc:
        raise SnapshotError(f"{archive_path} is not a readable tar file: {exc}") from None


def _extract_members(archive: tarfile.TarFile, destination: Path) -> None:
    seen: set[str] = set()
    for member in archive:
        name = member.name
        if name in seen:
            raise SnapshotError(f"tar member {name!r} appears twice")
        seen.add(name)
        parts = name.split("/")
        if (
            name.startswith("/")
            or "\\" in name
            or ".." in parts
            or "" in parts[:-1]
            or name != os.path.normpath(name)
        ):
            raise SnapshotError(f"tar member {name!r} has an unsafe path")
        if not (member.isfile() or member.isdir()) or member.issparse():
            # A sparse member expands to its declared size whatever the archive's:
            # a few bytes of tar could fill the disk.
            raise SnapshotError(f"tar member {name!r} is not a regular file or directory")
        target = destination / name
        if not target.resolve().is_relative_to(destination.resolve()):
            raise SnapshotError(f"tar member {name!r} would land outside the destination")
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if name != MANIFEST and not (
            _OBJECT_MEMBER.fullmatch(name) or _INDEX_MEMBER.fullmatch(name)
        ):
            raise SnapshotError(f"tar member {name!r} is not part of a snapshot")
        target.parent.mkdir(parents=True, exist_ok=True)
        reader = archive.extractfile(member)
        assert reader is not None
        with reader, open(target, "xb") as writer:
            shutil.copyfileobj(reader, writer, _CHUNK)


def _import_directory(
    root: Path, repo: KnowledgeRepository, progress: Callable[[int], None] | None
) -> SnapshotSummary:
    manifest = _read_manifest(root)
    records: dict[str, list[Any]] = {}
    for kind in KINDS:
        member = f"index/{kind}.jsonl"
        data = _read_plain_file(root, member)
        if digests.digest_bytes(data) != manifest["files"][member]:
            raise SnapshotError(f"{member} does not match its hash in {MANIFEST}")
        try:
            lines = data.decode("utf-8").splitlines()
        except UnicodeDecodeError:
            raise SnapshotError(f"{member} is not UTF-8") from None
        records[kind] = [
            _parse_line(kind, line, f"{member}:{number}") for number, line in enumerate(lines, 1)
        ]
        if len(records[kind]) != manifest["counts"][kind]:
            raise SnapshotError(
                f"{member} has {len(records[kind])} records, "
                f"{MANIFEST} says {manifest['counts'][kind]}"
            )
    try:
        _check_references(records)
        _check_order(records)
    except SnapshotError:
        raise
    except KontextualError as exc:  # e.g. a malformed digest in a record
        raise SnapshotError(f"snapshot records are invalid: {exc}") from None
    body_digests = sorted({revision.digest for revision in records["revisions"]})
    sizes = _check_objects(root, body_digests, manifest["objects"], progress)
    for revision in records["revisions"]:
        if revision.size != sizes[revision.digest]:
            raise SnapshotError(
                f"revision {revision.revision} of {revision.artifact_id} records size "
                f"{revision.size}, its body {revision.digest} has {sizes[revision.digest]} bytes"
            )
    try:
        repo.restore(records, lambda digest: _read_plain_file(root, _object_member(digest)))
    except SnapshotError:
        raise
    except KontextualError as exc:
        # Something the checks above missed and the repository refused (restore is
        # all or nothing): still a bad snapshot, not a bad repository.
        raise SnapshotError(f"the repository refused the snapshot's records: {exc}") from exc
    counts = {kind: len(records[kind]) for kind in KINDS}
    total = sum((root / _object_member(d)).stat().st_size for d in body_digests)
    return SnapshotSummary(root, counts, len(body_digests), total)


def _read_plain_file(root: Path, member: str) -> bytes:
    path = root / member
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SnapshotError(f"snapshot file {member} is missing") from None
    except OSError as exc:
        raise SnapshotError(f"snapshot file {member} cannot be read: {exc}") from None
    with open(fd, "rb") as reader:
        return reader.read()


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(_read_plain_file(root, MANIFEST))
    except (ValueError, RecursionError):
        raise SnapshotError(f"{MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"{root} is not a kontextual snapshot ({MANIFEST} format)")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise SnapshotError(
            f"snapshot version {version!r} is not supported (this reads version {VERSION})"
        )
    if manifest.get("digest") != digests.ALGORITHM:
        raise SnapshotError(f"snapshot digest {manifest.get('digest')!r} is not blake3")
    files, counts = manifest.get("files"), manifest.get("counts")
    expected_files = {f"index/{kind}.jsonl" for kind in KINDS}
    if not isinstance(files, dict) or set(files) != expected_files:
        raise SnapshotError(f"{MANIFEST} must list exactly the files {sorted(expected_files)}")
    if not isinstance(counts, dict) or set(counts) != set(KINDS):
        raise SnapshotError(f"{MANIFEST} must count every kind {sorted(KINDS)}")
    if not isinstance(manifest.get("objects"), int):
        raise SnapshotError(f"{MANIFEST} must count its objects")
    return manifest


def _check_objects(
    root: Path, wanted: list[str], declared: int, progress: Callable[[int], None] | None
) -> dict[str, int]:
    """Check every wanted body is there, whole; return each one's size."""
    present = _object_files(root)
    missing = sorted(set(wanted) - present)
    if missing:
        raise SnapshotError(
            f"snapshot is missing object {missing[0]} ({len(missing)} missing in all)"
        )
    extra = sorted(present - set(wanted))
    if extra:
        raise SnapshotError(f"snapshot object {extra[0]} is referenced by no revision")
    if declared != len(wanted):
        raise SnapshotError(f"{MANIFEST} says {declared} objects, the snapshot has {len(wanted)}")
    sizes: dict[str, int] = {}
    for count, digest in enumerate(wanted, 1):
        fd = os.open(root / _object_member(digest), os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as reader:
            actual, sizes[digest] = digests.digest_stream(reader)
        if actual != digest:
            raise SnapshotError(f"snapshot object {digest} is corrupt: its bytes hash to {actual}")
        if progress is not None:
            progress(count)
    return sizes


def _object_files(root: Path) -> set[str]:
    """The digests of the files under ``objects/``; anything else there is refused."""
    found: set[str] = set()
    if (root / "objects").is_symlink():
        raise SnapshotError("snapshot holds an unexpected entry objects (a symbolic link)")
    pending = [("objects", root / "objects")]
    while pending:
        member, path = pending.pop()
        try:
            entries = list(os.scandir(path))
        except FileNotFoundError:
            continue
        for entry in entries:
            name = f"{member}/{entry.name}"
            if entry.is_symlink():
                raise SnapshotError(f"snapshot holds an unexpected entry {name}")
            if entry.is_dir():
                pending.append((name, Path(entry.path)))
            elif entry.is_file():
                if not _OBJECT_MEMBER.fullmatch(name):
                    raise SnapshotError(f"snapshot holds an unexpected entry {name}")
                found.add(digests.PREFIX + name[len("objects/") :].replace("/", ""))
    return found


def _as_of_revision(record: Artifact | ArtifactRevision) -> tuple[Any, ...]:
    """The fields an artifact shares with its current revision."""
    return (
        record.collection_id,
        record.name,
        record.artifact_type,
        record.media_type,
        record.digest,
        record.size,
        record.metadata_json,
        record.provenance_json,
        record.run_id,
    )


def _check_order(records: dict[str, list[Any]]) -> None:
    """Every file in sequence order, as export writes it: a backend restores records in
    the order given, so lines out of order could silently change what is current."""
    run_sequence = {run.id: run.sequence for run in records["runs"]}
    for kind, items in records.items():
        if kind in _WITH_DELETION:
            keys = [record.sequence for record, _ in items]
        elif kind == "revisions":
            keys = [revision.change_sequence for revision in items]
        elif kind == "manifests":
            keys = [run_sequence[manifest.run_id] for manifest in items]
        else:
            keys = [item.sequence for item in items]
        if any(later <= earlier for earlier, later in itertools.pairwise(keys)):
            raise SnapshotError(f"index/{kind}.jsonl is not in sequence order")


def _check_references(records: dict[str, list[Any]]) -> None:
    """Every id unique, every reference resolvable, sequences gap-free."""
    _References(records).run()


class _References:
    def __init__(self, records: dict[str, list[Any]]) -> None:
        self.records = records

    def unique(self, kind: str, ids: list[str]) -> set[str]:
        seen: set[str] = set()
        for record_id in ids:
            if record_id in seen:
                raise SnapshotError(f"duplicate id {record_id!r} in index/{kind}.jsonl")
            seen.add(record_id)
        return seen

    def run(self) -> None:
        r = self.records
        collections = self.unique("collections", [c.id for c, _ in r["collections"]])
        artifacts = {a.id: (a, deleted) for a, deleted in r["artifacts"]}
        self.unique("artifacts", [a.id for a, _ in r["artifacts"]])
        runs = self.unique("runs", [run.id for run in r["runs"]])
        steps = self.unique("steps", [step.id for step in r["steps"]])
        relationships = self.unique("relationships", [rel.id for rel in r["relationships"]])
        self.unique("bundles", [bundle.id for bundle in r["bundles"]])
        self.unique("context_packages", [p.id for p in r["context_packages"]])
        self.unique("external_references", [e.id for e in r["external_references"]])
        self.unique("manifests", [m.run_id for m in r["manifests"]])

        revisions: dict[tuple[str, int], ArtifactRevision] = {}
        for revision in r["revisions"]:
            key = (revision.artifact_id, revision.revision)
            if key in revisions:
                raise SnapshotError(f"duplicate revision {key[1]} of {key[0]}")
            if revision.artifact_id not in artifacts:
                raise SnapshotError(f"revision of unknown artifact {revision.artifact_id!r}")
            if revision.collection_id not in collections:
                raise SnapshotError(
                    f"revision {key} names unknown collection {revision.collection_id!r}"
                )
            if revision.run_id is not None and revision.run_id not in runs:
                raise SnapshotError(f"revision {key} names unknown run {revision.run_id!r}")
            digests.parse_digest(revision.digest)
            revisions[key] = revision
        for artifact_id, (artifact, _) in artifacts.items():
            last = revisions.get((artifact_id, artifact.revision))
            if last is None or any(
                (artifact_id, n) not in revisions for n in range(1, artifact.revision + 1)
            ):
                raise SnapshotError(
                    f"artifact {artifact_id} lacks revisions 1..{artifact.revision}"
                )
            first = revisions[(artifact_id, 1)]
            if (
                _as_of_revision(last) != _as_of_revision(artifact)
                or last.created_at != artifact.updated_at
                or (first.created_at, first.change_sequence)
                != (artifact.created_at, artifact.sequence)
            ):
                raise SnapshotError(f"artifact {artifact_id} does not match its revisions")
        if len(revisions) != sum(a.revision for a, _ in artifacts.values()):
            raise SnapshotError("revisions beyond an artifact's current revision")
        # Restore replays each deletion at its change record's sequence.
        deletions = {
            change.entity_id: change.sequence
            for change in r["changes"]
            if change.action == "delete"
        }
        for collection, deleted_at in r["collections"]:
            if deleted_at is not None and deletions.get(collection.id, 0) <= collection.sequence:
                raise SnapshotError(
                    f"deleted collection {collection.id} has no deletion "
                    "change record after its creation"
                )
        for artifact_id, (artifact, deleted_at) in artifacts.items():
            last_change = revisions[(artifact_id, artifact.revision)].change_sequence
            if deleted_at is not None and deletions.get(artifact_id, 0) <= last_change:
                raise SnapshotError(
                    f"deleted artifact {artifact_id} has no deletion change "
                    "record after its last revision"
                )
        live_names: set[tuple[str, str]] = set()
        for artifact, deleted in artifacts.values():
            if deleted is None:
                if (artifact.collection_id, artifact.name) in live_names:
                    raise SnapshotError(f"two live artifacts named {artifact.name!r}")
                live_names.add((artifact.collection_id, artifact.name))
        triples: set[tuple[str, str, str]] = set()
        for rel in r["relationships"]:
            for end in (rel.source_id, rel.target_id):
                if end not in artifacts or artifacts[end][1] is not None:
                    raise SnapshotError(
                        f"relationship {rel.id} points at missing or deleted artifact {end!r}"
                    )
            triple = (rel.source_id, rel.target_id, rel.relationship_type)
            if triple in triples:
                raise SnapshotError(f"duplicate relationship {triple}")
            triples.add(triple)
        sequences = [change.sequence for change in r["changes"]]
        if sequences != list(range(1, len(sequences) + 1)):
            raise SnapshotError("change records are not numbered 1..n without gaps")
        for run in r["runs"]:
            if run.parent_run_id is not None and run.parent_run_id not in runs:
                raise SnapshotError(f"run {run.id} names unknown parent {run.parent_run_id!r}")
        for step in r["steps"]:
            if step.run_id not in runs:
                raise SnapshotError(f"step {step.id} names unknown run {step.run_id!r}")
        for bundle in r["bundles"]:
            if bundle.run_id not in runs:
                raise SnapshotError(f"bundle {bundle.id} names unknown run {bundle.run_id!r}")
            self.pinned(bundle.inputs, revisions, f"bundle {bundle.id}")
        for manifest in r["manifests"]:
            if manifest.run_id not in runs:
                raise SnapshotError(f"manifest of unknown run {manifest.run_id!r}")
            self.pinned(
                manifest.inputs + manifest.outputs, revisions, f"manifest of {manifest.run_id}"
            )
            if any(step_id not in steps for step_id in manifest.steps):
                raise SnapshotError(f"manifest of {manifest.run_id} names an unknown step")
        for package in r["context_packages"]:
            for ref in package.references:
                self.context_reference(ref, package.id, artifacts, revisions, relationships, runs)
        for external in r["external_references"]:
            if external.artifact_id is not None:
                pinned = revisions.get((external.artifact_id, external.revision or 0))
                if pinned is None or pinned.digest != external.digest:
                    raise SnapshotError(
                        f"external reference {external.id} points at a missing artifact revision"
                    )

    @staticmethod
    def pinned(
        refs: tuple[ArtifactRef, ...],
        revisions: dict[tuple[str, int], ArtifactRevision],
        where: str,
    ) -> None:
        for ref in refs:
            found = revisions.get((ref.artifact_id, ref.revision))
            if found is None or found.digest != ref.digest:
                raise SnapshotError(
                    f"{where} pins {ref.artifact_id}@{ref.revision}, "
                    "which the snapshot does not hold with that digest"
                )

    @staticmethod
    def context_reference(
        ref: ContextReference,
        package_id: str,
        artifacts: dict[str, Any],
        revisions: dict[tuple[str, int], ArtifactRevision],
        relationships: set[str],
        runs: set[str],
    ) -> None:
        where = f"context package {package_id}"
        if ref.kind == "artifact":
            if ref.revision is None:
                ok = ref.target_id in artifacts
            else:
                found = revisions.get((ref.target_id, ref.revision))
                ok = found is not None and found.digest == ref.digest
        elif ref.kind == "relationship":
            ok = ref.target_id in relationships
        elif ref.kind == "run":
            ok = ref.target_id in runs
        elif ref.kind == "external":
            ok = True
        else:
            raise SnapshotError(f"{where} has a reference of unknown kind {ref.kind!r}")
        if not ok:
            raise SnapshotError(f"{where} refers to missing {ref.kind} {ref.target_id!r}")
