"""SQL text the two SQL index backends build alike: only the parameter mark
differs (``?`` for SQLite, ``%s`` for PostgreSQL), so each condition is
written once here and each backend passes its mark.
"""

from __future__ import annotations

from typing import Any


def after_sequence(
    since: int, entity_id: str | None, limit: int | None, mark: str
) -> tuple[str, list[Any]]:
    """``WHERE ... ORDER BY ... LIMIT`` of records after ``since`` in sequence
    order, of one entity if ``entity_id`` is given (the change feed)."""
    rest = f"WHERE sequence > {mark}"
    params: list[Any] = [since]
    if entity_id is not None:
        rest += f" AND entity_id = {mark}"
        params.append(entity_id)
    return limited(rest + " ORDER BY sequence", params, limit, mark)


def limited(rest: str, params: list[Any], limit: int | None, mark: str) -> tuple[str, list[Any]]:
    """``rest`` with ``LIMIT`` when there is a limit."""
    if limit is None:
        return rest, params
    return f"{rest} LIMIT {mark}", [*params, limit]


def live_revision_as_of(
    sequence: int, collection_id: str | None, name: str | None, mark: str
) -> tuple[str, list[Any]]:
    """The condition on ``revisions r`` (joined with its artifact's first revision
    ``f``) that holds for each artifact's current revision just after change
    ``sequence``, of artifacts created by then and not deleted by then."""
    where = [
        f"f.change_sequence <= {mark}",
        "r.change_sequence = (SELECT max(x.change_sequence) FROM revisions x "
        f"WHERE x.artifact_id = r.artifact_id AND x.change_sequence <= {mark})",
        "NOT EXISTS (SELECT 1 FROM changes c WHERE c.entity_id = r.artifact_id "
        f"AND c.action = 'delete' AND c.sequence <= {mark})",
    ]
    params: list[Any] = [sequence] * 3
    for column, value in (("collection_id", collection_id), ("name", name)):
        if value is not None:
            where.append(f"r.{column} = {mark}")
            params.append(value)
    return " AND ".join(where), params
