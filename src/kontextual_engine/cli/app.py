"""The root command: store selection, store opening and error reporting.

Every command is registered on :data:`cli`. Errors are turned into one line
on stderr and an exit code here, once, in :class:`KontextualGroup`: a
:class:`~kontextual_engine.errors.KontextualError` exits with its
``exit_code``, a click usage error with 2, anything else with 1.
"""

from __future__ import annotations

import errno
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .. import __version__
from ..errors import KontextualError, NotFoundError, StoreNotFound, ValidationError
from ..storage.durable import Durability

# ``kontextual --version`` imports this module and click only: pathlib,
# dataclasses and the command modules' helpers are imported where used.
if TYPE_CHECKING:
    from pathlib import Path

    from ..storage.contract import KnowledgeRepository
    from ..storage.objects import ObjectStore
    from ..storage.s3 import S3BodyStore
    from ..storage.shared import SharedLocation
    from ..storage.sqlite import SQLiteKnowledgeRepository

DEFAULT_STORE = ".kontextual"
STORE_ENV = "KONTEXTUAL_STORE"
# Who writes, when --actor is not given; without it a change set has no actor.
ACTOR_ENV = "KONTEXTUAL_ACTOR"
# What a shell reports for a process ended by Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130

F = TypeVar("F", bound=Callable[..., Any])

# Every command: the module of ``cli.commands`` that defines it, and its short
# help for ``kontextual --help``. A module is imported only when one of its
# commands runs (or its own help is asked for), so that a command does not pay
# for the imports of all the others; tests check this table against the
# commands themselves.
COMMANDS_PACKAGE = "kontextual_engine.cli.commands"
COMMANDS: dict[str, tuple[str, str]] = {
    "add": ("add", "Add files and folders (recursively) to a collection."),
    "backup": ("store", "Back up the store to a new directory."),
    "cat": ("artifacts", "Write an artifact's body, byte for byte, to stdout."),
    "cat-object": ("plumbing", "Write an object's bytes to stdout, verifying them."),
    "changes": (
        "changes",
        "Print the change feed in sequence order, by change set, once or followed.",
    ),
    "collection": ("collections", "Create, list, show and remove collections."),
    "context": ("runs", "Context packages: ordered lists of references."),
    "diff": ("artifacts", "Unified diff between two revisions of a text artifact."),
    "export": ("store", "Write a snapshot of the whole store."),
    "find": ("artifacts", "Find artifacts matching every filter given."),
    "fsck": ("store", "Check the index and the objects."),
    "gc": ("store", "Remove unreferenced objects and leftover tmp files."),
    "hash-object": ("plumbing", "Print the digest of FILE (- for stdin) as blake3:<64 hex>."),
    "import": ("store", "Restore a snapshot into a new (or empty) store."),
    "index": ("store", "Derive the words of artifacts that wait for them, with a progress bar."),
    "init": ("store", "Create a store at PATH (default: the selected store)."),
    "link": ("artifacts", "Relate two artifacts: SRC -[TYPE]-> DST."),
    "log": ("artifacts", "Show the revision history of an artifact, oldest first."),
    "ls": (
        "artifacts",
        "List the artifacts (of one collection), oldest first; "
        "with --as-of, those live then, as they were.",
    ),
    "ls-objects": ("plumbing", "List every object in the store, in digest order."),
    "rm": ("artifacts", "Delete an artifact and its relationships."),
    "runs": ("runs", "Workflow runs: inputs, steps, outputs."),
    "show": ("artifacts", "Show an artifact, its relationships and its run."),
    "stats": ("store", "Counts of records, objects and bytes in the store."),
    "unlink": ("artifacts", "Remove a relationship, named by SRC TYPE DST or by its id."),
    "verify-object": ("plumbing", "Re-hash one object and check it against its name."),
}


class PathNotFound(NotFoundError):
    entity = "path"

    def __init__(self, path: str | Path) -> None:
        super().__init__(str(path), f"no such file or directory: {path}")


