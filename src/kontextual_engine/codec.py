"""Records <-> JSON: the one encoding of a record as a JSON object.

A record (a dataclass of :mod:`.models`) becomes a JSON object of its field
names; a ``*_json`` field appears decoded under its name without ``_json``,
a time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, a tuple of records as a list of
objects. The command line prints records this way and snapshots store them
this way (``docs/snapshot-format.md``).

Plain functions over the records: no I/O. Reading checks every field's type
(integers within the signed 64-bit range, JSON fields canonical and bounded)
and raises :class:`~kontextual_engine.errors.ValidationError` naming the
field; a caller that reads files says where (``where``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .errors import ValidationError
from .models import MAX_JSON_INT, MIN_JSON_INT, canonical_json, format_time, parse_time

__all__ = ["Convert", "field_converter", "record_from_json", "record_to_json"]

# Converts one JSON value of a field (the second argument names the field
# for errors) into the field's value.
Convert = Callable[[Any, str], Any]
# What a converter of one member of a field's type returns for a value of another type.
_NO_MATCH = object()


def record_to_json(record: Any) -> dict[str, Any]:
    """A record as a JSON object: ``*_json`` fields inlined, times as text."""
    out: dict[str, Any] = {}
    for field in dataclasses.fields(record):
        value = getattr(record, field.name)
        if field.name.endswith("_json"):
            out[field.name.removesuffix("_json")] = json.loads(value)
        elif isinstance(value, datetime):
            out[field.name] = format_time(value)
        elif isinstance(value, tuple):
            out[field.name] = [
                record_to_json(item) if dataclasses.is_dataclass(item) else item for item in value
            ]
        else:
            out[field.name] = value
    return out


def record_from_json(cls: type, data: object, where: str) -> Any:
    """The inverse of :func:`record_to_json`, checking every field's type.

    ``where`` names the object in errors (``index/runs.jsonl:3``).
    """
    if not isinstance(data, dict):
        raise ValidationError(f"{where}: expected a JSON object")
    readers = _readers(cls)
    if len(data) != len(readers) or any(key not in data for _, key, _ in readers):
        expected = {key for _, key, _ in readers}
        extra, missing = sorted(set(data) - expected), sorted(expected - set(data))
        raise ValidationError(f"{where}: unexpected fields {extra}, missing fields {missing}")
    return cls(
        **{name: convert(data[key], where + f": field {key!r}") for name, key, convert in readers}
    )


@functools.cache
def _readers(cls: type) -> tuple[tuple[str, str, Convert], ...]:
    """Each field of a record class: its name, its JSON key and its converter.

    Built once per class: resolving field types per record cost more than
    parsing the line.
    """
    hints = typing.get_type_hints(cls)
    return tuple(
        (
            field.name,
            field.name.removesuffix("_json"),
            field_converter(field.name, hints[field.name]),
        )
        for field in dataclasses.fields(cls)
    )


def field_converter(name: str, hint: Any) -> Convert:
    """The converter of the JSON value of a field named ``name`` of type ``hint``."""
    if name.endswith("_json"):
        return _json_object
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    nullable = type(None) in options
    tries = [_option(option) for option in options if option is not type(None)]

    def convert(value: Any, where: str) -> Any:
        if value is None:
            if nullable:
                return None
            raise ValidationError(f"{where}: must not be null")
        for attempt in tries:
            result = attempt(value, where)
            if result is not _NO_MATCH:
                return result
        raise ValidationError(f"{where}: unexpected value {value!r}")

    return convert


def _json_object(value: Any, where: str) -> str:
    if not isinstance(value, dict):
        raise ValidationError(f"{where}: expected a JSON object")
    return canonical_json(value, where)


def _option(option: Any) -> Convert:
    """The converter of one member of a field's type (``X`` of ``X | None``)."""
    if option is datetime:
        return _timestamp
    if typing.get_origin(option) is tuple:
        (item_type, _) = typing.get_args(option)
        if isinstance(item_type, type) and dataclasses.is_dataclass(item_type):

            def records(value: Any, where: str) -> Any:
                if not isinstance(value, list):
                    return _NO_MATCH
                return tuple(
                    record_from_json(item_type, item, f"{where}[{index}]")
                    for index, item in enumerate(value)
                )

            return records

        def items(value: Any, where: str) -> Any:
            if isinstance(value, list) and all(isinstance(item, item_type) for item in value):
                return tuple(value)
            return _NO_MATCH

        return items
    if option is int:
        return _integer
    if option in (bool, str):
        return lambda value, where: value if type(value) is option else _NO_MATCH
    raise TypeError(f"no JSON converter for {option!r}")  # a new field type


def _timestamp(value: Any, where: str) -> Any:
    if not isinstance(value, str):
        return _NO_MATCH
    try:
        return parse_time(value)
    except ValidationError:
        raise ValidationError(f"{where}: invalid timestamp {value!r}") from None


def _integer(value: Any, where: str) -> Any:
    if not isinstance(value, int) or isinstance(value, bool):
        return _NO_MATCH
    if not MIN_JSON_INT <= value <= MAX_JSON_INT:
        raise ValidationError(f"{where}: integer {value} is outside the signed 64-bit range")
    return value


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
