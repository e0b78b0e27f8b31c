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


def scramble_page_tail(index: Path, name: str, count: int = 20) -> None:
    """Flip ``count`` bytes near the end of the root page of table or index ``name``
    in a closed index: the cells there no longer parse, but the page header does,
    so SQLite opens the file and its integrity checks report the damage."""
    with sqlite3.connect(index) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)
        ).fetchone()[0]
    conn.close()
    data = bytearray(index.read_bytes())
    end = root * size - 20
    for offset in range(end - count, end):
        data[offset] ^= 0x55
    index.write_bytes(bytes(data))
