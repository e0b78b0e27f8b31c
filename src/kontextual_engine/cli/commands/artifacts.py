"""Artifact commands: ls, find, show, cat, log, diff, rm, link, unlink (add: :mod:`.add`)."""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import click

from ...digests import CHUNK_SIZE
from ...errors import (
    ArtifactNotFound,
    NotTextError,
    RelationshipNotFound,
    ValidationError,
)
from ...models import (
    QUERY_ORDERS,
    Artifact,
    ArtifactHistory,
    ArtifactRevision,
    ChangeRecord,
    ChangeSet,
    Query,
    RelatedTo,
    SearchHit,
)
from ...storage.contract import KnowledgeRepository
from ...storage.history import AsOf
from ...storage.queries import DIRECTIONS, MAX_QUERY_LIMIT
from .. import resolve
from ..app import (
    App,
    as_of_option,
    change_set_options,
    cli,
    examples,
    json_option,
    one_line,
)
from ..output import (
    compact,
    echo,
    echo_highlighted,
    jsonable,
    print_fields,
    print_json,
    print_table,
    short,
    when,
    write_bytes,
)
from ..params import META_HELP, parse_pairs


def print_artifacts(
    repo: KnowledgeRepository, artifacts: Sequence[Artifact], as_json: bool
) -> None:
    """The one listing format of artifacts (ls, find)."""
    if as_json:
        print_json(artifacts)
        return
    names = resolve.Names(repo)
    print_table(
        ["type", "rev", "size", "digest", "name"],
        ([a.artifact_type, a.revision, a.size, short(a.digest), names.of(a)] for a in artifacts),
        right=(1, 2),
    )


# -- listing and search ------------------------------------------------------


@cli.command(
    epilog=examples(
        "kontextual ls", "kontextual ls notes --json", "kontextual ls notes --as-of cs_12"
    )
)
@click.argument("collection_name", required=False, metavar="[COLLECTION]")
@as_of_option
@json_option
@click.pass_obj
def ls(app: App, collection_name: str | None, as_of: AsOf | None, as_json: bool) -> None:
    """List the artifacts (of one collection), oldest first; with --as-of, those
    live then, as they were."""
    repo = app.repo()
    collection_id = (
        None if collection_name is None else resolve.collection(repo, collection_name).id
    )
    print_artifacts(repo, repo.list_artifacts(collection_id, as_of=as_of), as_json)


@cli.command(
    epilog=examples(
        "kontextual find --text retrieval",
        "kontextual find --collection notes --type note --meta reviewed=true",
        'kontextual find --meta \'tags=["kickoff", "planning"]\'',
        "kontextual find --digest 3f2a9c",
        "kontextual find --related-to notes/reading-list.md --rel-type links_to --direction outgoing",  # noqa: E501
    )
)
@click.option("--collection", "collection_name", help="In this collection.")
@click.option("--type", "artifact_type", help="Of this artifact type.")
@click.option("--name", help="With exactly this name.")
@click.option(
    "--meta",
    multiple=True,
    metavar="KEY=VALUE",
    help="Top-level metadata KEY equals VALUE, type-exact (1, 1.0, true and "
    "'\"1\"' all differ). Repeatable.",
)
@click.option(
    "--text",
    help='Words to search for, best matches first: words (all required), "a phrase", '
    "prefix*, -excluded.",
)
@click.option(
    "--substring",
    is_flag=True,
    help="--text is case-insensitive substrings instead, found by reading every "
    "candidate body (slow on a large store), oldest first.",
)
@click.option(
    "--order",
    type=click.Choice(QUERY_ORDERS),
    help="relevance (the default with --text) or sequence (oldest first).",
)
@click.option("--digest", help="Current body has this digest (a unique prefix is enough).")
@click.option("--related-to", metavar="ARTIFACT", help="At the other end of a relationship.")
@click.option("--rel-type", help="Only relationships of this type (with --related-to).")
@click.option(
    "--direction",
    type=click.Choice(DIRECTIONS),
    default="both",
    show_default=True,
    help="Seen from --related-to: outgoing finds its targets, incoming its sources.",
)
@click.option("--limit", type=click.IntRange(0, MAX_QUERY_LIMIT), help="At most this many.")
@as_of_option
@json_option
@click.pass_obj
def find(
    app: App,
    collection_name: str | None,
    artifact_type: str | None,
    name: str | None,
    meta: tuple[str, ...],
    text: str | None,
    substring: bool,
    order: str | None,
    digest: str | None,
    related_to: str | None,
    rel_type: str | None,
    direction: str,
    limit: int | None,
    as_of: AsOf | None,
    as_json: bool,
) -> None:
    """Find artifacts matching every filter given.

    With --text, the best matches come first (BM25), each with a snippet of
    its body; otherwise, and with --order sequence, oldest first. With
    --as-of, among the artifacts live then, as they were (--related-to too);
    text is then matched by reading each of their bodies.
    """
    metadata = parse_pairs(meta, "--meta")
    if related_to is None and (rel_type is not None or direction != "both"):
        raise ValidationError("--rel-type and --direction need --related-to")
    repo = app.repo()
    query = Query(
        collection_id=(
            None if collection_name is None else resolve.collection(repo, collection_name).id
        ),
        name=name,
        digest=None if digest is None else resolve.digest(repo.bodies, digest),
        artifact_type=artifact_type,
        metadata=metadata or None,
        text=text,
        related_to=(
            None
            if related_to is None
            else RelatedTo(resolve.artifact(repo, related_to, as_of=as_of).id, rel_type, direction)
        ),
        limit=limit,
        order=order,
        substring=substring,
        as_of=as_of,
    )
    if text is None:
        print_artifacts(repo, repo.query(query), as_json)
    else:
        print_hits(repo, repo.search(query), as_json)


