"""The SQLite backend: the object store for bodies, ``index.sqlite`` for the rest."""

from .repository import DEFAULT_BUSY_TIMEOUT, INDEX_NAME, SQLiteKnowledgeRepository

__all__ = ["DEFAULT_BUSY_TIMEOUT", "INDEX_NAME", "SQLiteKnowledgeRepository"]
