"""Storage: the repository contract and its backends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

if TYPE_CHECKING:
    from .contract import KnowledgeRepository
    from .ids import MonotonicIds, SequentialIds, TickingClock
    from .memory import InMemoryKnowledgeRepository
    from .queries import normalize_query
    from .sqlite import SQLiteKnowledgeRepository

# Imported on first use: a module of one backend does not import the others.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        ".contract": ("KnowledgeRepository",),
        ".ids": ("MonotonicIds", "SequentialIds", "TickingClock"),
        ".memory": ("InMemoryKnowledgeRepository",),
        ".queries": ("normalize_query",),
        ".sqlite": ("SQLiteKnowledgeRepository",),
    },
)

__all__ = [
    "InMemoryKnowledgeRepository",
    "KnowledgeRepository",
    "MonotonicIds",
    "SQLiteKnowledgeRepository",
    "SequentialIds",
    "TickingClock",
    "normalize_query",
]
