"""A writer process for tests/test_postgres_backend.py (not collected by pytest).

``python tests/postgres_worker.py DSN COLLECTION_ID WORKER COUNT``: wait for a
line on stdin, then create COUNT artifacts in the collection, each in its own
transaction, and print how many it created.
"""

from __future__ import annotations

import sys

from kontextual_engine.storage import KnowledgeRepository
from kontextual_engine.storage.bodies import MemoryBodyStore
from kontextual_engine.storage.postgres import PostgresIndex


def main(dsn: str, collection_id: str, worker: str, count: int) -> None:
    repo = KnowledgeRepository(PostgresIndex(dsn, pool_size=1), MemoryBodyStore())
    try:
        sys.stdin.readline()
        for number in range(count):
            repo.create_artifact(
                collection_id,
                f"w{worker}-{number}",
                f"writer {worker} note {number}".encode(),
                artifact_type="note",
            )
    finally:
        repo.close()
    print(count, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
