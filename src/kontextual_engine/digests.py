"""BLAKE3 digests: the one textual form, parsing, and hashing helpers.

A digest is written ``blake3:`` followed by 64 lowercase hex digits. Users may
type the bare 64-hex form; :func:`parse_digest` accepts both and returns the
canonical prefixed form. Nothing that has not passed :func:`parse_digest` (or
:func:`parse_prefix`) is ever used to build a path.
"""

from __future__ import annotations

import re
from typing import BinaryIO, NewType

import blake3

from .errors import AmbiguousPrefixError, ObjectNotFound, ValidationError

ALGORITHM = "blake3"
PREFIX = "blake3:"
# git accepts 4 as the shortest abbreviation; fewer would match too much.
MIN_PREFIX_HEX = 4
# Large enough to amortise the per-call overhead of the blake3 binding,
# small enough to keep streaming memory constant.
CHUNK_SIZE = 1 << 20

Digest = NewType("Digest", str)

_FULL = re.compile(r"blake3:[0-9a-f]{64}")
_BARE = re.compile(r"[0-9a-f]{64}")
_PREFIX = re.compile(r"(?:blake3:)?([0-9a-f]{4,64})")


def parse_digest(value: object) -> Digest:
    """Return the canonical ``blake3:<hex>`` form of ``value`` or raise."""
    if isinstance(value, str):
        if _FULL.fullmatch(value):
            return Digest(value)
        if _BARE.fullmatch(value):
            return Digest(PREFIX + value)
    raise ValidationError(
        f"invalid digest {value!r}: expected 'blake3:' and 64 lowercase hex digits"
    )


def parse_prefix(value: object) -> str:
    """Return the hex part of a digest prefix (at least 4 hex digits) or raise."""
    if isinstance(value, str):
        match = _PREFIX.fullmatch(value)
        if match:
            return match.group(1)
    raise ValidationError(
        f"invalid digest prefix {value!r}: expected at least {MIN_PREFIX_HEX} "
        "lowercase hex digits, optionally after 'blake3:'"
    )


def one_match(prefix: str, matches: set[str]) -> Digest:
    """The one digest (as hex) that matched ``prefix``; ObjectNotFound for none,
    AmbiguousPrefixError naming a few for several."""
    if not matches:
        raise ObjectNotFound(prefix, f"no object matches digest prefix {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(PREFIX + hexd for hexd in sorted(matches)[:5])
        more = "" if len(matches) <= 5 else f" and {len(matches) - 5} more"
        raise AmbiguousPrefixError(
            f"digest prefix {prefix!r} is ambiguous: it matches {len(matches)} "
            f"objects ({shown}{more}); give more digits"
        )
    return Digest(PREFIX + matches.pop())


def hex_of(digest: Digest) -> str:
    return digest[len(PREFIX) :]


def digest_bytes(data: bytes) -> Digest:
    return Digest(PREFIX + blake3.blake3(data).hexdigest())


def digest_stream(stream: BinaryIO) -> tuple[Digest, int]:
    """Hash a binary stream to its end; return its digest and size."""
    hasher = blake3.blake3()
    size = 0
    while chunk := stream.read(CHUNK_SIZE):
        hasher.update(chunk)
        size += len(chunk)
    return Digest(PREFIX + hasher.hexdigest()), size


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


def finish(hasher: blake3.blake3) -> Digest:
    return Digest(PREFIX + hasher.hexdigest())
