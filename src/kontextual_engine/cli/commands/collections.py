"""``kontextual collection create|list|show|rm``."""

from __future__ import annotations

import click

from .. import resolve
from ..app import App, change_set_options, cli, examples, json_option
from ..output import compact, echo, print_fields, print_json, print_table, when
from ..params import parse_pairs


@cli.group(
    epilog=examples(
        "kontextual collection create papers --description 'PDF abstracts'",
        "kontextual collection list",
    )
)
def collection() -> None:
    """Create, list, show and remove collections."""


@collection.command(epilog=examples("kontextual collection create notes --meta owner=ana"))
@click.argument("name")
@click.option("--description", default="", help="What the collection holds.")
@click.option(
    "--meta",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata; VALUE is JSON if it parses (n=1, ok=true), else a string.",
)
@change_set_options
@json_option
@click.pass_obj
def create(
    app: App,
    name: str,
    description: str,
    meta: tuple[str, ...],
    actor: str | None,
    message: str | None,
    as_json: bool,
) -> None:
    """Create a collection."""
    created = app.repo().create_collection(
        name,
        description=description,
        metadata=parse_pairs(meta, "--meta"),
        actor=actor,
        message=message,
    )
    if as_json:
        print_json(created)
    else:
        echo(f"created collection {created.name} ({created.id})")


@collection.command("list", epilog=examples("kontextual collection list --json"))
@json_option
@click.pass_obj
def list_(app: App, as_json: bool) -> None:
    """List the collections."""
    collections = app.repo().list_collections()
    if as_json:
        print_json(collections)
        return
    print_table(
        ["name", "created", "id", "description"],
        ([c.name, when(c.created_at), c.id, c.description] for c in collections),
    )


@collection.command(epilog=examples("kontextual collection show notes"))
@click.argument("name")
@json_option
@click.pass_obj
def show(app: App, name: str, as_json: bool) -> None:
    """Show a collection (by name or id) and how many artifacts it holds."""
    repo = app.repo()
    found = resolve.collection(repo, name)
    count = len(repo.list_artifacts(found.id))
    if as_json:
        print_json({"collection": found, "artifacts": count})
        return
    print_fields(
        [
            ("name", found.name),
            ("id", found.id),
            ("description", found.description),
            ("created", when(found.created_at)),
            ("artifacts", count),
            ("metadata", compact(found.metadata)),
        ]
    )


@collection.command(epilog=examples("kontextual collection rm scratch"))
@click.argument("name")
@change_set_options
@click.pass_obj
def rm(app: App, name: str, actor: str | None, message: str | None) -> None:
    """Remove an empty collection."""
    repo = app.repo()
    found = resolve.collection(repo, name)
    repo.delete_collection(found.id, actor=actor, message=message)
    echo(f"removed collection {found.name} ({found.id})")
