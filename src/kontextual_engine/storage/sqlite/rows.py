"""Records to rows and back, by column name.

Each table's columns are listed once (:class:`Columns`): column name, record
field and, where the stored form differs, the converters between the two.
The SELECT column list, the INSERT and UPDATE statements, the values they
bind and the record built from a row all derive from that one list. Records
are built positionally from the dataclass field order, which is checked
against the list when this module is imported; records with parts kept in a
child table (bundles, context packages, manifests) are built by keyword.

A row that cannot be read (a NULL or a wrong type where the schema allows
none, as a damaged page can yield) raises :class:`DamagedStoreError` naming
its table, never a raw ``TypeError`` or ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, TypeVar, cast

from ...errors import DamagedStoreError
from ...models import (
    Artifact,
    ArtifactRef,
    ArtifactRevision,
    ChangeRecord,
    ChangeSet,
    Collection,
    ContextPackage,
    ContextReference,
    ExternalMemoryReference,
    InputBundle,
    OperationRun,
    Relationship,
    RunManifest,
    WorkflowStep,
    format_time,
)
from .failures import DAMAGE_ADVICE

R = TypeVar("R")


def parse_time(value: str) -> datetime:
    """Parse what :func:`format_time` wrote (``...T..:..:...ffffffZ``), fast."""
    return datetime.fromisoformat(value[:-1]).replace(tzinfo=timezone.utc)


def parse_maybe_time(value: str | None) -> datetime | None:
    return None if value is None else parse_time(value)


def format_maybe_time(moment: datetime | None) -> str | None:
    return None if moment is None else format_time(moment)


def _steps_json(steps: tuple[str, ...]) -> str:
    return json.dumps(list(steps), separators=(",", ":"), ensure_ascii=False)


def _steps(stored: str) -> tuple[str, ...]:
    return tuple(json.loads(stored))


def damaged_row(table: str, exc: BaseException) -> DamagedStoreError:
    """The error for a row of ``table`` that cannot be turned into a record."""
    return DamagedStoreError(
        f"the index is damaged (table {table}): a stored row cannot be read "
        f"({type(exc).__name__}: {exc}); {DAMAGE_ADVICE}"
    )


@dataclass(frozen=True, slots=True)
class Column:
    """One column: its name, the record field it holds, and the converters from
    the stored value to the field's (``load``) and back (``store``), if any."""

    name: str
    field: str
    load: Callable[[Any], Any] | None = None
    store: Callable[[Any], Any] | None = None


def moment(name: str) -> Column:
    """A timestamp column, stored as :func:`format_time` text."""
    return Column(name, name, parse_time, format_time)


def maybe_moment(name: str) -> Column:
    """A timestamp column that may be NULL."""
    return Column(name, name, parse_maybe_time, format_maybe_time)


def json_text(name: str) -> Column:
    """A JSON column, held by the record's ``<name>_json`` field."""
    return Column(name, f"{name}_json")


@dataclass(frozen=True, slots=True)
class Update:
    """An UPDATE of some columns of one row, found by its key column."""

    sql: str
    positions: tuple[int, ...]
    columns: Columns[Any]

    def values(self, record: Any) -> tuple[Any, ...]:
        """The values to bind: the updated columns, then the key."""
        row = self.columns.values(record)
        return tuple(row[position] for position in self.positions)


