"""Version 1 of the format, read as the version 2 records it stands for.

A version-1 snapshot has no change sets and its change records name none
(``format.decode_line`` reads them with ``change_set_id`` None). It does not
hold deleted relationships either, only their change records, whose
``details`` name the ends and type. :func:`as_version_2` rebuilds each
deleted relationship from its creation and deletion change records, as the
index migration ``0006_change_sets`` rebuilds those of an older store:
created at its creation record's time and sequence, deleted at its deletion
record's sequence, with metadata ``{}`` (its change records never held it).
The records then go through every check of version 2.
"""

from __future__ import annotations

from typing import Any

from ..errors import SnapshotError
from ..models import ChangeAction, EntityKind, Relationship
from ..storage.contract import RELATIONSHIP_KEY


def as_version_2(records: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The records of a version-1 snapshot with the kinds version 2 adds."""
    held = {relationship.id for relationship in records["relationships"]}
    changes = [c for c in records["changes"] if c.entity_kind == EntityKind.RELATIONSHIP.value]
    deleted_at = {c.entity_id: c.sequence for c in changes if c.action == ChangeAction.DELETE.value}
    deleted = []
    for change in changes:
        if (
            change.action != ChangeAction.CREATE.value
            or change.entity_id in held
            or change.entity_id not in deleted_at
        ):
            continue  # the replay refuses a creation that made nothing
        details = change.details
        key = [details.get(field) for field in RELATIONSHIP_KEY]
        if not all(isinstance(part, str) for part in key):
            raise SnapshotError(
                f"change record {change.sequence}: a deleted relationship's change record "
                "must name its ends and type"
            )
        source_id, target_id, relationship_type = key
        relationship = Relationship(
            id=change.entity_id,
            source_id=source_id,
            target_id=target_id,
            relationship_type=relationship_type,
            metadata_json="{}",
            created_at=change.timestamp,
            sequence=change.sequence,
        )
        deleted.append((relationship, deleted_at[change.entity_id]))
    return {**records, "deleted_relationships": deleted, "change_sets": []}
