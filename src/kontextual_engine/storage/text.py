"""Word search: the tokenizer, the query language and BM25, shared by every backend.

One definition of what a text query means, which every backend matches result
for result and score for score (ADR 0006):

* **Searchable bodies.** A body is searchable when it is at most
  :data:`MAX_TEXT_BYTES` long, decodes as strict UTF-8 and holds no NUL
  character; otherwise :func:`text_of` says why not (:class:`NotSearchable`).
* **Words.** The words of a text are the runs of ``\\w`` characters (Python's
  Unicode rule: letters, digits, underscore) of its NFKC normalisation,
  case-folded with ``str.casefold()``. NFKC rather than NFC, so that
  compatibility forms a reader sees as the same letters match: the ``ﬁ``
  ligature is ``fi``, full-width ``\\uff26`` is ``F``, a superscript ``²`` is ``2``.
  :func:`words` is the reference; a backend may split differently only where
  the result is provably the same (:func:`indexed_form`).
* **Queries.** White-space separated items, all required (AND): a word, a
  ``"quoted phrase"`` (its words adjacent, in order), either followed by ``*``
  (the last word is a prefix), and any of these after ``-`` (excluded: no
  result contains it). A query item whose text splits into several words
  (``e-mail``, ``don't``) is a phrase of those words. At least one item must
  be required. Anything else (an unclosed quote, ``*`` inside a word, an item
  with no word characters) is a :class:`ValidationError` naming it.
* **Ranking.** Okapi BM25 exactly as SQLite FTS5's ``bm25()`` computes it
  (k1 = 1.2, b = 0.75, one column), over every searchable live artifact of
  the store: :func:`bm25_scores`. Higher is better; ties go by sequence.
"""

from __future__ import annotations

import enum
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..errors import ValidationError
from ..models import Snippet

# Bodies larger than this are not indexed for text: search is for documents,
# and a body is held whole in memory while its words are indexed.
MAX_TEXT_BYTES = 1 << 20
# Many items make a query slow in every backend and are never typed by hand.
MAX_TERMS = 32
# Words a snippet shows around the best-matching place of a body.
SNIPPET_WORDS = 24
# FTS5's bm25() constants, mirrored by bm25_scores().
BM25_K1 = 1.2
BM25_B = 0.75
# The smallest IDF FTS5 gives a phrase in more than half the documents.
BM25_MIN_IDF = 1e-6

_WORD = re.compile(r"\w+")
_SPACES = re.compile(r"\s+")
# Characters of punctuation a snippet keeps before its first or after its last
# word when it shows the start or the end of a body ("# Title", "end.").
_EDGE = 16
# A query item: optional "-", then a quoted phrase or a bare run of
# characters, then an optional "*".
_ITEM = re.compile(r'(-?)(?:"([^"]*)"|([^\s"*]+))(\*?)')


class NotSearchable(str, enum.Enum):
    """Why a body's words are not in the text index."""

    TOO_LARGE = "too-large"
    NOT_UTF8 = "not-utf8"
    BINARY = "binary"

    def describe(self) -> str:
        """The reason as ``show`` prints it."""
        if self is NotSearchable.TOO_LARGE:
            return f"larger than {MAX_TEXT_BYTES >> 20} MiB"
        return "not UTF-8" if self is NotSearchable.NOT_UTF8 else "binary (holds NUL bytes)"


def text_of(content: bytes) -> str | NotSearchable:
    """The text of a body, or why it is not searchable."""
    if len(content) > MAX_TEXT_BYTES:
        return NotSearchable.TOO_LARGE
    if b"\x00" in content:
        return NotSearchable.BINARY
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return NotSearchable.NOT_UTF8


def fold(text: str) -> str:
    """NFKC, then case folding: the form words are compared in."""
    return unicodedata.normalize("NFKC", text).casefold()


def words(text: str) -> list[str]:
    """The words of a text, in order (the reference tokenizer)."""
    if text.isascii():
        return _WORD.findall(text.lower())  # NFKC and casefold are lower() on ASCII
    return _WORD.findall(fold(text))


def indexed_form(text: str) -> str:
    """The text an FTS5 ``ascii`` tokenizer (``tokenchars '_'``) splits into exactly
    :func:`words`: ASCII text as it is (that tokenizer's words are the ASCII
    ``\\w`` runs, lower-cased), other text as its words joined by spaces (the
    tokenizer keeps every non-ASCII character in a word)."""
    return text if text.isascii() else " ".join(_WORD.findall(fold(text)))


