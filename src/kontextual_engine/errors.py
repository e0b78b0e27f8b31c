"""The error hierarchy.

Every error the library raises on purpose derives from :class:`KontextualError`,
so callers (and the command line) can catch one class. Each subclass names a
kind of failure; each message names the offending id, name or value. The
``exit_code`` attribute is what the command line exits with for that kind.
"""

from __future__ import annotations


class KontextualError(Exception):
    """Base class of every error raised by kontextual-engine."""

    exit_code = 1


class ValidationError(KontextualError, ValueError):
    """Input that is malformed or outside documented limits."""

    exit_code = 2


class NotTextError(ValidationError):
    """A body that a text operation (``diff``) cannot take: binary (a NUL byte,
    or not UTF-8), or larger than it compares."""


class NotFoundError(KontextualError, LookupError):
    """An entity that does not exist (or no longer exists)."""

    exit_code = 3
    entity = "entity"

    def __init__(self, key: str, message: str | None = None) -> None:
        self.key = key
        super().__init__(message or f"{self.entity} not found: {key!r}")


class CollectionNotFound(NotFoundError):
    entity = "collection"


class ArtifactNotFound(NotFoundError):
    entity = "artifact"


class ChangeSetNotFound(NotFoundError):
    entity = "change set"


class RevisionNotFound(NotFoundError):
    entity = "revision"


class RelationshipNotFound(NotFoundError):
    entity = "relationship"


class RunNotFound(NotFoundError):
    entity = "run"


class StepNotFound(NotFoundError):
    entity = "workflow step"


class ContextPackageNotFound(NotFoundError):
    entity = "context package"


class ExternalReferenceNotFound(NotFoundError):
    entity = "external memory reference"


class ObjectNotFound(NotFoundError):
    entity = "object"


class StoreNotFound(NotFoundError):
    """No store at a path that was opened without ``create=True``."""

    entity = "store"

    def __init__(
        self,
        path: object,
        hint: str = "create one with `kontextual init` or "
        "`SQLiteKnowledgeRepository.open(path, create=True)`",
    ) -> None:
        super().__init__(str(path), f"no kontextual store at {path}; {hint}")


class ConflictError(KontextualError):
    """The operation contradicts the current state of the repository."""

    exit_code = 4


class DuplicateNameError(ConflictError):
    """A live entity with that name already exists where names are unique."""


class DuplicateRelationshipError(ConflictError):
    """A relationship with the same (source, target, type) already exists."""


class RevisionConflictError(ConflictError):
    """``expected_revision`` did not match the current revision."""

    def __init__(self, artifact_id: str, expected: int, actual: int) -> None:
        self.artifact_id = artifact_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"revision conflict on artifact {artifact_id!r}: "
            f"expected revision {expected}, current is {actual}"
        )


class IllegalTransitionError(ConflictError):
    """A run or step status change that the lifecycle does not allow."""


class IntegrityError(ConflictError):
    """A reference to an entity that is missing or not live."""


class CollectionNotEmptyError(ConflictError):
    """A collection still holding live artifacts cannot be deleted."""


class AmbiguousPrefixError(ValidationError):
    """A digest prefix that matches more than one object."""


class CorruptObjectError(KontextualError):
    """An object whose bytes do not hash to its name, or is otherwise damaged."""

    exit_code = 5

    def __init__(self, digest: str, reason: str) -> None:
        self.digest = digest
        self.reason = reason
        super().__init__(f"corrupt object {digest}: {reason}")


class StoreFormatError(KontextualError):
    """A store directory or index that this version cannot open safely."""

    exit_code = 5


class DamagedStoreError(StoreFormatError):
    """The index or the object directory of an existing store is damaged.

    The message names what is damaged (a table, a file) and what to do:
    run ``kontextual fsck`` and restore from a backup or snapshot.
    """

    exit_code = 5


class StorageFullError(KontextualError):
    """The filesystem holding the store has no space left for a write.

    Not damage: nothing acknowledged was lost, and reads keep working.
    """

    exit_code = 7


class ReadOnlyStoreError(KontextualError):
    """A write was attempted on a store opened (or only openable) read-only."""

    exit_code = 6


class SnapshotError(KontextualError):
    """A snapshot that is malformed, tampered with, or hostile."""

    exit_code = 5


class RemoteStoreError(KontextualError):
    """A remote store (an S3-compatible object store, or a shared store's
    PostgreSQL index) refused or failed a request.

    The message names the store (``s3://bucket/prefix``, the endpoint, or the
    index's DSN without its password), the operation and the service's error
    code; never a credential.
    """

    exit_code = 8


class RemoteStoreUnreachableError(RemoteStoreError):
    """The remote store did not answer: connection refused, reset or timed out, or
    the PostgreSQL server stopped or restarted.

    Not damage: nothing acknowledged was lost; retry when the service is back.
    """


class RemoteStoreAccessError(RemoteStoreError):
    """Access denied: the remote object store to the bucket or prefix, or a shared
    store's PostgreSQL server to the user or its password."""

    exit_code = 9
