"""What SQLite (or the filesystem under it) reports, as the project's typed errors.

Every statement the index runs goes through :func:`typed_error` (by way of
:class:`~.connection.Connection`), so no raw ``sqlite3`` error reaches a
caller: a write refused by a constraint is :class:`IntegrityError`, a lock
held too long :class:`ConflictError`, a full filesystem
:class:`StorageFullError`, damage :class:`DamagedStoreError` naming the
damaged tables, a read-only file :class:`ReadOnlyStoreError`.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

from ...errors import (
    ConflictError,
    DamagedStoreError,
    IntegrityError,
    ReadOnlyStoreError,
    StorageFullError,
    StoreFormatError,
    ValidationError,
)
from ..objects import storage_full

# What a DamagedStoreError tells the user to do.
DAMAGE_ADVICE = (
    "run `kontextual fsck` to see what is damaged, then restore the store from a backup "
    "(`kontextual backup`) or a snapshot (`kontextual export`)"
)
# SQLITE_BUSY and SQLITE_LOCKED primary result codes.
_BUSY_CODES = (5, 6)
# Other primary result codes that say what happened to the index file.
_SQLITE_READONLY = 8
_SQLITE_CANTOPEN = 14
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26
# A filesystem with less free space than this when SQLite reports an I/O
# error is full: SQLite reports a failed write of its -shm or a page as
# SQLITE_IOERR, not SQLITE_FULL.
NEARLY_FULL_BYTES = 1024 * 1024
# The tables a statement names (not table-valued functions such as json_each).
_STATEMENT_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE)\s+(\w+)\b(?!\s*\()", re.IGNORECASE)


class NotUnicode(ValidationError):
    """A bound string that cannot be encoded as UTF-8 (it has a lone surrogate)."""


def _error_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code for ``exc`` (None before Python 3.11)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` is SQLite saying another connection holds a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _BUSY_CODES
    message = str(exc)
    return "locked" in message or "busy" in message


def _no_space(path: Path) -> bool:
    """Whether the filesystem holding ``path`` is (all but) full."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < NEARLY_FULL_BYTES


def is_full(exc: sqlite3.Error, root: Path) -> bool:
    """Whether ``exc`` says the filesystem holding the store is full."""
    code = _error_code(exc)
    if code == _SQLITE_FULL or "database or disk is full" in str(exc):
        return True
    return (code == _SQLITE_IOERR or "disk I/O error" in str(exc)) and _no_space(root)


def shm_refused(exc: BaseException) -> bool:
    """Whether opening failed because SQLite could not create or map the -shm."""
    if isinstance(exc, StorageFullError):
        return True
    cause = exc.__cause__
    if not isinstance(cause, sqlite3.Error):
        return False
    return _error_code(cause) in (_SQLITE_READONLY, _SQLITE_CANTOPEN) or any(
        words in str(cause) for words in ("readonly", "unable to open")
    )


def _constraint_error(exc: sqlite3.IntegrityError) -> IntegrityError:
    """The typed error for a write that the index's constraints refused."""
    message = str(exc)
    if message.startswith("UNIQUE"):
        hint = "a record with that id or key already exists"
    elif message.startswith("FOREIGN KEY"):
        hint = "it refers to a record the index does not hold"
    else:
        hint = "a value breaks the schema's rules"
    return IntegrityError(f"the index refused the write ({message}): {hint}")


def busy_error(root: Path, busy_timeout: float) -> ConflictError:
    return ConflictError(
        f"store {root} stayed locked by another writer for more than {busy_timeout:g} s"
    )


def typed_error(
    exc: BaseException,
    sql: str | None,
    *,
    index: Path,
    busy_timeout: float,
    conn: sqlite3.Connection | None,
) -> BaseException:
    """The typed error for what SQLite (or the filesystem under it) reported
    while running ``sql`` on ``index`` (over ``conn``, if still open); anything
    that is not such an error is returned as it is."""
    if isinstance(exc, UnicodeEncodeError):
        return NotUnicode(f"string is not valid Unicode text: {exc}")
    if isinstance(exc, sqlite3.IntegrityError):
        return _constraint_error(exc)
    if not isinstance(exc, sqlite3.Error):
        return exc
    if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
        return busy_error(index.parent, busy_timeout)
    if is_full(exc, index.parent):
        return storage_full(index.parent, str(exc))
    code = _error_code(exc)
    message = str(exc)
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in message:
        tables = _damaged_tables(sql, conn)
        where = f" (table {', '.join(tables)})" if tables else ""
        return DamagedStoreError(f"the index {index} is damaged{where}: {exc}; {DAMAGE_ADVICE}")
    if code == _SQLITE_READONLY or "readonly" in message:
        return ReadOnlyStoreError(f"cannot write to {index}: {exc}")
    return StoreFormatError(
        f"{index} cannot be read: {exc}; run `kontextual fsck` and restore "
        "the index from a backup or snapshot if it is damaged"
    )


def _damaged_tables(sql: str | None, conn: sqlite3.Connection | None) -> list[str]:
    """The tables that fail ``PRAGMA quick_check(table)``: of those ``sql`` reads
    (with the shadow tables of a virtual table), or of all when it names none;
    if none fails (or the check cannot run), the tables ``sql`` names."""
    named = sorted(set(_STATEMENT_TABLE.findall(sql or "")))
    if conn is None:
        return named
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND rootpage > 0"
            )
        ]
    except sqlite3.Error:
        return named
    candidates = [
        table for table in tables if any(table == n or table.startswith(f"{n}_") for n in named)
    ]
    damaged = []
    for table in candidates or tables:
        try:
            ok = conn.execute(f'PRAGMA quick_check("{table}")').fetchall() == [("ok",)]
        except sqlite3.Error:
            ok = False
        if not ok:
            damaged.append(table)
    return damaged or named


def missing_row(index: Path, what: str, table: str) -> DamagedStoreError:
    """A row the schema guarantees is not there: the index is damaged."""
    return DamagedStoreError(
        f"the index {index} is damaged (table {table}): {what} is missing; {DAMAGE_ADVICE}"
    )
