"""What ``kontextual add`` does, planned before anything is written.

:func:`make_plan` takes what :func:`~.ingest.scan` found and, for a sync, the
artifacts the folder mirrors: the files to put, the artifacts to delete and
the files skipped. :func:`preview` says what a plan would do and writes
nothing (the dry run); :func:`execute` carries it out in one transaction, so
a run is one change set of the store, all or nothing.
"""

from __future__ import annotations

import functools
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

from ..digests import Digest, digest_stream
from ..errors import CollectionNotFound
from ..models import (
    Artifact,
    Collection,
    MetadataMode,
    NewArtifact,
    PutOutcome,
    canonical_object,
)
from ..storage.contract import KnowledgeRepository, changed_fields
from ..storage.pipeline import INGEST_WORKERS, StoredBody, held_size, pipelined
from . import ingest, resolve
from .output import Progress

# What a run does to each name: put_artifacts' outcomes, and a sync's deletions.
DELETED = "deleted"


@dataclass(frozen=True, slots=True)
class AddOptions:
    """How files become artifacts: the types and metadata given, and whether to skip."""

    artifact_type: str | None = None
    media_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    skip_invalid: bool = False

    @property
    def keep_types(self) -> bool:
        """An existing artifact keeps its types unless a type is given."""
        return self.artifact_type is None and self.media_type is None

    def types(self, name: str) -> tuple[str, str]:
        """The types given, else guessed from the name."""
        kind, media = ingest.guess_types(name)
        return self.artifact_type or kind, self.media_type or media

    def new_artifact(self, item: ingest.InputFile, content: bytes | StoredBody) -> NewArtifact:
        artifact_type, media_type = self.types(item.name)
        return NewArtifact(
            item.name,
            content,
            artifact_type,
            media_type,
            self.metadata,
            self.provenance or None,
        )

    def hash(
        self, item: ingest.InputFile, skipped: list[ingest.Skipped]
    ) -> tuple[Digest, int] | None:
        """The file's digest and size (read in chunks), or ``None`` when it cannot be
        read and is skipped."""
        try:
            with ingest.open_input(item) as source:
                return digest_stream(cast(BinaryIO, source))
        except ingest.UnstorableFile as exc:
            self.skip(exc, item, skipped)
            return None

    def skip(
        self, exc: ingest.UnstorableFile, item: ingest.InputFile, skipped: list[ingest.Skipped]
    ) -> None:
        """Set the file aside in ``skipped``, or (not skipping) fail."""
        ingest.skip_or_raise(exc, item.name, into=skipped, skip_invalid=self.skip_invalid)


@dataclass(frozen=True, slots=True)
class Plan:
    collection_name: str
    collection: Collection | None  # None: the run creates it
    puts: list[ingest.InputFile]  # created or updated by name, in name order
    deletions: list[Artifact]  # in name order
    skipped: list[ingest.Skipped]
    existing: dict[str, Artifact]  # the collection's artifacts by name, when listed


def mirrored(name: str, prefix: str | None, selection: ingest.Selection) -> bool:
    """Whether a sync of a folder with this selection (placed under ``prefix``) owns
    the artifact ``name``: it lies under the prefix and the selection would take it."""
    if prefix is not None:
        if not name.startswith(prefix + "/"):
            return False
        name = name[len(prefix) + 1 :]
    return selection.takes(name)


def make_plan(
    repo: KnowledgeRepository,
    collection_name: str,
    found: ingest.Scan,
    *,
    sync: bool = False,
    prefix: str | None = None,
    list_existing: bool = False,
) -> Plan:
    """What adding ``found`` does. A sync (of the one folder scanned) also deletes the
    artifacts it owns (:func:`mirrored`) whose files are gone; a skipped file or
    folder keeps its artifacts. The collection is listed for a sync or when
    ``list_existing`` (a dry run), else put by name without a look."""
    try:
        collection: Collection | None = resolve.collection(repo, collection_name)
    except CollectionNotFound:
        collection = None
    existing: dict[str, Artifact] = {}
    if collection is not None and (sync or list_existing):
        existing = {artifact.name: artifact for artifact in repo.list_artifacts(collection.id)}
    deletions: list[Artifact] = []
    if sync:
        (selection,) = found.selections
        present = {item.name for item in found.files}
        deletions = [
            artifact
            for name, artifact in sorted(existing.items())
            if name not in present
            and mirrored(name, prefix, selection)
            and not any(skip.covers(name) for skip in found.skipped)
        ]
    return Plan(collection_name, collection, found.files, deletions, found.skipped, existing)


