"""``kontextual runs list|show`` and ``kontextual context list|show``."""

from __future__ import annotations

from collections.abc import Iterable

import click

from ...models import ArtifactRef, ContextReference, ReferenceKind, RunStatus
from .. import resolve
from ..app import App, cli, examples, json_option
from ..output import compact, echo, print_fields, print_json, print_table, short, when


@cli.group(
    epilog=examples("kontextual runs list --status failed", "kontextual runs show run_0190...")
)
def runs() -> None:
    """Workflow runs: inputs, steps, outputs."""


@runs.command(
    "list", epilog=examples("kontextual runs list", "kontextual runs list --status running --json")
)
@click.option(
    "--status", type=click.Choice([s.value for s in RunStatus]), help="Only runs in this state."
)
@json_option
@click.pass_obj
def list_runs(app: App, status: str | None, as_json: bool) -> None:
    """List runs, oldest first."""
    found = app.repo().list_runs(status=status)
    if as_json:
        print_json(found)
        return
    print_table(
        ["id", "status", "operation", "created", "finished"],
        ([r.id, r.status, r.operation, when(r.created_at), when(r.finished_at)] for r in found),
    )


def _refs(names: resolve.Names, refs: Iterable[ArtifactRef]) -> list[list[object]]:
    return [
        [names.artifact(ref.artifact_id), ref.revision, short(ref.digest), ref.role or "-"]
        for ref in refs
    ]


@runs.command(
    "show",
    epilog=examples("kontextual runs show run_0190...", "kontextual runs show run_0190... --json"),
)
@click.argument("run_id", metavar="RUN")
@json_option
@click.pass_obj
def show_run(app: App, run_id: str, as_json: bool) -> None:
    """Show a run: status, holder, steps, and its manifest's inputs and outputs."""
    repo = app.repo()
    run = repo.get_run(run_id)
    steps = repo.list_steps(run.id)
    manifest = repo.get_manifest(run.id)
    if as_json:
        print_json({"run": run, "steps": steps, "manifest": manifest})
        return
    print_fields(
        [
            ("run", run.id),
            ("operation", run.operation),
            ("status", run.status),
            ("holder", compact(run.holder) if run.holder else "-"),
            ("parent", run.parent_run_id or "-"),
            ("created", when(run.created_at)),
            ("started", when(run.started_at)),
            ("finished", when(run.finished_at)),
            ("lease expires", when(run.lease_expires_at)),
            ("error", run.error or "-"),
            ("parameters", compact(run.parameters)),
            ("diagnostics", compact(run.diagnostics)),
        ]
    )
    names = resolve.Names(repo)
    for title, rows, headers in (
        (
            "steps",
            [[s.position, s.name, s.status, when(s.finished_at)] for s in steps],
            ["#", "name", "status", "finished"],
        ),
        ("inputs", _refs(names, manifest.inputs), ["artifact", "rev", "digest", "role"]),
        ("outputs", _refs(names, manifest.outputs), ["artifact", "rev", "digest", "role"]),
    ):
        echo(f"{title}:" if rows else f"{title}: none")
        print_table(headers, rows)


@cli.group(epilog=examples("kontextual context list", "kontextual context show ctx_0190..."))
def context() -> None:
    """Context packages: ordered lists of references.

    A reference points at an artifact (revision), a relationship, a run or a
    record in an external memory system.
    """


@context.command("list", epilog=examples("kontextual context list --json"))
@json_option
@click.pass_obj
def list_packages(app: App, as_json: bool) -> None:
    """List context packages, oldest first."""
    packages = app.repo().list_context_packages()
    if as_json:
        print_json(packages)
        return
    print_table(
        ["id", "name", "refs", "created"],
        ([p.id, p.name, len(p.references), when(p.created_at)] for p in packages),
        right=(2,),
    )


def _target(names: resolve.Names, ref: ContextReference) -> str:
    if ref.kind == ReferenceKind.ARTIFACT.value:
        return names.artifact(ref.target_id)
    if ref.kind == ReferenceKind.EXTERNAL.value:
        return f"{ref.system}:{ref.target_id}"
    return ref.target_id


@context.command("show", epilog=examples("kontextual context show ctx_0190..."))
@click.argument("package_id", metavar="ID")
@json_option
@click.pass_obj
def show_package(app: App, package_id: str, as_json: bool) -> None:
    """Show a context package and its references in order."""
    repo = app.repo()
    package = repo.get_context_package(package_id)
    if as_json:
        print_json(package)
        return
    print_fields(
        [
            ("package", package.id),
            ("name", package.name),
            ("created", when(package.created_at)),
            ("metadata", compact(package.metadata)),
        ]
    )
    names = resolve.Names(repo)
    print_table(
        ["kind", "target", "rev", "digest", "uri", "note"],
        (
            [
                r.kind,
                _target(names, r),
                r.revision or "-",
                short(r.digest),
                r.uri or "-",
                r.note or "-",
            ]
            for r in package.references
        ),
    )
