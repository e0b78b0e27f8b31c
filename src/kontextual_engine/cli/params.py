"""Parsing what is typed on the command line: ``KEY=VALUE`` pairs, durations and
points in history."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import click

from ..errors import ValidationError

_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:\d+[wdhms])+")
_DURATION_PART = re.compile(r"(\d+)([wdhms])")


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """A JSON value if ``text`` is one (``1``, ``true``, ``"1"``, ``[1]``), else ``text``.

    NaN and Infinity are not JSON, so they stay strings.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError:
        return text
    except RecursionError:
        raise ValidationError(
            f"value {text[:40]!r}... is nested deeper than any metadata may be"
        ) from None


# The help of every option whose values go through :func:`parse_pairs`.
META_HELP = "VALUE is JSON if it parses (n=1, ok=true, s='\"1\"'), else a string. Repeatable."


def parse_pairs(values: Iterable[str], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, each value through :func:`parse_value`."""
    result: dict[str, Any] = {}
    for item in values:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise ValidationError(f"{option} {item!r} is not KEY=VALUE")
        result[key] = parse_value(text)
    return result


def parse_duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    """Seconds from ``0``, ``90`` (seconds), ``30m``, ``12h``, ``3d``, ``2w`` or ``1d12h``."""
    text = value.strip()
    if text.isdigit():
        return float(text)
    if _DURATION.fullmatch(text):
        return float(
            sum(int(count) * _DURATION_UNITS[unit] for count, unit in _DURATION_PART.findall(text))
        )
    raise click.BadParameter(f"{value!r} is not a duration like 2w, 3d, 12h, 30m, 90s or 0")


# A change set as people type it: its id, ``cs_`` and the sequence of its first change.
CHANGE_SET_ID = re.compile(r"cs_[0-9]+")
AS_OF_FORMS = (
    "a change set id (cs_12), a change sequence number (12) or an ISO 8601 time "
    "with a zone (2026-11-30T12:00:00Z)"
)


def point_in_history(text: str) -> str | int | datetime | None:
    """What ``as_of`` takes, from what was typed: a change-set id, a sequence number
    or a time with a zone; ``None`` when ``text`` is none of them."""
    if CHANGE_SET_ID.fullmatch(text):
        return text
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        return None
    return moment


def parse_as_of(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | int | datetime | None:
    """The ``--as-of`` option: see :func:`point_in_history`."""
    if value is None:
        return None
    point = point_in_history(value.strip())
    if point is None:
        raise click.BadParameter(f"{value!r} is not {AS_OF_FORMS}")
    return point
