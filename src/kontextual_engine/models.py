"""Plain data: the records the repository hands out, and canonical JSON.

Records are frozen dataclasses. JSON-valued fields (metadata, provenance,
parameters, diagnostics) are held as canonical JSON text and decoded on
access, so a caller who mutates what it got back cannot change the record,
and two records are equal exactly when their JSON is type-exactly equal.

No I/O happens here.
"""

from __future__ import annotations

import enum
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Union

from .errors import IllegalTransitionError, ValidationError

if TYPE_CHECKING:
    from .storage.pipeline import StoredBody

JSON = Union[None, bool, int, float, str, list["JSON"], dict[str, "JSON"]]  # noqa: UP007
JSONObject = dict[str, JSON]

# Deeper documents are almost always a bug or an attack (recursion bombs);
# 32 levels is far beyond any real metadata and well inside Python's stack.
MAX_JSON_DEPTH = 32
# Metadata belongs in the index, bodies in the object store: 1 MiB of
# canonical JSON per field keeps index rows small and listing fast.
MAX_JSON_BYTES = 1 << 20
# SQLite's JSON functions and INTEGER columns are 64-bit; larger integers
# would silently become floats there, so they are refused everywhere.
MIN_JSON_INT = -(1 << 63)
MAX_JSON_INT = (1 << 63) - 1
# Names are paths-like identifiers people type; 1024 is the common PATH_MAX.
MAX_NAME_LENGTH = 1024
# Not in names: C0 controls, DEL and the C1 controls (U+0080..U+009F: U+009B
# is an 8-bit CSI that some terminals obey), and lone surrogates.
_NAME_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _check_json(value: object, where: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValidationError(f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and "\x00" in value:
            raise ValidationError(f"{where}: string contains a NUL character")
        return
    if isinstance(value, int):
        if not MIN_JSON_INT <= value <= MAX_JSON_INT:
            raise ValidationError(f"{where}: integer {value} is outside the signed 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{where}: {value!r} is not representable in JSON")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{where}: key {key!r} is not a string")
            if "\x00" in key:
                raise ValidationError(f"{where}: key {key!r} contains a NUL character")
            _check_json(item, f"{where}[{key!r}]", depth + 1)
        return
    raise ValidationError(f"{where}: {type(value).__name__} value {value!r} is not JSON")


def _as_dicts(value: object) -> object:
    """``value`` (checked by :func:`_check_json`) with every mapping a dict: the
    encoder writes only dicts as objects, and any mapping is a JSON object."""
    if isinstance(value, Mapping):
        return {key: _as_dicts(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_dicts(item) for item in value]
    return value


def _plain_json(value: object, depth: int) -> bool:
    """Whether :func:`_check_json` accepts ``value``, decided without building its
    error texts: the check of every value written in bulk. ``False`` also for
    what it is unsure of (subclasses, other mappings, documents near the depth
    limit); :func:`_check_json` then decides, and names what is wrong."""
    if type(value) is dict:
        if depth >= MAX_JSON_DEPTH:
            return False
        for key, item in value.items():
            if type(key) is not str or "\x00" in key:
                return False
            if type(item) is str:
                if "\x00" in item:
                    return False
            elif type(item) is int:
                if not MIN_JSON_INT <= item <= MAX_JSON_INT:
                    return False
            elif item is not None and type(item) is not bool and not _plain_json(item, depth + 1):
                return False
        return True
    if type(value) is str:
        return "\x00" not in value
    if type(value) is int:
        return MIN_JSON_INT <= value <= MAX_JSON_INT
    if type(value) is float:
        return math.isfinite(value)
    if value is None or type(value) is bool:
        return True
    if type(value) is list or type(value) is tuple:
        return depth < MAX_JSON_DEPTH and all(_plain_json(item, depth + 1) for item in value)
    return False


def canonical_json(value: object, where: str = "value") -> str:
    """Encode ``value`` as canonical JSON (sorted keys, no spaces, no NaN) or raise."""
    if not _plain_json(value, 0):
        _check_json(value, where, 0)
        value = _as_dicts(value)
    text = _encode(value)
    if text.isascii():  # then no lone surrogate, and one byte per character
        size = len(text)
    else:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ValidationError(f"{where}: contains a lone surrogate, not valid Unicode") from exc
    if size > MAX_JSON_BYTES:
        raise ValidationError(f"{where}: JSON larger than {MAX_JSON_BYTES} bytes")
    return text


# One encoder for every canonical text: json.dumps builds a new one per call.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
# The canonical JSON text of a string: what _CANONICAL writes for one.
json_string = json.encoder.encode_basestring


def _one_shot_encoder() -> Callable[[object], str]:
    """``_CANONICAL.encode``, without the C encoder it builds anew on every call:
    that one built once, where the json module has it (with the same arguments
    ``JSONEncoder.iterencode`` passes), else ``_CANONICAL.encode`` itself."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _CANONICAL.encode
    try:
        encoder = make(
            None,  # no cycle check: every value passed is checked first (depth)
            _CANONICAL.default,
            json.encoder.encode_basestring,
            None,
            ":",
            ",",
            True,
            False,
            False,
        )
    except TypeError:  # another signature in another Python
        return _CANONICAL.encode

    def encode(value: object) -> str:
        if isinstance(value, str):
            return json_string(value)
        return "".join(encoder(value, 0))

    return encode


_encode = _one_shot_encoder()


def canonical_dumps(value: object) -> str:
    """The canonical text of a value already checked (records read back from a store)."""
    return _encode(value)


def canonical_object(value: Mapping[str, Any] | None, where: str) -> str:
    """Canonical JSON of a JSON object (``None`` means ``{}``) or raise."""
    if value is None:
        return "{}"
    if not isinstance(value, Mapping):
        raise ValidationError(f"{where} must be a JSON object, got {type(value).__name__}")
    return canonical_json(value, where)


def check_name(value: object, what: str) -> str:
    """A name: a non-empty string without control characters."""
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > MAX_NAME_LENGTH:
        raise ValidationError(f"{what} {value[:40]!r}... is longer than {MAX_NAME_LENGTH}")
    if _NAME_FORBIDDEN.search(value):
        raise ValidationError(f"{what} {value!r} contains a control character or lone surrogate")
    if value != value.strip():
        raise ValidationError(f"{what} {value!r} has leading or trailing white space")
    return value


def check_text(value: object, what: str) -> str:
    """Free text (descriptions, errors, notes, external ids): any string SQLite can store.

    Refused: non-strings, NUL characters and lone surrogates (not encodable as UTF-8).
    """
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise ValidationError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} {value!r} contains a lone surrogate") from None
    return value


# -- the rules of each field a caller names ---------------------------------
# One function per rule: the repository contract applies them to what callers
# pass, and the snapshot importer to every record it reads, so a snapshot can
# hold nothing that the API would have refused.


def check_collection_fields(name: object, description: object) -> None:
    check_name(name, "collection name")
    check_text(description, "collection description")


def check_artifact_name(value: object) -> str:
    return check_name(value, "artifact name")


def check_artifact_type(value: object) -> str:
    return check_name(value, "artifact type")


def check_media_type(value: object) -> str | None:
    """A media type, or ``None`` (none given)."""
    return None if value is None else check_name(value, "media type")


def check_relationship_type(value: object) -> str:
    return check_name(value, "relationship type")


def check_operation(value: object) -> str:
    return check_name(value, "operation")


def check_run_error(value: object) -> str | None:
    return None if value is None else check_text(value, "run error")


def check_step_name(value: object) -> str:
    return check_name(value, "step name")


def check_input_role(value: object) -> str | None:
    return None if value is None else check_name(value, "input role")


def check_package_name(value: object) -> str:
    return check_name(value, "context package name")


def check_external_fields(
    system: object, external_id: object, recorded_by: object, uri: object
) -> None:
    """The caller-given fields of an external memory reference."""
    check_name(system, "external system")
    check_name(recorded_by, "recorded_by")
    if not check_text(external_id, "external id"):
        raise ValidationError("external id must not be empty")
    if uri is not None:
        check_text(uri, "uri")


def utc(moment: datetime) -> datetime:
    """Check a timestamp is timezone-aware and return it in UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError(f"timestamp {moment!r} is not timezone-aware")
    return moment.astimezone(timezone.utc)


# One write formats the same moment for several rows (artifact, revision,
# change record); a small cache saves most of strftime's cost in bulk ingest.
@functools.lru_cache(maxsize=64)
def format_time(moment: datetime) -> str:
    """The one text form of a timestamp: ISO 8601, microseconds, ``Z``."""
    return utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Exactly what format_time writes; strptime alone would also take "0:0:1.5Z".
_CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")


def parse_time(text: str) -> datetime:
    """The inverse of :func:`format_time`; anything but its canonical form is refused."""
    if not isinstance(text, str) or not _CANONICAL_TIME.fullmatch(text):
        raise ValidationError(f"invalid timestamp {text!r}")
    try:
        return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)
    except ValueError as exc:  # 2024-02-30 and the like
        raise ValidationError(f"invalid timestamp {text!r}") from exc


def _decode(text: str) -> Any:
    return json.loads(text)


class ChangeAction(str, enum.Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    TRANSITION = "transition"


class EntityKind(str, enum.Enum):
    COLLECTION = "collection"
    ARTIFACT = "artifact"
    RELATIONSHIP = "relationship"
    RUN = "run"
    STEP = "step"
    BUNDLE = "bundle"
    CONTEXT_PACKAGE = "context_package"
    EXTERNAL_REFERENCE = "external_reference"


@dataclass(frozen=True, slots=True)
class Collection:
    id: str
    name: str
    description: str
    metadata_json: str
    created_at: datetime
    sequence: int

    @property
    def metadata(self) -> JSONObject:
        return _decode(self.metadata_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Artifact:
    """The live state of an artifact: its current revision."""

    id: str
    collection_id: str
    name: str
    artifact_type: str
    media_type: str | None
    digest: str
    size: int
    revision: int
    metadata_json: str
    provenance_json: str
    created_at: datetime
    updated_at: datetime
    sequence: int
    run_id: str | None = None

    @property
    def metadata(self) -> JSONObject:
        return _decode(self.metadata_json)  # type: ignore[no-any-return]

    @property
    def provenance(self) -> JSONObject:
        return _decode(self.provenance_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ArtifactRevision:
    """One revision of an artifact, kept after the artifact is deleted."""

    artifact_id: str
    revision: int
    collection_id: str
    name: str
    artifact_type: str
    media_type: str | None
    digest: str
    size: int
    metadata_json: str
    provenance_json: str
    created_at: datetime
    change_sequence: int
    run_id: str | None = None

    @property
    def metadata(self) -> JSONObject:
        return _decode(self.metadata_json)  # type: ignore[no-any-return]

    @property
    def provenance(self) -> JSONObject:
        return _decode(self.provenance_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Relationship:
    id: str
    source_id: str
    target_id: str
    relationship_type: str
    metadata_json: str
    created_at: datetime
    sequence: int

    @property
    def metadata(self) -> JSONObject:
        return _decode(self.metadata_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One entry of the change feed. ``sequence`` is global, gap-free, monotonic."""

    sequence: int
    entity_kind: str
    entity_id: str
    action: str
    timestamp: datetime
    revision: int | None = None
    old_digest: str | None = None
    new_digest: str | None = None
    details_json: str = "{}"
    change_set_id: str | None = None

    @property
    def details(self) -> JSONObject:
        return _decode(self.details_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """Changes made together: the records of one outermost transaction.

    ``sequence`` is that of its first change record; ``timestamp`` is the time
    every record of the set carries (the ``at`` the writer gave, or the clock
    at its first change). ``actor`` and ``message`` say who made it and why.
    """

    id: str
    sequence: int
    timestamp: datetime
    actor: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class ArtifactHistory:
    """One artifact that had a name: every revision it ever had and its change
    records (creation, updates, renames, deletion), oldest first."""

    artifact_id: str
    revisions: tuple[ArtifactRevision, ...]
    changes: tuple[ChangeRecord, ...]

    @property
    def deleted(self) -> bool:
        return bool(self.changes) and self.changes[-1].action == ChangeAction.DELETE.value


@dataclass(frozen=True, slots=True)
class NewArtifact:
    """Input to the bulk API: one artifact to create or update by name."""

    name: str
    content: bytes | StoredBody  # a StoredBody: already in the body store
    artifact_type: str
    media_type: str | None = None
    metadata: Mapping[str, Any] | None = None
    provenance: Mapping[str, Any] | None = None


class MetadataMode(str, enum.Enum):
    """What ``put_artifacts`` does with the metadata of an artifact that exists.

    A created artifact always gets the item's metadata.
    """

    REPLACE = "replace"  # the item's metadata becomes the whole object
    MERGE = "merge"  # the item's top-level keys are set on top of the existing ones
    KEEP = "keep"  # the existing metadata stays as it is


class PutOutcome(str, enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    RENAMED = "renamed"
    DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class Rename:
    """Input to :meth:`~.storage.contract.KnowledgeRepository.apply`: give the live
    artifact ``name`` the name ``new_name``."""

    name: str
    new_name: str


@dataclass(frozen=True, slots=True)
class Delete:
    """Input to :meth:`~.storage.contract.KnowledgeRepository.apply`: delete the live
    artifact ``name``."""

    name: str


@dataclass(frozen=True, slots=True)
class PutResult:
    artifact: Artifact
    outcome: PutOutcome


@dataclass(frozen=True, slots=True)
class RelatedTo:
    """Query filter: artifacts related to ``artifact_id``.

    ``direction`` is seen from ``artifact_id``: ``outgoing`` finds the targets
    of its relationships, ``incoming`` the sources of relationships pointing
    at it, ``both`` either.
    """

    artifact_id: str
    relationship_type: str | None = None
    direction: str = "both"


QUERY_ORDERS = ("relevance", "sequence")


@dataclass(frozen=True, slots=True)
class Query:
    """Filters combined with AND. ``None`` means "no filter on this field".

    ``text`` is a word query (see ``docs/contract.md``): its results come by
    BM25 relevance, best first, unless ``order="sequence"``. Every other query
    comes in creation order (ascending ``Artifact.sequence``). ``after`` is a
    cursor for creation order: only artifacts whose sequence is greater are
    returned, so passing the last result's ``sequence`` gives the next page.
    With ``substring=True``, ``text`` is instead an AND of case-folded
    substrings, checked by reading every candidate body (linear in the store).
    ``as_of`` (a change-set id, a change sequence or a timezone-aware time)
    asks of the store as it was then: the artifacts live then, as they were.
    """

    ids: tuple[str, ...] | None = None
    collection_id: str | None = None
    name: str | None = None
    digest: str | None = None
    artifact_type: str | None = None
    metadata: Mapping[str, Any] | None = field(default=None, hash=False)
    text: str | None = None
    related_to: RelatedTo | None = None
    limit: int | None = None
    after: int | None = None
    order: str | None = None
    substring: bool = False
    as_of: str | int | datetime | None = None


@dataclass(frozen=True, slots=True)
class Snippet:
    """A short passage of a body, on one line, with the ``[start, end)`` offsets
    of the words that matched the query."""

    text: str
    highlights: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SearchHit:
    """One result of :meth:`~.storage.contract.KnowledgeRepository.search`.

    ``score`` is the BM25 relevance (higher is better) when results are
    ranked, else ``None``; ``snippet`` is ``None`` when not asked for or when
    the body is not searchable text.
    """

    artifact: Artifact
    score: float | None
    snippet: Snippet | None


# -- workflow runs ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pin:
    """An input to pin: an artifact, at a revision (default: its current one)."""

    artifact_id: str
    revision: int | None = None
    role: str | None = None


class RunStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"


# The lifecycle of runs and steps. ``abandoned`` is set by the store, never
# by a caller, when the holder of a running run is gone or its lease expired;
# an abandoned run may be resumed (running again, under a new holder) or
# closed as failed or cancelled. Terminal states have no way out.
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset({RunStatus.RUNNING, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset(
        {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.ABANDONED}
    ),
    RunStatus.ABANDONED: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELLED: frozenset(),
}
TERMINAL = frozenset(status for status, nexts in TRANSITIONS.items() if not nexts)


def check_transition(what: str, current: RunStatus, target: RunStatus) -> None:
    """Refuse a status change of a run or step (``what``) that the lifecycle forbids."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransitionError(f"{what} cannot go from {current.value} to {target.value}")


@dataclass(frozen=True, slots=True)
class OperationRun:
    """One execution of an operation, with who holds it while it runs.

    ``holder_json`` names the process running it (host, pid, process start
    time); ``lease_expires_at`` is renewed by heartbeats. A running run whose
    holder is gone or whose lease expired is marked ``abandoned``.
    """

    id: str
    operation: str
    status: str
    parameters_json: str
    parent_run_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    diagnostics_json: str
    holder_json: str
    lease_expires_at: datetime | None
    heartbeat_at: datetime | None
    sequence: int

    @property
    def parameters(self) -> JSONObject:
        return _decode(self.parameters_json)  # type: ignore[no-any-return]

    @property
    def diagnostics(self) -> JSONObject:
        return _decode(self.diagnostics_json)  # type: ignore[no-any-return]

    @property
    def holder(self) -> JSONObject:
        return _decode(self.holder_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class WorkflowStep:
    id: str
    run_id: str
    position: int
    name: str
    status: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    diagnostics_json: str
    sequence: int

    @property
    def diagnostics(self) -> JSONObject:
        return _decode(self.diagnostics_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ArtifactRef:
    """An artifact pinned to one revision and its digest."""

    artifact_id: str
    revision: int
    digest: str
    role: str | None = None


@dataclass(frozen=True, slots=True)
class InputBundle:
    """What a run consumed: pinned artifact revisions plus parameters."""

    id: str
    run_id: str
    inputs: tuple[ArtifactRef, ...]
    parameters_json: str
    created_at: datetime
    sequence: int

    @property
    def parameters(self) -> JSONObject:
        return _decode(self.parameters_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class RunManifest:
    """A run's inputs, outputs, steps, diagnostics and timestamps as one record.

    Stored when the run reaches a terminal or abandoned state; before that,
    ``get_manifest`` assembles the same record from the live state
    (``final`` tells which).
    """

    run_id: str
    operation: str
    status: str
    parameters_json: str
    inputs: tuple[ArtifactRef, ...]
    outputs: tuple[ArtifactRef, ...]
    steps: tuple[str, ...]
    diagnostics_json: str
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    final: bool

    @property
    def parameters(self) -> JSONObject:
        return _decode(self.parameters_json)  # type: ignore[no-any-return]

    @property
    def diagnostics(self) -> JSONObject:
        return _decode(self.diagnostics_json)  # type: ignore[no-any-return]


# -- context packages and external memory references ----------------------


class ReferenceKind(str, enum.Enum):
    ARTIFACT = "artifact"
    RELATIONSHIP = "relationship"
    RUN = "run"
    EXTERNAL = "external"


@dataclass(frozen=True, slots=True)
class ContextReference:
    """One entry of a context package.

    ``artifact``: ``target_id`` is an artifact id, ``revision`` optional (a
    pinned revision; the digest is then recorded too). ``relationship`` and
    ``run``: ``target_id`` is its id. ``external``: ``system`` and
    ``target_id`` (the external id) and optional ``uri``; never checked.
    """

    kind: str
    target_id: str
    revision: int | None = None
    digest: str | None = None
    system: str | None = None
    uri: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ContextPackage:
    id: str
    name: str
    metadata_json: str
    references: tuple[ContextReference, ...]
    created_at: datetime
    sequence: int

    @property
    def metadata(self) -> JSONObject:
        return _decode(self.metadata_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class ExternalMemoryReference:
    """A record in another memory system, held opaquely; never interpreted.

    It may point at an artifact revision of this store (which then counts as
    referenced for garbage collection). ``recorded_by`` and ``recorded_at``
    say who recorded it and when.
    """

    id: str
    system: str
    external_id: str
    uri: str | None
    artifact_id: str | None
    revision: int | None
    digest: str | None
    recorded_by: str
    metadata_json: str
    recorded_at: datetime
    sequence: int

    @property
    def metadata(self) -> JSONObject:
        return _decode(self.metadata_json)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Impact:
    """One artifact revision derived, directly or not, from the queried input."""

    artifact_id: str
    revision: int
    digest: str
    depth: int
    via: str
    via_id: str
