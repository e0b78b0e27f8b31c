"""The content-addressed object directory: one file per body, named by its BLAKE3 digest.

Layout and protocol are specified in ``docs/store-format.md``; this package is
the reference implementation of that document and knows nothing of SQL. One
module per concern:

- :mod:`.layout`: directory names, modes, digest <-> path, the format marker;
- :mod:`.store`: :class:`ObjectStore`: durability modes, batches, writing, reading, deleting;
- :mod:`.directory`: the `objects/` directory, fan-out directories, linking files into place;
- :mod:`.staging`: files in ``tmp/`` and the locks that say who owns them;
- :mod:`.reader`: verified reads and hashing of open files;
- :mod:`.scan`: the scan behind fsck and its :class:`Problem` records.

Durable writes (fsync, syncfs, linking into place) are in
:mod:`kontextual_engine.storage.durable`.
"""

from ..durable import FULL_ERRNOS, Durability, storage_full, sync_filesystem
from .layout import (
    DIR_MODE,
    FILE_MODE,
    MARKER_TEXT,
    MAX_MARKER_BYTES,
    OBJECTS_DIR,
    ROOT_MODE,
    STORE_FORMAT,
    STORE_MARKER,
    STORE_VERSION,
    TMP_DIR,
)
from .reader import VERIFY_IN_MEMORY
from .scan import Problem, ProblemKind
from .staging import TMP_GRACE_SECONDS, TmpFile
from .store import MAX_STAGED, SYNCFS_MIN, ObjectStats, ObjectStore

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