def print_hits(repo: KnowledgeRepository, hits: Sequence[SearchHit], as_json: bool) -> None:
    """Text search results: one line per artifact, then its snippet, indented."""
    if as_json:
        print_json(
            [
                {
                    "artifact": hit.artifact,
                    "score": hit.score,
                    "snippet": None if hit.snippet is None else hit.snippet.text,
                    "highlights": None if hit.snippet is None else hit.snippet.highlights,
                }
                for hit in hits
            ]
        )
        return
    names = resolve.Names(repo)
    for hit in hits:
        # Significant digits, not decimals: a word in most documents scores
        # near BM25's floor (1e-6), and hits must still read in their order.
        score = "" if hit.score is None else f"{hit.score:9.4g}  "
        echo(f"{score}{names.of(hit.artifact)}  {short(hit.artifact.digest)}")
        if hit.snippet is not None:
            echo_highlighted(hit.snippet.text, hit.snippet.highlights, indent="    ")


# -- one artifact ------------------------------------------------------------


@cli.command(
    epilog=examples(
        "kontextual show notes/todo.md",
        "kontextual show art_0190... --json",
        "kontextual show notes/todo.md@2",
        "kontextual show notes/todo.md --as-of 2026-11-30T12:00:00Z",
    )
)
@click.argument("ref", metavar="ARTIFACT")
@as_of_option
@json_option
@click.pass_obj
def show(app: App, ref: str, as_of: AsOf | None, as_json: bool) -> None:
    """Show an artifact, its relationships and its run.

    ARTIFACT@REV shows a revision, ARTIFACT@cs_N (or --as-of) the artifact as
    it was then, with the relationships it had then.
    """
    repo = app.repo()
    pinned = resolve.artifact_at(repo, ref, as_of=as_of)
    found, then = pinned.artifact, pinned.sequence
    outgoing = repo.list_relationships(found.id, direction="outgoing", as_of=then)
    incoming = repo.list_relationships(found.id, direction="incoming", as_of=then)
    run = repo.producing_run(found.id, found.revision)
    # Whether text search finds a body is known of live artifacts only.
    unsearchable = repo.text_status(found.id) if then is None else None
    names = resolve.Names(repo)
    if as_json:
        print_json(
            {
                "artifact": found,
                "collection": names.collection(found.collection_id),
                "outgoing": outgoing,
                "incoming": incoming,
                "run": run,
                "as_of": then,
                **(
                    {}
                    if then is not None
                    else {"not_searchable": None if unsearchable is None else unsearchable.value}
                ),
            }
        )
        return
    text_line = (
        []
        if then is not None
        else [
            (
                "text",
                "searchable"
                if unsearchable is None
                else f"not searchable: {unsearchable.describe()}",
            )
        ]
    )
    print_fields(
        [
            ("artifact", names.of(found)),
            ("id", found.id),
            ("type", found.artifact_type),
            ("media type", found.media_type or "-"),
            ("revision", found.revision),
            ("digest", found.digest),
            ("size", f"{found.size} bytes"),
            *text_line,
            ("created", when(found.created_at)),
            ("updated", when(found.updated_at)),
            ("run", "-" if run is None else f"{run.id} ({run.operation}, {run.status})"),
            ("metadata", compact(found.metadata)),
            ("provenance", compact(found.provenance)),
            *([] if then is None else [("as of", f"change {then}")]),
        ]
    )
    if outgoing or incoming:
        echo("relationships:")
        print_table(
            ["dir", "type", "artifact", "id"],
            [
                *(["->", r.relationship_type, names.artifact(r.target_id), r.id] for r in outgoing),
                *(["<-", r.relationship_type, names.artifact(r.source_id), r.id] for r in incoming),
            ],
        )


