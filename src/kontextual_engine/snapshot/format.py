"""The snapshot format, version 2 (``docs/snapshot-format.md``): its names,
its manifest, the members it may hold, its limits, and one record a line.

::

    snapshot.json          format, version, counts, BLAKE3 of every index file
    index/<kind>.jsonl     one canonical JSON record a line, in sequence order
    objects/ab/cdef...     every body that any revision references

``objects/`` is laid out as a store's (``storage/objects/layout.py``): a body
is at ``objects/<2 hex>/<62 hex>`` of its digest, and only such names are
objects.

Version 1 is still read: it lacks the kinds ``deleted_relationships`` and
``change_sets`` (:data:`KINDS_ADDED_IN_VERSION_2`) and the ``change_set_id``
of change records (:data:`FIELDS_ADDED_IN_VERSION_2`); :mod:`.version1` reads
its records as version 2's.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import models
from ..codec import Convert, field_converter, record_from_json, record_to_json
from ..digests import Digest
from ..errors import KontextualError, SnapshotError
from ..models import canonical_dumps, format_time
from ..storage.objects.layout import FAN, NAME, OBJECTS_DIR, digest_at, digest_hex, object_path

FORMAT = "kontextual-snapshot"
VERSION = 2
MANIFEST = "snapshot.json"
INDEX_DIR = "index"

# Every kind, in the order files are written and checked. Collections and
# artifacts carry a ``deleted_at`` beside their fields, deleted relationships
# a ``deleted_sequence`` (:data:`PAIRED`).
KINDS: dict[str, type] = {
    "collections": models.Collection,
    "artifacts": models.Artifact,
    "revisions": models.ArtifactRevision,
    "relationships": models.Relationship,
    "deleted_relationships": models.Relationship,
    "change_sets": models.ChangeSet,
    "changes": models.ChangeRecord,
    "runs": models.OperationRun,
    "steps": models.WorkflowStep,
    "bundles": models.InputBundle,
    "manifests": models.RunManifest,
    "context_packages": models.ContextPackage,
    "external_references": models.ExternalMemoryReference,
}
# Kinds whose items are ``(record, value)`` pairs: the field the value is
# written as, beside the record's own fields, and how it is read.
PAIRED: dict[str, tuple[str, Convert]] = {
    "collections": ("deleted_at", field_converter("deleted_at", datetime | None)),
    "artifacts": ("deleted_at", field_converter("deleted_at", datetime | None)),
    "deleted_relationships": ("deleted_sequence", field_converter("deleted_sequence", int)),
}

# What version 1 lacks: two kinds, and fields of the records of a kind (with
# the value a version-1 record stands for).
KINDS_ADDED_IN_VERSION_2 = ("deleted_relationships", "change_sets")
FIELDS_ADDED_IN_VERSION_2: dict[str, dict[str, Any]] = {"changes": {"change_set_id": None}}


def kinds_of(version: int) -> list[str]:
    """The kinds a snapshot of ``version`` holds, in :data:`KINDS` order."""
    return [kind for kind in KINDS if version >= 2 or kind not in KINDS_ADDED_IN_VERSION_2]


# snapshot.json is a few hundred bytes; anything near this is not one.
MAX_MANIFEST_BYTES = 1 << 20
# One record: its JSON fields are at most 1 MiB each (models.MAX_JSON_BYTES);
# a context package's list of references may add more.
MAX_LINE_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class SnapshotSummary:
    path: Path
    counts: dict[str, int]
    objects: int
    bytes: int


# -- members ---------------------------------------------------------------


def index_member(kind: str) -> str:
    """The index file of ``kind``: ``index/<kind>.jsonl``."""
    return f"{INDEX_DIR}/{kind}.jsonl"


def index_members(version: int) -> frozenset[str]:
    """The index files of a snapshot of ``version``."""
    return frozenset(index_member(kind) for kind in kinds_of(version))


INDEX_MEMBERS = index_members(VERSION)


def object_member(digest: str) -> str:
    """The member holding the body ``digest`` (validated first): ``objects/ab/cdef...``."""
    return object_path(OBJECTS_DIR, digest_hex(digest))


def object_digest(name: str) -> Digest | None:
    """The digest whose body the member ``name`` holds; None if it is not an object."""
    parts = name.split("/")
    if (
        len(parts) == 3
        and parts[0] == OBJECTS_DIR
        and FAN.fullmatch(parts[1])
        and NAME.fullmatch(parts[2])
    ):
        return digest_at(parts[1], parts[2])
    return None


def is_directory_member(name: str) -> bool:
    """``index``, ``objects`` or a fan-out directory ``objects/ab``."""
    if name in (INDEX_DIR, OBJECTS_DIR):
        return True
    parent, _, fan = name.partition("/")
    return parent == OBJECTS_DIR and bool(FAN.fullmatch(fan))


def is_file_member(name: str) -> bool:
    """The manifest, an index file or an object: the only files a snapshot holds."""
    return name == MANIFEST or name in INDEX_MEMBERS or object_digest(name) is not None


# -- one record a line -----------------------------------------------------


def encode_line(kind: str, item: Any) -> str:
    """One line of ``index/<kind>.jsonl`` (without its newline)."""
    if kind in PAIRED:
        record, value = item
        data = record_to_json(record)
        data[PAIRED[kind][0]] = format_time(value) if isinstance(value, datetime) else value
    else:
        data = record_to_json(item)
    return canonical_dumps(data)  # the store checked every field when it took the record


def decode_line(kind: str, text: str, where: str, version: int = VERSION) -> Any:
    """The record (with its paired value, :data:`PAIRED`) of one line of a
    snapshot of ``version``."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise SnapshotError(f"{where}: not valid JSON ({exc})") from None
    try:
        if not isinstance(data, dict):
            raise SnapshotError(f"{where}: expected a JSON object")
        if version < 2:
            for field, value in FIELDS_ADDED_IN_VERSION_2.get(kind, {}).items():
                if field in data:
                    raise SnapshotError(
                        f"{where}: unexpected field {field!r} (version {version} has none)"
                    )
                data[field] = value
        if kind not in PAIRED:
            return record_from_json(KINDS[kind], data, where)
        field, convert = PAIRED[kind]
        if field not in data:
            raise SnapshotError(f"{where}: missing field {field!r}")
        value = data.pop(field)
        record = record_from_json(KINDS[kind], data, where)
        return record, convert(value, f"{where}: field {field!r}")
    except SnapshotError:
        raise
    except KontextualError as exc:  # a field the codec refused; the message says where
        raise SnapshotError(str(exc)) from None
