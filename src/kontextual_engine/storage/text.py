"""Content-text search semantics, shared by every backend.

The rules, which every backend must match result for result:

* A body is *searchable* when it is at most :data:`MAX_TEXT_BYTES` long,
  decodes as strict UTF-8, and contains no NUL character. Other bodies never
  match a text query.
* The searchable text of a body is ``body.decode("utf-8").casefold()``.
* A query is split on white space (``str.split()``) into terms; each term is
  case-folded with ``str.casefold()``. An empty query is a validation error.
* An artifact matches when **every** term is a substring of its searchable
  text (AND of substring tests). There is no phrase, prefix, boolean or
  proximity syntax: quotes, ``*``, ``AND``, ``NEAR`` and parentheses are
  ordinary characters of a term.

Substring semantics were chosen because SQLite's FTS5 ``trigram`` tokenizer
(with ``case_sensitive 1`` over pre-folded text) implements them exactly with
an index, while Python's ``in`` is their reference implementation; the
``unicode61`` tokenizer's Unicode 6.1 folding and diacritic stripping cannot be
mirrored exactly in Python.
"""

from __future__ import annotations

from ..errors import ValidationError

# Bodies larger than this are not indexed for text: search is for documents,
# and the index stores the folded text, so the cap bounds its growth.
MAX_TEXT_BYTES = 1 << 20
# Many terms make a query slow in every backend and are never typed by hand.
MAX_TERMS = 32


def searchable_text(content: bytes) -> str | None:
    """The folded text a text query searches, or ``None`` if not searchable."""
    if len(content) > MAX_TEXT_BYTES or b"\x00" in content:
        return None
    try:
        return content.decode("utf-8").casefold()
    except UnicodeDecodeError:
        return None


def parse_terms(text: str) -> tuple[str, ...]:
    """Split a text query into its distinct folded terms, in first-seen order."""
    if not isinstance(text, str):
        raise ValidationError(f"text query must be a string, got {type(text).__name__}")
    if "\x00" in text:
        raise ValidationError("text query contains a NUL character")
    terms = tuple(dict.fromkeys(term.casefold() for term in text.split()))
    if not terms:
        raise ValidationError(f"text query {text!r} has no terms")
    if len(terms) > MAX_TERMS:
        raise ValidationError(f"text query has {len(terms)} terms; at most {MAX_TERMS}")
    return terms


def matches(terms: tuple[str, ...], searchable: str | None) -> bool:
    return searchable is not None and all(term in searchable for term in terms)
