"""Storage: the repository contract and its backends."""

from .contract import KnowledgeRepository, normalize_query
from .ids import MonotonicIds, SequentialIds, TickingClock
from .memory import InMemoryKnowledgeRepository
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
