"""The SQL of an artifact :class:`~...models.Query`: a condition per filter.

Conditions are over ``artifacts a`` and joined with AND; text is not among
them (:mod:`.text_index` matches text). Metadata filters compare type-exactly
through ``artifact_metadata`` (:func:`..contract.metadata_value_matches` is
the rule they mirror).
"""

from __future__ import annotations

import json
from typing import Any

from ...digests import parse_digest
from ...models import Query
from . import schema

# How a metadata filter begins in SQL when the index of metadata drives.
METADATA_FILTER = "a.sequence IN (SELECT artifact_sequence FROM"


def _metadata_condition(value: Any) -> tuple[str, list[Any]]:
    """SQL over ``artifact_metadata`` testing type-exact equality with ``value``.

    Mirrors :func:`..contract.metadata_value_matches`: the Python type must be
    exactly the JSON type of the stored value, and arrays and objects compare
    by canonical JSON. A value of any other Python type (a tuple, a bool
    subclass...) can never equal decoded JSON.
    """
    if type(value) not in (type(None), bool, int, float, str, list, dict):
        return "0", []
    kind, cell = schema.metadata_cell(value)
    if cell is None:
        return "type = ?", [kind]
    return "type = ? AND value = ?", [kind, cell]


def conditions(query: Query, *, probe: bool = False) -> tuple[list[str], list[Any]]:
    """The conditions (over ``artifacts a``) and their parameters for every filter
    of ``query`` but ``text``, ``limit`` and ``after``: live artifacts only.

    With ``probe`` (a text query, where FTS5 yields the candidates) a metadata
    filter looks each candidate up by its key instead of listing every
    artifact with that value first."""
    where = ["a.deleted_at IS NULL"]
    params: list[Any] = []
    if query.ids is not None:
        where.append("a.id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(query.ids)))
    for column, value in (
        ("collection_id", query.collection_id),
        ("name", query.name),
        ("artifact_type", query.artifact_type),
    ):
        if value is not None:
            where.append(f"a.{column} = ?")
            params.append(value)
    if query.digest is not None:
        digest = parse_digest(query.digest)
        where.append(f"{schema.bucket_sql('a.digest')} = ? AND +a.digest = ?")
        params += [schema.digest_bucket(digest), digest]
    if query.metadata is not None:
        for key, value in query.metadata.items():
            condition, values = _metadata_condition(value)
            if probe:
                where.append(
                    "EXISTS (SELECT 1 FROM artifact_metadata m WHERE m.artifact_sequence = "
                    f"a.sequence AND m.key = ? AND {condition})"
                )
            else:
                where.append(f"{METADATA_FILTER} artifact_metadata WHERE key = ? AND {condition})")
            params += [key, *values]
    if query.related_to is not None:
        related = query.related_to
        of_type = "" if related.relationship_type is None else " AND relationship_type = ?"
        parts = []
        if related.direction != "incoming":
            parts.append(f"SELECT target_id FROM relationships WHERE source_id = ?{of_type}")
        if related.direction != "outgoing":
            parts.append(f"SELECT source_id FROM relationships WHERE target_id = ?{of_type}")
        where.append(f"a.id IN ({' UNION '.join(parts)})")
        for _ in parts:
            params.append(related.artifact_id)
            if related.relationship_type is not None:
                params.append(related.relationship_type)
    return where, params
