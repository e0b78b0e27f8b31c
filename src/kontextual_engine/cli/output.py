"""Printing: JSON documents and lines, aligned tables, short forms of values.

Human output never writes a control character that came from stored data:
:func:`visible` shows each one as an escape (``\\x1b``), so a name or a
description cannot move the cursor, retitle the window or forge a line.
JSON output stays exact: JSON escapes C0 controls itself, and DEL and the C1
controls are written as ``\\u00XX`` escapes, which decode to the same text.

JSON output uses the record field names; JSON-valued fields (``metadata_json``
...) appear decoded under their name without ``_json``
(:func:`kontextual_engine.codec.record_to_json`), times as
``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import click

from ..codec import record_to_json
from ..digests import CHUNK_SIZE, hex_of, parse_digest
from ..models import format_time, utc

# Enough hex digits to be unique in any store a person browses, as git's default.
SHORT_DIGEST = 12


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: records through ``record_to_json``, recursively."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: jsonable(item) for key, item in record_to_json(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(value: Any) -> None:
    """One JSON document."""
    click.echo(_escape_c1(json.dumps(jsonable(value), ensure_ascii=False, indent=2)))


def print_json_line(value: Any) -> None:
    """One line of a JSON Lines stream."""
    click.echo(_escape_c1(json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":"))))


# Characters a terminal may act on: C0 controls (tab and newline too: a value
# stays on its line), DEL and the C1 controls (U+0080..U+009F, e.g. the 8-bit CSI).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# What json.dumps leaves unescaped of those: it escapes every C0 control itself.
_C1 = re.compile("[\x7f-\x9f]")


def _escape_c1(text: str) -> str:
    """JSON text with DEL and C1 controls as ``\\u00XX`` escapes: the same JSON value."""
    return _C1.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def visible(value: object) -> str:
    """``str(value)`` for a terminal: every control character shown as ``\\xNN``."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", str(value))


def echo(text: object = "", *, err: bool = False) -> None:
    """One line of human output, with :func:`visible` applied."""
    click.echo(visible(text), err=err)


def echo_highlighted(text: str, spans: Sequence[tuple[int, int]], *, indent: str = "") -> None:
    """One line with the ``[start, end)`` spans of ``text`` in bold on a terminal
    (click drops the styling when stdout is not one); controls escaped."""
    pieces, previous = [indent], 0
    for start, end in spans:
        pieces.append(visible(text[previous:start]))
        pieces.append(click.style(visible(text[start:end]), bold=True, fg="yellow"))
        previous = end
    pieces.append(visible(text[previous:]))
    click.echo("".join(pieces))


def write_bytes(source: BinaryIO) -> None:
    """Copy a binary stream to stdout unchanged, a chunk at a time."""
    while chunk := source.read(CHUNK_SIZE):
        click.echo(chunk, nl=False)


def compact(value: Any) -> str:
    """A JSON value on one line, for human output (control characters escaped).

    json escapes C0 controls; C1 controls (U+0080..U+009F, e.g. the 8-bit CSI)
    are escaped here too, since terminals act on them.
    """
    return _escape_c1(json.dumps(jsonable(value), ensure_ascii=False, separators=(", ", ": ")))


def short(digest: str | None) -> str:
    return "-" if digest is None else hex_of(parse_digest(digest))[:SHORT_DIGEST]


def when(moment: datetime | None) -> str:
    """A timestamp for people: UTC, to the second."""
    return "-" if moment is None else utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def print_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = ()
) -> None:
    """Aligned columns under upper-case headers; nothing at all when there are no rows."""
    cells = [[visible(cell) for cell in row] for row in rows]
    if not cells:
        return
    right_aligned = set(right)
    widths = [max(len(header), *(len(row[i]) for row in cells)) for i, header in enumerate(headers)]
    for row in [[header.upper() for header in headers], *cells]:
        padded = [
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        click.echo("  ".join(padded).rstrip())


def print_fields(fields: Sequence[tuple[str, object]]) -> None:
    """``label: value`` lines with the values aligned."""
    width = max((len(label) for label, _ in fields), default=0) + 1
    for label, value in fields:
        click.echo(f"{label + ':':<{width}} {visible(value)}".rstrip())


def progress_enabled(quiet: bool) -> bool:
    """Progress goes to stderr, and only when a person is watching it."""
    return not quiet and sys.stderr.isatty()


class Progress:
    """A progress bar on stderr, fed ``(done, total)``; a counter while total is unknown."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label = label
        self.enabled = enabled
        self._bar: Any = None
        self._done = 0
        self._counting = False

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        if self._bar is None and total is not None:
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self._bar.__enter__()
        if self._bar is not None:
            self._bar.update(done - self._done)
        else:
            click.echo(f"\r{self.label} {done}", nl=False, err=True)
            self._counting = True
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        elif self._counting:
            click.echo(err=True)


@contextmanager
def progress(label: str, *, quiet: bool) -> Iterator[Progress]:
    bar = Progress(label, progress_enabled(quiet))
    try:
        yield bar
    finally:
        bar.close()
