"""Storage: the repository contract and its backends."""

from .contract import KnowledgeRepository
from .ids import MonotonicIds, SequentialIds, TickingClock
from .memory import InMemoryKnowledgeRepository
from .queries import normalize_query
from .sqlite import SQLiteKnowledgeRepository

__all__ = [
    "InMemoryKnowledgeRepository",
    "KnowledgeRepository",
    "MonotonicIds",
    "SQLiteKnowledgeRepository",
    "SequentialIds",
    "TickingClock",
    "normalize_query",
]
