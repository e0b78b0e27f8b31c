"""Breaking a store on purpose, the same way wherever a test needs it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Not a valid B-tree page header in any position, unlike runs of one byte.
NOISE = bytes((i * 37 + 11) % 256 for i in range(256))


def overwrite_root_page(index: Path, table: str, pattern: bytes = NOISE) -> None:
    """Fill the root page of ``table`` in a closed index with ``pattern``, repeated."""
    with sqlite3.connect(index) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()[0]
    conn.close()
    data = bytearray(index.read_bytes())
    offset = (root - 1) * size
    data[offset : offset + size] = (pattern * (size // len(pattern) + 1))[:size]
    index.write_bytes(bytes(data))