@cli.command(
    epilog=examples(
        "kontextual cat notes/todo.md",
        "kontextual cat notes/todo.md -r 1 > old.md",
        "kontextual cat notes/todo.md@cs_12",
        "kontextual cat notes/todo.md --as-of 2026-11-30T12:00:00Z",
    )
)
@click.argument("ref", metavar="ARTIFACT")
@click.option("--revision", "-r", type=click.IntRange(min=1), help="An earlier revision.")
@as_of_option
@click.pass_obj
def cat(app: App, ref: str, revision: int | None, as_of: AsOf | None) -> None:
    """Write an artifact's body, byte for byte, to stdout.

    With --revision (or ARTIFACT@REV), also the revisions of a deleted
    artifact (named by id); ARTIFACT@cs_N or --as-of, the body it had then.
    """
    repo = app.repo()
    found = resolve.artifact_at(repo, ref, revision=revision, as_of=as_of).artifact
    with repo.open_object(found.digest) as body:
        write_bytes(body)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One line of ``log``: a revision, or the deletion, with its change set."""

    revision: ArtifactRevision | None  # None: the deletion
    change: ChangeRecord | None
    change_set: ChangeSet | None

    def json(self) -> dict[str, Any]:
        change_set = self.change_set
        fields = {
            "change_set_id": None if change_set is None else change_set.id,
            "actor": None if change_set is None else change_set.actor,
            "message": None if change_set is None else change_set.message,
        }
        if self.revision is None:
            assert self.change is not None  # a deletion is known by its record
            return {"timestamp": self.change.timestamp, **fields}
        return {
            **jsonable(self.revision),
            "old_digest": self.old_digest,
            "changed": self.changed,
            **fields,
        }

    @property
    def old_digest(self) -> str | None:
        return None if self.change is None else self.change.old_digest

    @property
    def changed(self) -> list[str]:
        changed = [] if self.change is None else self.change.details.get("changed", [])
        return [str(field) for field in changed] if isinstance(changed, list) else []

    def row(self, *, with_name: bool) -> list[object]:
        change_set = self.change_set
        revision = self.revision
        cells: list[object]
        if revision is None:
            assert self.change is not None
            cells = ["", when(self.change.timestamp), "", "deleted", "", ""]
        else:
            old = self.old_digest
            cells = [
                revision.revision,
                when(revision.created_at),
                revision.name,
                short(revision.digest)
                if old is None
                else f"{short(old)} -> {short(revision.digest)}",
                ",".join(self.changed) or ("created" if revision.revision == 1 else "-"),
                revision.run_id or "-",
            ]
        if not with_name:
            del cells[2]
        if change_set is None:
            made_by: list[object] = ["-", "-", ""]
        else:
            made_by = [change_set.id, change_set.actor or "-", one_line(change_set.message or "")]
        # rev, time, change set, actor, [name,] digest, changed, run, message
        return [*cells[:2], *made_by[:2], *cells[2:], made_by[2]]


def log_entries(repo: KnowledgeRepository, history: ArtifactHistory) -> list[LogEntry]:
    """An artifact's revisions, then its deletion if it was deleted, each with the
    change record and change set that made it."""
    changes = {change.sequence: change for change in history.changes}
    entries = []
    for revision in history.revisions:
        change = changes.get(revision.change_sequence)
        entries.append(LogEntry(revision, change, resolve.change_set(repo, change)))
    if history.deleted:
        deletion = history.changes[-1]
        entries.append(LogEntry(None, deletion, resolve.change_set(repo, deletion)))
    return entries


def _log_json(history: ArtifactHistory, entries: Sequence[LogEntry]) -> dict[str, Any]:
    deletion = entries[-1] if entries and entries[-1].revision is None else None
    return {
        "artifact_id": history.artifact_id,
        "deleted": history.deleted,
        "revisions": [entry.json() for entry in entries if entry.revision is not None],
        "deleted_at": None
        if deletion is None or deletion.change is None
        else deletion.change.timestamp,
        "deletion": None if deletion is None else deletion.json(),
    }


def _print_log(entries: Sequence[LogEntry], *, with_name: bool) -> None:
    headers = ["rev", "time", "change set", "actor"]
    if with_name:
        headers.append("name")
    print_table(
        [*headers, "digest", "changed", "run", "message"],
        [entry.row(with_name=with_name) for entry in entries],
        right=(0,),
    )


def _name_history(repo: KnowledgeRepository, ref: str) -> tuple[str, str, list[ArtifactHistory]]:
    """``COLLECTION/NAME`` (or the last name of an artifact given by id): the
    collection, the name and every artifact that ever had it there."""
    if resolve.is_id(ref):
        last = repo.list_revisions(ref)[-1]
        collection_id, name = last.collection_id, last.name
    else:
        collection_name, name = resolve.split_name(ref)
        collection_id = resolve.collection(repo, collection_name).id
    histories = repo.history_of_name(collection_id, name)
    if not histories:
        raise ArtifactNotFound(ref, f"no artifact ever had the name {ref!r}")
    return collection_id, name, histories


@cli.command(
    epilog=examples(
        "kontextual log notes/todo.md",
        "kontextual log art_0190... --json",
        "kontextual log notes/todo.md --all",
    )
)
@click.argument("ref", metavar="ARTIFACT")
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every artifact that ever had this name, deleted ones included.",
)
@json_option
@click.pass_obj
def log(app: App, ref: str, every: bool, as_json: bool) -> None:
    """Show the revision history of an artifact, oldest first.

    Each revision with its time, the change set that made it (id, actor,
    message), its digest before and after, the fields it changed and the run
    that produced it; also for a deleted artifact, named by id. With --all,
    the history of a name: every artifact that ever had it in the collection,
    deleted ones included, with their revisions (renames too) and deletions.
    """
    repo = app.repo()
    if every:
        collection_id, name, histories = _name_history(repo, ref)
        logs = [(history, log_entries(repo, history)) for history in histories]
        names = resolve.Names(repo)
        if as_json:
            print_json(
                {
                    "collection": names.collection(collection_id),
                    "name": name,
                    "artifacts": [_log_json(history, entries) for history, entries in logs],
                }
            )
            return
        for i, (history, entries) in enumerate(logs):
            if i:
                echo()
            echo(f"artifact {history.artifact_id}{' (deleted)' if history.deleted else ''}")
            _print_log(entries, with_name=True)
        return
    artifact_id = resolve.artifact_id(repo, ref)
    history = ArtifactHistory(
        artifact_id,
        tuple(repo.list_revisions(artifact_id)),
        tuple(repo.list_changes(entity_id=artifact_id)),
    )
    entries = log_entries(repo, history)
    if as_json:
        print_json(_log_json(history, entries))
    else:
        _print_log(entries, with_name=False)


# diff holds both bodies and their lines: larger bodies are refused (before
# they are read) rather than read whole.
DIFF_MAX_BYTES = 8 << 20


def _binary(label: str) -> NotTextError:
    return NotTextError(f"{label} is binary; diff compares text (UTF-8) bodies only")


def _looks_binary(chunk: bytes, *, final: bool) -> bool:
    if b"\x00" in chunk:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(chunk, final=final)
    except UnicodeDecodeError:
        return True
    return False


def _text(repo: KnowledgeRepository, revision: ArtifactRevision, label: str) -> list[str]:
    """The lines of a revision's body, or NotTextError: a binary body is refused
    on its first chunk, and a body over DIFF_MAX_BYTES on its size, neither read whole."""
    with repo.bodies.open(revision.digest) as head:
        first = head.read(CHUNK_SIZE)
    if _looks_binary(first, final=len(first) >= revision.size):
        raise _binary(label)
    if revision.size > DIFF_MAX_BYTES:
        raise NotTextError(
            f"{label} is {revision.size} bytes; diff compares bodies of at most "
            f"{DIFF_MAX_BYTES} bytes"
        )
    body = repo.read_content(revision.artifact_id, revision.revision)
    if b"\x00" not in body:
        try:
            return body.decode("utf-8").splitlines(keepends=True)
        except UnicodeDecodeError:
            pass
    raise _binary(label)


def _diff_lines(lines: Iterator[str]) -> Iterator[str]:
    """difflib's lines, each ending in a newline, marking a last line that had none."""
    for line in lines:
        if line.endswith("\n"):
            yield line
        else:
            yield line + "\n\\ No newline at end of file\n"