# -- queries -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phrase:
    """Words that must appear next to each other, in order; with ``prefix``, the
    last one only has to start a word."""

    words: tuple[str, ...]
    prefix: bool = False

    def occurrences(self, document: Sequence[str]) -> list[int]:
        """Positions in ``document`` where this phrase starts (overlaps counted)."""
        first, rest, width = self.words[0], self.words[1:], len(self.words)
        found = []
        for start in range(len(document) - width + 1):
            if not _word_matches(document[start], first, self.prefix and width == 1):
                continue
            if all(
                _word_matches(document[start + 1 + i], word, self.prefix and i == width - 2)
                for i, word in enumerate(rest)
            ):
                found.append(start)
        return found

    def fts5(self) -> str:
        """This phrase in FTS5 query syntax; the words hold only ``\\w``
        characters, so nothing in them is FTS5 syntax."""
        return '"' + " ".join(self.words) + '"' + ("*" if self.prefix else "")


def _word_matches(word: str, wanted: str, prefix: bool) -> bool:
    return word.startswith(wanted) if prefix else word == wanted


@dataclass(frozen=True, slots=True)
class TextQuery:
    """A parsed text query: every ``required`` phrase and no ``excluded`` one."""

    required: tuple[Phrase, ...]
    excluded: tuple[Phrase, ...] = ()

    def fts5(self) -> str:
        """The query as an FTS5 MATCH expression, required phrases first and in
        order, so FTS5 numbers them as :func:`bm25_scores` does."""
        expression = " AND ".join(phrase.fts5() for phrase in self.required)
        if self.excluded:
            excluded = " OR ".join(phrase.fts5() for phrase in self.excluded)
            expression = f"({expression}) NOT ({excluded})"
        return expression

    def matches(self, document: Sequence[str]) -> bool:
        return all(phrase.occurrences(document) for phrase in self.required) and not any(
            phrase.occurrences(document) for phrase in self.excluded
        )


def parse_query(query: object) -> TextQuery:
    """Parse a text query (module docstring), or raise :class:`ValidationError`."""
    if not isinstance(query, str):
        raise ValidationError(f"text query must be a string, got {type(query).__name__}")
    if "\x00" in query:
        raise ValidationError("text query contains a NUL character")
    required: dict[Phrase, None] = {}
    excluded: dict[Phrase, None] = {}
    position, length = 0, len(query)
    while True:
        while position < length and query[position].isspace():
            position += 1
        if position == length:
            break
        match = _ITEM.match(query, position)
        if match is None or (match.end() < length and not query[match.end()].isspace()):
            raise ValidationError(_bad_item(query, position))
        minus, quoted, bare, star = match.groups()
        phrase_words = tuple(words(quoted if quoted is not None else bare))
        if not phrase_words:
            raise ValidationError(
                f"text query item {match.group()!r} has no word to search for "
                "(words are letters, digits and underscores)"
            )
        (excluded if minus else required)[Phrase(phrase_words, prefix=bool(star))] = None
        position = match.end()
    if not required:
        raise ValidationError(
            f"text query {query!r} has no term to search for"
            if not excluded
            else f"text query {query!r} only excludes; add a term to search for"
        )
    if len(required) + len(excluded) > MAX_TERMS:
        raise ValidationError(
            f"text query has {len(required) + len(excluded)} terms; at most {MAX_TERMS}"
        )
    return TextQuery(tuple(required), tuple(excluded))


def _bad_item(query: str, position: int) -> str:
    """What is wrong with the query item that starts at ``position``."""
    rest = query[position:]
    if rest.lstrip("-").startswith('"') and '"' not in rest.lstrip("-")[1:]:
        return f"text query {query!r} has an unclosed quote"
    item = rest.split()[0] if rest.split() else rest
    if item == "-":
        return "text query item '-' excludes nothing"
    if "*" in item:
        return f"text query item {item!r}: '*' may only end a word or a phrase, once"
    return f'text query item {item!r} is not a word, a "phrase", a prefix* or an excluded -term'


# -- substring search ------------------------------------------------------------


def parse_substrings(query: object) -> tuple[str, ...]:
    """The terms of a substring query: white-space separated, case-folded, each
    an ordinary string (no syntax), distinct, in first-seen order."""
    if not isinstance(query, str):
        raise ValidationError(f"text query must be a string, got {type(query).__name__}")
    if "\x00" in query:
        raise ValidationError("text query contains a NUL character")
    terms = tuple(dict.fromkeys(term.casefold() for term in query.split()))
    if not terms:
        raise ValidationError(f"text query {query!r} has no terms")
    if len(terms) > MAX_TERMS:
        raise ValidationError(f"text query has {len(terms)} terms; at most {MAX_TERMS}")
    return terms


