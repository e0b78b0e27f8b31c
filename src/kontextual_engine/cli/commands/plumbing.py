"""Plumbing for scripts, as in git: hash-object, cat-object, ls-objects, verify-object.

These touch only the object directory, never the index.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ...digests import digest_stream
from .. import ingest, resolve
from ..app import App, cli, examples, json_option
from ..output import print_json_line, write_bytes


@cli.command(
    "hash-object",
    epilog=examples(
        "kontextual hash-object notes/todo.md",
        "kontextual hash-object -w notes/todo.md",
        "echo hello | kontextual hash-object -",
    ),
)
@click.argument("path", metavar="FILE", type=click.Path(path_type=Path, allow_dash=True))
@click.option("--write", "-w", is_flag=True, help="Also store the object in the store.")
@click.pass_obj
def hash_object(app: App, path: Path, write: bool) -> None:
    """Print the digest of FILE (- for stdin) as blake3:<64 hex>.

    Objects written with -w and not referenced by a revision are removed by
    gc once older than its grace period.
    """
    if str(path) != "-":
        ingest.check_file(path)
    with sys.stdin.buffer if str(path) == "-" else open(path, "rb") as source:
        if write:
            digest, _ = app.objects().add_stream(source)
        else:
            digest, _ = digest_stream(source)
    click.echo(digest)


@cli.command("cat-object", epilog=examples("kontextual cat-object 3f2a9c > body.bin"))
@click.argument("prefix", metavar="DIGEST")
@click.pass_obj
def cat_object(app: App, prefix: str) -> None:
    """Write an object's bytes to stdout, verifying them.

    The bytes are checked against the digest as they go (exit 5 if they differ).
    DIGEST may be a unique prefix of at least 4 hex digits.
    """
    objects = app.objects()
    with objects.open(resolve.digest(objects, prefix), verify=True) as body:
        write_bytes(body)


@cli.command(
    "ls-objects", epilog=examples("kontextual ls-objects", "kontextual ls-objects -l --json")
)
@click.option("--long", "-l", "long_format", is_flag=True, help="Also print each size in bytes.")
@json_option
@click.pass_obj
def ls_objects(app: App, long_format: bool, as_json: bool) -> None:
    """List every object in the store, in digest order.

    With --json, one JSON Lines record per object.
    """
    objects = app.objects()
    for digest in objects.all():
        if as_json:
            print_json_line({"digest": digest, "size": objects.size(digest)})
        elif long_format:
            click.echo(f"{digest}  {objects.size(digest)}")
        else:
            click.echo(digest)


@cli.command("verify-object", epilog=examples("kontextual verify-object 3f2a9c"))
@click.argument("prefix", metavar="DIGEST")
@click.pass_obj
def verify_object(app: App, prefix: str) -> None:
    """Re-hash one object and check it against its name.

    Exits 5 if the bytes do not hash to the digest.
    """
    objects = app.objects()
    digest = resolve.digest(objects, prefix)
    objects.verify(digest)
    click.echo(f"ok {digest}")
