"""What a SQLite index may be opened with, checked before anything is created:
the SQLite library it needs, the busy timeout and the page cache size."""

from __future__ import annotations

import sqlite3

from ...errors import StoreFormatError, ValidationError

# Long enough to ride out any ordinary burst of writers from other processes;
# a writer that holds the lock longer than this is stuck, not busy.
DEFAULT_BUSY_TIMEOUT = 30.0
# 64 MiB page cache (negative = KiB): bulk ingest and FTS merges touch far more
# than the 2 MiB default, and the cache is only allocated as pages are used.
CACHE_SIZE_KIB = 64 * 1024
# The smallest page cache a store may be opened with (SQLite's default is 2 MiB).
MIN_CACHE_KIB = 1024
# Migration 0001 creates an FTS5 trigram table (0005 drops it), which needs
# SQLite 3.34; JSON functions are built in from 3.38
# but present as an extension in most earlier builds.
MIN_SQLITE = (3, 34, 0)


def check_busy_timeout(busy_timeout: object) -> None:
    """Refuse an index that cannot work here, before anything is created: a SQLite
    too old for it, or a busy timeout that is not seconds."""
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StoreFormatError(
            f"SQLite {sqlite3.sqlite_version} is too old for the index; "
            f"{'.'.join(map(str, MIN_SQLITE))} or newer is needed"
        )
    if not (
        isinstance(busy_timeout, (int, float))
        and not isinstance(busy_timeout, bool)
        and busy_timeout >= 0
        and busy_timeout != float("inf")
    ):
        raise ValidationError(f"busy_timeout must be seconds >= 0, got {busy_timeout!r}")


def check_cache_kib(cache_kib: object) -> None:
    """A page cache size: KiB, at least :data:`MIN_CACHE_KIB`."""
    if not isinstance(cache_kib, int) or isinstance(cache_kib, bool) or cache_kib < MIN_CACHE_KIB:
        raise ValidationError(
            f"cache_kib must be an integer number of KiB >= {MIN_CACHE_KIB}, got {cache_kib!r}"
        )
