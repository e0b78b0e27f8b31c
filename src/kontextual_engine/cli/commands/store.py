"""Whole-store commands: init, stats, fsck, index, gc, backup, export, import."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import click

from ...errors import ConflictError, KontextualError, ValidationError
from ...storage import stores
from ...storage.objects import STORE_MARKER
from ...storage.sqlite import SQLiteKnowledgeRepository, maintenance
from ..app import App, PathNotFound, cli, examples, json_option, one_line, quiet_option
from ..output import echo, jsonable, print_fields, print_json, print_table, progress
from ..params import parse_duration

if TYPE_CHECKING:
    from ...storage.contract import KnowledgeRepository
    from ...storage.shared import SharedKnowledgeRepository


class CheckFailed(KontextualError):
    """fsck found damage."""

    exit_code = 5


@cli.command(
    epilog=examples("kontextual init", "kontextual init ~/kb", "kontextual init --adopt ~/kb")
)
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option(
    "--adopt",
    is_flag=True,
    help="Write the marker (kontextual.json) of a store that lost it, after checking "
    "that its index and objects are a store.",
)
@click.pass_obj
def init(app: App, path: Path | None, adopt: bool) -> None:
    """Create a store at PATH (default: the selected store).

    On a store that exists already, only checks that it can be opened. A
    store that lost its kontextual.json is refused; --adopt checks that the
    directory holds only a store's files, that index.sqlite is a kontextual
    index, and then writes the marker again.
    """
    if app.shared is not None:
        if path is not None or adopt:
            raise ValidationError(
                "a shared store is named by --store URL; PATH and --adopt are local"
            )
        app.repo(create=True)
        echo(f"kontextual store ready at {app.where}")
        return
    if path is not None:
        app.store = path.expanduser()
    existed = app.exists()
    if adopt and not existed:
        repo = maintenance.adopt(app.store, app.durability)
        click.get_current_context().with_resource(repo)
        click.echo(
            f"adopted the kontextual store at {app.store.resolve()}: wrote {STORE_MARKER}; "
            "run `kontextual fsck --full` to check it"
        )
        return
    if not existed and maintenance.lost_marker(app.store):
        raise maintenance.lost_marker_error(app.store)
    app.repo(create=True)
    where = app.store.resolve()
    if existed:
        echo(f"kontextual store already initialised at {where}")
    else:
        echo(f"initialised empty kontextual store at {where}")


@cli.command(epilog=examples("kontextual stats", "kontextual stats --json"))
@json_option
@click.pass_obj
def stats(app: App, as_json: bool) -> None:
    """Counts of records, objects and bytes in the store."""
    repo = app.repo()
    if isinstance(repo, SQLiteKnowledgeRepository):
        counts = maintenance.store_stats(repo)
    else:
        counts = _upkeep().store_stats(_shared(repo))
    if as_json:
        print_json(counts)
        return
    print_fields(
        [
            ("store", app.where if app.shared else app.store.resolve()),
            *((name.replace("_", " "), value) for name, value in counts.items()),
        ]
    )


@cli.command(epilog=examples("kontextual fsck", "kontextual fsck --full --json"))
@click.option("--full", is_flag=True, help="Re-hash every object and run SQLite's full check.")
@json_option
@quiet_option
@click.pass_obj
def fsck(app: App, full: bool, as_json: bool, quiet: bool) -> None:
    """Check the index and the objects.

    Exits 5 when something is damaged, and says what to do (a damaged index:
    restore from a backup). Garbage (unreferenced objects, tmp files of
    writes whose process is gone) and warnings are listed but exit 0; fsck
    says how many bytes the garbage takes and which gc command frees it.
    """
    repo = app.repo()
    with progress("checking", quiet=quiet or as_json) as bar:
        if isinstance(repo, SQLiteKnowledgeRepository):
            report = maintenance.fsck(repo, full=full, progress=bar)
        else:
            report = _upkeep().fsck(_shared(repo), full=full, progress=bar)
    advice = report.advice()
    if as_json:
        print_json({"ok": report.ok, **jsonable(report), "advice": advice})
    else:
        # One finding, one line: SQLite's integrity_check may put line breaks in a detail.
        print_table(
            ["severity", "kind", "subject", "detail"],
            (
                [f.severity, f.kind, one_line(f.subject), one_line(f.detail)]
                for f in report.findings
            ),
        )
        echo(
            f"checked {report.objects_checked} objects, {report.revisions_checked} revisions"
            f"{' (full)' if report.full else ''}: {len(report.errors)} errors, "
            f"{len(report.garbage)} garbage, "
            f"{len(report.findings) - len(report.errors) - len(report.garbage)} warnings"
        )
        if report.garbage:
            count = len(report.garbage)
            click.echo(
                f"garbage: {count} file{'' if count == 1 else 's'}, {report.garbage_bytes} "
                f"bytes; `{report.free_with}` frees {'it' if count == 1 else 'them'}"
            )
    if not report.ok:
        raise CheckFailed(
            f"fsck found {len(report.errors)} error(s) in {app.where}"
            + "".join(f"; {sentence}" for sentence in advice)
        )


@cli.command("index", epilog=examples("kontextual index", "kontextual index --rebuild --json"))
@click.option("--rebuild", is_flag=True, help="Derive every artifact's words from its body again.")
@json_option
@quiet_option
@click.pass_obj
def index(app: App, rebuild: bool, as_json: bool, quiet: bool) -> None:
    """Derive the words of artifacts that wait for them, with a progress bar.

    Words are indexed as artifacts are written, and an upgraded store derives
    them when it is first opened for writing; this finishes an upgrade that
    was interrupted. --rebuild derives every artifact's words again, after a
    Python upgrade changed the Unicode tables of the tokenizer, say.
    """
    repo = app.repo()
    counts = repo.text_counts()  # every live artifact is in exactly one state
    total = sum(counts.values()) if rebuild else counts["pending"]
    done = 0
    with progress("indexing words", quiet=quiet or as_json) as bar:

        def advance(count: int) -> None:
            nonlocal done
            done += count
            bar(done, total)

        # Opening the store already derived what an interrupted upgrade left.
        indexed = app.words_derived_at_open + repo.rebuild_text(
            everything=rebuild, progress=advance
        )
    if as_json:
        print_json({"indexed": indexed})
    else:
        echo(f"derived the words of {indexed} artifacts")


@cli.command(epilog=examples("kontextual gc --dry-run", "kontextual gc --grace 0"))
@click.option(
    "--dry-run", "-n", is_flag=True, help="Only say what would be removed, and why the rest stays."
)
@click.option(
    "--grace",
    callback=parse_duration,
    default="2w",
    metavar="DURATION",
    show_default=True,
    help="Keep unreferenced objects younger than this (2w, 3d, 12h, 30m, 0).",
)
@json_option
@click.pass_obj
def gc(app: App, dry_run: bool, grace: float, as_json: bool) -> None:
    """Remove unreferenced objects and leftover tmp files.

    An object stays while a revision references it (runs, context packages
    and external references pin revisions) or while it is younger than the
    grace period; gc says how much space that keeps. A file in tmp/ goes as
    soon as the process that wrote it is gone, and stays while it lives.
    --dry-run lists every object that stays, and why.
    """
    repo = app.repo()
    if isinstance(repo, SQLiteKnowledgeRepository):
        report = maintenance.gc(repo, grace_seconds=grace, dry_run=dry_run)
    else:
        report = _upkeep().gc(_shared(repo), grace_seconds=grace, dry_run=dry_run)
    if as_json:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    for name, size in report.removed:
        echo(f"{verb} {name} ({size} bytes)")
    for digest, reasons in report.kept.items():
        if dry_run:
            echo(f"keep {digest}: {'; '.join(reasons)}")
    kept = len(report.kept)
    echo(
        f"{verb} {len(report.removed)} files ({report.tmp_removed} from tmp/), "
        f"{report.bytes_freed} bytes; kept {kept} object{'' if kept == 1 else 's'}"
    )
    note = report.grace_note()
    if note is not None:
        click.echo(note)
    if report.tmp_in_use:
        click.echo(f"kept {report.tmp_in_use} file(s) in tmp/ that writes in progress hold")


@cli.command(epilog=examples("kontextual backup /mnt/backup/kb-2024-06-01"))
@click.argument("destination", type=click.Path(path_type=Path))
@json_option
@click.pass_obj
def backup(app: App, destination: Path, as_json: bool) -> None:
    """Back up the store to a new directory.

    The copy is consistent even while the store is in use.
    The copy is a store: open it with --store DESTINATION.
    """
    repo = app.local_repo(
        "backup",
        "back up a shared store with PostgreSQL's own tools (pg_dump, or point-in-time "
        "recovery) and the bucket's versioning, or write a snapshot with `kontextual export`",
    )
    report = maintenance.backup(repo, destination)
    if as_json:
        print_json(report)
        return
    echo(f"backed up {report.objects} objects, {report.bytes} bytes to {report.path}")


@cli.command(epilog=examples("kontextual export snapshot/", "kontextual export kb.tar --tar"))
@click.argument("destination", type=click.Path(path_type=Path))
@click.option("--tar", is_flag=True, help="Write one deterministic .tar file.")
@json_option
@quiet_option
@click.pass_obj
def export(app: App, destination: Path, tar: bool, as_json: bool, quiet: bool) -> None:
    """Write a snapshot of the whole store.

    A directory, or with --tar one deterministic .tar file.
    """
    from ...snapshot import export_snapshot  # only this command and import need snapshots

    with progress("exporting objects", quiet=quiet or as_json) as bar:
        summary = export_snapshot(app.repo(), destination, tar=tar, progress=bar)
    if as_json:
        print_json(summary)
        return
    records = sum(summary.counts.values())
    echo(
        f"exported {records} records, {summary.objects} objects, "
        f"{summary.bytes} bytes to {summary.path}"
    )


@cli.command(
    "import",
    epilog=examples(
        "kontextual --store restored/ import snapshot/",
        "kontextual import kb.tar --store restored/",
    ),
)
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--store",
    "target",
    metavar="STORE",
    help="The new store to create: a directory or a shared store's URL "
    "(default: the selected store).",
)
@json_option
@quiet_option
@click.pass_obj
def import_(app: App, source: Path, target: str | None, as_json: bool, quiet: bool) -> None:
    """Restore a snapshot into a new (or empty) store.

    Everything is verified first.
    All or nothing: if the snapshot is damaged, no store is left behind (in a
    shared store, bodies already uploaded stay for gc to remove).
    """
    from ...snapshot import import_snapshot  # only this command and export need snapshots

    if target is not None:
        if stores.is_shared(target):
            app.shared = stores.shared_location(target)
        else:
            app.shared, app.store = None, stores.store_path(target)
    if not source.exists():
        raise PathNotFound(source)

    def into_new_store() -> Any:
        repo = app.repo(create=True)
        if not repo.is_empty():
            raise ConflictError(
                f"store {app.where} already has records; import needs a new or empty store"
            )
        with progress("importing objects", quiet=quiet or as_json) as bar:
            return import_snapshot(source, repo, progress=bar)

    if app.shared is not None:
        summary = into_new_store()
    else:
        existed = app.store.exists()
        if existed and not app.store.is_dir():
            raise ConflictError(f"{app.store} exists and is not a directory")
        fresh = not existed or not any(app.store.iterdir())
        try:
            summary = into_new_store()
        except BaseException:
            if fresh:
                click.get_current_context().close()  # close the store before removing it
                _remove_new_store(app.store, keep_directory=existed)
            raise
    if as_json:
        print_json(summary)
        return
    echo(
        f"imported {sum(summary.counts.values())} records, {summary.objects} objects "
        f"into {app.where}"
    )


def _upkeep() -> ModuleType:
    """fsck, gc and stats of a shared store (imported only for one: it needs psycopg)."""
    from ...storage import shared

    return shared


def _shared(repo: KnowledgeRepository) -> SharedKnowledgeRepository:
    from ...storage.shared import SharedKnowledgeRepository

    assert isinstance(repo, SharedKnowledgeRepository)
    return repo


def _remove_new_store(path: Path, *, keep_directory: bool) -> None:
    """Undo the creation of a store: an import that fails leaves nothing behind."""
    if not keep_directory:
        shutil.rmtree(path, ignore_errors=True)
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