@dataclass
class Report:
    """What a run did (or a dry run would do): counts per action, the files skipped,
    and, when asked for, one record per name."""

    collection: Collection | None
    created_collection: bool
    counts: Counter[str] = field(default_factory=Counter)
    skipped: list[ingest.Skipped] = field(default_factory=list)
    records: list[dict[str, Any]] | None = None
    bytes: int = 0

    def note(self, outcome: str, name: str, artifact: Artifact | None = None) -> None:
        """One name's outcome; ``artifact`` as it is after it (before it, for a deletion)."""
        self.counts[outcome] += 1
        if self.records is None:
            return
        record: dict[str, Any] = {"name": name, "outcome": outcome}
        if artifact is not None:
            record |= {
                "id": artifact.id,
                "revision": artifact.revision,
                "digest": artifact.digest,
                "size": artifact.size,
            }
        self.records.append(record)


def _changes(current: Artifact, item: ingest.InputFile, digest: str, options: AddOptions) -> bool:
    """Whether putting the file makes a new revision of ``current`` (as ``execute`` puts it)."""
    new = {
        "digest": digest,
        "metadata_json": canonical_object({**current.metadata, **options.metadata}, "metadata"),
    }
    if not options.keep_types:
        new["artifact_type"], new["media_type"] = options.types(item.name)
    return bool(changed_fields(current, new))


def preview(plan: Plan, options: AddOptions, *, records: bool) -> Report:
    """What :func:`execute` would do with ``plan``, reading the files and writing nothing."""
    report = Report(
        plan.collection,
        plan.collection is None,
        skipped=list(plan.skipped),
        records=[] if records else None,
    )
    for item in plan.puts:
        current = plan.existing.get(item.name)
        hashed = options.hash(item, report.skipped)
        if hashed is None:
            continue
        digest, size = hashed
        report.bytes += size
        if current is None:
            report.note(PutOutcome.CREATED.value, item.name)
        else:
            changes = _changes(current, item, digest, options)
            outcome = PutOutcome.UPDATED if changes else PutOutcome.UNCHANGED
            report.note(outcome.value, item.name, current)
    for artifact in plan.deletions:
        report.note(DELETED, artifact.name, artifact)
    return report


def execute(
    repo: KnowledgeRepository,
    plan: Plan,
    options: AddOptions,
    *,
    bar: Progress,
    records: bool,
    actor: str | None = None,
    message: str | None = None,
    workers: int = INGEST_WORKERS,
) -> Report:
    """Carry out ``plan`` in one transaction, one change set by ``actor`` with
    ``message``. A deletion names the revision planned on, so an artifact changed
    meanwhile fails the run (and nothing is written).

    The files are read, hashed and stored in chunks by ``workers`` threads
    (:func:`~kontextual_engine.storage.pipeline.pipelined`), a bounded way
    ahead of the index, which takes them in name order, in batches of at most
    :data:`~.ingest.BATCH_FILES` files and :data:`~.ingest.BATCH_BYTES` bytes
    of searchable bodies held. The bodies are durable before the transaction
    commits (its body store batch)."""
    total, done = len(plan.puts) + len(plan.deletions), 0
    with repo.transaction(actor=actor, message=message):
        target = plan.collection or repo.create_collection(plan.collection_name)
        report = Report(
            target,
            plan.collection is None,
            skipped=list(plan.skipped),
            records=[] if records else None,
        )

        def put(batch: list[NewArtifact]) -> None:
            for result in repo.put_artifacts(
                target.id, batch, metadata=MetadataMode.MERGE, keep_types=options.keep_types
            ):
                report.note(result.outcome.value, result.artifact.name, result.artifact)
            batch.clear()

        stored = pipelined(
            plan.puts,
            functools.partial(_store, repo),
            weight=lambda item: held_size(item.size),
            workers=workers,
        )
        with closing(stored):
            batch: list[NewArtifact] = []
            held = 0
            for item, body in zip(plan.puts, stored, strict=True):
                done += 1
                if isinstance(body, ingest.UnstorableFile):
                    options.skip(body, item, report.skipped)
                    continue
                report.bytes += body.size
                batch.append(options.new_artifact(item, body))
                held += len(body.content or b"")
                if len(batch) >= ingest.BATCH_FILES or held >= ingest.BATCH_BYTES:
                    put(batch)
                    held = 0
                    bar(done, total)
            put(batch)
            bar(done, total)
        for artifact in plan.deletions:
            repo.delete_artifact(artifact.id, expected_revision=artifact.revision)
            report.note(DELETED, artifact.name, artifact)
            done += 1
            bar(done, total)
    return report


def _store(repo: KnowledgeRepository, item: ingest.InputFile) -> StoredBody | ingest.UnstorableFile:
    """Store one input file's body, read in chunks; a file that cannot be read is
    returned as its error, for the caller to skip or raise in name order."""
    try:
        with ingest.open_input(item) as source:
            return repo.store_body(cast(BinaryIO, source))
    except ingest.UnstorableFile as exc:
        return exc