class Columns(Generic[R]):
    """The columns of ``table`` that hold records of type ``record``.

    ``columns`` are names (a column holding the field of that name, as it
    is) or :class:`Column`. ``alias`` prefixes the SELECT list (for a
    statement that names the table ``<table> <alias>``). ``keys`` are leading
    columns that are not fields of the record (a child row's parent id and
    position): the INSERT binds them before the record's own. ``parts`` are
    fields of the record not kept in this table, passed to :meth:`read`.
    """

    def __init__(
        self,
        table: str,
        record: type[R],
        columns: Sequence[str | Column],
        *,
        alias: str = "",
        keys: Sequence[str] = (),
        parts: Sequence[str] = (),
    ) -> None:
        self.table = table
        self.record = record
        self.columns = tuple(c if isinstance(c, Column) else Column(c, c) for c in columns)
        self.names = tuple(c.name for c in self.columns)
        self.fields = tuple(c.field for c in self.columns)
        self.parts = tuple(parts)
        declared = [f.name for f in dataclasses.fields(cast(Any, record))]
        if (
            (list(self.fields) != declared)
            if not parts
            else (sorted((*self.fields, *parts)) != sorted(declared))
        ):
            raise TypeError(
                f"the columns of {table} ({', '.join(self.fields)}) do not match the "
                f"fields of {record.__name__} ({', '.join(declared)})"
            )
        if len(self.columns) < 2:
            raise TypeError(f"{table}: a record of one column needs no Columns")
        prefix = f"{alias}." if alias else ""
        # What a statement names the table by: with its alias, if it has one.
        self.source = f"{table} {alias}" if alias else table
        self.select = ", ".join(prefix + name for name in self.names)
        stored = (*keys, *self.names)
        self.insert = (
            f"INSERT INTO {table} ({', '.join(stored)}) VALUES ({', '.join('?' * len(stored))})"
        )
        self._loads = tuple((i, c.load) for i, c in enumerate(self.columns) if c.load is not None)
        self._stores = tuple(
            (i, c.store) for i, c in enumerate(self.columns) if c.store is not None
        )
        self._get = operator.attrgetter(*self.fields)

    def select_as(self, alias: str) -> str:
        """The SELECT list of these columns of the table named ``alias`` in a statement."""
        return ", ".join(f"{alias}.{name}" for name in self.names)

    def read(self, row: Sequence[Any], /, **parts: Any) -> R:
        """The record a row of exactly these columns holds (with ``parts``)."""
        try:
            values = list(row)
            for index, load in self._loads:
                values[index] = load(values[index])
            if self.parts:
                return self.record(**dict(zip(self.fields, values, strict=True)), **parts)
            return self.record(*values)
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise damaged_row(self.table, exc) from exc

    def values(self, record: Any, *keys: Any) -> tuple[Any, ...]:
        """The values of these columns for ``record``, after ``keys``, in
        :attr:`insert` order."""
        values = list(self._get(record))
        for index, store in self._stores:
            values[index] = store(values[index])
        return (*keys, *values)

    def update(self, key: str, names: Sequence[str] | None = None) -> Update:
        """An UPDATE of ``names`` (every column but ``key`` by default) of the
        row whose ``key`` column equals the record's."""
        changed = [n for n in self.names if n != key] if names is None else list(names)
        return Update(
            f"UPDATE {self.table} SET {', '.join(f'{n} = ?' for n in changed)} WHERE {key} = ?",
            tuple(self.names.index(n) for n in (*changed, key)),
            self,
        )


ARTIFACTS = Columns(
    "artifacts",
    Artifact,
    (
        "id",
        "collection_id",
        "name",
        "artifact_type",
        "media_type",
        "digest",
        "size",
        "revision",
        json_text("metadata"),
        json_text("provenance"),
        moment("created_at"),
        moment("updated_at"),
        "sequence",
        "run_id",
    ),
    alias="a",
)
# What an update of an artifact rewrites: all but its identity and creation.
ARTIFACT_UPDATE = ARTIFACTS.update(
    "id",
    (
        "name",
        "artifact_type",
        "media_type",
        "digest",
        "size",
        "revision",
        "metadata",
        "provenance",
        "updated_at",
        "run_id",
    ),
)
REVISIONS = Columns(
    "revisions",
    ArtifactRevision,
    (
        "artifact_id",
        "revision",
        "collection_id",
        "name",
        "artifact_type",
        "media_type",
        "digest",
        "size",
        json_text("metadata"),
        json_text("provenance"),
        moment("created_at"),
        "change_sequence",
        "run_id",
    ),
)
COLLECTIONS = Columns(
    "collections",
    Collection,
    ("id", "name", "description", json_text("metadata"), moment("created_at"), "sequence"),
)
_RELATIONSHIP_COLUMNS = (
    "id",
    "source_id",
    "target_id",
    "relationship_type",
    json_text("metadata"),
    moment("created_at"),
    "sequence",
)
RELATIONSHIPS = Columns("relationships", Relationship, _RELATIONSHIP_COLUMNS)
# A deleted relationship keeps its columns (and the sequence of its deletion).
DELETED_RELATIONSHIPS = Columns("deleted_relationships", Relationship, _RELATIONSHIP_COLUMNS)
CHANGES = Columns(
    "changes",
    ChangeRecord,
    (
        "sequence",
        "entity_kind",
        "entity_id",
        "action",
        moment("timestamp"),
        "revision",
        "old_digest",
        "new_digest",
        json_text("details"),
        Column("change_set", "change_set_id"),
    ),
)
CHANGE_SETS = Columns(
    "change_sets", ChangeSet, ("id", "sequence", moment("timestamp"), "actor", "message")
)
RUNS = Columns(
    "runs",
    OperationRun,
    (
        "id",
        "operation",
        "status",
        json_text("parameters"),
        "parent_run_id",
        moment("created_at"),
        maybe_moment("started_at"),
        maybe_moment("finished_at"),
        "error",
        json_text("diagnostics"),
        json_text("holder"),
        maybe_moment("lease_expires_at"),
        maybe_moment("heartbeat_at"),
        "sequence",
    ),
)
RUN_UPDATE = RUNS.update("id")
STEPS = Columns(
    "steps",
    WorkflowStep,
    (
        "id",
        "run_id",
        "position",
        "name",
        "status",
        moment("created_at"),
        maybe_moment("started_at"),
        maybe_moment("finished_at"),
        json_text("diagnostics"),
        "sequence",
    ),
)
STEP_UPDATE = STEPS.update("id")
EXTERNAL_REFERENCES = Columns(
    "external_references",
    ExternalMemoryReference,
    (
        "id",
        "system",
        "external_id",
        "uri",
        "artifact_id",
        "revision",
        "digest",
        "recorded_by",
        json_text("metadata"),
        moment("recorded_at"),
        "sequence",
    ),
)

