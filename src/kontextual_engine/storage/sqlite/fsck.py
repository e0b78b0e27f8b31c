"""fsck of a SQLite store: the index, the objects and what lies around them.

It reads the index directly: it checks the store itself (files, pages,
foreign keys), which the backend-neutral contract cannot see.

The findings and the report are :mod:`..reports`' (severities are explained there).
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime, timezone

from ...errors import (
    KontextualError,
    ObjectNotFound,
)
from ..reports import (
    DEFAULT_GRACE_SECONDS,
    GC_COMMAND,
    GC_NOW_COMMAND,
    Finding,
    FsckReport,
    Progress,
    duration_text,
)
from .connection import INDEX_NAME
from .repository import SQLiteKnowledgeRepository

__all__ = ["fsck"]

INDEX_ADVICE = (
    f"the index ({INDEX_NAME}) is damaged: restore the store from a backup "
    "(`kontextual backup` makes one, consistent even while the store is open) "
    "or from a snapshot (`kontextual import`); a store copied with `cp -a` or "
    "`rsync` while it was open can be torn like this"
)
OBJECT_ADVICE = (
    "objects are damaged or missing: a backup or snapshot holds the same bytes "
    "under the same name (objects/ab/cdef...), so copy those files back, or "
    "add the same content again"
)

_SCAN_SEVERITY = {
    "corrupt": "error",
    "not-a-file": "error",
    "bad-fanout": "error",
    "stray": "warning",
    "writable": "warning",
    "stale-tmp": "garbage",
}


def fsck(
    repo: SQLiteKnowledgeRepository, *, full: bool = False, progress: Progress | None = None
) -> FsckReport:
    """Check the index and every object. ``full`` re-hashes every object.

    Without ``full``, referenced objects are checked for presence and size
    only; with it, every file under ``objects/`` is hashed.
    """
    findings: list[Finding] = []
    findings += _check_index(repo, full)
    try:
        referenced: dict[str, int] | None = {
            digest: size
            for digest, size in repo.index.connection.rows(
                "SELECT digest, max(size) FROM revisions GROUP BY digest"
            )
        }
        revisions = repo.index.connection.row("SELECT count(*) FROM revisions")[0]
        findings += _check_sequences(repo)
        findings += _check_text(repo)
    except (sqlite3.DatabaseError, KontextualError) as exc:
        # A damaged index is a finding, not a crash; without the revisions no
        # object can be called garbage, so only the objects themselves are checked.
        findings.append(
            Finding(
                "error",
                "index-integrity",
                INDEX_NAME,
                f"cannot read the revisions and change records: {exc}",
            )
        )
        referenced, revisions = None, 0
    store = repo.objects
    total = len(referenced or {})
    for done, (digest, size) in enumerate(sorted((referenced or {}).items()), 1):
        try:
            actual = store.size(digest)
        except ObjectNotFound:
            findings.append(
                Finding(
                    "error",
                    "missing-object",
                    digest,
                    "referenced by a revision but not in objects/",
                )
            )
            actual = None
        except KontextualError as exc:
            findings.append(Finding("error", "bad-object", digest, str(exc)))
            actual = None
        if actual is not None and actual != size:
            findings.append(
                Finding(
                    "error",
                    "size-mismatch",
                    digest,
                    f"index records {size} bytes, the file has {actual}",
                )
            )
        if progress is not None:
            progress(done, total)
    present: set[str] = set()
    young = False
    now = time.time()
    index_changed = _last_index_write(repo)
    for digest in store.all():
        present.add(digest)
        if referenced is not None and digest not in referenced:
            try:
                st = os.lstat(store.path(digest))
            except FileNotFoundError:
                continue
            if index_changed is not None and st.st_mtime > index_changed:
                findings.append(_possibly_lost(digest, index_changed, st.st_size))
                continue
            age = now - st.st_mtime
            if age >= DEFAULT_GRACE_SECONDS:
                detail = f"no revision references it; `{GC_COMMAND}` removes it"
            else:
                young = True
                detail = (
                    f"no revision references it; written {duration_text(age)} ago, so "
                    f"`{GC_COMMAND}` keeps it for its {duration_text(DEFAULT_GRACE_SECONDS)} "
                    f"grace period (`{GC_NOW_COMMAND}` removes it now)"
                )
            findings.append(Finding("garbage", "unreferenced-object", digest, detail, st.st_size))
    for problem in store.scan(rehash=full):
        subject = problem.digest or str(problem.path)
        severity = _SCAN_SEVERITY.get(problem.kind, "error")
        findings.append(Finding(severity, problem.kind, subject, problem.detail, problem.size))
    garbage = [f for f in findings if f.severity == "garbage"]
    free_with = None if not garbage else GC_NOW_COMMAND if young else GC_COMMAND
    return FsckReport(
        findings,
        len(present),
        revisions,
        full,
        sum(f.bytes for f in garbage),
        free_with,
        index_advice=INDEX_ADVICE,
        object_advice=OBJECT_ADVICE,
    )


def _last_index_write(repo: SQLiteKnowledgeRepository) -> float | None:
    """When ``index.sqlite`` itself last changed, if no -wal holds newer commits.

    In WAL mode the index file changes only when a checkpoint copies commits
    into it. While its -wal is not empty the newer commits are there, and every
    body they reference counts as referenced; when the -wal is empty or gone,
    nothing the index knows is newer than the file.
    """
    index = repo.index_path
    try:
        if os.stat(index.with_name(index.name + "-wal")).st_size > 0:
            return None
    except FileNotFoundError:
        pass
    try:
        return os.stat(index).st_mtime
    except FileNotFoundError:
        return None


def _possibly_lost(digest: str, index_changed: float, size: int) -> Finding:
    """An unreferenced body written after the index file last changed.

    Either a write that never committed (an interrupted or refused one: garbage)
    or one that committed and was then lost with the -wal (deleted, or not
    copied with the index): the store cannot tell which, so it says both.
    """
    when = datetime.fromtimestamp(index_changed, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Finding(
        "warning",
        "possibly-lost-write",
        digest,
        f"no revision references it, and it was written after the index last changed "
        f"({when}): an interrupted write left it, or a write that was acknowledged was "
        f"lost with the index's -wal (deleted, or left behind by a copy); if writes are "
        f"missing, restore the store from a backup, otherwise `{GC_COMMAND}` removes it "
        "after its grace period",
        size,
    )


def _check_index(repo: SQLiteKnowledgeRepository, full: bool) -> list[Finding]:
    found: list[Finding] = []
    pragma = "integrity_check" if full else "quick_check"
    try:
        rows = repo.index.connection.rows(f"PRAGMA {pragma}")
        for (message,) in rows:
            if message != "ok":
                found.append(Finding("error", "index-integrity", INDEX_NAME, message))
        violations = repo.index.connection.rows("PRAGMA foreign_key_check")
        # One query per broken foreign key names each row by its primary key:
        # WITHOUT ROWID tables have no rowid to name it by.
        for table, fkid in sorted({(row[0], row[3]) for row in violations}):
            parent, keys = _dangling_rows(repo, table, fkid)
            found += [
                Finding(
                    "error",
                    "foreign-key",
                    f"{table}({key})",
                    f"row references a missing {parent} row",
                )
                for key in keys
            ]
    except (sqlite3.DatabaseError, KontextualError) as exc:
        found.append(Finding("error", "index-integrity", INDEX_NAME, str(exc)))
    return found


def _dangling_rows(repo: SQLiteKnowledgeRepository, table: str, fkid: int) -> tuple[str, list[str]]:
    """The parent table of foreign key ``fkid`` of ``table``, and the primary keys
    (``col=value, ...``) of the rows whose key points at no parent row."""
    parts = sorted(
        (
            row
            for row in repo.index.connection.rows(f"PRAGMA foreign_key_list({_quote(table)})")
            if row[0] == fkid
        ),
        key=lambda row: row[1],
    )
    parent = parts[0][2]
    parent_key = _primary_key(repo, parent)
    pairs = [(row[3], row[4] or parent_key[row[1]]) for row in parts]
    key = _primary_key(repo, table) or ["rowid"]
    present = " AND ".join(f"c.{_quote(child)} IS NOT NULL" for child, _ in pairs)
    match = " AND ".join(f"p.{_quote(up)} = c.{_quote(child)}" for child, up in pairs)
    rows = repo.index.connection.rows(
        f"SELECT {', '.join(f'c.{_quote(column)}' for column in key)} "
        f"FROM {_quote(table)} AS c WHERE {present} "
        f"AND NOT EXISTS (SELECT 1 FROM {_quote(parent)} AS p WHERE {match})"
    )
    labels = [
        ", ".join(f"{column}={value!r}" for column, value in zip(key, row, strict=True))
        for row in rows
    ]
    return parent, labels


def _primary_key(repo: SQLiteKnowledgeRepository, table: str) -> list[str]:
    """The primary key columns of ``table`` in key order (empty for a bare rowid)."""
    columns = [
        (row[5], row[1])
        for row in repo.index.connection.rows(f"PRAGMA table_info({_quote(table)})")
    ]
    return [name for position, name in sorted(columns) if position > 0]


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _check_sequences(repo: SQLiteKnowledgeRepository) -> list[Finding]:
    count, low, high = repo.index.connection.row(
        "SELECT count(*), min(sequence), max(sequence) FROM changes"
    )
    if count and (low != 1 or high != count):
        return [
            Finding(
                "error",
                "sequence-gap",
                "changes",
                f"{count} change records numbered {low}..{high}; expected 1..{count}",
            )
        ]
    return []


def _check_text(repo: SQLiteKnowledgeRepository) -> list[Finding]:
    """Every live artifact has words, a reason it has none, or waits for them
    (ADR 0006); nothing is kept for an artifact that is gone; FTS5's own
    integrity check passes."""
    findings = [
        Finding("error", kind, f"sequence {sequence}", message)
        for kind, sequence, message in repo.index.text.check()
    ]
    pending = repo.index.text.count_pending()
    if pending:
        findings.append(
            Finding(
                "warning",
                "text-pending",
                "text_pending",
                f"{pending} artifacts wait for their words; text queries are refused until "
                "`kontextual index` (or any writable open) derives them",
            )
        )
    problem = repo.index.text.integrity_problem()
    if problem is not None:
        findings.append(Finding("error", "text-index-damaged", "artifact_words", problem))
    return findings
