"""One large-body operation in a fresh process, so its peak RSS is its own.

``python -m benchmarks.child OP ...`` prints one JSON line: the seconds of the
operation, the process's peak RSS (``VmHWM``) and its RSS before the
operation began (interpreter and imports).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

CHUNK = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def store_in(store: str, source: str) -> dict[str, object]:
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

    repo = SQLiteKnowledgeRepository.open(store, durability="full", create=True)
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    with open(source, "rb") as reader:
        digest, size = repo.objects.add_stream(reader)
    seconds = time.perf_counter() - start
    repo.close()
    return {"seconds": seconds, "digest": digest, "size": size, "rss_before_kib": before}


def store_out(store: str, digest: str, target: str) -> dict[str, object]:
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

    repo = SQLiteKnowledgeRepository.open(store, durability="full")
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    size = 0
    with repo.objects.open(digest, verify=True) as reader, open(target, "wb") as writer:
        while chunk := reader.read(CHUNK):
            writer.write(chunk)
            size += len(chunk)
    seconds = time.perf_counter() - start
    repo.close()
    return {"seconds": seconds, "digest": digest, "size": size, "rss_before_kib": before}


def text_in(store: str, source: str, cap: str) -> dict[str, object]:
    """One ``put_artifacts`` of a text file, with the searchable-size cap set to
    ``cap`` bytes in this process only (the cap under study, not the store's)."""
    from kontextual_engine.models import NewArtifact
    from kontextual_engine.storage import text
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

    text.MAX_TEXT_BYTES = int(cap)
    repo = SQLiteKnowledgeRepository.open(store, durability="batch", create=True)
    collection = repo.create_collection("bench")
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    with open(source, "rb") as reader:
        content = reader.read()
    item = NewArtifact("body.txt", content, "document", "text/plain", {})
    repo.put_artifacts(collection.id, [item])
    seconds = time.perf_counter() - start
    del content, item
    closing = time.perf_counter()
    searchable = repo.text_counts()["searchable"]
    repo.close()
    return {
        "seconds": seconds,
        "close_seconds": time.perf_counter() - closing,
        "searchable": searchable,
        "rss_before_kib": before,
    }


def words_in(index: str, source: str) -> dict[str, object]:
    """Only SQLite's part: the file's words inserted into a fresh words table."""
    import sqlite3

    from benchmarks.baselines import WORDS_TABLE
    from kontextual_engine.storage import text

    conn = sqlite3.connect(index, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(WORDS_TABLE)
    with open(source, "rb") as reader:
        words = text.indexed_form(reader.read().decode("utf-8"))
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO artifact_words (rowid, words) VALUES (1, ?)", (words,))
    conn.execute("COMMIT")
    seconds = time.perf_counter() - start
    conn.close()
    return {"seconds": seconds, "rss_before_kib": before}


def _copy_hashing(reader: BinaryIO, writer: BinaryIO, hasher: Any) -> int:
    """Copy ``reader`` to ``writer`` in chunks, feeding ``hasher``; return the bytes copied."""
    size = 0
    while chunk := reader.read(CHUNK):
        hasher.update(chunk)
        writer.write(chunk)
        size += len(chunk)
    return size


def baseline_in(source: str, target: str) -> dict[str, object]:
    """Read, hash, write to a temporary name, fsync, rename: a minimal durable put."""
    import blake3

    before = _status_kib("VmRSS")
    start = time.perf_counter()
    hasher = blake3.blake3()
    staged = target + ".tmp"
    with open(source, "rb") as reader, open(staged, "wb") as writer:
        size = _copy_hashing(reader, writer, hasher)
        writer.flush()
        os.fsync(writer.fileno())
    os.rename(staged, target)
    dir_fd = os.open(os.path.dirname(target) or ".", os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dir_fd)
    os.close(dir_fd)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "digest": "blake3:" + hasher.hexdigest(),
        "size": size,
        "rss_before_kib": before,
    }


def baseline_out(source: str, target: str) -> dict[str, object]:
    """Read, hash (to verify), write: a minimal verified get."""
    import blake3

    before = _status_kib("VmRSS")
    start = time.perf_counter()
    hasher = blake3.blake3()
    with open(source, "rb") as reader, open(target, "wb") as writer:
        size = _copy_hashing(reader, writer, hasher)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "digest": "blake3:" + hasher.hexdigest(),
        "size": size,
        "rss_before_kib": before,
    }


OPS: dict[str, Callable[..., dict[str, object]]] = {
    "store-in": store_in,
    "store-out": store_out,
    "baseline-in": baseline_in,
    "baseline-out": baseline_out,
    "text-in": text_in,
    "words-in": words_in,
}


def main(argv: list[str]) -> int:
    result = OPS[argv[0]](*argv[1:])
    result["peak_rss_kib"] = _status_kib("VmHWM")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
