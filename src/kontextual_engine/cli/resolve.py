"""From what people type to records: collections, artifacts, digest prefixes.

An artifact is named by its id (``art_...``) or as ``COLLECTION/NAME``, split
on the first ``/`` (artifact names may contain slashes, collection names
then may not be typed this way). A digest may be abbreviated to a unique
prefix of at least 4 hex digits, as in git.
"""

from __future__ import annotations

from ..digests import Digest
from ..errors import ArtifactNotFound, CollectionNotFound, ValidationError
from ..models import Artifact, ArtifactRevision, Collection
from ..storage.contract import KnowledgeRepository
from ..storage.objects import ObjectStore

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


def _is_id(ref: str) -> bool:
    return ref.startswith(ARTIFACT_ID_PREFIX) and "/" not in ref


def artifact(repo: KnowledgeRepository, ref: str) -> Artifact:
    """A live artifact by id or ``COLLECTION/NAME``."""
    if _is_id(ref):
        return repo.get_artifact(ref)
    collection_name, slash, name = ref.partition("/")
    if not slash or not collection_name or not name:
        raise ValidationError(f"artifact {ref!r} is neither an id (art_...) nor COLLECTION/NAME")
    try:
        return repo.get_artifact_by_name(collection(repo, collection_name).id, name)
    except (ArtifactNotFound, CollectionNotFound):
        raise ArtifactNotFound(ref, f"artifact not found: {ref!r}") from None


def artifact_id(repo: KnowledgeRepository, ref: str) -> str:
    """The id of a live artifact, or any id as given: history outlives deletion."""
    return ref if _is_id(ref) else artifact(repo, ref).id


def digest(objects: ObjectStore, prefix: str) -> Digest:
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
