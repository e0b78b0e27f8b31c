"""One ingesting client of the shared-store workload, in a process of its own.

``python -m benchmarks.shared_client STORE COLLECTION START COUNT BATCH``
builds documents ``START`` .. ``START + COUNT - 1`` in memory, prints
``ready``, waits for a line on stdin (so that every client starts at once),
then opens ``STORE`` (a directory or a shared store's URL), stores the
documents with one ``put_artifacts`` per ``BATCH`` of them, closes the store
and prints one JSON line: when it started and ended (``time.perf_counter``,
the same clock in every process), its CPU seconds and the documents stored.
"""

from __future__ import annotations

import json
import resource
import sys
import time

from kontextual_engine.models import NewArtifact
from kontextual_engine.storage.stores import open_store

from . import data


def main(argv: list[str]) -> int:
    store, collection_id, first, count, batch = argv
    start_at, total, per_call = int(first), int(count), int(batch)
    items = [
        NewArtifact(doc.name, doc.content, "document", "text/markdown", doc.metadata)
        for doc in data.documents(start_at, total)
    ]
    print("ready", flush=True)
    sys.stdin.readline()
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    repo = open_store(store, "batch")
    stored = 0
    try:
        for offset in range(0, total, per_call):
            stored += len(repo.put_artifacts(collection_id, items[offset : offset + per_call]))
    finally:
        repo.close()
    ended = time.perf_counter()
    result = {
        "started": started,
        "ended": ended,
        "cpu_seconds": _cpu_seconds() - cpu_before,
        "stored": stored,
    }
    print(json.dumps(result), flush=True)
    return 0


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
