"""Breaking a store on purpose, the same way wherever a test needs it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

# Not a valid B-tree page header in any position, unlike runs of one byte.
NOISE = bytes((i * 37 + 11) % 256 for i in range(256))


def overwrite_root_page(index: Path, table: str, pattern: bytes = NOISE) -> None:
    """Fill the root page of ``table`` in a closed index with ``pattern``, repeated."""
    overwrite_page(index, table_pages(index, table)[0], pattern)


def table_pages(index: Path, table: str) -> tuple[int, list[int]]:
    """The root page of ``table`` in a closed index and the pages its root points to
    (empty when the root is itself a leaf): a table of more than one page has an
    interior root whose children are leaves (or, for a large table, interior pages)."""
    with sqlite3.connect(index) as conn:
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()[0]
    conn.close()
    with index.open("rb") as file:
        file.seek((root - 1) * size)
        page = file.read(size)
    header = 100 if root == 1 else 0
    if page[header] not in (0x05, 0x02):  # interior table or index B-tree page
        return root, []
    count = int.from_bytes(page[header + 3 : header + 5], "big")
    cells = [
        int.from_bytes(page[header + 12 + 2 * i : header + 14 + 2 * i], "big") for i in range(count)
    ]
    children = [int.from_bytes(page[cell : cell + 4], "big") for cell in cells]
    children.append(int.from_bytes(page[header + 8 : header + 12], "big"))
    return root, children


def overwrite_page(index: Path, page: int, pattern: bytes = NOISE) -> None:
    """Fill page number ``page`` (1-based) of a closed index with ``pattern``, repeated."""
    size = _page_size(index)
    with index.open("r+b") as file:
        file.seek((page - 1) * size)
        file.write((pattern * (size // len(pattern) + 1))[:size])


def scramble_page_tail(index: Path, name: str, count: int = 20) -> None:
    """Flip ``count`` bytes near the end of the root page of table or index ``name``
    in a closed index: the cells there no longer parse, but the page header does,
    so SQLite opens the file and its integrity checks report the damage."""
    root = table_pages(index, name)[0]
    data = bytearray(index.read_bytes())
    end = root * _page_size(index) - 20
    for offset in range(end - count, end):
        data[offset] ^= 0x55
    index.write_bytes(bytes(data))


def _page_size(index: Path) -> int:
    with sqlite3.connect(index) as conn:
        size: int = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    return size
