"""What a query may ask, checked once for every backend, and the equality it uses.

:func:`normalize_query` validates a :class:`~..models.Query` before any backend
sees it; :func:`metadata_value_matches` is the type-exact equality of metadata
filters that the reference backend applies and the SQL of the others mirrors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from .. import digests
from ..errors import ValidationError
from ..models import (
    QUERY_ORDERS,
    Artifact,
    Query,
    RelatedTo,
    Relationship,
    canonical_json,
    canonical_object,
)
from . import text

DIRECTIONS = ("outgoing", "incoming", "both")
# A page larger than this is a full scan in disguise; callers page instead.
MAX_QUERY_LIMIT = 100_000


def check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 128:
        raise ValidationError(f"{what} must be an id string, got {value!r}")
    return value


def normalize_query(query: Query) -> Query:
    """Validate a query; return it with metadata canonicalised. Shared by backends."""
    if not isinstance(query, Query):
        raise ValidationError(f"query must be a Query, got {type(query).__name__}")
    if query.ids is not None:
        if isinstance(query.ids, str):
            raise ValidationError("Query.ids must be a sequence of ids, not one string")
        for artifact_id in query.ids:
            check_id(artifact_id, "Query.ids item")
    if query.collection_id is not None:
        check_id(query.collection_id, "Query.collection_id")
    for what, field in (("Query.name", query.name), ("Query.artifact_type", query.artifact_type)):
        if field is not None and not isinstance(field, str):
            raise ValidationError(f"{what} must be a string, got {field!r}")
    if query.digest is not None:
        digests.parse_digest(query.digest)
    if query.metadata is not None:
        canonical_object(query.metadata, "Query.metadata")
    if not isinstance(query.substring, bool):
        raise ValidationError(f"Query.substring must be True or False, got {query.substring!r}")
    if query.order is not None and query.order not in QUERY_ORDERS:
        raise ValidationError(f"Query.order {query.order!r} is not one of {QUERY_ORDERS}")
    if query.text is None:
        if query.substring:
            raise ValidationError("Query.substring needs a text query")
        if query.order == "relevance":
            raise ValidationError("order='relevance' needs a text query to rank by")
    elif query.substring:
        text.parse_substrings(query.text)
        if query.order == "relevance":
            raise ValidationError("a substring query cannot be ranked; it comes by sequence")
    else:
        text.parse_query(query.text)
        if query.after is not None and query.order != "sequence":
            raise ValidationError(
                "Query.after pages in creation order; a ranked text query needs "
                "order='sequence' to page with it"
            )
    if query.related_to is not None:
        related = query.related_to
        if not isinstance(related, RelatedTo):
            raise ValidationError("Query.related_to must be a RelatedTo")
        check_id(related.artifact_id, "RelatedTo.artifact_id")
        if related.direction not in DIRECTIONS:
            raise ValidationError(
                f"RelatedTo.direction {related.direction!r} is not one of {DIRECTIONS}"
            )
        if related.relationship_type is not None and not isinstance(related.relationship_type, str):
            raise ValidationError("RelatedTo.relationship_type must be a string")
    if query.as_of is not None and not isinstance(query.as_of, (str, int, datetime)):
        raise ValidationError(
            f"Query.as_of must be a change set id, a sequence or a time, got {query.as_of!r}"
        )
    for what, value in (("Query.limit", query.limit), ("Query.after", query.after)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValidationError(f"{what} must be an integer, got {value!r}")
    if query.limit is not None and not 0 <= query.limit <= MAX_QUERY_LIMIT:
        raise ValidationError(f"Query.limit {query.limit} is outside 0..{MAX_QUERY_LIMIT}")
    if query.after is not None and query.after < 0:
        raise ValidationError(f"Query.after {query.after} is negative")
    return query


def ranked(query: Query) -> bool:
    """Whether a (normalized) query's results come by relevance."""
    return query.text is not None and not query.substring and query.order != "sequence"


def artifact_filter(query: Query, related: set[str] | None) -> Callable[[Artifact], bool]:
    """The reference test of every filter of ``query`` but text, limit and after,
    for backends that filter records in Python (``related``: the ids the
    ``related_to`` filter allows, from :func:`related_ids`)."""
    ids = None if query.ids is None else set(query.ids)
    digest = None if query.digest is None else digests.parse_digest(query.digest)

    def matches(artifact: Artifact) -> bool:
        return (
            (ids is None or artifact.id in ids)
            and (query.collection_id is None or artifact.collection_id == query.collection_id)
            and (query.name is None or artifact.name == query.name)
            and (digest is None or artifact.digest == digest)
            and (query.artifact_type is None or artifact.artifact_type == query.artifact_type)
            and (related is None or artifact.id in related)
            and (query.metadata is None or metadata_matches(artifact, query.metadata))
        )

    return matches


def relationships_matching(
    relationships: Iterable[Relationship],
    artifact_id: str | None,
    direction: str,
    relationship_type: str | None,
) -> list[Relationship]:
    """The relationships (of ``artifact_id``, seen from it) of that type, in the
    order given."""
    return [
        r
        for r in relationships
        if (relationship_type is None or r.relationship_type == relationship_type)
        and (
            artifact_id is None
            or (direction != "incoming" and r.source_id == artifact_id)
            or (direction != "outgoing" and r.target_id == artifact_id)
        )
    ]


def related_ids(relationships: Iterable[Relationship], related: RelatedTo) -> set[str]:
    """The ids at the other end of ``related.artifact_id``'s relationships, as the
    ``related_to`` filter sees them."""
    found: set[str] = set()
    for r in relationships_matching(
        relationships, related.artifact_id, related.direction, related.relationship_type
    ):
        if r.source_id == related.artifact_id and related.direction != "incoming":
            found.add(r.target_id)
        if r.target_id == related.artifact_id and related.direction != "outgoing":
            found.add(r.source_id)
    return found


def metadata_matches(artifact: Artifact, expected: Mapping[str, Any]) -> bool:
    """Every key of ``expected`` is in the artifact's metadata with an equal value."""
    actual = artifact.metadata
    return all(
        key in actual and metadata_value_matches(actual[key], value)
        for key, value in expected.items()
    )


def metadata_value_matches(actual: Any, expected: Any) -> bool:
    """Type-exact JSON equality: ``true``, ``1``, ``1.0`` and ``"1"`` all differ."""
    if type(actual) is not type(expected):
        return False
    if isinstance(expected, (list, dict)):
        return canonical_json(actual) == canonical_json(expected)
    return bool(actual == expected)
