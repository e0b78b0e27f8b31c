"""The shared store: a PostgreSQL index and bodies in S3-compatible storage.

:class:`SharedKnowledgeRepository` composes :class:`~.postgres.PostgresIndex`
and :class:`~.s3.S3BodyStore` under the one contract, for a team whose
writers run on several machines. What the contract cannot see lives here
too, as the SQLite store's lives in :mod:`.sqlite.maintenance`: :func:`gc`,
:func:`fsck` and :func:`store_stats`.

The ordering invariant across machines: a body is in the bucket before any
index row naming it commits (every S3 write is durable when it returns, and
it returns before the writer's transaction commits). gc must not delete a
body that a writer elsewhere is about to reference: each writer records an
upload intent first (:mod:`.postgres.intents`), and gc keeps every body
with a live intent, every referenced body, and every body younger than its
grace period.

An index is paired with one bucket and prefix: the first open records
``s3://bucket/prefix`` in the index, and opening it with other bodies is
refused, since gc would take every body there for garbage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..digests import Digest, digest_bytes
from ..errors import CorruptObjectError, ObjectNotFound, StoreFormatError
from ..models import MetadataMode, NewArtifact, PutResult
from .contract import KnowledgeRepository
from .ids import Clock, IdSource
from .pipeline import StoredBody
from .postgres import PostgresIndex
from .postgres.connection import translate
from .postgres.intents import DEFAULT_INTENT_SECONDS, UploadIntents, gc_gate, live_intents
from .reports import (
    DEFAULT_GRACE_SECONDS,
    GC_COMMAND,
    GC_NOW_COMMAND,
    MIN_TMP_GRACE_SECONDS,
    Finding,
    FsckReport,
    GcReport,
    Progress,
    Sweep,
    check_grace,
    duration_text,
    record_counts,
)
from .s3 import S3BodyStore

INDEX_ADVICE = (
    "the PostgreSQL index is damaged: restore it with the database's own tools "
    "(pg_dump / point-in-time recovery) or import a snapshot (`kontextual export` "
    "of a healthy copy)"
)
OBJECT_ADVICE = (
    "bodies are damaged or missing in the bucket: restore them from bucket versioning "
    "or a backup (a body's key names its bytes: objects/ab/cdef...), or add the same "
    "content again"
)


@dataclass(frozen=True)
class SharedLocation:
    """Where a shared store is: the index's libpq connection string, the bucket
    and prefix of its bodies, and optionally the S3 endpoint (else the AWS
    environment's)."""

    dsn: str
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None

    @property
    def objects(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


class SharedKnowledgeRepository(KnowledgeRepository):
    """The repository on a PostgreSQL index and an S3 bucket (see the module docstring).

    Credentials come from the standard environment: libpq's ``PG*`` variables,
    service and password files for the index, the AWS variables, profiles and
    instance roles for the bucket. ``create`` makes a new store in an empty
    database; without it a database that holds no store raises
    :class:`StoreNotFound`.
    """

    index: PostgresIndex
    bodies: S3BodyStore

    def __init__(
        self,
        location: SharedLocation,
        *,
        create: bool = False,
        session: Any = None,
        pool_size: int = 4,
        intent_seconds: float = DEFAULT_INTENT_SECONDS,
        clock: Clock | None = None,
        ids: IdSource | None = None,
    ) -> None:
        self.location = location
        self.intents = UploadIntents(location.dsn, seconds=intent_seconds)
        bodies = S3BodyStore(
            location.bucket,
            location.prefix,
            endpoint_url=location.endpoint_url,
            session=session,
            before_write=self.intents.record,
        )
        bodies.check()
        index = PostgresIndex(location.dsn, pool_size=pool_size, create=create)
        try:
            _pair(index, bodies.location)
        except BaseException:
            index.close()
            raise
        self._depth = threading.local()
        # Bodies the current bulk chunk of this thread has stored already.
        self._stored = threading.local()
        super().__init__(index, bodies, clock=clock, ids=ids)

    def __repr__(self) -> str:
        return f"SharedKnowledgeRepository({self.index.shown_dsn!r}, {self.bodies.location!r})"

    @property
    def read_only(self) -> bool:
        return False

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.intents.close()

    def _put_chunk(
        self,
        collection_id: str,
        chunk: Sequence[NewArtifact],
        seen: set[str],
        run_id: str | None,
        mode: MetadataMode,
        keep_types: bool,
    ) -> list[PutResult]:
        """The bulk path stores a chunk's bodies first, with one intent statement
        for all and several writes at once, then writes the index: the bodies go
        up before the transaction takes the change sequence (which serialises
        writers until they commit), so other writers' uploads overlap."""
        contents = [
            item.content
            for item in chunk
            if isinstance(item, NewArtifact) and isinstance(item.content, (bytes, bytearray))
        ]
        self._stored.digests = set(self.bodies.add_many(contents))
        try:
            return super()._put_chunk(collection_id, chunk, seen, run_id, mode, keep_types)
        finally:
            self._stored.digests = set()

    def _store_body(self, content: bytes | StoredBody) -> tuple[str, int]:
        """A body the chunk already stored is not stored again."""
        stored: set[Digest] = getattr(self._stored, "digests", set())
        if stored and not isinstance(content, StoredBody):
            digest = digest_bytes(content)
            if digest in stored:
                return digest, len(content)
        return super()._store_body(content)

    @contextmanager
    def transaction(
        self,
        *,
        actor: str | None = None,
        message: str | None = None,
        at: datetime | None = None,
        backdate: bool = False,
    ) -> Iterator[None]:
        """The contract's transaction; the upload intents of the bodies stored in
        it are dropped when the outermost level ends, committed or not (a
        committed body is now referenced, a rolled-back one is garbage for gc
        after its grace). A body stored outside any transaction
        (``hash-object -w``) keeps its intent until it expires."""
        depth: int = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        # The intents are dropped only after the commit: until then gc must see
        # either the intent or the reference.
        holding = self.intents.holding() if depth == 0 else nullcontext()
        try:
            with (
                holding,
                super().transaction(actor=actor, message=message, at=at, backdate=backdate),
            ):
                yield
        finally:
            self._depth.value = depth


def _pair(index: PostgresIndex, objects: str) -> None:
    """Record which bodies this index belongs with, or refuse other bodies."""
    paired = index.setting("objects")
    if paired is None:
        index.set_setting("objects", objects)
    elif paired != objects:
        raise StoreFormatError(
            f"the PostgreSQL index {index.shown_dsn} belongs with the bodies in {paired}, "
            f"not {objects}: name the store's own bucket and prefix in ?objects="
        )


# -- gc ------------------------------------------------------------------------


def gc(
    repo: SharedKnowledgeRepository,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    dry_run: bool = False,
) -> GcReport:
    """Remove bodies that nothing references, no writer intends to reference, and
    that are older than the grace period; and staging objects of large uploads
    left by writers that died (older than the grace, at least an hour).

    The bucket is listed first; the decision and the deletions run with new
    intents held back (:func:`~.postgres.intents.gc_gate`). gc refuses
    (``StoreFormatError``, nothing removed) when the index references a body
    the bucket does not have: that index may belong to other bodies.
    """
    check_grace(grace_seconds)
    sweep = Sweep(repo, grace_seconds, dry_run, time.time())
    listed = list(repo.bodies.entries())
    staging = list(repo.bodies.entries(staging=True))
    with (
        repo.index.connection.borrow() as conn,
        translate(repo.location.dsn),
        gc_gate(conn),
    ):
        intents = live_intents(conn, sweep=not dry_run)
        referenced = {row[0] for row in conn.execute("SELECT DISTINCT digest FROM revisions")}
        present = {entry.digest for entry in listed if entry.digest is not None}
        _refuse_missing(repo, referenced - present)
        doomed: list[str] = []
        for entry in listed:
            digest = entry.digest
            if digest is None:
                continue
            if digest in referenced:
                sweep.referenced(digest)
            elif digest in intents:
                sweep.kept[digest] = [
                    "a writer intends to reference it (upload intent for another "
                    f"{duration_text(intents[digest])})"
                ]
            elif sweep.unreferenced(digest, entry.size, entry.modified):
                doomed.append(entry.key)
        tmp_grace = max(grace_seconds, MIN_TMP_GRACE_SECONDS)
        stale = [entry for entry in staging if sweep.now - entry.modified >= tmp_grace]
        if not dry_run:
            repo.bodies.delete_keys(doomed + [entry.key for entry in stale])
    return sweep.report([(entry.key, entry.size) for entry in stale], len(staging) - len(stale))


def _refuse_missing(repo: SharedKnowledgeRepository, unlisted: set[str]) -> None:
    """Refuse gc when a referenced body is missing. A body the listing missed may
    have been stored and committed since the bucket was listed: each is asked for."""
    missing = sorted(digest for digest in unlisted if not repo.bodies.exists(digest))
    if missing:
        raise StoreFormatError(
            f"gc refused: the index references {len(missing)} body(ies) missing from "
            f"{repo.bodies.location} (such as {missing[0]}); the index may belong to "
            "other bodies, or bodies were lost; run fsck"
        )


# -- fsck ----------------------------------------------------------------------


def fsck(
    repo: SharedKnowledgeRepository, *, full: bool = False, progress: Progress | None = None
) -> FsckReport:
    """Check that every referenced body is in the bucket with its size (``full``:
    and its bytes hash to its digest), that the change feed has no gap, and
    report unreferenced bodies and stale staging objects as garbage."""
    now = time.time()
    listed = {entry.digest: entry for entry in repo.bodies.entries() if entry.digest}
    sizes = {
        str(digest): int(size)
        for digest, size in repo.index.connection.rows(
            "SELECT digest, max((record::jsonb ->> 'size')::bigint) FROM revisions GROUP BY digest"
        )
    }
    findings: list[Finding] = []
    checked = 0
    for number, (digest, size) in enumerate(sorted(sizes.items()), 1):
        entry = listed.get(Digest(digest))
        if entry is None and not repo.bodies.exists(digest):
            findings.append(Finding("error", "missing-object", digest, "not in the bucket"))
        elif entry is not None and entry.size != size:
            findings.append(
                Finding("error", "size-mismatch", digest, f"{entry.size} bytes, expected {size}")
            )
        elif full:
            findings += _verify(repo, digest)
        checked += 1
        if progress is not None:
            progress(number, len(sizes))
    findings += _check_sequence(repo)
    young = False
    for digest, entry in listed.items():
        if digest in sizes:
            continue
        age = now - entry.modified
        young = young or age < DEFAULT_GRACE_SECONDS
        findings.append(
            Finding(
                "garbage",
                "unreferenced-object",
                digest,
                f"no revision references it; written {duration_text(age)} ago",
                entry.size,
            )
        )
    for entry in repo.bodies.entries(staging=True):
        if now - entry.modified >= MIN_TMP_GRACE_SECONDS:
            findings.append(
                Finding("garbage", "stale-tmp", entry.key, "staging of an upload", entry.size)
            )
    garbage = [f for f in findings if f.severity == "garbage"]
    return FsckReport(
        findings,
        checked,
        int(repo.index.connection.rows("SELECT count(*) FROM revisions")[0][0]),
        full,
        sum(f.bytes for f in garbage),
        (GC_NOW_COMMAND if young else GC_COMMAND) if garbage else None,
        index_advice=INDEX_ADVICE,
        object_advice=OBJECT_ADVICE,
    )


def _verify(repo: SharedKnowledgeRepository, digest: str) -> list[Finding]:
    try:
        repo.bodies.verify(digest)
    except CorruptObjectError as exc:
        return [Finding("error", "corrupt", digest, str(exc))]
    except ObjectNotFound:
        return [Finding("error", "missing-object", digest, "not in the bucket")]
    return []


def _check_sequence(repo: SharedKnowledgeRepository) -> list[Finding]:
    """Change sequences run 1..last with no gap and no duplicate."""
    row = repo.index.connection.rows(
        "SELECT count(*), count(DISTINCT sequence), coalesce(max(sequence), 0), "
        "(SELECT last FROM sequence_counter) FROM changes"
    )[0]
    count, distinct, highest, last = (int(value) for value in row)
    if count == distinct == highest == last:
        return []
    return [
        Finding(
            "error",
            "sequence-gap",
            "changes",
            f"{count} change records, {distinct} distinct sequences, highest {highest}, "
            f"counter at {last}",
        )
    ]


# -- stats ---------------------------------------------------------------------


def store_stats(repo: SharedKnowledgeRepository) -> dict[str, int]:
    """Counts of every kind of record, the index's size and the bodies' count and bytes."""
    rows = repo.index.connection.rows
    counts = record_counts(repo, lambda sql: int(rows(sql)[0][0]))
    bodies = list(repo.bodies.entries())
    counts["objects"] = sum(1 for entry in bodies if entry.digest is not None)
    counts["object_bytes"] = sum(entry.size for entry in bodies if entry.digest is not None)
    counts["index_bytes"] = int(rows("SELECT pg_database_size(current_database())")[0][0])
    return counts
