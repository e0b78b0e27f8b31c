"""The PostgreSQL index backend (psycopg 3): :class:`PostgresIndex`.

Needs the ``postgres`` extra (``pip install 'kontextual-engine[postgres]'``).
"""

from __future__ import annotations

from .index import PostgresIndex

__all__ = ["PostgresIndex"]