@cli.command(epilog=examples("kontextual diff notes/todo.md 1 2"))
@click.argument("ref", metavar="ARTIFACT")
@click.argument("old", metavar="REV1", type=click.IntRange(min=1))
@click.argument("new", metavar="REV2", type=click.IntRange(min=1))
@click.pass_obj
def diff(app: App, ref: str, old: int, new: int) -> None:
    """Unified diff between two revisions of a text artifact."""
    import difflib

    repo = app.repo()
    artifact_id = resolve.artifact_id(repo, ref)
    names = resolve.Names(repo)
    before, after = repo.get_revision(artifact_id, old), repo.get_revision(artifact_id, new)
    lines = difflib.unified_diff(
        _text(repo, before, f"revision {old} of {ref}"),
        _text(repo, after, f"revision {new} of {ref}"),
        fromfile=f"a/{names.of(before)}@{old}",
        tofile=f"b/{names.of(after)}@{new}",
    )
    for line in _diff_lines(lines):
        for part in line.removesuffix("\n").split("\n"):
            echo(part)


# -- removing and linking ------------------------------------------------------


@cli.command(epilog=examples("kontextual rm notes/old.md", "kontextual rm notes/old.md -m 'stale'"))
@click.argument("ref", metavar="ARTIFACT")
@change_set_options
@click.pass_obj
def rm(app: App, ref: str, actor: str | None, message: str | None) -> None:
    """Delete an artifact and its relationships.

    Its history stays readable by id (log, cat --revision).
    """
    repo = app.repo()
    found = resolve.artifact(repo, ref)
    label = resolve.Names(repo).of(found)
    repo.delete_artifact(found.id, actor=actor, message=message)
    echo(f"removed {label} ({found.id})")


