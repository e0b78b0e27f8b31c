"""kontextual-engine: a local-first, durable store for knowledge artifacts."""

from .errors import KontextualError
from .models import (
    Artifact,
    ArtifactRevision,
    ChangeRecord,
    Collection,
    NewArtifact,
    PutOutcome,
    PutResult,
    Query,
    RelatedTo,
    Relationship,
)
from .storage import InMemoryKnowledgeRepository, KnowledgeRepository, SQLiteKnowledgeRepository

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "ArtifactRevision",
    "ChangeRecord",
    "Collection",
    "InMemoryKnowledgeRepository",
    "KnowledgeRepository",
    "KontextualError",
    "NewArtifact",
    "PutOutcome",
    "PutResult",
    "Query",
    "RelatedTo",
    "Relationship",
    "SQLiteKnowledgeRepository",
    "__version__",
]
