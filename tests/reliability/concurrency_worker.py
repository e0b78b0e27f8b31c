"""Writers, readers and a collector hammering one store; run by ``test_concurrency.py``.

``python concurrency_worker.py ROLE STORE NUMBER COUNT STOP LOG [DURABILITY]``

* ``writer``: COUNT writes (creates, content updates, metadata updates, deletes,
  bulk puts, relationships) into the collection ``shared``; after each one
  returns, a JSON line describing it goes to LOG.
* ``reader``: until the file STOP exists, checks what it reads (see
  :func:`check_once`); writes its number of rounds to LOG.
* ``gc``: until STOP exists, runs gc with no grace period and a quick fsck;
  writes every digest it removed to LOG.

Any exception ends the process with a traceback on stderr and exit status 1,
which the test reports; the functions are shared with the in-process
(threaded) variant of the test.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import ArtifactNotFound
from kontextual_engine.models import NewArtifact
from kontextual_engine.storage.contract import KnowledgeRepository
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck, gc

COLLECTION = "shared"


class _Rollback(Exception):
    """Raised on purpose to roll a transaction back."""


def content(writer: int, index: int, rng: random.Random) -> bytes:
    """A body that says who wrote it: every reader can check where it came from."""
    filler = " ".join(
        rng.choice(["river", "stone", "ledger", "quartz"]) for _ in range(rng.randint(0, 60))
    )
    return f"writer-{writer} write-{index} {filler}".encode()


def write(repo: KnowledgeRepository, writer: int, count: int, emit: Any, seed: int = 0) -> None:
    """``count`` writes by ``writer``; ``emit(record)`` after each one returned."""
    rng = random.Random(seed * 1000 + writer)
    cid = repo.get_collection_by_name(COLLECTION).id
    own: dict[str, int] = {}  # this writer's live artifacts -> revision
    done = 0
    while done < count:
        roll = rng.random()
        index = done
        if own and roll < 0.27:  # a new body, or (less often) new metadata
            artifact_id = rng.choice(sorted(own))
            change: dict[str, Any] = (
                {"content": content(writer, index, rng)}
                if roll < 0.2
                else {"metadata": {"writer": writer, "i": index}}
            )
            updated = repo.update_artifact(
                artifact_id, expected_revision=own[artifact_id], **change
            )
            own[artifact_id] = updated.revision
            emit(
                {
                    "op": "update",
                    "id": artifact_id,
                    "revision": updated.revision,
                    "digest": updated.digest,
                }
            )
            done += 1
        elif own and roll < 0.32:
            artifact_id = rng.choice(sorted(own))
            repo.delete_artifact(artifact_id, expected_revision=own.pop(artifact_id))
            emit({"op": "delete", "id": artifact_id})
            done += 1
        elif len(own) >= 2 and roll < 0.37:
            source, target = rng.sample(sorted(own), 2)
            if not repo.list_relationships(source, direction="outgoing"):
                rel = repo.create_relationship(source, target, "cites")
                emit({"op": "relate", "id": rel.id})
                done += 1
        elif roll < 0.47:
            # A transaction that wrote a body and rolled back leaves the object as
            # garbage; writing the same body again right after must survive a gc
            # that runs in between.
            name, body = f"w{writer}-{index}", content(writer, index, rng)
            try:
                with repo.transaction():
                    repo.create_artifact(cid, name, body, artifact_type="note")
                    raise _Rollback
            except _Rollback:
                pass
            artifact = repo.create_artifact(
                cid, name, body, artifact_type="note", metadata={"writer": writer}
            )
            own[artifact.id] = artifact.revision
            emit(
                {
                    "op": "create",
                    "id": artifact.id,
                    "revision": 1,
                    "digest": artifact.digest,
                    "rewritten": True,
                }
            )
            done += 1
        elif roll < 0.52:
            n = min(count - done, rng.randint(2, 8))
            items = [
                NewArtifact(
                    f"w{writer}-{index + k}",
                    content(writer, index + k, rng),
                    "note",
                    metadata={"writer": writer},
                )
                for k in range(n)
            ]
            for result in repo.put_artifacts(cid, items):
                own[result.artifact.id] = result.artifact.revision
                emit(
                    {
                        "op": "create",
                        "id": result.artifact.id,
                        "revision": 1,
                        "digest": result.artifact.digest,
                    }
                )
            done += n
        else:
            artifact = repo.create_artifact(
                cid,
                f"w{writer}-{index}",
                content(writer, index, rng),
                artifact_type="note",
                metadata={"writer": writer},
            )
            own[artifact.id] = artifact.revision
            emit({"op": "create", "id": artifact.id, "revision": 1, "digest": artifact.digest})
            done += 1


def check_once(repo: KnowledgeRepository, rng: random.Random, since: int) -> int:
    """One round of reader checks; returns the newest change sequence it saw.

    * every artifact a query returns has all its revisions 1..n, the current
      one matching the artifact, and every body readable (verified read),
      hashing to its digest and naming the writer the artifact belongs to;
    * a read of the change feed is gap-free: sequences since+1, since+2, ...
    * a text query returns only artifacts whose current body holds the text.
    """
    cid = repo.get_collection_by_name(COLLECTION).id
    artifacts = repo.query(collection_id=cid)
    for artifact in rng.sample(artifacts, min(len(artifacts), 15)):
        writer = artifact.name.split("-")[0].removeprefix("w")
        revisions = repo.list_revisions(artifact.id)
        numbers = [r.revision for r in revisions]
        assert numbers == list(range(1, len(numbers) + 1)), (artifact.id, numbers)
        assert len(revisions) >= artifact.revision, (artifact, numbers)
        assert revisions[artifact.revision - 1].digest == artifact.digest
        for revision in revisions:
            data = repo.read_content(artifact.id, revision.revision)
            assert digest_bytes(data) == revision.digest, (artifact.id, revision.revision)
            assert data.startswith(f"writer-{writer} ".encode()), (artifact.name, data[:40])
    changes = repo.list_changes(since, limit=500)
    sequences = [c.sequence for c in changes]
    assert sequences == list(range(since + 1, since + 1 + len(sequences))), sequences[:10]
    writer = rng.randrange(4)
    for artifact in repo.query(text=f"writer-{writer} ", limit=20):
        try:
            data = repo.read_content(artifact.id)
        except ArtifactNotFound:
            continue  # deleted since the query: fine
        if digest_bytes(data) == artifact.digest:
            assert f"writer-{writer} " in data.decode(), (artifact.name, data[:40])
    return sequences[-1] if sequences else since


def main(argv: list[str]) -> int:
    role, store, number, count, stop, log = argv[1:7]
    durability = argv[7] if len(argv) > 7 else "full"
    stop_file = Path(stop)
    with (
        open(log, "w", encoding="utf-8") as out,
        SQLiteKnowledgeRepository.open(
            store, durability, read_only=role == "reader" and int(number) % 2 == 1
        ) as repo,
    ):
        if role == "writer":

            def emit(record: dict[str, Any]) -> None:
                out.write(json.dumps(record) + "\n")
                out.flush()

            write(repo, int(number), int(count), emit)
        elif role == "reader":
            rng = random.Random(int(number))
            rounds, since = 0, 0
            while not stop_file.exists():
                since = check_once(repo, rng, since)
                rounds += 1
            out.write(json.dumps({"rounds": rounds}) + "\n")
        elif role == "gc":
            rounds = 0
            while not stop_file.exists():
                report = gc(repo, grace_seconds=0)
                for digest, _size in report.removed:
                    out.write(json.dumps({"removed": digest}) + "\n")
                checked = fsck(repo)
                assert checked.ok, checked.errors
                rounds += 1
            out.write(json.dumps({"rounds": rounds}) + "\n")
        else:
            raise SystemExit(f"unknown role {role!r}")
        os.fsync(out.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
