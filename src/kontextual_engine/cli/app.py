"""The root command: store selection, store opening and error reporting.

Every command is registered on :data:`cli`. Errors are turned into one line
on stderr and an exit code here, once, in :class:`KontextualGroup`: a
:class:`~kontextual_engine.errors.KontextualError` exits with its
``exit_code``, a click usage error with 2, anything else with 1.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from ..errors import KontextualError, NotFoundError, StoreNotFound
from ..storage.objects import FULL_ERRNOS, STORE_MARKER, Durability, ObjectStore, storage_full
from ..storage.sqlite import SQLiteKnowledgeRepository, maintenance
from ..storage.stores import open_store, store_path
from .output import progress, visible
from .params import AS_OF_FORMS, parse_as_of

DEFAULT_STORE = ".kontextual"
STORE_ENV = "KONTEXTUAL_STORE"
# Who writes, when --actor is not given; without it a change set has no actor.
ACTOR_ENV = "KONTEXTUAL_ACTOR"
# What a shell reports for a process ended by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])


class PathNotFound(NotFoundError):
    entity = "path"

    def __init__(self, path: Path) -> None:
        super().__init__(str(path), f"no such file or directory: {path}")


@dataclass
class App:
    """What the root options selected; commands open the store through it."""

    store: Path
    durability: Durability
    # Artifacts whose words opening the store derived (an interrupted upgrade).
    words_derived_at_open: int = 0

    def exists(self) -> bool:
        return (self.store / STORE_MARKER).is_file()

    def require_store(self) -> None:
        if not self.exists():
            if maintenance.lost_marker(self.store):
                raise maintenance.lost_marker_error(self.store)
            raise StoreNotFound(self.store, "run `kontextual init` to create one")

    def repo(self, *, create: bool = False) -> SQLiteKnowledgeRepository:
        """The selected store, closed when the command ends; ``create`` makes a new one."""
        if not create:
            self.require_store()
        # An upgraded store derives its words from the bodies once, at open.
        with progress("upgrading the text index", quiet=False) as bar:

            def derived(done: int, total: int) -> None:
                self.words_derived_at_open = done
                bar(done, total)

            repo = open_store(self.store, self.durability, create=create, rebuild_progress=derived)
        return click.get_current_context().with_resource(repo)

    def objects(self) -> ObjectStore:
        """Only the object directory of the selected store (the index is not opened)."""
        self.require_store()
        store = ObjectStore(self.store, durability=self.durability, create=False)
        return click.get_current_context().with_resource(store)


def one_line(text: str) -> str:
    return " ".join(text.splitlines())


def fail(code: int, message: str) -> NoReturn:
    click.echo(f"error: {visible(one_line(message))}", err=True)
    sys.exit(code)


def describe(exc: Exception) -> tuple[int, str]:
    """The exit code and the one-line message for an error that ends a command."""
    if isinstance(exc, KontextualError):
        return exc.exit_code, str(exc)
    if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
        full = storage_full(exc.filename or ".", exc.strerror or str(exc))
        return full.exit_code, str(full)
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
        return 1, f"{reason}: {exc.filename}" if exc.filename else reason
    return 1, f"unexpected {type(exc).__name__}: {exc} (run with --debug for a traceback)"


class KontextualGroup(click.Group):
    """A click group whose failures are one line on stderr and a documented exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            fail(exc.exit_code, exc.format_message() + hint)
        except click.ClickException as exc:
            fail(exc.exit_code, exc.format_message())
        except click.Abort:
            fail(EXIT_INTERRUPTED, "interrupted")
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug") or (isinstance(exc, OSError) and exc.errno == errno.EPIPE):
                raise  # click's main quietly ends a command whose reader went away
            code, message = describe(exc)
            fail(code, message)


def examples(*lines: str) -> str:
    """An epilog for ``--help``: example command lines, kept as written."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(
        function
    )


def change_set_options(function: F) -> F:
    """``--actor`` and ``--message``: who makes the command's change set, and why."""
    function = click.option(
        "--message",
        "-m",
        metavar="TEXT",
        help="Why: the message of the change set this command makes.",
    )(function)
    return click.option(
        "--actor",
        metavar="NAME",
        envvar=ACTOR_ENV,
        show_envvar=True,
        help="Who: the actor of the change set this command makes (default: none).",
    )(function)


def as_of_option(function: F) -> F:
    return click.option(
        "--as-of",
        metavar="POINT",
        callback=parse_as_of,
        help=f"As the store was then: {AS_OF_FORMS}.",
    )(function)


def quiet_option(function: F) -> F:
    return click.option("--quiet", "-q", is_flag=True, help="No progress bar, only the result.")(
        function
    )


@click.group(
    "kontextual",
    cls=KontextualGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=examples(
        "kontextual init",
        "kontextual add notes ./notes",
        "kontextual find --text retrieval",
        "kontextual --store /data/kb show notes/kickoff.md",
    ),
)
@click.option(
    "--store",
    type=str,
    envvar=STORE_ENV,
    default=DEFAULT_STORE,
    show_default=True,
    show_envvar=True,
    help="The store directory.",
)
@click.option(
    "--durability",
    type=click.Choice([mode.value for mode in Durability]),
    default=Durability.FULL.value,
    show_default=True,
    help="How hard writes work to survive a crash: full fsyncs everything, "
    "batch fsyncs once per transaction, none never.",
)
@click.option("--debug", is_flag=True, help="Show a traceback when a command fails.")
@click.version_option(package_name="kontextual-engine", prog_name="kontextual")
@click.pass_context
def cli(ctx: click.Context, store: str, durability: str, debug: bool) -> None:
    """kontextual: a local-first, durable store for knowledge artifacts.

    Artifacts are named by id (art_...) or as COLLECTION/NAME; digests may be
    abbreviated to a unique prefix of at least 4 hex digits.
    """
    # --debug is read where errors are reported, in KontextualGroup.invoke.
    ctx.obj = App(store_path(store), Durability(durability))
