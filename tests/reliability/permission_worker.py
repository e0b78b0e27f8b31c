"""Run every read and every write against a store as an unprivileged user.

``python permission_worker.py STORE SCRATCH READ_ONLY`` (started as root):
imports everything it will need, drops to ``nobody`` (uid and gid 65534; the
interpreter's own files may not be readable by that user afterwards), opens
STORE with ``read_only`` as given and prints one JSON object: for each
operation, ``"ok"`` or ``"<ErrorType>: <message>"``; ``"open"`` says how the
open went. SCRATCH is a directory that ``nobody`` may write (snapshot
exports go there).
"""

from __future__ import annotations

import ctypes  # noqa: F401 (storage/durable.py loads syncfs through it on first use)
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from kontextual_engine.models import NewArtifact
from kontextual_engine.snapshot import export_snapshot, import_snapshot
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck, gc, store_stats

NOBODY = 65534


def reads(repo: SQLiteKnowledgeRepository, scratch: Path) -> dict[str, Callable[[], Any]]:
    notes = repo.get_collection_by_name("notes")
    a = repo.get_artifact_by_name(notes.id, "a.md")
    run = repo.list_runs(operation="summarize")[0]
    package = repo.list_context_packages()[0]
    return {
        "list_collections": repo.list_collections,
        "list_artifacts": lambda: repo.list_artifacts(notes.id),
        "query_text": lambda: repo.query(text="alpha"),
        "query_metadata": lambda: repo.query(metadata={"n": 1}),
        "get_artifact": lambda: repo.get_artifact(a.id),
        "read_content": lambda: repo.read_content(a.id),
        "read_old_revision": lambda: repo.read_content(a.id, 1),
        "list_revisions": lambda: repo.list_revisions(a.id),
        "list_relationships": lambda: repo.list_relationships(a.id),
        "list_changes": lambda: repo.list_changes(),
        "last_sequence": repo.last_sequence,
        "get_run": lambda: repo.get_run(run.id),
        "list_steps": lambda: repo.list_steps(run.id),
        "list_bundles": lambda: repo.list_bundles(run.id),
        "run_outputs": lambda: repo.run_outputs(run.id),
        "get_manifest": lambda: repo.get_manifest(run.id),
        "consuming_runs": lambda: repo.consuming_runs(a.id),
        "impact": lambda: repo.impact(a.id),
        "get_context_package": lambda: repo.get_context_package(package.id),
        "list_external_references": repo.list_external_references,
        "export_records": repo.export_records,
        "verified_object_read": lambda: repo.objects.get(a.digest, verify=True),
        "resolve_prefix": lambda: repo.objects.resolve(a.digest[:12]),
        "object_stats": repo.objects.stats,
        "fsck_full": lambda: _require(fsck(repo, full=True).ok, "fsck found errors"),
        "store_stats": lambda: store_stats(repo),
        "export_snapshot": lambda: export_snapshot(repo, scratch / "export"),
        "export_tar": lambda: export_snapshot(repo, scratch / "export.tar", tar=True),
    }


def writes(repo: SQLiteKnowledgeRepository) -> dict[str, Callable[[], Any]]:
    notes = repo.get_collection_by_name("notes")
    a = repo.get_artifact_by_name(notes.id, "a.md")
    return {
        "create_collection": lambda: repo.create_collection("new"),
        "create_artifact": lambda: repo.create_artifact(notes.id, "new", b"x", artifact_type="t"),
        "put_artifacts": lambda: repo.put_artifacts(notes.id, [NewArtifact("n", b"y", "t")]),
        "update_artifact": lambda: repo.update_artifact(a.id, content=b"changed"),
        "delete_artifact": lambda: repo.delete_artifact(a.id),
        "create_relationship": lambda: repo.create_relationship(a.id, a.id, "self"),
        "create_run": lambda: repo.create_run("op"),
        "add_object": lambda: repo.objects.add(b"new object"),
        "gc": lambda: gc(repo, grace_seconds=0),
        "transaction": lambda: repo.transaction().__enter__(),
    }


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def attempt(action: Callable[[], Any]) -> str:
    try:
        action()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def main(argv: list[str]) -> int:
    store, scratch, read_only = Path(argv[1]), Path(argv[2]), argv[3] == "1"
    traceback.format_exc()  # load what formatting an error needs, while we still can
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    out: dict[str, Any] = {"uid": os.getuid()}
    try:
        repo = SQLiteKnowledgeRepository.open(store, read_only=read_only)
    except Exception as exc:
        out["open"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out))
        return 0
    out["open"] = "ok"
    out["reads"] = {name: attempt(action) for name, action in reads(repo, scratch).items()}
    out["writes"] = {name: attempt(action) for name, action in writes(repo).items()}
    out["import"] = attempt(lambda: import_snapshot(scratch / "export", repo))
    out["close"] = attempt(repo.close)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
