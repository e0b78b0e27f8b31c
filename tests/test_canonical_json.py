"""Canonical JSON: the checked fast path gives what the full check and
``json.dumps`` give, text for text and error for error."""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kontextual_engine import models
from kontextual_engine.errors import ValidationError
from kontextual_engine.models import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    canonical_dumps,
    canonical_json,
    json_string,
)


def plain(value: object) -> object:
    """Every mapping as a dict, every tuple as a list: any mapping is a JSON object."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def reference(value: object, where: str) -> str:
    """canonical_json as it was written first: the full check, then json.dumps
    (of the value with its mappings as dicts)."""
    models._check_json(value, where, 0)
    text = json.dumps(
        plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(f"{where}: contains a lone surrogate, not valid Unicode") from exc
    if len(encoded) > MAX_JSON_BYTES:
        raise ValidationError(f"{where}: JSON larger than {MAX_JSON_BYTES} bytes")
    return text


def outcome(function: Any, value: object) -> tuple[str, str]:
    try:
        return ("text", function(value, "metadata"))
    except ValidationError as exc:
        return ("error", str(exc))


class Text(str):
    pass


class Number(int):
    pass


# Text that includes what must be refused or escaped: NUL, lone surrogates,
# quotes, backslashes, control characters, non-ASCII.
texts = st.text(alphabet=st.characters(), max_size=6) | st.sampled_from(
    ["", "\x00", "a\x00b", "\ud800", '"', "\\", "\\u0000", "\n\t", "é✓", "日本"]
)
integers = st.integers() | st.sampled_from(
    [2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**19, True, False]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(),
    texts,
    st.builds(Text, texts),
    st.builds(Number, st.integers(-10, 10)),
    st.sampled_from([object(), b"bytes", {1, 2}, math.inf, -math.inf]),
)
keys = texts | st.integers(-3, 3) | st.none() | st.booleans()
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(keys, inner, max_size=3)
        | st.dictionaries(texts, inner, max_size=3).map(OrderedDict)
        | st.dictionaries(texts, inner, max_size=3).map(MappingProxyType)
    ),
    max_leaves=10,
)


@settings(max_examples=600, deadline=None)
@given(values)
def test_canonical_json_matches_the_full_check_and_json_dumps(value: object) -> None:
    assert outcome(canonical_json, value) == outcome(reference, value)


EDGES: list[object] = [
    {"x": 2**63 - 1, "y": -(2**63)},
    {"x": 2**63},
    {"x": -(2**63) - 1},
    [2**64],
    {"x": math.nan},
    {"x": [math.inf]},
    {"x": "a\x00"},
    {"a\x00": 1},
    {1: "x"},
    {"x": {None: 1}},
    {"x": (1, "two")},
    {"x": Text("sub")},
    {"x": Number(3)},
    {"x": OrderedDict(b=1, a=2)},
    {"x": MappingProxyType({"b": [MappingProxyType({"c": 1})], "a": 2})},
    {"x": {"y": object()}},
    {"x": "\ud800"},
    {"\ud800": 1},
    {"b": {"d": [1, 2.5, None, True]}, "a": "日本語 ✓"},
]


@pytest.mark.parametrize(
    "value", EDGES, ids=lambda value: re.sub(r" at 0x[0-9a-f]+", "", repr(value))
)
def test_canonical_json_edges(value: object) -> None:
    assert outcome(canonical_json, value) == outcome(reference, value)


def nested(depth: int, container: str) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"d": value} if container == "dict" else [value]
    return value


@pytest.mark.parametrize("container", ["dict", "list"])
@pytest.mark.parametrize(
    "depth", [MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, MAX_JSON_DEPTH + 5]
)
def test_depth_limit_is_the_full_checks(depth: int, container: str) -> None:
    value = nested(depth, container)
    assert outcome(canonical_json, value) == outcome(reference, value)
    expected = "text" if depth <= MAX_JSON_DEPTH else "error"
    assert outcome(canonical_json, value)[0] == expected


def test_size_limit_counts_utf8_bytes() -> None:
    # Fewer characters than the limit, more bytes: refused, as before.
    wide = {"x": "é" * (MAX_JSON_BYTES // 2)}
    assert outcome(canonical_json, wide) == outcome(reference, wide)
    assert outcome(canonical_json, wide)[0] == "error"
    fits = {"x": "a" * (MAX_JSON_BYTES - 8)}
    assert canonical_json(fits, "metadata") == reference(fits, "metadata")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters()))
def test_json_string_is_the_canonical_text_of_a_string(value: str) -> None:
    assert json_string(value) == json.dumps(value, ensure_ascii=False)
    assert json_string(value) == canonical_dumps(value)