def substrings_match(terms: tuple[str, ...], body: str | NotSearchable) -> bool:
    """Whether every term is a substring of the case-folded text of a body."""
    if isinstance(body, NotSearchable):
        return False
    folded = body.casefold()
    return all(term in folded for term in terms)


# -- ranking -------------------------------------------------------------------


def bm25_scores(
    query: TextQuery, documents: Mapping[int, Sequence[str]], candidates: Iterable[int]
) -> dict[int, float]:
    """BM25 score of each candidate (keys of ``documents`` that match ``query``),
    computed as FTS5's ``bm25()`` does, with the sign turned so that higher is
    better. ``documents`` is every searchable document of the store: the
    statistics (document count, average length, how many documents hold each
    phrase) are over all of them."""
    phrases = query.required + query.excluded
    rows = len(documents)
    average = sum(len(words) for words in documents.values()) / rows if rows else 0.0
    idf = []
    for phrase in phrases:
        hits = sum(1 for words in documents.values() if phrase.occurrences(words))
        value = math.log((rows - hits + 0.5) / (hits + 0.5))
        idf.append(value if value > 0.0 else BM25_MIN_IDF)
    scores = {}
    for key in candidates:
        document = documents[key]
        length = float(len(document))
        score = 0.0
        for weight, phrase in zip(idf, phrases, strict=True):
            frequency = float(len(phrase.occurrences(document)))
            score += weight * (
                (frequency * (BM25_K1 + 1.0))
                / (frequency + BM25_K1 * (1 - BM25_B + BM25_B * length / average))
            )
        scores[key] = score
    return scores


# -- snippets ------------------------------------------------------------------


def snippet(query: TextQuery, text: str, *, width: int = SNIPPET_WORDS) -> Snippet:
    """The ``width`` words of ``text`` that show the most required phrases (the
    first such place), on one line, with the matched words' offsets in it.

    Runs of white space become one space; ``…`` marks text left out before
    or after. Presentation only: which artifacts match does not depend on it.
    """
    if text.isascii():  # one word per match, folded by lower()
        spans = [(m.group().lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    else:
        spans = [
            (word, found.start(), found.end())
            for found in _WORD.finditer(text)
            for word in words(found.group())
        ]
    if not spans:
        return Snippet(_SPACES.sub(" ", text).strip()[: width * 8], ())
    covers: list[set[int]] = [set() for _ in spans]
    document = [word for word, _, _ in spans]
    for number, phrase in enumerate(query.required):
        for start in phrase.occurrences(document):
            for position in range(start, start + len(phrase.words)):
                covers[position].add(number)
    best, best_key = _best_window(covers, width, len(query.required))
    # Show some words before the first match too, if that keeps every match.
    first = next((p for p in range(best, best + width) if p < len(spans) and covers[p]), best)
    for start in range(min(first - width // 3, len(spans) - width), best, -1):
        window = covers[start : start + width]
        if (len(set().union(*window)), sum(1 for cover in window if cover)) == best_key:
            best = start
            break
    end = min(len(spans), best + width)
    out = "… " if best > 0 else _SPACES.sub(" ", text[: spans[0][1]]).lstrip()[-_EDGE:]
    highlights = []
    previous_end = spans[best][1]
    for position in range(best, end):
        _, start_char, end_char = spans[position]
        if start_char < previous_end:  # the second word of one source word
            continue
        out += _SPACES.sub(" ", text[previous_end:start_char])
        if covers[position]:
            highlights.append((len(out), len(out) + end_char - start_char))
        out += text[start_char:end_char]
        previous_end = end_char
    if end < len(spans):
        out += " …"
    else:
        out += _SPACES.sub(" ", text[previous_end:]).rstrip()[:_EDGE]
    return Snippet(out, tuple(highlights))


def _best_window(covers: list[set[int]], width: int, phrases: int) -> tuple[int, tuple[int, int]]:
    """The first window of ``width`` positions showing the most distinct phrases,
    then the most matched positions: one pass, counting what enters and leaves."""
    counts = [0] * phrases
    shown = matched = 0

    def step(position: int, change: int) -> None:
        nonlocal shown, matched
        for number in covers[position]:
            before = counts[number]
            counts[number] += change
            shown += (counts[number] > 0) - (before > 0)
        matched += change if covers[position] else 0

    for position in range(min(width, len(covers))):
        step(position, 1)
    best, best_key = 0, (shown, matched)
    for start in range(1, len(covers) - width + 1):
        step(start - 1, -1)
        step(start + width - 1, 1)
        if (shown, matched) > best_key:
            best, best_key = start, (shown, matched)
    return best, best_key