class App:
    """What the root options selected; commands open the store through it.

    ``store`` is a local store's directory; for a shared store (a
    ``postgresql://`` URL, :mod:`..storage.stores`) ``shared`` holds its parts
    and ``store`` is unused.
    """

    def __init__(
        self, store: Path, durability: Durability, shared: SharedLocation | None = None
    ) -> None:
        self.store = store
        self.durability = durability
        self.shared = shared
        # Artifacts whose words opening the store derived (an interrupted upgrade).
        self.words_derived_at_open = 0

    @property
    def where(self) -> str:
        """The store, for messages: a directory, or the URL without a password."""
        if self.shared is None:
            return str(self.store)
        from ..storage.postgres.connection import shown_dsn

        return f"{shown_dsn(self.shared.dsn)} with bodies in {self.shared.objects}"

    def exists(self) -> bool:
        from ..storage.objects.layout import STORE_MARKER

        return (self.store / STORE_MARKER).is_file()

    def require_store(self) -> None:
        if self.shared is not None:
            return  # opening a shared store says whether it holds one
        if not self.exists():
            from ..storage.sqlite import maintenance

            if maintenance.lost_marker(self.store):
                raise maintenance.lost_marker_error(self.store)
            raise StoreNotFound(self.store, "run `kontextual init` to create one")

    def repo(self, *, create: bool = False, cache_kib: int | None = None) -> KnowledgeRepository:
        """The selected store, closed when the command ends; ``create`` makes a new one.
        ``cache_kib`` is a local store's page cache (default: the library's)."""
        from .output import progress

        repo: KnowledgeRepository
        if self.shared is not None:
            from ..storage.stores import require_shared_extra

            require_shared_extra()
            from ..storage.shared import SharedKnowledgeRepository

            repo = SharedKnowledgeRepository(self.shared, create=create)
            return click.get_current_context().with_resource(repo)
        from ..storage.sqlite import SQLiteKnowledgeRepository
        from ..storage.sqlite.options import CACHE_SIZE_KIB

        if not create:
            self.require_store()
        # An upgraded store derives its words from the bodies once, at open.
        with progress("upgrading the text index", quiet=False) as bar:

            def derived(done: int, total: int) -> None:
                self.words_derived_at_open = done
                bar(done, total)

            repo = SQLiteKnowledgeRepository.open(
                self.store,
                self.durability,
                create=create,
                rebuild_progress=derived,
                cache_kib=CACHE_SIZE_KIB if cache_kib is None else cache_kib,
            )
        return click.get_current_context().with_resource(repo)

    def local_repo(self, command: str, instead: str) -> SQLiteKnowledgeRepository:
        """The selected store, which ``command`` needs to be local; on a shared
        store a ValidationError says what to use ``instead``."""
        from ..storage.sqlite import SQLiteKnowledgeRepository

        if self.shared is not None:
            raise ValidationError(f"`kontextual {command}` works on a local store; {instead}")
        repo = self.repo()
        assert isinstance(repo, SQLiteKnowledgeRepository)
        return repo

    def objects(self) -> ObjectStore | S3BodyStore:
        """Only the bodies of the selected store (the index is not opened)."""
        if self.shared is not None:
            from ..storage.stores import require_shared_extra

            require_shared_extra()
            from ..storage.s3 import S3BodyStore

            bodies = S3BodyStore(
                self.shared.bucket, self.shared.prefix, endpoint_url=self.shared.endpoint_url
            )
            bodies.check()
            return bodies
        from ..storage.objects import ObjectStore

        self.require_store()
        store = ObjectStore(self.store, durability=self.durability, create=False)
        return click.get_current_context().with_resource(store)


def one_line(text: str) -> str:
    return " ".join(text.splitlines())


def fail(code: int, message: str) -> NoReturn:
    from .output import visible

    click.echo(f"error: {visible(one_line(message))}", err=True)
    sys.exit(code)


def describe(exc: Exception) -> tuple[int, str]:
    """The exit code and the one-line message for an error that ends a command."""
    from ..storage.durable import FULL_ERRNOS, storage_full

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
    """A click group whose failures are one line on stderr and a documented exit code.

    ``lazy_commands`` maps a command name to the module of ``COMMANDS_PACKAGE``
    that registers it and its short help: the module is imported when the
    command is first looked up, not before.
    """

    def __init__(
        self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands: Mapping[str, tuple[str, str]] = lazy_commands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(self.lazy_commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module, _ = self.lazy_commands[cmd_name]
            importlib.import_module(f"{COMMANDS_PACKAGE}.{module}")
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, from the table: no command module is imported."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name)
            if command is None:
                # Shortened the way click shortens a command's own help.
                short = click.Command(name, help=self.lazy_commands[name][1])
                rows.append((name, short.get_short_help_str(limit)))
            elif not command.hidden:
                rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

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
    from .params import AS_OF_FORMS, parse_as_of

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
    lazy_commands=COMMANDS,
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
    help="The store: a directory, or postgresql://HOST/DB?objects=s3://BUCKET/PREFIX "
    "for a shared one.",
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
@click.version_option(__version__, prog_name="kontextual")
@click.pass_context
def cli(ctx: click.Context, store: str, durability: str, debug: bool) -> None:
    """kontextual: a local-first, durable store for knowledge artifacts.

    Artifacts are named by id (art_...) or as COLLECTION/NAME; digests may be
    abbreviated to a unique prefix of at least 4 hex digits.
    """
    # --debug is read where errors are reported, in KontextualGroup.invoke.
    from pathlib import Path

    from ..storage import stores

    if stores.is_shared(store):
        ctx.obj = App(Path(), Durability(durability), stores.shared_location(store))
    else:
        ctx.obj = App(stores.store_path(store), Durability(durability))
