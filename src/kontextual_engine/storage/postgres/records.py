"""Records as JSON text and back: the ``record`` column of every table.

Times are written as :func:`~...models.format_time` writes them (UTC,
microseconds), nested records as objects, tuples as arrays; reading turns each
field back into the type its dataclass declares.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Hashable
from datetime import datetime
from typing import Any, TypeVar, cast

from ...errors import DamagedStoreError
from ...models import format_time, parse_time

R = TypeVar("R")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_time(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: _plain(getattr(value, field.name)) for field in _fields(type(value))}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def dumps(record: Any) -> str:
    """The JSON text of a record."""
    return json.dumps(_plain(record), ensure_ascii=False, separators=(",", ":"))


@functools.cache
def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return dataclasses.fields(cls)


@functools.cache
def _hints(cls: Hashable) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _read(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _read(inner[0], value)
    if hint is datetime:
        return parse_time(value)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_read(item, part) for part in value)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value)
    return value


def _build(cls: type[R], data: dict[str, Any]) -> R:
    hints = _hints(cast(Hashable, cls))
    return cls(**{name: _read(hints[name], value) for name, value in data.items()})


def loads(cls: type[R], text: str, table: str) -> R:
    """The record of type ``cls`` stored as ``text`` in ``table``."""
    try:
        return _build(cls, json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:
        raise DamagedStoreError(
            f"a row of the PostgreSQL table {table} does not hold a {cls.__name__}: {exc}"
        ) from exc
