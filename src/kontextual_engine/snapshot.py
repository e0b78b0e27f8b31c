"""Snapshots: a whole repository as a directory (or one ``.tar``), any backend.

Layout, version 1 (see ``docs/snapshot-format.md``)::

    snapshot.json          format, version, counts, BLAKE3 of every index file
    index/<kind>.jsonl     one canonical JSON record a line, in sequence order
    objects/ab/cdef...     every body that any revision references

A snapshot is a transfer and backup format, not a second way to write
records: import holds every record to the rules the API applied when it made
it, through the same functions (:func:`check_records` replays the change
records against them), and refuses what no sequence of API calls could have
produced. Export reads through the repository contract (``export_records``),
so it works from every backend; it is deterministic (the same state gives the
same bytes, and so does export -> import -> export), and it runs import's
checks on what it wrote before renaming it into place. Only regular files are
read, never through a link; a tar is read in place, never extracted; bodies
are streamed. Import verifies everything before it writes anything, then
restores all or nothing into an empty repository.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import errno
import functools
import io
import itertools
import json
import os
import re
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from . import digests
from .errors import (
    CorruptObjectError,
    DamagedStoreError,
    DuplicateNameError,
    DuplicateRelationshipError,
    IntegrityError,
    KontextualError,
    SnapshotError,
)
from .models import (
    MAX_JSON_INT,
    MIN_JSON_INT,
    TERMINAL,
    Artifact,
    ArtifactRef,
    ArtifactRevision,
    ChangeAction,
    ChangeRecord,
    Collection,
    ContextPackage,
    EntityKind,
    ExternalMemoryReference,
    InputBundle,
    OperationRun,
    Relationship,
    RunManifest,
    RunStatus,
    WorkflowStep,
    canonical_dumps,
    canonical_json,
    check_artifact_name,
    check_artifact_type,
    check_collection_fields,
    check_external_fields,
    check_input_role,
    check_media_type,
    check_operation,
    check_package_name,
    check_relationship_type,
    check_run_error,
    check_step_name,
    check_transition,
    format_time,
    parse_time,
)
from .storage.context import ReferenceLookups, check_reference
from .storage.contract import (
    RELATIONSHIP_KEY,
    KnowledgeRepository,
    changed_fields,
    check_id,
    check_revision_number,
)

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
        os.replace(written, destination)  # a directory replaces only an empty one
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
    (root / "index").mkdir(parents=True)
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
    source = _from_store(lambda: repo.object_path(digest))
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
                    digest,
                    f"its {size} bytes hash to {actual}; refusing to export it "
                    "(run `kontextual fsck` to find the damage)",
                )
            return size
    # open_object of a backend that keeps bodies in files verifies as it reads.
    with _from_store(lambda: repo.open_object(digest)) as reader, open(target, "wb") as writer:
        _from_store(lambda: shutil.copyfileobj(reader, writer, _CHUNK))
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


# -- reading a snapshot: regular files only, never through a link ----------

# O_NONBLOCK: opening a FIFO planted in a snapshot must not block (fstat then refuses it).
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_DIR_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0)
_FAN_NAME = re.compile(r"[0-9a-f]{2}")
_INDEX_MEMBERS = {f"index/{kind}.jsonl" for kind in KINDS}
_DIRECTORIES = {"index", "objects"}
# snapshot.json is a few hundred bytes; anything near this is not one.
MAX_MANIFEST_BYTES = 1 << 20
# One record: its JSON fields are at most 1 MiB each (models.MAX_JSON_BYTES);
# a context package's list of references may add more.
MAX_LINE_BYTES = 64 << 20


def _describe(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a regular file"),
    ):
        if test(mode):
            return name
    return "of an unknown type"


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
    return typing.cast(BinaryIO, io.BufferedReader(_MemberReader(inner, member), _CHUNK))


class _Source(abc.ABC):
    """The members of a snapshot, whether a directory or a tar.

    ``objects`` is the digests of the bodies it holds; building it has refused
    anything that is not a part of a snapshot.
    """

    objects: set[str]

    @abc.abstractmethod
    def open(self, member: str) -> tuple[BinaryIO, int]:
        """A reader of a regular-file member and its size."""

    @abc.abstractmethod
    def close(self) -> None: ...


class _DirectorySource(_Source):
    def __init__(self, root: Path) -> None:
        self.root = root
        try:
            self._fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise SnapshotError(f"snapshot {root} cannot be opened: {exc.strerror}") from None
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
                if _is_directory_member(name):
                    if not stat.S_ISDIR(mode):
                        raise SnapshotError(
                            f"snapshot entry {name} should be a directory, it is {_describe(mode)}"
                        )
                    pending.append(name)
                    continue
                if not _is_file_member(name):
                    raise SnapshotError(f"snapshot holds an unexpected entry {name}")
                if not stat.S_ISREG(mode):
                    raise SnapshotError(
                        f"snapshot file {name} is not a regular file: it is {_describe(mode)}"
                    )
                if _OBJECT_MEMBER.fullmatch(name):
                    found.add(_digest_of_member(name))
        return found

    def open(self, member: str) -> tuple[BinaryIO, int]:
        parts = member.split("/")
        opened: list[int] = []
        try:
            directory = self._fd
            for part in parts[:-1]:
                directory = os.open(part, _DIR_FLAGS, dir_fd=directory)
                opened.append(directory)
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=directory)
        except FileNotFoundError:
            raise SnapshotError(f"snapshot file {member} is missing") from None
        except OSError as exc:
            reason = (
                "is (or passes through) a symbolic link"
                if exc.errno == errno.ELOOP
                else (f"cannot be opened: {exc.strerror}")
            )
            raise SnapshotError(f"snapshot file {member} {reason}") from None
        finally:
            for directory_fd in opened:
                os.close(directory_fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise SnapshotError(
                f"snapshot file {member} is not a regular file: it is {_describe(st.st_mode)}"
            )
        # The caller closes the reader, and with it the file.
        return _reader(open(fd, "rb", buffering=0), member), st.st_size

    def close(self) -> None:
        os.close(self._fd)


class _TarSource(_Source):
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
            _digest_of_member(name) for name in self._members if _OBJECT_MEMBER.fullmatch(name)
        }

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
            if not _is_directory_member(name):
                raise SnapshotError(f"tar member {name!r} is not part of a snapshot")
            return
        if not _is_file_member(name):
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


def _is_directory_member(name: str) -> bool:
    return name in _DIRECTORIES or (
        name.startswith("objects/") and bool(_FAN_NAME.fullmatch(name[len("objects/") :]))
    )


def _is_file_member(name: str) -> bool:
    return name == MANIFEST or name in _INDEX_MEMBERS or bool(_OBJECT_MEMBER.fullmatch(name))


def _digest_of_member(name: str) -> str:
    return digests.PREFIX + name[len("objects/") :].replace("/", "")


@contextlib.contextmanager
def _open_source(path: Path) -> Iterator[_Source]:
    """The snapshot at ``path``: a directory, or a regular file holding a tar."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SnapshotError(f"snapshot {path} not found") from None
    except OSError as exc:
        raise SnapshotError(f"snapshot {path} cannot be read: {exc.strerror}") from None
    source: _Source
    if stat.S_ISDIR(mode):
        source = _DirectorySource(path)
    elif stat.S_ISREG(mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise SnapshotError(f"snapshot {path} cannot be opened: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the stat
            os.close(fd)
            raise SnapshotError(f"snapshot {path} is not a regular file")
        source = _TarSource(path, fd)
    else:
        raise SnapshotError(
            f"snapshot {path} is neither a directory nor a tar file: it is {_describe(mode)}"
        )
    try:
        yield source
    finally:
        source.close()


# -- import ----------------------------------------------------------------


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
    with _open_source(source) as snapshot:
        records, sizes = _load(snapshot, progress)
        try:
            repo.restore(records, lambda digest: snapshot.open(_object_member(digest))[0])
        except SnapshotError:
            raise
        except KontextualError as exc:
            # Something the checks missed and the repository refused (restore is
            # all or nothing): still a bad snapshot, not a bad repository.
            raise SnapshotError(f"the repository refused the snapshot's records: {exc}") from exc
    counts = {kind: len(records[kind]) for kind in KINDS}
    return SnapshotSummary(source, counts, len(sizes), sum(sizes.values()))


def verify_snapshot(source: str | os.PathLike[str]) -> SnapshotSummary:
    """Run every check of :func:`import_snapshot` without importing."""
    source = Path(source)
    with _open_source(source) as snapshot:
        records, sizes = _load(snapshot, None)
    counts = {kind: len(records[kind]) for kind in KINDS}
    return SnapshotSummary(source, counts, len(sizes), sum(sizes.values()))


def _load(
    source: _Source, progress: Callable[[int], None] | None
) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """Every check import makes before it writes: the records and each body's size."""
    manifest = _read_manifest(source)
    records = {kind: _read_index(source, kind, manifest) for kind in KINDS}
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


def _read_manifest(source: _Source) -> dict[str, Any]:
    reader, size = source.open(MANIFEST)
    with reader:
        if size > MAX_MANIFEST_BYTES:
            raise SnapshotError(f"{MANIFEST} is {size} bytes, more than {MAX_MANIFEST_BYTES}")
        data = reader.read(MAX_MANIFEST_BYTES + 1)
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError):
        raise SnapshotError(f"{MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SnapshotError(f"not a kontextual snapshot ({MANIFEST} format)")
    version = manifest.get("version")
    if not _is_count(version) or version > VERSION or version < 1:
        raise SnapshotError(
            f"snapshot version {version!r} is not supported (this reads version {VERSION})"
        )
    if manifest.get("digest") != digests.ALGORITHM:
        raise SnapshotError(f"snapshot digest {manifest.get('digest')!r} is not blake3")
    files, counts = manifest.get("files"), manifest.get("counts")
    if (
        not isinstance(files, dict)
        or set(files) != _INDEX_MEMBERS
        or not all(isinstance(value, str) for value in files.values())
    ):
        raise SnapshotError(f"{MANIFEST} must list exactly the files {sorted(_INDEX_MEMBERS)}")
    if (
        not isinstance(counts, dict)
        or set(counts) != set(KINDS)
        or not all(_is_count(value) for value in counts.values())
    ):
        raise SnapshotError(f"{MANIFEST} must count every kind {sorted(KINDS)}")
    if not _is_count(manifest.get("objects")):
        raise SnapshotError(f"{MANIFEST} must count its objects")
    return manifest


def _is_count(value: object) -> typing.TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _lines(source: _Source, member: str) -> Iterator[bytes]:
    """The lines of an index file, each with its newline; bounded in length."""
    reader, _ = source.open(member)
    with reader:
        number = 0
        while line := reader.readline(MAX_LINE_BYTES + 1):
            number += 1
            if not line.endswith(b"\n"):
                if len(line) > MAX_LINE_BYTES:
                    raise SnapshotError(f"{member}:{number} is longer than {MAX_LINE_BYTES} bytes")
                raise SnapshotError(f"{member}:{number} does not end with a newline")
            yield line


def _read_index(source: _Source, kind: str, manifest: dict[str, Any]) -> list[Any]:
    """One index file: its hash and count checked first (one pass), then parsed (another)."""
    member = f"index/{kind}.jsonl"
    hasher = digests.new_hasher()
    count = 0
    for line in _lines(source, member):
        hasher.update(line)
        count += 1
    if digests.finish(hasher) != manifest["files"][member]:
        raise SnapshotError(f"{member} does not match its hash in {MANIFEST}")
    if count != manifest["counts"][kind]:
        raise SnapshotError(
            f"{member} has {count} records, {MANIFEST} says {manifest['counts'][kind]}"
        )
    items = []
    for number, line in enumerate(_lines(source, member), 1):
        try:
            text = line[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise SnapshotError(f"{member}:{number} is not UTF-8") from None
        items.append(_parse_line(kind, text, f"{member}:{number}"))
    return items


def _check_objects(
    source: _Source, wanted: list[str], declared: int, progress: Callable[[int], None] | None
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
        reader, _ = source.open(_object_member(digest))
        with reader:
            actual, sizes[digest] = digests.digest_stream(reader)
        if actual != digest:
            raise SnapshotError(f"snapshot object {digest} is corrupt: its bytes hash to {actual}")
        if progress is not None:
            progress(count)
    return sizes


# -- the records: every rule of the API, replayed ---------------------------


def check_records(records: dict[str, list[Any]]) -> None:
    """Refuse records that no sequence of API calls could have made.

    Every field passes the rule the API applies to it (the same functions);
    then the change records are replayed in order, and each creation, update,
    deletion and status change is checked against the state reached so far,
    as the API checked it when it happened: names unique among live records,
    relationships between live artifacts, lifecycles as ``TRANSITIONS`` allows,
    references to what existed then. Finally each record must be the state
    the replay ends in.
    """
    replay = _Replay(records)
    with _about("snapshot records"):
        replay.check_fields()
        replay.run()
        replay.check_final()
    _check_order(records)


@contextlib.contextmanager
def _about(where: str) -> Iterator[None]:
    """Report a rule's error as a :class:`SnapshotError` that says where it was."""
    try:
        yield
    except SnapshotError:
        raise
    except KontextualError as exc:
        raise SnapshotError(f"{where}: {exc}") from None


def _refuse(message: str) -> typing.NoReturn:
    raise SnapshotError(message)


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


class _Replay:
    """The state of the store after each change record, rebuilt from the records."""

    def __init__(self, records: dict[str, list[Any]]) -> None:
        self.records = records
        self.collections = {c.id: (c, deleted) for c, deleted in records["collections"]}
        self.artifacts = {a.id: (a, deleted) for a, deleted in records["artifacts"]}
        self.relationships = {rel.id: rel for rel in records["relationships"]}
        self.runs = {run.id: run for run in records["runs"]}
        self.steps = {step.id: step for step in records["steps"]}
        # The record each change sequence created: (what, record).
        self.made: dict[int, tuple[str, Any]] = {}
        # The state reached so far.
        self.live_collections: dict[str, str] = {}  # name -> id
        self.live_collection_ids: set[str] = set()
        self.artifacts_in: Counter[str] = Counter()  # live artifacts per collection
        self.gone_collections: set[str] = set()
        self.current: dict[str, ArtifactRevision] = {}  # artifact id -> latest revision
        self.live_artifacts: dict[tuple[str, str], str] = {}  # (collection, name) -> id
        self.live_artifact_ids: set[str] = set()
        self.relationship_ends: Counter[str] = Counter()  # live relationships per artifact
        self.gone_artifacts: set[str] = set()
        self.revisions: dict[tuple[str, int], ArtifactRevision] = {}
        self.live_relationships: dict[str, tuple[str, str, str]] = {}
        self.relationship_keys: set[tuple[str, str, str]] = set()
        self.run_status: dict[str, RunStatus] = {}
        self.step_status: dict[str, RunStatus] = {}
        self.step_counts: dict[str, int] = {}

    # -- every field, by the API's own rules -------------------------------

    def check_fields(self) -> None:
        r = self.records
        self.unique("collections", [c.id for c, _ in r["collections"]])
        self.unique("artifacts", [a.id for a, _ in r["artifacts"]])
        for kind in ("relationships", "runs", "steps", "bundles"):
            self.unique(kind, [item.id for item in r[kind]])
        self.unique("context_packages", [p.id for p in r["context_packages"]])
        self.unique("external_references", [e.id for e in r["external_references"]])
        self.unique("manifests", [m.run_id for m in r["manifests"]])
        for collection, _ in r["collections"]:
            with _about(f"collection {collection.id!r}"):
                check_collection_fields(collection.name, collection.description)
            self.own(collection.sequence, "collection", collection)
        for artifact, _ in r["artifacts"]:
            check_revision_number(artifact.revision, f"artifact {artifact.id!r} revision")
        for revision in r["revisions"]:
            with _about(f"revision {revision.revision} of artifact {revision.artifact_id!r}"):
                check_id(revision.artifact_id, "artifact id")
                check_revision_number(revision.revision, "revision")
                check_artifact_name(revision.name)
                check_artifact_type(revision.artifact_type)
                check_media_type(revision.media_type)
                digests.parse_digest(revision.digest)
                if revision.size < 0:
                    _refuse(f"size {revision.size} is negative")
            self.own(revision.change_sequence, "revision", revision)
        for relationship in r["relationships"]:
            with _about(f"relationship {relationship.id!r}"):
                check_relationship_type(relationship.relationship_type)
            self.own(relationship.sequence, "relationship", relationship)
        for change in r["changes"]:
            with _about(f"change record {change.sequence}"):
                check_id(change.entity_id, "entity id")
                EntityKind(change.entity_kind)
                ChangeAction(change.action)
                for digest in (change.old_digest, change.new_digest):
                    if digest is not None:
                        digests.parse_digest(digest)
                if change.revision is not None:
                    check_revision_number(change.revision, "revision")
        for run in r["runs"]:
            with _about(f"run {run.id!r}"):
                check_operation(run.operation)
                check_run_error(run.error)
                self.status(run.status)
            self.own(run.sequence, "run", run)
        for step in r["steps"]:
            with _about(f"step {step.id!r}"):
                check_step_name(step.name)
                self.status(step.status)
            self.own(step.sequence, "step", step)
        for bundle in r["bundles"]:
            with _about(f"bundle {bundle.id!r}"):
                for ref in bundle.inputs:
                    check_input_role(ref.role)
            self.own(bundle.sequence, "bundle", bundle)
        for manifest in r["manifests"]:
            with _about(f"manifest of run {manifest.run_id!r}"):
                self.status(manifest.status)
                check_operation(manifest.operation)
                check_run_error(manifest.error)
        for package in r["context_packages"]:
            with _about(f"context package {package.id!r}"):
                check_package_name(package.name)
            self.own(package.sequence, "context_package", package)
        for external in r["external_references"]:
            with _about(f"external reference {external.id!r}"):
                check_external_fields(
                    external.system, external.external_id, external.recorded_by, external.uri
                )
            self.own(external.sequence, "external_reference", external)
        sequences = [change.sequence for change in r["changes"]]
        if sequences != list(range(1, len(sequences) + 1)):
            _refuse("change records are not numbered 1..n without gaps")

    @staticmethod
    def unique(kind: str, ids: list[str]) -> None:
        seen: set[str] = set()
        for record_id in ids:
            check_id(record_id, f"id in index/{kind}.jsonl")
            if record_id in seen:
                _refuse(f"duplicate id {record_id!r} in index/{kind}.jsonl")
            seen.add(record_id)

    @staticmethod
    def status(value: str) -> RunStatus:
        try:
            return RunStatus(value)
        except ValueError:
            _refuse(f"status {value!r} is not one of {[s.value for s in RunStatus]}")

    def own(self, sequence: int, what: str, record: Any) -> None:
        if sequence in self.made:
            _refuse(f"two records ({self.made[sequence][0]} and {what}) claim sequence {sequence}")
        self.made[sequence] = (what, record)

    # -- the replay ------------------------------------------------------------

    def run(self) -> None:
        for change in self.records["changes"]:
            with _about(
                f"change record {change.sequence} ({change.entity_kind} {change.action} "
                f"{change.entity_id!r})"
            ):
                made = self.made.pop(change.sequence, None)
                handler = getattr(self, f"on_{change.entity_kind}_{change.action}", None)
                if handler is None:
                    _refuse("no operation makes such a change record")
                handler(change, made)
        if self.made:
            sequence, (what, _) = min(self.made.items())
            _refuse(f"a {what} has sequence {sequence}, which no change record of its creation has")

    @staticmethod
    def created(change: ChangeRecord, made: tuple[str, Any] | None, what: str, moment: str) -> Any:
        """The record a creation change made: of that kind, id and time."""
        if made is None or made[0] != what:
            _refuse(f"the snapshot holds no {what} created by it")
        record = made[1]
        record_id = record.artifact_id if what == "revision" else record.id
        if record_id != change.entity_id or getattr(record, moment) != change.timestamp:
            _refuse(f"its {what} has another id or time")
        return record

    @staticmethod
    def nothing_made(made: tuple[str, Any] | None) -> None:
        if made is not None:
            _refuse(f"a {made[0]} claims its sequence")

    def on_collection_create(self, change: ChangeRecord, made: Any) -> None:
        collection = self.created(change, made, "collection", "created_at")
        if collection.name in self.live_collections:
            raise DuplicateNameError(f"collection {collection.name!r} already exists")
        self.live_collections[collection.name] = collection.id
        self.live_collection_ids.add(collection.id)

    def on_collection_delete(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        found = self.collections.get(change.entity_id)
        if found is None or self.live_collections.get(found[0].name) != found[0].id:
            _refuse("no such live collection")
        collection, deleted_at = found
        if self.artifacts_in[collection.id]:
            _refuse("the collection still has live artifacts")
        if deleted_at != change.timestamp:
            _refuse("the collection's deletion time differs")
        del self.live_collections[collection.name]
        self.live_collection_ids.discard(collection.id)
        self.gone_collections.add(collection.id)

    def on_artifact_create(self, change: ChangeRecord, made: Any) -> None:
        revision = self.created(change, made, "revision", "created_at")
        if revision.revision != 1 or change.revision != 1 or revision.artifact_id in self.current:
            _refuse("an artifact starts at revision 1, once")
        if change.new_digest != revision.digest or change.old_digest is not None:
            _refuse("its digests differ from the revision's")
        if revision.collection_id not in self.live_collection_ids:
            _refuse(f"collection {revision.collection_id!r} is not live")
        self.take_name(revision)
        self.live_artifact_ids.add(revision.artifact_id)
        self.artifacts_in[revision.collection_id] += 1
        self.producing_run(revision)
        self.add_revision(revision)

    def on_artifact_update(self, change: ChangeRecord, made: Any) -> None:
        revision = self.created(change, made, "revision", "created_at")
        before = self.current.get(revision.artifact_id)
        if before is None or revision.artifact_id in self.gone_artifacts:
            _refuse("no such live artifact")
        if revision.revision != before.revision + 1 or change.revision != revision.revision:
            _refuse(f"revision {revision.revision} does not follow {before.revision}")
        if change.old_digest != before.digest or change.new_digest != revision.digest:
            _refuse("its digests differ from the revisions'")
        if revision.collection_id != before.collection_id:
            _refuse("an artifact never moves to another collection")
        if not changed_fields(before, dataclasses.asdict(revision)):
            _refuse("the revision changes nothing (an update that changes nothing makes none)")
        if revision.name != before.name:
            del self.live_artifacts[(before.collection_id, before.name)]
            self.take_name(revision)
        self.producing_run(revision)
        self.add_revision(revision)

    def on_artifact_delete(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        current = self.current.get(change.entity_id)
        if current is None or change.entity_id in self.gone_artifacts:
            _refuse("no such live artifact")
        if change.revision != current.revision or change.old_digest != current.digest:
            _refuse("its revision or digest differs from the artifact's")
        if self.relationship_ends[change.entity_id]:
            _refuse("the artifact still has relationships (a deletion removes them first)")
        _, deleted_at = self.artifacts.get(change.entity_id, (None, None))
        if deleted_at != change.timestamp:
            _refuse("the artifact's deletion time differs")
        del self.live_artifacts[(current.collection_id, current.name)]
        self.live_artifact_ids.discard(change.entity_id)
        self.artifacts_in[current.collection_id] -= 1
        self.gone_artifacts.add(change.entity_id)

    def take_name(self, revision: ArtifactRevision) -> None:
        key = (revision.collection_id, revision.name)
        if key in self.live_artifacts:
            raise DuplicateNameError(
                f"artifact {revision.name!r} already exists in collection {revision.collection_id}"
            )
        self.live_artifacts[key] = revision.artifact_id

    def producing_run(self, revision: ArtifactRevision) -> None:
        if revision.run_id is not None and self.run_status.get(revision.run_id) != (
            RunStatus.RUNNING
        ):
            _refuse(f"run {revision.run_id!r} was not running, so it produced nothing")

    def add_revision(self, revision: ArtifactRevision) -> None:
        self.current[revision.artifact_id] = revision
        self.revisions[(revision.artifact_id, revision.revision)] = revision

    def on_relationship_create(self, change: ChangeRecord, made: Any) -> None:
        if made is None:
            # Deleted since: not exported; its change record says what it joined.
            details = change.details
            key = tuple(details.get(field) for field in RELATIONSHIP_KEY)
            if not all(isinstance(part, str) for part in key):
                _refuse("a deleted relationship's change record must name its ends and type")
            check_relationship_type(key[2])
        else:
            relationship = self.created(change, made, "relationship", "created_at")
            key = (relationship.source_id, relationship.target_id, relationship.relationship_type)
        source_id, target_id, relationship_type = typing.cast(tuple[str, str, str], key)
        for end in (source_id, target_id):
            if end not in self.live_artifact_ids:
                raise IntegrityError(f"relationship end {end!r} is not a live artifact")
        triple = (source_id, target_id, relationship_type)
        if triple in self.relationship_keys:
            raise DuplicateRelationshipError(f"relationship {triple} already exists")
        self.relationship_keys.add(triple)
        self.live_relationships[change.entity_id] = triple
        self.relationship_ends.update({source_id, target_id})

    def on_relationship_delete(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        key = self.live_relationships.pop(change.entity_id, None)
        if key is None or change.entity_id in self.relationships:
            _refuse("no such relationship, or one the snapshot still holds")
        self.relationship_keys.discard(key)
        self.relationship_ends.subtract({key[0], key[1]})

    def on_run_create(self, change: ChangeRecord, made: Any) -> None:
        run = self.created(change, made, "run", "created_at")
        if run.parent_run_id is not None and run.parent_run_id not in self.run_status:
            raise IntegrityError(f"parent run {run.parent_run_id!r} does not exist yet")
        self.run_status[run.id] = RunStatus.PENDING

    def on_run_transition(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        self.transition(change, self.run_status, "run")

    def on_run_update(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        if self.run_status.get(change.entity_id) is not RunStatus.RUNNING:
            _refuse("only a running run takes heartbeats")

    def on_step_create(self, change: ChangeRecord, made: Any) -> None:
        step = self.created(change, made, "step", "created_at")
        self.open_run(step.run_id)
        position = self.step_counts.get(step.run_id, 0) + 1
        if step.position != position:
            _refuse(f"step position {step.position}, expected {position}")
        self.step_counts[step.run_id] = position
        self.step_status[step.id] = RunStatus.PENDING

    def on_step_transition(self, change: ChangeRecord, made: Any) -> None:
        self.nothing_made(made)
        self.transition(change, self.step_status, "step")

    def transition(self, change: ChangeRecord, states: dict[str, RunStatus], what: str) -> None:
        details = change.details
        current = states.get(change.entity_id)
        if current is None:
            _refuse(f"no such {what}")
        if details.get("from") != current.value:
            _refuse(f"the {what} was {current.value}, not {details.get('from')!r}")
        target = self.status(typing.cast(str, details.get("to")))
        check_transition(f"{what} {change.entity_id}", current, target)
        states[change.entity_id] = target

    def open_run(self, run_id: str) -> None:
        status = self.run_status.get(run_id)
        if status is None:
            raise IntegrityError(f"run {run_id!r} does not exist yet")
        if status in TERMINAL:
            _refuse(f"run {run_id} had ended ({status.value})")

    def on_bundle_create(self, change: ChangeRecord, made: Any) -> None:
        bundle = self.created(change, made, "bundle", "created_at")
        self.open_run(bundle.run_id)
        self.pinned(bundle.inputs)

    def pinned(self, refs: tuple[ArtifactRef, ...]) -> None:
        for ref in refs:
            if self.revision(ref.artifact_id, ref.revision).digest != ref.digest:
                raise IntegrityError(f"{ref.artifact_id}@{ref.revision} has another digest")

    def revision(self, artifact_id: str, number: int) -> ArtifactRevision:
        found = self.revisions.get((artifact_id, number))
        if found is None:
            raise IntegrityError(f"artifact {artifact_id!r} has no revision {number}")
        return found

    def on_context_package_create(self, change: ChangeRecord, made: Any) -> None:
        package = self.created(change, made, "context_package", "created_at")
        lookups = ReferenceLookups(
            live_artifact=lambda artifact_id: artifact_id in self.live_artifact_ids,
            revision=self.revision,
            relationship=lambda relationship_id: relationship_id in self.live_relationships,
            run=lambda run_id: run_id in self.run_status,
        )
        for ref in package.references:
            if check_reference(ref, lookups) != ref:
                _refuse(f"reference {ref} is not as the API stores it")

    def on_external_reference_create(self, change: ChangeRecord, made: Any) -> None:
        external = self.created(change, made, "external_reference", "recorded_at")
        if external.artifact_id is None:
            if external.revision is not None or external.digest is not None:
                _refuse("a revision needs an artifact_id")
        elif external.revision is None or (
            self.revision(external.artifact_id, external.revision).digest != external.digest
        ):
            raise IntegrityError("it points at a missing artifact revision")

    # -- the state reached is the state held -----------------------------------

    def check_final(self) -> None:
        for collection, deleted_at in self.records["collections"]:
            if (deleted_at is not None) != (collection.id in self.gone_collections):
                _refuse(f"collection {collection.id} is deleted, or not, unlike its changes")
        if set(self.current) != set(self.artifacts):
            unknown = sorted(set(self.current) ^ set(self.artifacts))[0]
            _refuse(f"artifact {unknown!r} has revisions but no record, or the reverse")
        for artifact_id, (artifact, deleted_at) in self.artifacts.items():
            last = self.current[artifact_id]
            first = self.revisions[(artifact_id, 1)]
            if (
                last.revision != artifact.revision
                or _as_of_revision(last) != _as_of_revision(artifact)
                or last.created_at != artifact.updated_at
                or (first.created_at, first.change_sequence)
                != (artifact.created_at, artifact.sequence)
            ):
                _refuse(f"artifact {artifact_id} does not match its revisions")
            if (deleted_at is not None) != (artifact_id in self.gone_artifacts):
                _refuse(f"artifact {artifact_id} is deleted, or not, unlike its changes")
        if set(self.live_relationships) != set(self.relationships):
            _refuse("the relationships held are not those the changes leave")
        for run in self.records["runs"]:
            if self.run_status[run.id].value != run.status:
                _refuse(f"run {run.id} is {run.status}, unlike what its changes leave")
        for step in self.records["steps"]:
            if self.step_status[step.id].value != step.status:
                _refuse(f"step {step.id} is {step.status}, unlike what its changes leave")
        for manifest in self.records["manifests"]:
            run = self.runs.get(manifest.run_id)
            if run is None or (run.operation, run.parameters_json, run.created_at) != (
                manifest.operation,
                manifest.parameters_json,
                manifest.created_at,
            ):
                _refuse(f"manifest of {manifest.run_id!r} does not match a run")
            self.pinned(manifest.inputs + manifest.outputs)
            if any(
                step_id not in self.steps or self.steps[step_id].run_id != run.id
                for step_id in manifest.steps
            ):
                _refuse(f"manifest of {manifest.run_id} names a step of no such run")