# Records with ordered parts: the parent row, and child rows keyed by the
# parent's id and a position.
_PINNED = ("artifact_id", "revision", "digest", "role")
BUNDLES = Columns(
    "bundles",
    InputBundle,
    ("id", "run_id", json_text("parameters"), moment("created_at"), "sequence"),
    alias="b",
    parts=("inputs",),
)
BUNDLE_INPUTS = Columns(
    "bundle_inputs", ArtifactRef, _PINNED, alias="i", keys=("bundle_id", "position")
)
MANIFESTS = Columns(
    "manifests",
    RunManifest,
    (
        "run_id",
        "operation",
        "status",
        json_text("parameters"),
        Column("steps", "steps", _steps, _steps_json),
        json_text("diagnostics"),
        "error",
        moment("created_at"),
        maybe_moment("started_at"),
        maybe_moment("finished_at"),
        Column("final", "final", bool, int),
    ),
    alias="m",
    parts=("inputs", "outputs"),
)
MANIFEST_REFS = Columns(
    "manifest_refs", ArtifactRef, _PINNED, keys=("run_id", "direction", "position")
)
CONTEXT_PACKAGES = Columns(
    "context_packages",
    ContextPackage,
    ("id", "name", json_text("metadata"), moment("created_at"), "sequence"),
    alias="p",
    parts=("references",),
)
CONTEXT_REFERENCES = Columns(
    "context_references",
    ContextReference,
    ("kind", "target_id", "revision", "digest", "system", "uri", "note"),
    alias="r",
    keys=("package_id", "position"),
)

# A bundle row followed by one of its inputs (NULLs for a bundle without inputs).
BUNDLE_SELECT = (
    f"SELECT {BUNDLES.select}, {BUNDLE_INPUTS.select} "
    "FROM bundles b LEFT JOIN bundle_inputs i ON i.bundle_id = b.id"
)
# A package row followed by one of its references (NULLs for an empty package).
PACKAGE_SELECT = (
    f"SELECT {CONTEXT_PACKAGES.select}, {CONTEXT_REFERENCES.select} "
    "FROM context_packages p LEFT JOIN context_references r ON r.package_id = p.id"
)
# A manifest's references: its run, their direction, the pinned revision.
MANIFEST_REF_SELECT = f"SELECT run_id, direction, {MANIFEST_REFS.select} FROM manifest_refs"


def _grouped(rows: Iterable[Any], width: int) -> Iterator[tuple[Any, list[Any]]]:
    """Split rows of ``parent columns + child columns`` (from a LEFT JOIN ordered by
    parent) into ``(parent columns, [child rows])``; a parent without children
    has one row whose child columns are all NULL."""
    head: Any = None
    children: list[Any] = []
    for row in rows:
        if head is None or row[0] != head[0]:
            if head is not None:
                yield head, children
            head, children = row[:width], []
        if row[width] is not None:
            children.append(row[width:])
    if head is not None:
        yield head, children


def read_bundles(rows: Iterable[Any]) -> list[InputBundle]:
    """Bundles from :data:`BUNDLE_SELECT` rows ordered by bundle, then position."""
    return [
        BUNDLES.read(head, inputs=tuple(map(BUNDLE_INPUTS.read, refs)))
        for head, refs in _grouped(rows, len(BUNDLES.columns))
    ]


def read_packages(rows: Iterable[Any]) -> list[ContextPackage]:
    """Packages from :data:`PACKAGE_SELECT` rows ordered by package, then position."""
    return [
        CONTEXT_PACKAGES.read(head, references=tuple(map(CONTEXT_REFERENCES.read, refs)))
        for head, refs in _grouped(rows, len(CONTEXT_PACKAGES.columns))
    ]


def read_manifest(row: Any, refs: Sequence[Any]) -> RunManifest:
    """A manifest from its row and its :data:`MANIFEST_REF_SELECT` rows (ordered by
    direction, position)."""
    return MANIFESTS.read(
        row,
        inputs=tuple(MANIFEST_REFS.read(r[2:]) for r in refs if r[1] == "input"),
        outputs=tuple(MANIFEST_REFS.read(r[2:]) for r in refs if r[1] == "output"),
    )
