"""The content-addressed object directory: one file per body, named by its BLAKE3 digest.

Layout and protocol are specified in ``docs/store-format.md``; this package is
the reference implementation of that document and knows nothing of SQL.
"""

from ..durable import FULL_ERRNOS, storage_full, sync_filesystem
from .store import (
    DIR_MODE,
    FILE_MODE,
    MARKER_TEXT,
    MAX_MARKER_BYTES,
    MAX_STAGED,
    OBJECTS_DIR,
    ROOT_MODE,
    STORE_FORMAT,
    STORE_MARKER,
    STORE_VERSION,
    SYNCFS_MIN,
    TMP_DIR,
    TMP_GRACE_SECONDS,
    VERIFY_IN_MEMORY,
    Durability,
    ObjectStats,
    ObjectStore,
    Problem,
    ProblemKind,
    TmpFile,
)

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "FULL_ERRNOS",
    "MARKER_TEXT",
    "MAX_MARKER_BYTES",
    "MAX_STAGED",
    "OBJECTS_DIR",
    "ROOT_MODE",
    "STORE_FORMAT",
    "STORE_MARKER",
    "STORE_VERSION",
    "SYNCFS_MIN",
    "TMP_DIR",
    "TMP_GRACE_SECONDS",
    "VERIFY_IN_MEMORY",
    "Durability",
    "ObjectStats",
    "ObjectStore",
    "Problem",
    "ProblemKind",
    "TmpFile",
    "storage_full",
    "sync_filesystem",
]
