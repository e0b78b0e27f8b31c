"""History: change sets, reads as of an earlier point, and the history of a name.

Every write belongs to a change set (ADR 0007): the outermost transaction it
ran in, with the ``actor``, ``message`` and time the writer gave. Reads as of
a point in history answer from what is already stored (revisions, change
records and deleted relationships), so they need no extra write work; they
scan those records instead of using an index, so they cost time in proportion
to the store's history, and text queries as of a point read the bodies of the
artifacts live then (:meth:`HistoryRules._search_as_of`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timezone

from ..errors import ArtifactNotFound, ChangeSetNotFound, CollectionNotFound, ValidationError
from ..models import (
    Artifact,
    ArtifactHistory,
    ArtifactRevision,
    ChangeRecord,
    ChangeSet,
    Query,
    Relationship,
    check_text,
    utc,
)
from . import text
from .backend import IndexBackend
from .queries import artifact_filter, check_id, related_ids, relationships_matching

# The times a change set may carry: stored timestamps are fixed-width text
# (four-digit years), which keeps their text order their time order.
EARLIEST = datetime(1970, 1, 1, tzinfo=timezone.utc)
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
# What ``as_of`` may be: a change-set id, a change sequence, or a moment.
AsOf = str | int | datetime


def artifact_at(first: ArtifactRevision, current: ArtifactRevision) -> Artifact:
    """The artifact as it was when ``current`` was its latest revision."""
    return Artifact(
        id=current.artifact_id,
        collection_id=current.collection_id,
        name=current.name,
        artifact_type=current.artifact_type,
        media_type=current.media_type,
        digest=current.digest,
        size=current.size,
        revision=current.revision,
        metadata_json=current.metadata_json,
        provenance_json=current.provenance_json,
        created_at=first.created_at,
        updated_at=current.created_at,
        sequence=first.change_sequence,
        run_id=current.run_id,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class ChangeSetFields:
    """What a writer says about a change set: who, why, when."""

    actor: str | None = None
    message: str | None = None
    at: datetime | None = None
    backdate: bool = False

    def given(self) -> bool:
        return self != ChangeSetFields()


@dataclasses.dataclass(slots=True)
class OpenChangeSet:
    """The change set of the open outermost transaction: what the writer said of
    it, its one time (``at``, or the clock at its first use), and its record
    once its first change is written."""

    fields: ChangeSetFields
    time: datetime | None = None
    record: ChangeSet | None = None


def check_change_set_fields(
    actor: object, message: object, at: object, backdate: object
) -> ChangeSetFields:
    """Validate the change-set fields of a transaction or a call."""
    if actor is not None:
        check_text(actor, "change set actor")
    if message is not None:
        check_text(message, "change set message")
    if at is not None:
        if not isinstance(at, datetime):
            raise ValidationError(f"change set time must be a datetime, got {at!r}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValidationError(f"change set time {at.isoformat()} has no time zone")
        at = utc(at)
        if not EARLIEST <= at <= LATEST:
            raise ValidationError(
                f"change set time {at.isoformat()} is outside {EARLIEST.year}..{LATEST.year}"
            )
    if not isinstance(backdate, bool):
        raise ValidationError(f"backdate must be True or False, got {backdate!r}")
    return ChangeSetFields(actor, message, at, backdate)  # type: ignore[arg-type]


class HistoryRules:
    """Change sets, as-of reads and name history; a part of
    :class:`~.contract.KnowledgeRepository`."""

    # -- provided by KnowledgeRepository, of which this class is a part ------

    index: IndexBackend
    _text_of: Callable[[Artifact], str | text.NotSearchable]

    def list_change_sets(self, *, after: int = 0, limit: int | None = None) -> list[ChangeSet]:
        """Change sets whose first change comes after sequence ``after``, oldest first."""
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise ValidationError(f"after must be a sequence number >= 0, got {after!r}")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise ValidationError(f"limit must be a count >= 0, got {limit!r}")
        return self.index.list_change_sets(after, limit)

    def change_set_changes(self, change_set_id: str) -> list[ChangeRecord]:
        """The change records of one change set, by sequence."""
        return self.index.change_set_changes(self.get_change_set(change_set_id).id)

    def _check_collection_ever(self, collection_id: str) -> None:
        """A collection that exists or existed: history reads accept deleted ones."""
        check_id(collection_id, "collection id")
        if self.index.find_collection(collection_id) is None and collection_id not in {
            collection.id for collection, _ in self.index.all_collections()
        }:
            raise CollectionNotFound(collection_id)

    def get_change_set(self, change_set_id: str) -> ChangeSet:
        found = (
            self.index.find_change_set(change_set_id) if isinstance(change_set_id, str) else None
        )
        if found is None:
            raise ChangeSetNotFound(str(change_set_id))
        return found

    def resolve_as_of(self, as_of: AsOf) -> int:
        """The change sequence a point in history stands for: a change-set id (its
        last change), a sequence number, or a moment (the last change made at or
        before it)."""
        if isinstance(as_of, bool):
            raise ValidationError(
                f"as_of must be a change set, a sequence or a time, got {as_of!r}"
            )
        if isinstance(as_of, int):
            last = self.index.last_sequence()
            if not 0 <= as_of <= last:
                raise ValidationError(f"as_of sequence {as_of} is outside 0..{last}")
            return as_of
        if isinstance(as_of, datetime):
            if as_of.tzinfo is None or as_of.utcoffset() is None:
                raise ValidationError(f"as_of time {as_of.isoformat()} has no time zone")
            return self.index.sequence_at(utc(as_of))
        if isinstance(as_of, str):
            changes = self.index.change_set_changes(self.get_change_set(as_of).id)
            return changes[-1].sequence
        raise ValidationError(f"as_of must be a change set, a sequence or a time, got {as_of!r}")

    def history_of_name(self, collection_id: str, name: str) -> list[ArtifactHistory]:
        """Every artifact that ever had ``name`` in the collection, deleted ones
        included, oldest first, each with all its revisions and change records."""
        self._check_collection_ever(collection_id)
        if not isinstance(name, str):
            raise ValidationError(f"artifact name must be a string, got {name!r}")
        return [
            ArtifactHistory(
                artifact_id,
                tuple(self.index.list_revisions(artifact_id)),
                tuple(self.index.list_changes(0, artifact_id, None)),
            )
            for artifact_id in self.index.artifacts_named(collection_id, name)
        ]

    # -- as-of reads, called by the repository's own read methods ---------------

    def _revision_as_of(self, artifact_id: str, sequence: int) -> ArtifactRevision | None:
        """The revision of an artifact current just after ``sequence``, or None if
        the artifact did not exist then or was already deleted."""
        for change in self.index.list_changes(0, artifact_id, None):
            if change.sequence > sequence:
                break
            if change.action == "delete":
                return None
        then = [r for r in self.index.list_revisions(artifact_id) if r.change_sequence <= sequence]
        return then[-1] if then else None

    def _artifact_as_of(self, artifact_id: str, as_of: AsOf) -> Artifact:
        """One artifact as it was just after the change ``as_of`` stands for."""
        then = self._revision_as_of(artifact_id, self.resolve_as_of(as_of))
        if then is None:
            raise ArtifactNotFound(
                artifact_id, f"artifact not found: {artifact_id!r} as of {as_of}"
            )
        first = self.index.find_revision(artifact_id, 1)
        assert first is not None  # a revision exists, so the first one does
        return artifact_at(first, then)

    def _artifacts_as_of(self, query: Query, sequence: int) -> list[Artifact]:
        """Artifacts live just after ``sequence`` that match every filter of ``query``
        but text, in creation order."""
        found = self.index.artifacts_as_of(sequence, query.collection_id, query.name)
        related = None
        if query.related_to is not None:
            related = related_ids(self.index.relationships_as_of(sequence), query.related_to)
        matches = artifact_filter(query, related)
        return [
            artifact
            for artifact in found
            if matches(artifact) and (query.after is None or artifact.sequence > query.after)
        ]

    def _search_as_of(self, query: Query, sequence: int) -> list[tuple[Artifact, float | None]]:
        """A query as of ``sequence``: the filters over the artifacts live then; text
        by reading their bodies (words, BM25 over the store as it was then, or
        substrings), so it costs a read of every body live then."""
        if query.collection_id is not None:
            self._check_collection_ever(query.collection_id)
        candidates = self._artifacts_as_of(dataclasses.replace(query, limit=None), sequence)
        if query.text is None:
            scored: list[tuple[Artifact, float | None]] = [(a, None) for a in candidates]
        elif query.substring:
            terms = text.parse_substrings(query.text)
            scored = [
                (a, None) for a in candidates if text.substrings_match(terms, self._text_of(a))
            ]
        else:
            parsed = text.parse_query(query.text)
            documents = {}
            for artifact in self.index.artifacts_as_of(sequence, None, None):
                body = self._text_of(artifact)
                if isinstance(body, str):
                    documents[artifact.sequence] = text.words(body)
            matching = [
                a
                for a in candidates
                if a.sequence in documents and parsed.matches(documents[a.sequence])
            ]
            if query.order == "sequence":
                scored = [(a, None) for a in matching]
            else:
                scores = text.bm25_scores(parsed, documents, (a.sequence for a in matching))
                matching.sort(key=lambda a: (-scores[a.sequence], a.sequence))
                scored = [(a, scores[a.sequence]) for a in matching]
        return scored if query.limit is None else scored[: query.limit]

    def _relationships_as_of(
        self,
        sequence: int,
        artifact_id: str | None,
        direction: str,
        relationship_type: str | None,
    ) -> list[Relationship]:
        return relationships_matching(
            self.index.relationships_as_of(sequence), artifact_id, direction, relationship_type
        )