@cli.command(epilog=examples("kontextual link outputs/summary.md derived_from papers/a.txt"))
@click.argument("source", metavar="SRC")
@click.argument("relationship_type", metavar="TYPE")
@click.argument("target", metavar="DST")
@click.option(
    "--meta", multiple=True, metavar="KEY=VALUE", help=f"Relationship metadata. {META_HELP}"
)
@change_set_options
@json_option
@click.pass_obj
def link(
    app: App,
    source: str,
    relationship_type: str,
    target: str,
    meta: tuple[str, ...],
    actor: str | None,
    message: str | None,
    as_json: bool,
) -> None:
    """Relate two artifacts: SRC -[TYPE]-> DST."""
    metadata = parse_pairs(meta, "--meta")
    repo = app.repo()
    created = repo.create_relationship(
        resolve.artifact(repo, source).id,
        resolve.artifact(repo, target).id,
        relationship_type,
        metadata=metadata,
        actor=actor,
        message=message,
    )
    if as_json:
        print_json(created)
    else:
        echo(f"linked {source} -[{relationship_type}]-> {target} ({created.id})")


@cli.command(
    epilog=examples(
        "kontextual unlink outputs/summary.md derived_from papers/a.txt",
        "kontextual unlink rel_0190...",
    )
)
@click.argument("args", nargs=-1, required=True, metavar="SRC TYPE DST | RELATIONSHIP_ID")
@change_set_options
@click.pass_obj
def unlink(app: App, args: tuple[str, ...], actor: str | None, message: str | None) -> None:
    """Remove a relationship, named by SRC TYPE DST or by its id."""
    repo = app.repo()
    if len(args) == 1:
        relationship = repo.get_relationship(args[0])
    elif len(args) == 3:
        source, relationship_type, target = args
        target_id = resolve.artifact(repo, target).id
        found = [
            r
            for r in repo.list_relationships(
                resolve.artifact(repo, source).id,
                direction="outgoing",
                relationship_type=relationship_type,
            )
            if r.target_id == target_id
        ]
        if not found:
            raise RelationshipNotFound(
                " ".join(args),
                f"relationship not found: {source} -[{relationship_type}]-> {target}",
            )
        relationship = found[0]
    else:
        raise ValidationError("unlink takes SRC TYPE DST, or one relationship id")
    repo.delete_relationship(relationship.id, actor=actor, message=message)
    echo(f"unlinked {relationship.id}")
