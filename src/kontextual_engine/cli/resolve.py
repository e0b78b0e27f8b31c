"""From what people type to records: collections, artifacts, digest prefixes.

An artifact is named by its id (``art_...``) or as ``COLLECTION/NAME``, split
on the first ``/`` (artifact names may contain slashes, collection names
then may not be typed this way). A digest may be abbreviated to a unique
prefix of at least 4 hex digits, as in git.

An artifact as it was is named ``REF@REV`` (a revision number) or
``REF@cs_N`` (as of a change set), see :func:`artifact_at`. An artifact name
may itself contain ``@``: the whole reference is tried as a plain one first.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..digests import Digest
from ..errors import ArtifactNotFound, CollectionNotFound, ValidationError
from ..models import Artifact, ArtifactRevision, ChangeRecord, ChangeSet, Collection
from ..storage.bodies import BodyStore
from ..storage.contract import KnowledgeRepository
from ..storage.history import AsOf
from ..storage.history import artifact_at as artifact_of_revision
from .params import CHANGE_SET_ID

ARTIFACT_ID_PREFIX = "art_"
COLLECTION_ID_PREFIX = "col_"


def collection(repo: KnowledgeRepository, ref: str) -> Collection:
    """A live collection by name, or by id."""
    try:
        return repo.get_collection_by_name(ref)
    except CollectionNotFound:
        if ref.startswith(COLLECTION_ID_PREFIX):
            return repo.get_collection(ref)
        raise


def is_id(ref: str) -> bool:
    return ref.startswith(ARTIFACT_ID_PREFIX) and "/" not in ref


def split_name(ref: str) -> tuple[str, str]:
    """``COLLECTION/NAME`` as its two parts, split on the first ``/``."""
    collection_name, slash, name = ref.partition("/")
    if not slash or not collection_name or not name:
        raise ValidationError(f"artifact {ref!r} is neither an id (art_...) nor COLLECTION/NAME")
    return collection_name, name


def artifact(repo: KnowledgeRepository, ref: str, *, as_of: AsOf | None = None) -> Artifact:
    """A live artifact by id or ``COLLECTION/NAME``, or the one live ``as_of`` a point
    in history (a change-set id, a sequence number or a time)."""
    when = "" if as_of is None else f" as of {as_of}"
    if is_id(ref):
        return repo.get_artifact(ref, as_of=as_of)
    collection_name, name = split_name(ref)
    try:
        return repo.get_artifact_by_name(collection(repo, collection_name).id, name, as_of=as_of)
    except (ArtifactNotFound, CollectionNotFound):
        raise ArtifactNotFound(ref, f"artifact not found: {ref!r}{when}") from None


def _pin(ref: str) -> tuple[str, int | str] | None:
    """``REF@REV`` as ``(REF, REV)``, ``REF@cs_N`` as ``(REF, "cs_N")``, else None."""
    base, at, point = ref.rpartition("@")
    if not at or not base:
        return None
    if point.isascii() and point.isdigit():
        return base, int(point)
    if CHANGE_SET_ID.fullmatch(point):
        return base, point
    return None


@dataclass(frozen=True, slots=True)
class Pinned:
    """An artifact as it is (``sequence`` None), or as it was just after change
    ``sequence``: at a revision, or as of a point in history."""

    artifact: Artifact
    sequence: int | None


def artifact_at(
    repo: KnowledgeRepository,
    ref: str,
    *,
    revision: int | None = None,
    as_of: AsOf | None = None,
) -> Pinned:
    """An artifact as it is, at a revision, or as of a point in history.

    ``ref`` is a reference as :func:`artifact` takes it, or one ending in
    ``@REV`` (that revision of the artifact, also of a deleted one named by
    id) or ``@cs_N`` (the artifact of that name as of change set ``cs_N``).
    A name that contains ``@`` is looked up whole first, so such a suffix is
    only read as a point in history when no artifact has the whole name.
    ``revision`` and ``as_of`` ask the same as a suffix; one point at most.
    """
    pinned = _pin(ref)
    if pinned is not None and not is_id(ref):
        try:
            return _artifact_at(repo, ref, revision, as_of)
        except ArtifactNotFound:
            pass  # no artifact has the whole name: read the suffix
    if pinned is None:
        return _artifact_at(repo, ref, revision, as_of)
    if revision is not None or as_of is not None:
        raise ValidationError(
            f"{ref!r} names a point in history; give no other revision or as-of point"
        )
    base, point = pinned
    if isinstance(point, int):
        return _artifact_at(repo, base, point, None)
    return _artifact_at(repo, base, None, point)


def _artifact_at(
    repo: KnowledgeRepository, ref: str, revision: int | None, as_of: AsOf | None
) -> Pinned:
    if revision is None:
        found = artifact(repo, ref, as_of=as_of)
        return Pinned(found, None if as_of is None else repo.resolve_as_of(as_of))
    if as_of is not None:
        raise ValidationError("give a revision or an as-of point, not both")
    found_id = artifact_id(repo, ref)
    then = repo.get_revision(found_id, revision)
    first = then if revision == 1 else repo.get_revision(found_id, 1)
    return Pinned(artifact_of_revision(first, then), then.change_sequence)


def artifact_id(repo: KnowledgeRepository, ref: str) -> str:
    """The id of a live artifact, or any id as given: history outlives deletion."""
    return ref if is_id(ref) else artifact(repo, ref).id


def digest(objects: BodyStore, prefix: str) -> Digest:
    """The one stored object whose digest starts with ``prefix``."""
    return objects.resolve(prefix)


class Names:
    """People's names for ids in output: ``COLLECTION/NAME``, looked up once each."""

    def __init__(self, repo: KnowledgeRepository) -> None:
        self._repo = repo
        self._collections: dict[str, str] = {}

    def collection(self, collection_id: str) -> str:
        name = self._collections.get(collection_id)
        if name is None:
            try:
                name = self._repo.get_collection(collection_id).name
            except CollectionNotFound:
                name = collection_id  # deleted: its id is all that is left to show
            self._collections[collection_id] = name
        return name

    def of(self, record: Artifact | ArtifactRevision) -> str:
        return f"{self.collection(record.collection_id)}/{record.name}"

    def artifact(self, artifact_id: str) -> str:
        """``COLLECTION/NAME`` of a live artifact, else its id."""
        try:
            return self.of(self._repo.get_artifact(artifact_id))
        except ArtifactNotFound:
            return artifact_id


def change_set(repo: KnowledgeRepository, change: ChangeRecord | None) -> ChangeSet | None:
    """The change set a change record belongs to; None for no record, or for one
    written before change sets (which belongs to none)."""
    if change is None or change.change_set_id is None:
        return None
    return repo.get_change_set(change.change_set_id)
