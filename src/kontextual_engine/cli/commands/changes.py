"""``kontextual changes``: the change feed by change set, once or followed."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from typing import Any

import click

from ...models import ChangeRecord, ChangeSet
from ...storage.contract import KnowledgeRepository
from .. import resolve
from ..app import App, cli, examples, json_option, one_line
from ..output import compact, echo, jsonable, print_json_line, short, when

# How often --follow asks for new changes: quick enough to feel live, rare
# enough that an idle follower costs nothing.
POLL_SECONDS = 0.5
# The pause between polls; a name of its own so tests can drive the loop.
sleep = time.sleep


def change_line(change: ChangeRecord) -> str:
    parts = [
        f"{change.sequence:>6}",
        when(change.timestamp),
        f"{change.entity_kind:<18}",
        f"{change.action:<10}",
        change.entity_id,
    ]
    if change.revision is not None:
        parts.append(f"r{change.revision}")
    if change.old_digest is not None or change.new_digest is not None:
        parts.append(f"{short(change.old_digest)} -> {short(change.new_digest)}")
    if change.details:
        parts.append(compact(change.details))
    return "  ".join(parts)


def change_set_line(change_set: ChangeSet | None, first: ChangeRecord) -> str:
    """The header of a change set's records: id, time, actor, message."""
    if change_set is None:
        return f"-  {when(first.timestamp)}  (no change set: written before change sets)"
    parts = [change_set.id, when(change_set.timestamp), change_set.actor or "-"]
    if change_set.message:
        parts.append(one_line(change_set.message))
    return "  ".join(parts)


def change_set_json(change_set: ChangeSet | None, records: list[ChangeRecord]) -> dict[str, Any]:
    """A change set and its records; a record of no change set is one of its own
    (``id``, ``actor`` and ``message`` null)."""
    if change_set is None:
        first = records[0]
        head: dict[str, Any] = {
            "id": None,
            "sequence": first.sequence,
            "timestamp": jsonable(first.timestamp),
            "actor": None,
            "message": None,
        }
    else:
        head = jsonable(change_set)
    return {**head, "changes": jsonable(records)}


def _set_of(change: ChangeRecord) -> str | int:
    # A record written before change sets is a group of its own.
    return change.change_set_id if change.change_set_id is not None else change.sequence


def by_change_set(changes: Iterable[ChangeRecord]) -> Iterator[Iterator[ChangeRecord]]:
    """Consecutive records of one change set, a group at a time: a change set
    commits at once, so its records are consecutive in the feed."""
    for _, group in itertools.groupby(changes, key=_set_of):
        yield group


def print_change_set(
    repo: KnowledgeRepository, group: Iterator[ChangeRecord], as_json: bool
) -> int:
    """Print one change set's records under its header; the last sequence printed."""
    first = next(group)
    change_set = resolve.change_set(repo, first)
    if as_json:
        records = [first, *group]
        print_json_line(change_set_json(change_set, records))
        return records[-1].sequence
    echo(change_set_line(change_set, first))
    last = first
    for change in itertools.chain([first], group):
        echo(f"  {change_line(change)}")
        last = change
    return last.sequence


def records_of(repo: KnowledgeRepository, change_set: ChangeSet) -> Iterator[ChangeRecord]:
    """The change records of one change set, in order."""
    return itertools.takewhile(
        lambda change: change.change_set_id == change_set.id,
        repo.iter_changes(change_set.sequence - 1),
    )


@cli.command(
    epilog=examples(
        "kontextual changes --since 120",
        "kontextual changes --follow --json | my-indexer",
        "kontextual changes --change-set cs_12",
    )
)
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Only changes with a sequence number above this.",
)
@click.option("--limit", type=click.IntRange(min=0), help="Stop after this many change sets.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help=f"Keep printing new change sets (polled every {POLL_SECONDS} s) until Ctrl-C.",
)
@click.option("--change-set", "change_set_id", metavar="ID", help="Only this change set (cs_N).")
@json_option
@click.pass_obj
def changes(
    app: App,
    since: int,
    limit: int | None,
    follow: bool,
    change_set_id: str | None,
    as_json: bool,
) -> None:
    """Print the change feed in sequence order, by change set, once or followed.

    Each change set (id, time, actor, message) with its change records under
    it; with --json, one JSON Lines record per change set, its records in
    "changes". Remember the last sequence number to resume with --since.
    """
    if change_set_id is not None:
        if since or limit is not None or follow:
            raise click.UsageError("--change-set takes no --since, --limit or --follow")
        repo = app.repo()
        found = repo.get_change_set(change_set_id)
        print_change_set(repo, records_of(repo, found), as_json)
        return
    repo = app.repo()
    printed = 0
    try:
        while True:
            for group in by_change_set(repo.iter_changes(since)):
                if limit is not None and printed >= limit:
                    return
                since = print_change_set(repo, group, as_json)
                printed += 1
            if not follow or (limit is not None and printed >= limit):
                return
            sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return  # the way to stop --follow, not a failure
