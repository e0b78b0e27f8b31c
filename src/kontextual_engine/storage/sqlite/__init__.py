"""The SQLite backend: the object store for bodies, ``index.sqlite`` for the rest.

``connection`` owns the ``sqlite3`` connection (opening, retries, typed
errors, transactions, the bulk buffer); ``rows`` maps records to rows by
column name; ``text_index`` is text search (FTS5 and its backlog); ``index``
is :class:`SQLiteIndex`, the primitives; ``repository`` composes it with the
object store; ``schema`` holds the migrations, ``maintenance`` fsck, gc,
backup and adopt.
"""

from .connection import INDEX_NAME
from .index import SQLiteIndex
from .options import DEFAULT_BUSY_TIMEOUT
from .repository import SQLiteKnowledgeRepository

__all__ = ["DEFAULT_BUSY_TIMEOUT", "INDEX_NAME", "SQLiteIndex", "SQLiteKnowledgeRepository"]
