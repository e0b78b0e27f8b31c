"""The repository contract: ``KnowledgeRepository``.

The public methods here *are* the contract. They validate input, apply the
semantics documented in ``docs/contract.md`` and write change records;
a backend supplies only storage primitives (the ``_``-prefixed abstract
methods) and its own ``transaction()``. So every backend shares one
implementation of every rule, and a rule changes in one place.

Semantics, for every backend:

* Every listing is in creation order (ascending ``sequence``), where an
  entity's ``sequence`` is the sequence number of the change record that
  created it.
* Every mutation appends exactly one :class:`ChangeRecord` per entity it
  changes; sequence numbers are global, start at 1, and have no gaps (a
  rolled-back transaction gives its numbers back).
* Artifact names are unique among the *live* artifacts of a collection.
* An update that changes content, artifact type, media type, name or
  metadata makes revision n+1; one that changes nothing makes nothing
  (not even a change record). Provenance belongs to the revision it came
  with: it is recorded on a new revision and, on its own, makes none.
* Delete hides an artifact from ``get_artifact``, name lookup and queries,
  frees its name, deletes its relationships (each with a change record), and
  keeps its revisions and change records readable.
* A relationship needs live source and target; (source, target, type) is
  unique among existing relationships.
* ``transaction()`` is nestable; an exception leaving any level undoes that
  level's work, and leaving the outermost level undoes everything.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from .. import digests
from ..errors import (
    ArtifactNotFound,
    CollectionNotEmptyError,
    CollectionNotFound,
    DuplicateNameError,
    DuplicateRelationshipError,
    IntegrityError,
    RelationshipNotFound,
    RevisionConflictError,
    RevisionNotFound,
    ValidationError,
)
from ..models import (
    Artifact,
    ArtifactRevision,
    ChangeAction,
    ChangeRecord,
    ChangeSet,
    Collection,
    Delete,
    EntityKind,
    MetadataMode,
    NewArtifact,
    PutOutcome,
    PutResult,
    Query,
    Relationship,
    Rename,
    SearchHit,
    Snippet,
    canonical_json,
    canonical_object,
    check_artifact_name,
    check_artifact_type,
    check_collection_fields,
    check_media_type,
    check_relationship_type,
    format_time,
    json_string,
    utc,
)
from . import text
from .backend import IndexBackend
from .bodies import BodyStore
from .context import ContextRules
from .history import AsOf, ChangeSetFields, HistoryRules, OpenChangeSet, check_change_set_fields
from .ids import Clock, IdSource, MonotonicIds, system_clock
from .pipeline import INGEST_WORKERS, NewFile, Source, StoredBody, store_body, stored_artifacts
from .queries import DIRECTIONS, check_id, normalize_query, ranked
from .restore import RestoreRules
from .runs import RunsContract

# Candidates read per index query by a substring search, which pages through
# them in sequence order instead of holding every artifact at once.
SUBSTRING_PAGE = 1000
# Artifacts whose words rebuild_text() derives per transaction: each batch
# commits, so progress survives an interruption.
REBUILD_BATCH = 500
# put_artifacts validates and looks up names this many items at a time: one
# name query per chunk instead of one per item, with bounded memory.
PUT_CHUNK = 500
_Repository = TypeVar("_Repository", bound="KnowledgeRepository")
# The change record fields of an artifact's creation, as the records hold them.
_ARTIFACT = EntityKind.ARTIFACT.value
_CREATE = ChangeAction.CREATE.value


def _check_content(content: object) -> bytes | StoredBody:
    if isinstance(content, StoredBody):
        return content
    if not isinstance(content, (bytes, bytearray, memoryview)):
        raise ValidationError(f"content must be bytes, got {type(content).__name__}")
    return bytes(content)


def _body_digest(content: bytes | StoredBody) -> tuple[str, int]:
    if isinstance(content, StoredBody):
        return content.digest, content.size
    return digests.digest_bytes(content), len(content)


def _body_text(content: bytes | StoredBody) -> str | text.NotSearchable:
    if isinstance(content, StoredBody):
        return content.text()
    return text.text_of(content)


def _query_of(query: Query | None, filters: dict[str, Any]) -> Query:
    if query is None:
        if isinstance(filters.get("ids"), (list, set, frozenset)):
            filters["ids"] = tuple(filters["ids"])
        try:
            query = Query(**filters)
        except TypeError as exc:
            raise ValidationError(f"bad query filter: {exc}") from exc
    elif filters:
        raise ValidationError("pass either a Query or keyword filters, not both")
    return normalize_query(query)


def check_revision_number(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(f"{what} must be a positive integer, got {value!r}")
    return value


class KnowledgeRepository(RunsContract, ContextRules, RestoreRules, HistoryRules):
    """A store of collections, artifacts, revisions, relationships, changes, runs and
    context references (the last three in :class:`RunsContract`).

    Composed of an index backend (:class:`~.backend.IndexBackend`: every record
    but bodies) and a body store (:class:`~.bodies.BodyStore`), as a git
    repository is an object store plus refs. The repository owns both and
    closes both.
    """

    def __init__(
        self,
        index: IndexBackend,
        bodies: BodyStore,
        *,
        clock: Clock | None = None,
        ids: IdSource | None = None,
    ) -> None:
        self.index = index
        self.bodies = bodies
        self._clock = clock or system_clock
        self._ids = ids or MonotonicIds()
        # The change set of the open outermost transaction: what the writer
        # said of it, and its record once its first change is written.
        # The change set of each thread's open outermost transaction: a backend
        # with a connection per thread (PostgreSQL) runs several at once.
        self._change_sets = threading.local()

    # -- lifecycle ---------------------------------------------------------

    def close(self) -> None:
        """Release resources. A closed repository must not be used again."""
        try:
            self.index.close()
        finally:
            self.bodies.close()

    def __enter__(self: _Repository) -> _Repository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def transaction(
        self,
        *,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
        backdate: bool = False,
    ) -> Iterator[None]:
        """All-or-nothing group of operations; nestable. The outermost level is
        one change set: ``actor`` and ``message`` say who made it and why, and
        ``at`` (timezone-aware) is the time every record of it carries instead
        of the clock's. ``at`` earlier than the last change set is refused
        unless ``backdate`` (an import of history, say). Inner levels take no
        change-set fields.

        The ordering invariant lives here: bodies stored inside the outermost
        level are made durable together when its block ends (the body store's
        batch), before the index commits, so the index never references a body
        that a crash could lose.
        """
        fields = check_change_set_fields(actor, message, at, backdate)
        with self.index.transaction() as outermost:
            if not outermost:
                if fields.given():
                    raise ValidationError(
                        "actor, message and at belong to the outermost transaction; "
                        "this call runs inside one"
                    )
                yield
                return
            self._check_backdate(fields)
            self._open_change_set = OpenChangeSet(fields, time=fields.at)
            try:
                with self.bodies.batch():
                    yield
            finally:
                self._open_change_set = None

    @property
    def _open_change_set(self) -> OpenChangeSet | None:
        open_set: OpenChangeSet | None = getattr(self._change_sets, "open", None)
        return open_set

    @_open_change_set.setter
    def _open_change_set(self, open_set: OpenChangeSet | None) -> None:
        self._change_sets.open = open_set

    def _check_backdate(self, fields: ChangeSetFields) -> None:
        if fields.at is None or fields.backdate:
            return
        last = self.index.last_change_set()
        if last is not None and fields.at < last.timestamp:
            raise ValidationError(
                f"change set time {format_time(fields.at)} is before the last change set "
                f"({last.id} at {format_time(last.timestamp)}); pass backdate=True to "
                "record history out of order"
            )

    def _store_body(self, content: bytes | StoredBody) -> tuple[str, int]:
        if isinstance(content, StoredBody):
            if content.bodies is not self.bodies:
                raise ValidationError(
                    f"body {content.digest} was stored in another body store than this "
                    "repository's; store it with this repository's store_body()"
                )
            return content.digest, content.size
        return self.bodies.add(content), len(content)

    def store_body(self, source: Source | bytes) -> StoredBody:
        """Store a body from bytes, a file's path or a binary stream, hashed and
        written a chunk at a time; pass the result as content (``NewArtifact``,
        ``update_artifact``) to use it without reading it again. Inside a
        transaction it is durable when the transaction commits."""
        return store_body(self.bodies, source)

    def _store_body_stream(self, stream: BinaryIO) -> tuple[str, int]:
        return self.bodies.add_stream(stream)

    def _load_body(self, digest: str) -> bytes:
        return self.bodies.get(digest, verify=True)

    def _now(self) -> datetime:
        """The time of the open change set (the ``at`` given, or the clock's at its
        first use), so every record of a change set carries one time."""
        open_set = self._open_change_set
        if open_set is None:
            return utc(self._clock())
        if open_set.time is None:
            open_set.time = utc(self._clock())
        return open_set.time

    # -- collections -------------------------------------------------------

    def create_collection(
        self,
        name: str,
        *,
        description: str = "",
        metadata: Mapping[str, Any] | None = None,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
    ) -> Collection:
        check_collection_fields(name, description)
        metadata_json = canonical_object(metadata, "collection metadata")
        with self.transaction(actor=actor, message=message, at=at):
            if self.index.find_collection_by_name(name) is not None:
                raise DuplicateNameError(f"collection {name!r} already exists")
            now = self._now()
            collection = Collection(
                id=self._ids("collection"),
                name=name,
                description=description,
                metadata_json=metadata_json,
                created_at=now,
                sequence=self.index.next_sequence(),
            )
            self.index.insert_collection(collection)
            self._record(
                collection.sequence,
                EntityKind.COLLECTION,
                collection.id,
                ChangeAction.CREATE,
                now,
                details={"name": name},
            )
            return collection

    def get_collection(self, collection_id: str) -> Collection:
        check_id(collection_id, "collection id")
        collection = self.index.find_collection(collection_id)
        if collection is None:
            raise CollectionNotFound(collection_id)
        return collection

    def get_collection_by_name(self, name: str) -> Collection:
        if not isinstance(name, str):
            raise ValidationError(f"collection name must be a string, got {name!r}")
        collection = self.index.find_collection_by_name(name)
        if collection is None:
            raise CollectionNotFound(name, f"collection not found: {name!r}")
        return collection

    def list_collections(self) -> list[Collection]:
        return self.index.list_collections()

    def delete_collection(
        self,
        collection_id: str,
        *,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
    ) -> None:
        """Delete an empty collection (one without live artifacts)."""
        with self.transaction(actor=actor, message=message, at=at):
            collection = self.get_collection(collection_id)
            live = self.index.count_live_artifacts(collection_id)
            if live:
                raise CollectionNotEmptyError(
                    f"collection {collection.name!r} ({collection_id}) still has {live} artifact(s)"
                )
            now = self._now()
            self.index.delete_collection(collection_id, now)
            self._record(
                self.index.next_sequence(),
                EntityKind.COLLECTION,
                collection_id,
                ChangeAction.DELETE,
                now,
                details={"name": collection.name},
            )

    # -- artifacts ---------------------------------------------------------

    def create_artifact(
        self,
        collection_id: str,
        name: str,
        content: bytes | StoredBody,
        *,
        artifact_type: str,
        media_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
    ) -> Artifact:
        """Create revision 1; ``run_id`` names the running run that produced it."""
        item = NewArtifact(name, content, artifact_type, media_type, metadata, provenance)
        with self.transaction(actor=actor, message=message, at=at):
            self.get_collection(collection_id)
            self._check_producing_run(run_id)
            checked = self._check_new(item, run_id)
            if self.index.find_artifact_by_name(collection_id, name) is not None:
                raise DuplicateNameError(
                    f"artifact {name!r} already exists in collection {collection_id}"
                )
            return self._create(collection_id, checked)

    def put_artifacts(
        self,
        collection_id: str,
        items: Iterable[NewArtifact],
        *,
        run_id: str | None = None,
        metadata: MetadataMode | str = MetadataMode.REPLACE,
        keep_types: bool = False,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
    ) -> list[PutResult]:
        """The bulk API: create or update many artifacts by name, in one transaction.

        For each item, a live artifact of that name in the collection is updated
        (a new revision only if something changed), otherwise one is created.
        ``metadata`` says what an update does with the existing metadata
        (:class:`MetadataMode`); with ``keep_types`` an existing artifact keeps
        its artifact type and media type, and the item's are used only when it
        is created. All bodies are made durable together before the index commits.
        """
        mode = _check_metadata_mode(metadata)
        with self.transaction(actor=actor, message=message, at=at), self.index.bulk():
            self.get_collection(collection_id)
            self._check_producing_run(run_id)
            results: list[PutResult] = []
            seen: set[str] = set()
            for chunk in _chunks(items, PUT_CHUNK):
                results += self._put_chunk(collection_id, chunk, seen, run_id, mode, keep_types)
            return results

    def put_files(
        self,
        collection_id: str,
        items: Iterable[NewFile],
        *,
        run_id: str | None = None,
        metadata: MetadataMode | str = MetadataMode.REPLACE,
        keep_types: bool = False,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
        workers: int = INGEST_WORKERS,
    ) -> list[PutResult]:
        """:meth:`put_artifacts` with each body read from a file's path or a binary
        stream (:class:`NewFile`), in chunks, by ``workers`` threads overlapped
        with the index transaction (:func:`.pipeline.stored_artifacts`). Same
        outcomes, errors and atomicity: one transaction, all or nothing; every
        body is durable before it commits."""
        # closing(): the workers are done before the transaction's bodies are
        # flushed, also when put_artifacts fails part way.
        with (
            self.transaction(actor=actor, message=message, at=at),
            closing(stored_artifacts(self.bodies, items, workers=workers)) as artifacts,
        ):
            return self.put_artifacts(
                collection_id, artifacts, run_id=run_id, metadata=metadata, keep_types=keep_types
            )

    def apply(
        self,
        collection_id: str,
        operations: Iterable[NewArtifact | Rename | Delete],
        *,
        run_id: str | None = None,
        metadata: MetadataMode | str = MetadataMode.REPLACE,
        keep_types: bool = False,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
        backdate: bool = False,
    ) -> list[PutResult]:
        """Every kind of change to a collection's artifacts in one call: one
        transaction, one change set, an outcome per operation, in order.

        A :class:`NewArtifact` creates or updates by name as in
        :meth:`put_artifacts` (and at its speed: consecutive ones go through
        the same bulk path, where a name may appear once); a :class:`Rename`
        renames the live artifact of a name; a :class:`Delete` deletes it. A
        missing name, a taken new name or any invalid operation undoes all.
        """
        mode = _check_metadata_mode(metadata)
        with (
            self.transaction(actor=actor, message=message, at=at, backdate=backdate),
            self.index.bulk(),
        ):
            self.get_collection(collection_id)
            self._check_producing_run(run_id)
            results: list[PutResult] = []
            puts: list[NewArtifact] = []
            seen: set[str] = set()

            def put_pending() -> None:
                results.extend(self._put_chunk(collection_id, puts, seen, run_id, mode, keep_types))
                puts.clear()
                seen.clear()

            for operation in operations:
                if isinstance(operation, NewArtifact):
                    puts.append(operation)
                    if len(puts) >= PUT_CHUNK:
                        results.extend(
                            self._put_chunk(collection_id, puts, seen, run_id, mode, keep_types)
                        )
                        puts.clear()
                    continue
                put_pending()
                if isinstance(operation, Rename):
                    current = self.get_artifact_by_name(collection_id, operation.name)
                    check_artifact_name(operation.new_name)
                    if operation.new_name == operation.name:
                        results.append(PutResult(current, PutOutcome.UNCHANGED))
                        continue
                    if self.index.find_artifact_by_name(collection_id, operation.new_name):
                        raise DuplicateNameError(
                            f"cannot rename {operation.name!r}: artifact "
                            f"{operation.new_name!r} already exists in collection {collection_id}"
                        )
                    renamed = self._update(current, name=operation.new_name, run_id=run_id)
                    results.append(PutResult(renamed, PutOutcome.RENAMED))
                elif isinstance(operation, Delete):
                    current = self.get_artifact_by_name(collection_id, operation.name)
                    self._delete(current)
                    results.append(PutResult(current, PutOutcome.DELETED))
                else:
                    raise ValidationError(
                        "apply takes NewArtifact, Rename and Delete operations, got "
                        f"{type(operation).__name__}"
                    )
            put_pending()
            return results

    def _put_chunk(
        self,
        collection_id: str,
        chunk: Sequence[NewArtifact],
        seen: set[str],
        run_id: str | None,
        mode: MetadataMode,
        keep_types: bool,
    ) -> list[PutResult]:
        """Create or update a chunk of artifacts by name with one name lookup."""
        types: set[tuple[str, str | None]] = set()
        checked = [self._check_new(item, run_id, types) for item in chunk]
        for one in checked:
            if one.name in seen:
                raise DuplicateNameError(f"artifact name {one.name!r} appears twice in one call")
            seen.add(one.name)
        existing = self.index.find_artifacts_by_names(collection_id, [one.name for one in checked])
        results: list[PutResult] = []
        now: datetime | None = None  # the change set's time, fetched at the first creation
        for one in checked:
            current = existing.get(one.name)
            if current is not None:
                results.append(self._put_update(one, current, run_id, mode, keep_types))
                continue
            if now is None:
                now = self._now()
            results.append(PutResult(self._create(collection_id, one, now), PutOutcome.CREATED))
        return results

    def _put_update(
        self,
        item: _CheckedArtifact,
        existing: Artifact,
        run_id: str | None,
        mode: MetadataMode,
        keep_types: bool,
    ) -> PutResult:
        metadata: str | None = item.metadata
        if mode is MetadataMode.KEEP:
            metadata = None
        elif mode is MetadataMode.MERGE:
            merged = {**existing.metadata, **json.loads(item.metadata)}
            metadata = canonical_object(merged, "metadata")
        updated = self._update(
            existing,
            content=item.content,
            artifact_type=None if keep_types else item.artifact_type,
            media_type=existing.media_type if keep_types else item.media_type,
            media_type_given=True,
            metadata=metadata,
            provenance=item.provenance,
            run_id=run_id,
        )
        return PutResult(
            updated, PutOutcome.UNCHANGED if updated is existing else PutOutcome.UPDATED
        )

    def get_artifact(self, artifact_id: str, *, as_of: AsOf | None = None) -> Artifact:
        """The live artifact, or the artifact as it was ``as_of`` a point in history."""
        check_id(artifact_id, "artifact id")
        if as_of is not None:
            return self._artifact_as_of(artifact_id, as_of)
        artifact = self.index.find_artifact(artifact_id)
        if artifact is None:
            raise ArtifactNotFound(artifact_id)
        return artifact

    def get_artifact_by_name(
        self, collection_id: str, name: str, *, as_of: AsOf | None = None
    ) -> Artifact:
        """The live artifact of that name, or the one live under it ``as_of`` a point
        in history (a change-set id, a sequence number or a time)."""
        check_id(collection_id, "collection id")
        if not isinstance(name, str):
            raise ValidationError(f"artifact name must be a string, got {name!r}")
        if as_of is None:
            artifact = self.index.find_artifact_by_name(collection_id, name)
        else:
            then = self.index.artifacts_as_of(self.resolve_as_of(as_of), collection_id, name)
            artifact = then[0] if then else None
        if artifact is None:
            when = "" if as_of is None else f" as of {as_of}"
            raise ArtifactNotFound(
                f"{collection_id}/{name}",
                f"artifact not found: {name!r} in collection {collection_id}{when}",
            )
        return artifact

    def read_content(
        self, artifact_id: str, revision: int | None = None, *, as_of: AsOf | None = None
    ) -> bytes:
        """The body of the current revision, of ``revision`` (also once deleted), or
        of the revision current ``as_of`` a point in history."""
        if as_of is not None:
            if revision is not None:
                raise ValidationError("pass a revision or as_of, not both")
            return self._load_body(self.get_artifact(artifact_id, as_of=as_of).digest)
        if revision is None:
            return self._load_body(self.get_artifact(artifact_id).digest)
        return self._load_body(self.get_revision(artifact_id, revision).digest)

    def update_artifact(
        self,
        artifact_id: str,
        *,
        content: bytes | StoredBody | None = None,
        artifact_type: str | None = None,
        media_type: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        provenance: Mapping[str, Any] | None = None,
        expected_revision: int | None = None,
        run_id: str | None = None,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
    ) -> Artifact:
        """Change what is given; ``None`` leaves a field as it is.

        ``metadata`` replaces the whole metadata object. Returns the artifact
        as it is afterwards (the same record if nothing changed). ``run_id``
        names the running run that produced the new revision.
        """
        if content is not None:
            content = _check_content(content)
        if artifact_type is not None:
            check_artifact_type(artifact_type)
        check_media_type(media_type)
        if name is not None:
            check_artifact_name(name)
        metadata_json = None if metadata is None else canonical_object(metadata, "metadata")
        provenance_json = None if provenance is None else canonical_object(provenance, "provenance")
        if expected_revision is not None:
            check_revision_number(expected_revision, "expected_revision")
        with self.transaction(actor=actor, message=message, at=at):
            current = self.get_artifact(artifact_id)
            if expected_revision is not None and expected_revision != current.revision:
                raise RevisionConflictError(artifact_id, expected_revision, current.revision)
            self._check_producing_run(run_id)
            if name is not None and name != current.name:
                clash = self.index.find_artifact_by_name(current.collection_id, name)
                if clash is not None:
                    raise DuplicateNameError(
                        f"artifact {name!r} already exists in collection {current.collection_id}"
                    )
            return self._update(
                current,
                content=content,
                artifact_type=artifact_type,
                media_type=media_type,
                media_type_given=media_type is not None,
                name=name,
                metadata=metadata_json,
                provenance=provenance_json,
                run_id=run_id,
            )

    def delete_artifact(
        self,
        artifact_id: str,
        *,
        expected_revision: int | None = None,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
    ) -> None:
        if expected_revision is not None:
            check_revision_number(expected_revision, "expected_revision")
        with self.transaction(actor=actor, message=message, at=at):
            current = self.get_artifact(artifact_id)
            if expected_revision is not None and expected_revision != current.revision:
                raise RevisionConflictError(artifact_id, expected_revision, current.revision)
            self._delete(current)

    def _delete(self, current: Artifact) -> None:
        """Delete a live artifact and the relationships that name it."""
        now = self._now()
        for relationship in self.index.list_relationships(current.id, "both", None):
            self._remove_relationship(relationship, now)
        self.index.delete_artifact(current.id, now)
        self._record(
            self.index.next_sequence(),
            EntityKind.ARTIFACT,
            current.id,
            ChangeAction.DELETE,
            now,
            revision=current.revision,
            old_digest=current.digest,
            details={"collection_id": current.collection_id, "name": current.name},
        )

    def list_artifacts(
        self, collection_id: str | None = None, *, as_of: AsOf | None = None
    ) -> list[Artifact]:
        """Every live artifact (of one collection), in creation order; ``as_of`` a
        point in history, those live then, each as it was then."""
        if collection_id is not None and as_of is None:
            self.get_collection(collection_id)
        return self.query(Query(collection_id=collection_id, as_of=as_of))

    def query(self, query: Query | None = None, /, **filters: Any) -> list[Artifact]:
        """Live artifacts matching every given filter.

        Pass a :class:`Query` or its fields as keyword arguments. A ``text``
        query ranks by BM25 relevance unless ``order="sequence"``; everything
        else comes in creation order. :meth:`search` gives scores and snippets.
        """
        checked = _query_of(query, filters)
        if checked.text is None and checked.as_of is None:
            return self.index.query(checked)
        return [artifact for artifact, _ in self._scored(checked)]

    def _scored(self, query: Query) -> list[tuple[Artifact, float | None]]:
        """The results of a checked query, with their scores when ranked."""
        if query.as_of is not None:
            return self._search_as_of(query, self.resolve_as_of(query.as_of))
        if query.text is not None and query.substring:
            return [(artifact, None) for artifact in self._substring_search(query)]
        if ranked(query):
            return list(self.index.rank(query))
        return [(artifact, None) for artifact in self.index.query(query)]

    def search(
        self, query: Query | str | None = None, /, *, snippets: bool = True, **filters: Any
    ) -> list[SearchHit]:
        """:meth:`query` with each hit's BM25 score and a snippet of its body.

        ``search("retrieval augmented", limit=10)`` is the ten best hits. A
        snippet is read from the body of each hit returned (only the page), and
        is ``None`` for a body that is not searchable text or with ``snippets=False``.
        """
        if isinstance(query, str):
            query, filters = None, {**filters, "text": query}
        checked = _query_of(query, filters)
        if checked.text is None:
            raise ValidationError("search needs a text query; use query() for other filters")
        scored = self._scored(checked)
        parsed = None if checked.substring or not snippets else text.parse_query(checked.text)
        return [
            SearchHit(artifact, score, None if parsed is None else self._snippet(parsed, artifact))
            for artifact, score in scored
        ]

    def _snippet(self, query: text.TextQuery, artifact: Artifact) -> Snippet | None:
        body = self._text_of(artifact)
        return None if isinstance(body, text.NotSearchable) else text.snippet(query, body)

    def _text_of(self, artifact: Artifact) -> str | text.NotSearchable:
        """The text of an artifact's body, read only when it is small enough to be
        searchable; or why it has none."""
        if artifact.size > text.MAX_TEXT_BYTES:
            return text.NotSearchable.TOO_LARGE
        return text.text_of(self._load_body(artifact.digest))

    def _substring_search(self, query: Query) -> list[Artifact]:
        """Every candidate's body read and checked: linear in the store's size."""
        assert query.text is not None
        terms = text.parse_substrings(query.text)
        page = dataclasses.replace(
            query, text=None, substring=False, order=None, limit=SUBSTRING_PAGE
        )
        found: list[Artifact] = []
        while True:
            candidates = self.index.query(page)
            for artifact in candidates:
                if text.substrings_match(terms, self._text_of(artifact)):
                    found.append(artifact)
                    if len(found) == query.limit:
                        return found
            if len(candidates) < SUBSTRING_PAGE:
                return found
            page = dataclasses.replace(page, after=candidates[-1].sequence)

    def text_status(self, artifact_id: str) -> text.NotSearchable | None:
        """Why a live artifact's body is not searchable (too large, not UTF-8,
        binary), or None when a text query can find it."""
        self.get_artifact(artifact_id)
        return self.index.text_status(artifact_id)

    def text_counts(self) -> dict[str, int]:
        """Live artifacts by text state: ``searchable``, ``pending`` (waiting for
        :meth:`rebuild_text`), ``too-large``, ``not-utf8`` and ``binary``."""
        return self.index.text_counts()

    def rebuild_text(
        self, *, everything: bool = False, progress: Callable[[int], None] | None = None
    ) -> int:
        """Derive the words of pending artifacts from their bodies; return how many.

        An upgraded store has every artifact pending; ``everything=True`` makes
        every live artifact pending first (after a change of the tokenizer's
        Unicode tables, say). Works in transactions of :data:`REBUILD_BATCH`
        artifacts, calling ``progress(count)`` after each, so an interrupted
        rebuild resumes where it stopped.
        """
        if everything:
            with self.transaction():
                self.index.request_text_rebuild()
        done = 0
        while True:
            with self.transaction():
                batch = self.index.pending_text(REBUILD_BATCH)
                for artifact in batch:
                    self.index.set_text(artifact, self._text_of(artifact))
            if not batch:
                return done
            done += len(batch)
            if progress is not None:
                progress(len(batch))

    # -- revisions ---------------------------------------------------------

    def list_revisions(self, artifact_id: str) -> list[ArtifactRevision]:
        """Revision history, oldest first; readable after the artifact is deleted."""
        check_id(artifact_id, "artifact id")
        revisions = self.index.list_revisions(artifact_id)
        if not revisions:
            raise ArtifactNotFound(artifact_id)
        return revisions

    def get_revision(self, artifact_id: str, revision: int) -> ArtifactRevision:
        check_id(artifact_id, "artifact id")
        check_revision_number(revision, "revision")
        found = self.index.find_revision(artifact_id, revision)
        if found is None:
            if not self.index.list_revisions(artifact_id):
                raise ArtifactNotFound(artifact_id)
            raise RevisionNotFound(
                f"{artifact_id}@{revision}",
                f"revision {revision} of artifact {artifact_id!r} not found",
            )
        return found

    # -- relationships -----------------------------------------------------

    def create_relationship(
        self,
        source_id: str,
        target_id: str,
        relationship_type: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
    ) -> Relationship:
        check_relationship_type(relationship_type)
        metadata_json = canonical_object(metadata, "relationship metadata")
        with self.transaction(actor=actor, message=message, at=at):
            for role, artifact_id in (("source", source_id), ("target", target_id)):
                check_id(artifact_id, f"relationship {role}")
                if self.index.find_artifact(artifact_id) is None:
                    raise IntegrityError(
                        f"relationship {role} {artifact_id!r} is not a live artifact"
                    )
            if self.index.find_relationship_by_key(source_id, target_id, relationship_type):
                raise DuplicateRelationshipError(
                    f"relationship {source_id} -[{relationship_type}]-> {target_id} already exists"
                )
            now = self._now()
            relationship = Relationship(
                id=self._ids("relationship"),
                source_id=source_id,
                target_id=target_id,
                relationship_type=relationship_type,
                metadata_json=metadata_json,
                created_at=now,
                sequence=self.index.next_sequence(),
            )
            self.index.insert_relationship(relationship)
            self._record(
                relationship.sequence,
                EntityKind.RELATIONSHIP,
                relationship.id,
                ChangeAction.CREATE,
                now,
                details=relationship_details(relationship),
            )
            return relationship

    def get_relationship(self, relationship_id: str) -> Relationship:
        check_id(relationship_id, "relationship id")
        relationship = self.index.find_relationship(relationship_id)
        if relationship is None:
            raise RelationshipNotFound(relationship_id)
        return relationship

    def list_relationships(
        self,
        artifact_id: str | None = None,
        *,
        direction: str = "both",
        relationship_type: str | None = None,
        as_of: AsOf | None = None,
    ) -> list[Relationship]:
        """Relationships (of one artifact, seen from it), in creation order; ``as_of``
        a point in history, those live then."""
        if direction not in DIRECTIONS:
            raise ValidationError(f"direction {direction!r} is not one of {DIRECTIONS}")
        if artifact_id is not None:
            check_id(artifact_id, "artifact id")
        if as_of is not None:
            return self._relationships_as_of(
                self.resolve_as_of(as_of), artifact_id, direction, relationship_type
            )
        return self.index.list_relationships(artifact_id, direction, relationship_type)

    def delete_relationship(
        self,
        relationship_id: str,
        *,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
    ) -> None:
        with self.transaction(actor=actor, message=message, at=at):
            self._remove_relationship(self.get_relationship(relationship_id), self._now())

    # -- change records ----------------------------------------------------

    def list_changes(
        self, since: int = 0, *, entity_id: str | None = None, limit: int | None = None
    ) -> list[ChangeRecord]:
        """Change records with sequence > ``since``, ascending."""
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise ValidationError(f"since must be a non-negative integer, got {since!r}")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValidationError(f"limit must be a non-negative integer, got {limit!r}")
        return self.index.list_changes(since, entity_id, limit)

    def last_sequence(self) -> int:
        """The sequence number of the newest change record (0 when there is none)."""
        return self.index.last_sequence()

    # -- shared machinery --------------------------------------------------

    def _record(
        self,
        sequence: int,
        kind: EntityKind,
        entity_id: str,
        action: ChangeAction,
        timestamp: datetime,
        *,
        revision: int | None = None,
        old_digest: str | None = None,
        new_digest: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> ChangeRecord:
        return self._append_change(
            sequence,
            kind.value,
            entity_id,
            action.value,
            timestamp,
            revision,
            old_digest,
            new_digest,
            canonical_json(dict(details), "change details") if details else "{}",
        )

    def _append_change(
        self,
        sequence: int,
        kind: str,
        entity_id: str,
        action: str,
        timestamp: datetime,
        revision: int | None,
        old_digest: str | None,
        new_digest: str | None,
        details_json: str,
    ) -> ChangeRecord:
        """Write one change record (and, with the first, its change set)."""
        open_set = self._open_change_set
        assert open_set is not None, "change records are written inside transaction()"
        change_set = open_set.record
        if change_set is None:  # the first change of this transaction
            fields = open_set.fields
            change_set = ChangeSet(
                id=f"cs_{sequence}",
                sequence=sequence,
                timestamp=fields.at or timestamp,
                actor=fields.actor,
                message=fields.message,
            )
            self.index.insert_change_set(change_set)
            open_set.record = change_set
        change = ChangeRecord(
            sequence,
            kind,
            entity_id,
            action,
            timestamp,
            revision,
            old_digest,
            new_digest,
            details_json,
            change_set.id,
        )
        self.index.append_change(change)
        return change

    def _check_new(
        self,
        item: NewArtifact,
        run_id: str | None = None,
        types: set[tuple[str, str | None]] | None = None,
    ) -> _CheckedArtifact:
        """Validate an item; ``types`` holds the (artifact type, media type) pairs
        already found valid in this call, which most items of a bulk call share."""
        if not isinstance(item, NewArtifact):
            raise ValidationError(f"expected a NewArtifact, got {type(item).__name__}")
        name = check_artifact_name(item.name)
        content = _check_content(item.content)
        artifact_type, media_type = item.artifact_type, item.media_type
        if (
            types is None
            or type(artifact_type) is not str
            or (media_type is not None and type(media_type) is not str)
            or (artifact_type, media_type) not in types
        ):
            check_artifact_type(artifact_type)
            check_media_type(media_type)
            if types is not None:
                types.add((artifact_type, media_type))
        return _CheckedArtifact(
            name,
            content,
            artifact_type,
            media_type,
            canonical_object(item.metadata, "metadata"),
            canonical_object(item.provenance, "provenance"),
            run_id,
        )

    def _create(
        self, collection_id: str, item: _CheckedArtifact, now: datetime | None = None
    ) -> Artifact:
        """Store a new artifact as revision 1; ``now`` is :meth:`_now`, when the
        caller has it."""
        content = item.content
        digest, size = self._store_body(content)
        if now is None:
            now = self._now()
        sequence = self.index.next_sequence()
        artifact_id = self._ids("artifact")
        name = item.name
        artifact = Artifact(
            artifact_id,
            collection_id,
            name,
            item.artifact_type,
            item.media_type,
            digest,
            size,
            1,
            item.metadata,
            item.provenance,
            now,
            now,
            sequence,
            item.run_id,
        )
        # _revision_of(artifact, sequence), written out from the locals: this is
        # the bulk path, and the helper measured 4-10 us more per document.
        revision = ArtifactRevision(
            artifact_id,
            1,
            collection_id,
            name,
            item.artifact_type,
            item.media_type,
            digest,
            size,
            item.metadata,
            item.provenance,
            now,
            sequence,
            item.run_id,
        )
        self.index.insert_artifact(artifact, revision, _body_text(content))
        self._append_change(
            sequence,
            _ARTIFACT,
            artifact_id,
            _CREATE,
            now,
            1,
            None,
            digest,
            # {"collection_id": ..., "name": ...}, canonical: both are checked strings.
            f'{{"collection_id":{json_string(collection_id)},"name":{json_string(name)}}}',
        )
        return artifact

    def _update(
        self,
        current: Artifact,
        *,
        content: bytes | StoredBody | None = None,
        artifact_type: str | None = None,
        media_type: str | None = None,
        media_type_given: bool = False,
        name: str | None = None,
        metadata: str | None = None,
        provenance: str | None = None,
        run_id: str | None = None,
    ) -> Artifact:
        digest, size = current.digest, current.size
        if content is not None:
            digest, size = _body_digest(content)
        changes = {
            "digest": digest,
            "size": size,
            "artifact_type": artifact_type or current.artifact_type,
            "media_type": media_type if media_type_given else current.media_type,
            "name": name or current.name,
            "metadata_json": current.metadata_json if metadata is None else metadata,
        }
        changed = changed_fields(current, changes)
        if not changed:
            return current
        if content is not None and digest != current.digest:
            stored, _ = self._store_body(content)
            assert stored == digest
        now = self._now()
        sequence = self.index.next_sequence()
        updated = Artifact(
            id=current.id,
            collection_id=current.collection_id,
            revision=current.revision + 1,
            provenance_json=provenance if provenance is not None else "{}",
            created_at=current.created_at,
            updated_at=now,
            sequence=current.sequence,
            run_id=run_id,
            **changes,  # type: ignore[arg-type]
        )
        searchable = None
        if digest != current.digest:
            assert content is not None
            searchable = _body_text(content)
        self.index.replace_artifact(
            updated, _revision_of(updated, sequence), digest != current.digest, searchable
        )
        self._record(
            sequence,
            EntityKind.ARTIFACT,
            current.id,
            ChangeAction.UPDATE,
            now,
            revision=updated.revision,
            old_digest=current.digest,
            new_digest=digest,
            details={"changed": [key.removesuffix("_json") for key in changed]},
        )
        return updated

    def _remove_relationship(self, relationship: Relationship, now: datetime) -> None:
        sequence = self.index.next_sequence()
        self.index.delete_relationship(relationship.id, sequence)
        self._record(
            sequence,
            EntityKind.RELATIONSHIP,
            relationship.id,
            ChangeAction.DELETE,
            now,
            details=relationship_details(relationship),
        )

    def read_object(self, digest: str) -> bytes:
        """The body stored under ``digest`` (referenced or not)."""
        return self._load_body(digests.parse_digest(digest))

    def open_object(self, digest: str) -> BinaryIO:
        """A binary reader of the body under ``digest``, verified against it."""
        return self.bodies.open(digests.parse_digest(digest), verify=True)

    def object_path(self, digest: str) -> Path | None:
        """The file holding the body, where the backend keeps bodies in files."""
        return None

    def iter_changes(self, since: int = 0, *, page: int = 1000) -> Iterator[ChangeRecord]:
        """Every change after ``since``, fetched a page at a time."""
        while True:
            batch = self.list_changes(since, limit=page)
            yield from batch
            if len(batch) < page:
                return
            since = batch[-1].sequence


# A relationship's change records carry these fields of it, so the change feed
# (and a snapshot, which keeps no deleted relationships) says what it joined.
RELATIONSHIP_KEY = ("source_id", "target_id", "relationship_type")


def relationship_details(relationship: Relationship) -> dict[str, str]:
    return {field: getattr(relationship, field) for field in RELATIONSHIP_KEY}


# What makes a new revision: a change to any of these (provenance alone does not).
REVISION_FIELDS = ("artifact_type", "digest", "media_type", "metadata_json", "name")


def changed_fields(current: Artifact | ArtifactRevision, new: Mapping[str, Any]) -> list[str]:
    """The fields of ``new`` (a mapping, or a record) that differ from ``current`` and make
    a revision; an update that changes none of them makes nothing."""
    return [key for key in REVISION_FIELDS if key in new and getattr(current, key) != new[key]]


@dataclass(slots=True)
class _CheckedArtifact:
    """A validated :class:`NewArtifact`, with JSON fields already canonical."""

    name: str
    content: bytes | StoredBody
    artifact_type: str
    media_type: str | None
    metadata: str
    provenance: str
    run_id: str | None


def _check_metadata_mode(value: MetadataMode | str) -> MetadataMode:
    try:
        return MetadataMode(value)
    except ValueError:
        choices = ", ".join(mode.value for mode in MetadataMode)
        raise ValidationError(f"metadata mode must be one of {choices}, got {value!r}") from None


def _chunks(items: Iterable[NewArtifact], size: int) -> Iterator[list[NewArtifact]]:
    chunk: list[NewArtifact] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _revision_of(artifact: Artifact, change_sequence: int) -> ArtifactRevision:
    return ArtifactRevision(
        artifact_id=artifact.id,
        revision=artifact.revision,
        collection_id=artifact.collection_id,
        name=artifact.name,
        artifact_type=artifact.artifact_type,
        media_type=artifact.media_type,
        digest=artifact.digest,
        size=artifact.size,
        metadata_json=artifact.metadata_json,
        provenance_json=artifact.provenance_json,
        created_at=artifact.updated_at,
        change_sequence=change_sequence,
        run_id=artifact.run_id,
    )
