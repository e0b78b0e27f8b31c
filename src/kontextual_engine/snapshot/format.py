"""The snapshot format, version 1 (``docs/snapshot-format.md``): its names,
its manifest, the members it may hold, its limits, and one record a line.

::

    snapshot.json          format, version, counts, BLAKE3 of every index file
    index/<kind>.jsonl     one canonical JSON record a line, in sequence order
    objects/ab/cdef...     every body that any revision references

``objects/`` is laid out as a store's (``storage/objects/layout.py``): a body
is at ``objects/<2 hex>/<62 hex>`` of its digest, and only such names are
objects.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import models
from ..codec import field_converter, record_from_json, record_to_json
from ..digests import Digest
from ..errors import KontextualError, SnapshotError
from ..models import canonical_dumps, format_time
from ..storage.objects.layout import FAN, NAME, OBJECTS_DIR, digest_at, digest_hex, object_path

FORMAT = "kontextual-snapshot"
VERSION = 1
MANIFEST = "snapshot.json"
INDEX_DIR = "index"

# Every kind, in the order files are written and checked. Collections and
# artifacts carry a ``deleted_at`` beside their fields.
KINDS: dict[str, type] = {
    "collections": models.Collection,
    "artifacts": models.Artifact,
    "revisions": models.ArtifactRevision,
    "relationships": models.Relationship,
    "changes": models.ChangeRecord,
    "runs": models.OperationRun,
    "steps": models.WorkflowStep,
    "bundles": models.InputBundle,
    "manifests": models.RunManifest,
    "context_packages": models.ContextPackage,
    "external_references": models.ExternalMemoryReference,
}
WITH_DELETION = ("collections", "artifacts")

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


INDEX_MEMBERS = frozenset(index_member(kind) for kind in KINDS)


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

_DELETED_AT = field_converter("deleted_at", datetime | None)


def encode_line(kind: str, item: Any) -> str:
    """One line of ``index/<kind>.jsonl`` (without its newline)."""
    if kind in WITH_DELETION:
        record, deleted_at = item
        data = record_to_json(record)
        data["deleted_at"] = None if deleted_at is None else format_time(deleted_at)
    else:
        data = record_to_json(item)
    return canonical_dumps(data)  # the store checked every field when it took the record


def decode_line(kind: str, text: str, where: str) -> Any:
    """The record (with its ``deleted_at`` for collections and artifacts) of one line."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise SnapshotError(f"{where}: not valid JSON ({exc})") from None
    try:
        if kind not in WITH_DELETION:
            return record_from_json(KINDS[kind], data, where)
        if not isinstance(data, dict) or "deleted_at" not in data:
            raise SnapshotError(f"{where}: missing field 'deleted_at'")
        deleted = data.pop("deleted_at")
        record = record_from_json(KINDS[kind], data, where)
        return record, _DELETED_AT(deleted, where)
    except SnapshotError:
        raise
    except KontextualError as exc:  # a field the codec refused; the message says where
        raise SnapshotError(str(exc)) from None
