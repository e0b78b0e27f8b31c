"""Where a store is: the one place that maps a location to a repository.

The command line's ``--store`` value and a library caller's location go
through :func:`open_store`. Today a location is a directory path (or a
``file://`` URL of one), which opens the embedded store: a SQLite index and
an object directory. Other schemes are refused by name, so a location meant
for a kind of store this version does not have never opens a directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..errors import ValidationError
from .objects import Durability
from .sqlite import SQLiteKnowledgeRepository

# A Windows drive letter parses as a one-letter URL scheme; real schemes are longer.
_MIN_SCHEME = 2


def store_path(location: str | os.PathLike[str]) -> Path:
    """The directory of a local store location, or ValidationError naming the scheme."""
    text = os.fspath(location)
    parts = urlsplit(text)
    if len(parts.scheme) < _MIN_SCHEME:
        return Path(text).expanduser()
    if parts.scheme == "file" and parts.netloc in ("", "localhost"):
        return Path(unquote(parts.path))
    raise ValidationError(
        f"cannot open store location {text!r}: the {parts.scheme!r} scheme is not supported "
        "(use a directory path or a file:// URL)"
    )


def open_store(
    location: str | os.PathLike[str],
    durability: Durability | str = Durability.FULL,
    *,
    create: bool = False,
    read_only: bool = False,
    rebuild_progress: Callable[[int, int], None] | None = None,
) -> SQLiteKnowledgeRepository:
    """The repository at ``location``; ``create`` makes a new store there if none is.
    ``rebuild_progress`` is :meth:`SQLiteKnowledgeRepository.open`'s."""
    return SQLiteKnowledgeRepository.open(
        store_path(location),
        durability,
        create=create,
        read_only=read_only,
        rebuild_progress=rebuild_progress,
    )
