"""``kontextual changes``: the change feed, once or followed."""

from __future__ import annotations

import time

import click

from ...models import ChangeRecord
from ..app import App, cli, examples, json_option
from ..output import compact, echo, print_json_line, short, when

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


@cli.command(
    epilog=examples(
        "kontextual changes --since 120",
        "kontextual changes --follow --json | my-indexer",
    )
)
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Only changes with a sequence number above this.",
)
@click.option("--limit", type=click.IntRange(min=0), help="Stop after this many changes.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help=f"Keep printing new changes (polled every {POLL_SECONDS} s) until Ctrl-C.",
)
@json_option
@click.pass_obj
def changes(app: App, since: int, limit: int | None, follow: bool, as_json: bool) -> None:
    """Print the change feed in sequence order, once or followed.

    One line per change (with --json, one JSON Lines record). Remember the
    last sequence number to resume with --since.
    """
    repo = app.repo()
    printed = 0
    try:
        while True:
            for change in repo.iter_changes(since):
                if limit is not None and printed >= limit:
                    return
                if as_json:
                    print_json_line(change)
                else:
                    echo(change_line(change))
                since = change.sequence
                printed += 1
            if not follow or (limit is not None and printed >= limit):
                return
            sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return  # the way to stop --follow, not a failure
