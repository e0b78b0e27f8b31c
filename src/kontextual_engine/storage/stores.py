"""Where a store is: the one place that maps a location to a repository.

The command line's ``--store`` value and a library caller's location go
through :func:`open_store`. A location is either

- a directory path (or a ``file://`` URL of one): the embedded store, a
  SQLite index and an object directory; or
- a ``postgresql://`` (or ``postgres://``) URL whose ``objects`` parameter
  names an ``s3://bucket/prefix``: the shared store, a PostgreSQL index and
  bodies in S3-compatible storage (:mod:`.shared`). ``s3_endpoint`` may name
  the S3 service's URL; every other part of the URL is libpq's own.

Other schemes are refused by name, so a location meant for a kind of store
this version does not have never opens a directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import ValidationError
from .objects import Durability

if TYPE_CHECKING:
    from .contract import KnowledgeRepository
    from .shared import SharedLocation

# A Windows drive letter parses as a one-letter URL scheme; real schemes are longer.
_MIN_SCHEME = 2
SHARED_SCHEMES = ("postgresql", "postgres")
URL_FORM = "postgresql://[USER@]HOST[:PORT]/DATABASE?objects=s3://BUCKET/PREFIX"


# What a shared store needs beyond the base install: the ``shared`` extra.
SHARED_MODULES = ("psycopg", "psycopg_pool", "boto3")
SHARED_EXTRA = "pip install 'kontextual-engine[shared]'"


def require_shared_extra() -> None:
    """Refuse a shared store, naming the install command, when its clients are missing."""
    import importlib.util

    missing = [name for name in SHARED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValidationError(
            f"a shared store needs {', '.join(missing)}, which are not installed: {SHARED_EXTRA}"
        )


def is_shared(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a shared store (a PostgreSQL URL)."""
    return urlsplit(os.fspath(location)).scheme in SHARED_SCHEMES


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
        f"(use a directory path, a file:// URL or {URL_FORM})"
    )


def shared_location(location: str) -> SharedLocation:
    """The parts of a shared store's URL, or ValidationError saying what is wrong
    (never echoing a password the URL may hold)."""
    from .shared import SharedLocation

    parts = urlsplit(location)
    if parts.scheme not in SHARED_SCHEMES:
        raise ValidationError(f"a shared store's URL starts with postgresql://: {URL_FORM}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    # libpq's own parameters are passed on as they were written.
    rest = [
        piece
        for piece in parts.query.split("&")
        if piece and unquote(piece.partition("=")[0]) not in ("objects", "s3_endpoint")
    ]
    objects = [value for name, value in query if name == "objects"]
    endpoints = [value for name, value in query if name == "s3_endpoint"]
    if len(objects) != 1:
        raise ValidationError(
            "a shared store's URL names where its bodies are with one objects= parameter: "
            + URL_FORM
        )
    bodies = urlsplit(objects[0])
    if bodies.scheme != "s3" or not bodies.netloc or bodies.query or bodies.fragment:
        raise ValidationError(
            f"objects={objects[0]!r} is not an s3://BUCKET/PREFIX location: {URL_FORM}"
        )
    if len(endpoints) > 1 or (endpoints and not endpoints[0].startswith(("http://", "https://"))):
        raise ValidationError("s3_endpoint= names one http:// or https:// URL of the S3 service")
    dsn = f"{parts.scheme}://{parts.netloc}{parts.path}" + (f"?{'&'.join(rest)}" if rest else "")
    return SharedLocation(
        dsn,
        bodies.netloc,
        unquote(bodies.path).strip("/"),
        endpoints[0] if endpoints else None,
    )


def open_store(
    location: str | os.PathLike[str],
    durability: Durability | str = Durability.FULL,
    *,
    create: bool = False,
    read_only: bool = False,
    rebuild_progress: Callable[[int, int], None] | None = None,
) -> KnowledgeRepository:
    """The repository at ``location``; ``create`` makes a new store there if none is.
    ``rebuild_progress`` is :meth:`SQLiteKnowledgeRepository.open`'s. A shared
    store's durability is its servers' (every write is durable when acknowledged),
    and it has no read-only mode: its credentials decide what it may do."""
    if is_shared(location):
        require_shared_extra()
        from .shared import SharedKnowledgeRepository

        if read_only:
            raise ValidationError(
                "a shared store opens read-only through its credentials (a PostgreSQL role "
                "and an S3 policy that only read), not with read_only=True"
            )
        return SharedKnowledgeRepository(shared_location(os.fspath(location)), create=create)
    from .sqlite import SQLiteKnowledgeRepository

    return SQLiteKnowledgeRepository.open(
        store_path(location),
        durability,
        create=create,
        read_only=read_only,
        rebuild_progress=rebuild_progress,
    )
