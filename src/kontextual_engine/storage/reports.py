"""What fsck and gc report, for every kind of store.

The checks themselves read a store's own tables and files, so each kind of
store has its own (:mod:`.sqlite.fsck`, :mod:`.sqlite.maintenance`,
:mod:`.shared`); the findings, the reports and the reasons an object stays
are the same for all of them.

Severity: ``error`` is damage (the store may return wrong or missing data),
``garbage`` is harmless leftovers that gc removes (unreferenced objects,
stale tmp files), ``warning`` is worth a look but loses nothing (a writable
object file, a body that may belong to a lost write).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import ValidationError

if TYPE_CHECKING:
    from .contract import KnowledgeRepository

# git's default (gc.pruneExpire) for the same reason: a writer may have put an
# object it has not referenced yet. Writers here reference objects inside the
# write lock that gc also takes, so the grace period is a second line of defence
# (and protects objects written with `hash-object -w` for later use).
DEFAULT_GRACE_SECONDS = 14 * 24 * 3600.0
# A file in tmp/ that is not named after a writer (see ObjectStore.collect_tmp) and
# is younger than this may belong to a write in progress in another process,
# whatever grace the caller asked for. Files named after a writer are removed as
# soon as their writer's process is gone, and never while it lives.
MIN_TMP_GRACE_SECONDS = 3600.0
# What frees garbage: plain gc, or gc without grace when some is younger than that.
GC_COMMAND = "kontextual gc"
GC_NOW_COMMAND = "kontextual gc --grace 0"

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Finding:
    """One thing fsck found. ``bytes`` is the space a garbage finding takes, else 0."""

    severity: str
    kind: str
    subject: str
    detail: str
    bytes: int = 0


@dataclass(frozen=True)
class FsckReport:
    """``garbage_bytes`` is what the garbage findings take; ``free_with`` the
    command that removes all of it (None when there is no garbage)."""

    findings: list[Finding]
    objects_checked: int
    revisions_checked: int
    full: bool
    garbage_bytes: int = 0
    free_with: str | None = None
    # What to do about damage to the index, and to bodies, in this kind of store.
    index_advice: str = "the index is damaged: restore the store from a backup"
    object_advice: str = "bodies are damaged or missing: restore them from a backup"

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def garbage(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "garbage"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def advice(self) -> list[str]:
        """What to do about the errors found, one sentence per kind of damage."""
        kinds = {finding.kind for finding in self.errors}
        said = []
        if kinds & INDEX_DAMAGE:
            said.append(self.index_advice)
        if kinds & OBJECT_DAMAGE:
            said.append(self.object_advice)
        return said


# Error kinds that mean the index itself is damaged, and those that mean objects are.
INDEX_DAMAGE = frozenset(
    {"index-integrity", "foreign-key", "sequence-gap", "text-duplicate", "stale-text"}
)
OBJECT_DAMAGE = frozenset(
    {"missing-object", "bad-object", "size-mismatch", "corrupt", "not-a-file", "bad-fanout"}
)


@dataclass(frozen=True)
class GcReport:
    """What gc removed (or would), and what it kept and why.

    ``young``/``young_bytes``: unreferenced objects kept only because they are
    younger than ``grace_seconds``; ``tmp_in_use``: files in ``tmp/`` kept
    because a live writer holds them (or, not named after a writer, they are
    younger than the tmp grace).
    """

    removed: list[tuple[str, int]]
    kept: dict[str, list[str]] = field(default_factory=dict)
    bytes_freed: int = 0
    dry_run: bool = False
    tmp_removed: int = 0
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    young: int = 0
    young_bytes: int = 0
    tmp_in_use: int = 0

    def grace_note(self) -> str | None:
        """Why unreferenced objects stayed, and how to remove them now; None if none did."""
        if not self.young:
            return None
        return (
            f"kept {self.young} unreferenced object{'' if self.young == 1 else 's'} "
            f"({self.young_bytes} bytes) younger than the grace period "
            f"({duration_text(self.grace_seconds)}): a write may be about to reference them, "
            f"or they were stored with `hash-object -w` for later; `{GC_NOW_COMMAND}` "
            "(or a shorter --grace) removes them now"
        )


@dataclass
class Sweep:
    """gc's decision about each body, the same for every kind of store: a
    referenced body stays (``dry_run`` says why), an unreferenced one younger
    than the grace stays, the rest goes. :meth:`report` is the GcReport."""

    repo: KnowledgeRepository
    grace_seconds: float
    dry_run: bool
    now: float
    removed: list[tuple[str, int]] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)
    young: int = 0
    young_bytes: int = 0
    _pins: dict[str, list[str]] | None = None

    def referenced(self, digest: str) -> None:
        if self.dry_run:
            if self._pins is None:
                self._pins = pins(self.repo)
            self.kept[digest] = keep_reasons(self.repo, digest) + self._pins.get(digest, [])

    def unreferenced(self, digest: str, size: int, modified: float) -> bool:
        """Whether the unreferenced body goes (it is recorded as removed) or stays."""
        age = self.now - modified
        if age < self.grace_seconds:
            self.kept[digest] = [
                f"unreferenced, but only {age:.0f} s old (grace {self.grace_seconds:.0f} s)"
            ]
            self.young += 1
            self.young_bytes += size
            return False
        self.removed.append((digest, size))
        return True

    def report(self, tmp_removed: list[tuple[str, int]], tmp_in_use: int) -> GcReport:
        removed = self.removed + tmp_removed
        return GcReport(
            removed,
            self.kept,
            sum(size for _, size in removed),
            self.dry_run,
            len(tmp_removed),
            float(self.grace_seconds),
            self.young,
            self.young_bytes,
            tmp_in_use,
        )


# What `stats` counts, by the same SQL on every SQL index (the tables agree).
RECORD_COUNTS = (
    ("collections", "SELECT count(*) FROM collections WHERE deleted_at IS NULL"),
    ("artifacts", "SELECT count(*) FROM artifacts WHERE deleted_at IS NULL"),
    ("deleted_artifacts", "SELECT count(*) FROM artifacts WHERE deleted_at IS NOT NULL"),
    ("revisions", "SELECT count(*) FROM revisions"),
    ("relationships", "SELECT count(*) FROM relationships"),
    ("changes", "SELECT count(*) FROM changes"),
    ("runs", "SELECT count(*) FROM runs"),
    ("context_packages", "SELECT count(*) FROM context_packages"),
)


def record_counts(repo: KnowledgeRepository, count: Callable[[str], int]) -> dict[str, int]:
    """Counts of every kind of record (``count`` runs one of RECORD_COUNTS) and
    of live artifacts by text state."""
    counts = {name: count(sql) for name, sql in RECORD_COUNTS[:6]}
    for state, number in repo.text_counts().items():
        counts[f"text_{state.replace('-', '_')}"] = number
    counts.update((name, count(sql)) for name, sql in RECORD_COUNTS[6:])
    return counts


def keep_reasons(repo: KnowledgeRepository, digest: str) -> list[str]:
    reasons = [
        f"revision {r.revision} of artifact {r.artifact_id}"
        + (f" (produced by run {r.run_id})" if r.run_id else "")
        for r in repo.index.revisions_with_digest(digest)
    ]
    reasons += [
        f"input of run {b.run_id}" for b in repo.index.bundles_consuming(None, None, digest)
    ]
    return reasons


def pins(repo: KnowledgeRepository) -> dict[str, list[str]]:
    """Digests pinned by context packages and external references, read once per gc."""
    pins: dict[str, list[str]] = {}
    for package in repo.list_context_packages():
        for digest in dict.fromkeys(ref.digest for ref in package.references if ref.digest):
            pins.setdefault(digest, []).append(f"pinned by context package {package.id}")
    for external in repo.list_external_references():
        if external.digest is not None:
            pins.setdefault(external.digest, []).append(
                f"held by external reference {external.id} ({external.system})"
            )
    return pins


def check_grace(grace_seconds: object) -> None:
    """A grace period is a number of seconds, at least 0."""
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, (int, float))
        or not (grace_seconds >= 0)
    ):
        raise ValidationError(f"grace_seconds must be a number >= 0, got {grace_seconds!r}")


def duration_text(seconds: float) -> str:
    """A short, rounded-down duration for people: 45 s, 12 min, 5 h, 14 days."""
    for unit, size in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {'day' if unit == 'days' and count == 1 else unit}"
    return f"{max(seconds, 0):.0f} s"
