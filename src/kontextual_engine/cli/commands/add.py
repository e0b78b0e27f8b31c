"""The ``add`` command: files and folders into a collection (``--sync`` mirrors one).

Its own module, so that the other commands do not import what scanning and
planning need (``pathspec`` among them).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .. import ingest, plan
from ..app import App, change_set_options, cli, examples, json_option, quiet_option
from ..output import echo, print_json, progress
from ..params import META_HELP, parse_pairs


@cli.command(
    epilog=examples(
        "kontextual add notes ./notes",
        "kontextual add papers paper.pdf --type paper --meta year=2024 --meta reviewed=true",
        "kontextual add notes todo.txt --provenance source=import",
        "kontextual add notes ./notes --sync --exclude '*.tmp' --dry-run",
        "kontextual add kb ./wiki --sync --prefix wiki --include '*.md' --skip-invalid",
    )
)
@click.argument("collection_name", metavar="COLLECTION")
@click.argument(
    "paths", nargs=-1, required=True, metavar="PATH...", type=click.Path(path_type=Path)
)
@click.option(
    "--type", "artifact_type", help="Artifact type (default: guessed from the extension)."
)
@click.option("--media-type", help="Media type (default: guessed from the extension).")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help=f"Set a metadata key. {META_HELP}")
@click.option(
    "--provenance",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Record how this revision came to be. {META_HELP}",
)
@click.option("--prefix", metavar="P", help="Name the files P/NAME instead of NAME.")
@click.option(
    "--sync",
    is_flag=True,
    help="Mirror one folder: also delete the artifacts (under --prefix) whose files are gone.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="PATTERN",
    help="Take only files matching a pattern (gitignore syntax). Repeatable.",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATTERN",
    help="Leave out files matching a pattern (gitignore syntax). Repeatable.",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Skip files that cannot be stored (listed with the reason) and store the rest.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be done; write nothing.")
@change_set_options
@json_option
@quiet_option
@click.pass_obj
def add(
    app: App,
    collection_name: str,
    paths: tuple[Path, ...],
    artifact_type: str | None,
    media_type: str | None,
    meta: tuple[str, ...],
    provenance: tuple[str, ...],
    prefix: str | None,
    sync: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    skip_invalid: bool,
    dry_run: bool,
    actor: str | None,
    message: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Add files and folders (recursively) to a collection.

    COLLECTION is created if it does not exist. A file in a folder is named
    by its path relative to that folder, a file given on its own by its file
    name (under P/ with --prefix). Dot-directories (.git ...), the store and
    the files the patterns or the folder's .kontextualignore exclude are skipped.

    Adding a name again makes a new revision if the file changed and nothing
    otherwise; type and media type are kept unless --type or --media-type is
    given (then both are set, the one not given guessed from the file name),
    and --meta keys are set on top of the existing metadata.

    With --sync, the collection (only the names under P/ with --prefix)
    mirrors one folder: artifacts whose files are gone are deleted, except
    those the patterns leave out. All or nothing: one transaction, and if any
    file cannot be stored nothing is, unless --skip-invalid. The run is one
    change set, made by --actor with --message.
    """
    options = plan.AddOptions(
        artifact_type,
        media_type,
        parse_pairs(meta, "--meta"),
        parse_pairs(provenance, "--provenance"),
        skip_invalid,
    )
    under = None if prefix is None else ingest.check_prefix(prefix)
    if sync:
        _check_sync(paths)
    app.require_store()
    found = ingest.scan(
        paths,
        store=app.store,
        patterns=ingest.Patterns(include, exclude),
        prefix=under,
        skip_invalid=skip_invalid,
    )
    repo = app.repo(cache_kib=ingest.ADD_CACHE_KIB)
    planned = plan.make_plan(
        repo, collection_name, found, sync=sync, prefix=under, list_existing=dry_run
    )
    if dry_run:
        _print_preview(planned, plan.preview(planned, options, records=True), as_json)
        return
    with progress("adding", quiet=quiet or as_json) as bar:
        report = plan.execute(
            repo, planned, options, bar=bar, records=as_json, actor=actor, message=message
        )
    _print_report(report, as_json)


def _check_sync(paths: Sequence[Path]) -> None:
    if len(paths) != 1:
        raise click.UsageError(f"--sync mirrors one folder, but {len(paths)} paths were given")
    if paths[0].exists() and not paths[0].is_dir():
        raise click.UsageError(f"--sync mirrors a folder, and {paths[0]} is not one")


# What a dry run prints for each outcome; unchanged names are only counted.
_VERBS = {"created": "create", "updated": "update", "unchanged": "unchanged", "deleted": "delete"}


def _counts_json(report: plan.Report) -> dict[str, int]:
    counts = report.counts
    return {
        "added": counts["created"],
        "updated": counts["updated"],
        "unchanged": counts["unchanged"],
        "deleted": counts["deleted"],
        "bytes": report.bytes,
    }


def _skipped_json(report: plan.Report) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "path": s.path, "reason": s.reason, "directory": s.directory}
        for s in report.skipped
    ]


def _skip_line(skip: ingest.Skipped) -> str:
    return f"{skip.name}{'/' if skip.directory else ''}: {skip.reason}"


def _print_preview(planned: plan.Plan, report: plan.Report, as_json: bool) -> None:
    counts = report.counts
    if as_json:
        print_json(
            {
                "dry_run": True,
                "collection": planned.collection_name,
                "create_collection": report.created_collection,
                "plan": [
                    {"action": _VERBS[record["outcome"]], "name": record["name"]}
                    for record in report.records or []
                ],
                **_counts_json(report),
                "skipped": _skipped_json(report),
            }
        )
        return
    if report.created_collection:
        echo(f"create collection {planned.collection_name}")
    for record in report.records or []:
        if record["outcome"] != "unchanged":
            echo(f"{_VERBS[record['outcome']]} {record['name']}")
    for skip in report.skipped:
        echo(f"skip {_skip_line(skip)}")
    echo(
        f"dry run: would add {counts['created']}, update {counts['updated']}, "
        f"delete {counts['deleted']}, skip {len(report.skipped)}; "
        f"{counts['unchanged']} unchanged; nothing written"
    )


def _print_report(report: plan.Report, as_json: bool) -> None:
    counts = report.counts
    assert report.collection is not None  # a run has made it
    if as_json:
        print_json(
            {
                "dry_run": False,
                "collection": report.collection,
                "created_collection": report.created_collection,
                **_counts_json(report),
                "artifacts": report.records,
                "skipped": _skipped_json(report),
            }
        )
        return
    for skip in report.skipped:
        echo(f"skipped {_skip_line(skip)}", err=True)
    if report.created_collection:
        echo(f"created collection {report.collection.name}")
    echo(
        f"added {counts['created']}, updated {counts['updated']}, "
        f"unchanged {counts['unchanged']}, deleted {counts['deleted']}, "
        f"skipped {len(report.skipped)}, {report.bytes} bytes"
    )
