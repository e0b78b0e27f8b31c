"""The change sets of a snapshot against the rules of the transactions that made them.

Every outermost transaction is one change set (``storage/history.py``),
named ``cs_<sequence>`` after its first change record, with that record's
time (or the ``at`` its writer gave, which every record of it carries).
Transactions never interleave, so a change set is a run of consecutive
change records. Records written before change sets existed name none; they
come before every set.
"""

from __future__ import annotations

from ..errors import SnapshotError
from ..models import ChangeRecord, ChangeSet, check_text, format_time


def check_change_set(change_set: ChangeSet) -> None:
    """The fields of one change set, as the API makes them."""
    if change_set.id != f"cs_{change_set.sequence}":
        raise SnapshotError(f"its id must be cs_{change_set.sequence}, after its first sequence")
    for field in ("actor", "message"):
        value = getattr(change_set, field)
        if value is not None:
            check_text(value, f"change set {field}")


def check_change_sets(change_sets: list[ChangeSet], changes: list[ChangeRecord]) -> None:
    """Each change set is a run of consecutive change records starting at its
    sequence and time, and every change record names a change set held (or,
    before the first one, none)."""
    sets = {change_set.id: change_set for change_set in change_sets}
    current: ChangeSet | None = None
    started: set[str] = set()
    for change in changes:
        name = change.change_set_id
        if current is not None and name == current.id:
            continue
        where = f"change record {change.sequence}"
        if name is None:
            if current is not None:
                raise SnapshotError(
                    f"{where} names no change set, yet follows change set {current.id}: "
                    "only records written before change sets existed name none"
                )
            continue
        found = sets.get(name)
        if found is None:
            raise SnapshotError(
                f"{where} names change set {name!r}, which the snapshot does not hold"
            )
        if name in started:
            raise SnapshotError(f"the change records of change set {name} are not consecutive")
        if (found.sequence, found.timestamp) != (change.sequence, change.timestamp):
            raise SnapshotError(
                f"change set {name} starts at sequence {found.sequence}, "
                f"{format_time(found.timestamp)}, but its first change record is "
                f"{change.sequence}, {format_time(change.timestamp)}"
            )
        started.add(name)
        current = found
    for change_set in change_sets:
        if change_set.id not in started:
            raise SnapshotError(f"change set {change_set.id} has no change records")
