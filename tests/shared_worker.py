"""Writer processes for tests/test_shared_failures.py (not collected by pytest).

``python tests/shared_worker.py write URL COLLECTION_ID WORKER COUNT BATCH``:
open the shared store by its URL, wait for a line on stdin, then write COUNT
artifacts named ``w<WORKER>-<n>`` in bulk calls of BATCH, and print how many
it wrote.

``python tests/shared_worker.py hang URL COLLECTION_ID INTENT_SECONDS COUNT``:
open the store with upload intents lasting INTENT_SECONDS, and inside one
transaction write COUNT artifacts named ``doomed-<n>`` (the last with the body
of the committed artifact ``kept-0``): every body
is in the bucket with its intent recorded, and every index row written but
not committed. Then print the bodies' digests as one JSON line and wait on
stdin for ever: the test kills the process there.
"""

from __future__ import annotations

import json
import sys

from kontextual_engine.models import NewArtifact
from kontextual_engine.storage.shared import SharedKnowledgeRepository
from kontextual_engine.storage.stores import open_store, shared_location


def body(worker: str, number: int) -> bytes:
    return f"writer {worker} note {number}\n".encode()


def doomed_body(number: int) -> bytes:
    return f"a body of a transaction that never commits, {number}\n".encode()


def kept_body(number: int) -> bytes:
    return f"a committed body, {number}\n".encode()


def write(url: str, collection_id: str, worker: str, count: int, batch: int) -> None:
    repo = open_store(url)
    try:
        sys.stdin.readline()
        for start in range(0, count, batch):
            repo.put_artifacts(
                collection_id,
                [
                    NewArtifact(f"w{worker}-{number}", body(worker, number), "note")
                    for number in range(start, min(start + batch, count))
                ],
            )
    finally:
        repo.close()
    print(count, flush=True)


def hang(url: str, collection_id: str, intent_seconds: float, count: int) -> None:
    repo = SharedKnowledgeRepository(shared_location(url), intent_seconds=intent_seconds)
    contents = [doomed_body(number) for number in range(count - 1)] + [kept_body(0)]
    with repo.transaction(message="never committed"):
        results = repo.put_artifacts(
            collection_id,
            [NewArtifact(f"doomed-{n}", content, "note") for n, content in enumerate(contents)],
        )
        print(json.dumps([result.artifact.digest for result in results]), flush=True)
        sys.stdin.readline()  # the test never answers: it kills this process
        raise SystemExit("the test did not kill the writer")


if __name__ == "__main__":
    mode, url, collection = sys.argv[1:4]
    if mode == "write":
        write(url, collection, sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    elif mode == "hang":
        hang(url, collection, float(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
