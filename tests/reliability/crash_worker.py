"""The child process of the crash-safety harness (``test_crash.py``), and the operations
it shares with the harness.

Run as ``python crash_worker.py STORE DURABILITY SEED TRIAL LOG``: open the SQLite
store, then apply a seeded random mix of operations until killed. Around every
call, one JSON line goes to ``LOG`` (written, then fsynced)::

    {"i": 7, "intent": {...the operation...}}      before the call
    {"i": 7, "ack": {...what it returned...}}       after the call returned

An operation is *acknowledged* once its ack line is in the log. The harness
kills this process with SIGKILL at a random moment and then replays the
acknowledged operations against an ``InMemoryKnowledgeRepository``.

Ids and timestamps are deterministic (:class:`TrialIds`, :class:`TrialClock`),
so the reference model replaying the same operations hands out the same ids
and times, and the whole exported state of the two can be compared record by
record. Operations are plain JSON; bodies are described by a seed and a size
(:func:`body`) so that the log stays small.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from kontextual_engine.models import NewArtifact
from kontextual_engine.storage.contract import KnowledgeRepository
from kontextual_engine.storage.ids import PREFIXES
from kontextual_engine.storage.runs import Pin

Op = dict[str, Any]

BASE_TIME = datetime(2100, 1, 1, tzinfo=timezone.utc)
# Each trial's clock starts here after the previous one's: far more ticks (1 ms
# each) than a trial makes, and 200 trials stay inside one run lease.
TRIAL_SPACING = timedelta(minutes=10)
# A holder on a host that is not this one: recovery of abandoned runs leaves it
# to the lease, which (see LEASE_SECONDS) never expires during the harness.
HOLDER = {"host": "crash-harness.invalid", "pid": 1, "started": None}
LEASE_SECONDS = 6 * 24 * 3600.0
# A child stops by itself after this many operations (the harness kills it long before).
MAX_OPS = 100_000

WORDS = (
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "stone",
    "ledger",
    "kontext",
    "Straße",
    "naïve",
    "journal",
    "quartz",
    "x",
    "NEAR",
    "AND",
    "(",
    '"',
    "*",
)


class TrialIds:
    """``<prefix>_<8 hex trial><24 hex counter>``: distinct across trials, reproducible."""

    def __init__(self, trial: int) -> None:
        self.trial = trial
        self.count = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.count = 0

    def __call__(self, kind: str) -> str:
        with self._lock:
            self.count += 1
            return f"{PREFIXES[kind]}_{self.trial:08x}{self.count:024x}"


class TrialClock:
    """One millisecond per call, starting at the trial's own moment."""

    def __init__(self, trial: int) -> None:
        self.start = BASE_TIME + trial * TRIAL_SPACING
        self.now = self.start
        self._lock = threading.Lock()

    def reset(self) -> None:
        self.now = self.start

    def __call__(self) -> datetime:
        with self._lock:
            self.now += timedelta(milliseconds=1)
            return self.now


def body(spec: list[Any]) -> bytes:
    """The bytes an operation's body spec ``[seed, size, kind]`` stands for."""
    seed, size, kind = spec
    rng = random.Random(seed)
    if kind == "text":
        words: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(WORDS)
            words.append(word)
            length += len(word) + 1
        return " ".join(words).encode("utf-8")[:size]
    return rng.randbytes(size)


def apply(repo: KnowledgeRepository, op: Op) -> Any:
    """Perform one operation; return a JSON-able summary of its result."""
    kind = op["op"]
    if kind == "transaction":
        results: list[Any] = []
        with repo.transaction():
            for sub in op["ops"]:
                results.append(apply(repo, _resolve(sub, results)))
        return results
    if kind == "create_collection":
        return repo.create_collection(op["name"], metadata=op.get("metadata")).id
    if kind == "create_artifact":
        artifact = repo.create_artifact(
            op["collection"],
            op["name"],
            body(op["body"]),
            artifact_type=op["type"],
            metadata=op["metadata"],
            run_id=op.get("run_id"),
        )
        return [artifact.id, artifact.revision, artifact.digest]
    if kind == "update_artifact":
        artifact = repo.update_artifact(
            op["id"],
            content=None if op.get("body") is None else body(op["body"]),
            metadata=op.get("metadata"),
            name=op.get("name"),
            expected_revision=op["expected"],
            run_id=op.get("run_id"),
        )
        return [artifact.id, artifact.revision, artifact.digest]
    if kind == "delete_artifact":
        repo.delete_artifact(op["id"], expected_revision=op["expected"])
        return None
    if kind == "put_artifacts":
        results = repo.put_artifacts(
            op["collection"],
            [
                NewArtifact(
                    item["name"], body(item["body"]), item["type"], metadata=item["metadata"]
                )
                for item in op["items"]
            ],
            run_id=op.get("run_id"),
        )
        return [[r.artifact.id, r.artifact.revision, r.outcome.value] for r in results]
    if kind == "create_relationship":
        return repo.create_relationship(
            op["source"], op["target"], op["type"], metadata=op.get("metadata")
        ).id
    if kind == "delete_relationship":
        repo.delete_relationship(op["id"])
        return None
    if kind == "create_run":
        return repo.create_run(op["operation"], parameters=op["parameters"]).id
    if kind == "start_run":
        return repo.start_run(op["id"], lease_seconds=LEASE_SECONDS, holder=HOLDER).status
    if kind == "add_inputs":
        return repo.add_inputs(op["id"], [Pin(a) for a in op["inputs"]]).id
    if kind == "finish_run":
        return repo.finish_run(op["id"], op["status"], error=op.get("error")).status
    raise AssertionError(f"unknown operation {kind!r}")


def _resolve(op: Op, results: list[Any]) -> Op:
    """Replace ``"$n"`` (the id made by sub-operation n) in a transaction's sub-operation."""

    def value(item: Any) -> Any:
        if isinstance(item, str) and item.startswith("$"):
            made = results[int(item[1:])]
            return made[0] if isinstance(made, list) else made
        return item

    return {key: value(item) for key, item in op.items()}


class View:
    """What the child knows of the store: enough to choose only valid operations."""

    def __init__(self, repo: KnowledgeRepository) -> None:
        self.collections = [c.id for c in repo.list_collections()]
        # id -> [current revision, collection id, name]
        self.artifacts: dict[str, list[Any]] = {
            a.id: [a.revision, a.collection_id, a.name] for a in repo.list_artifacts()
        }
        self.relationships: dict[str, tuple[str, str, str]] = {
            r.id: (r.source_id, r.target_id, r.relationship_type) for r in repo.list_relationships()
        }
        self.runs: dict[str, str] = {
            run.id: run.status for run in repo.list_runs() if run.status in ("pending", "running")
        }

    def running(self) -> list[str]:
        return sorted(run for run, status in self.runs.items() if status == "running")

    def forget_artifact(self, artifact_id: str) -> None:
        self.artifacts.pop(artifact_id, None)
        for rel, (source, target, _) in list(self.relationships.items()):
            if artifact_id in (source, target):
                del self.relationships[rel]

    def learn(self, op: Op, result: Any) -> None:
        kind = op["op"]
        if kind == "transaction":
            for sub, made in zip(op["ops"], result, strict=True):
                self.learn(_resolve(sub, result), made)
        elif kind == "create_collection":
            self.collections.append(result)
        elif kind == "create_artifact":
            self.artifacts[result[0]] = [result[1], op["collection"], op["name"]]
        elif kind == "update_artifact":
            entry = self.artifacts[result[0]]
            entry[0] = result[1]
            if op.get("name") is not None:
                entry[2] = op["name"]
        elif kind == "put_artifacts":
            for item, (artifact_id, revision, _) in zip(op["items"], result, strict=True):
                self.artifacts[artifact_id] = [revision, op["collection"], item["name"]]
        elif kind == "delete_artifact":
            self.forget_artifact(op["id"])
        elif kind == "create_relationship":
            self.relationships[result] = (op["source"], op["target"], op["type"])
        elif kind == "delete_relationship":
            self.relationships.pop(op["id"], None)
        elif kind == "create_run":
            self.runs[result] = "pending"
        elif kind == "start_run":
            self.runs[op["id"]] = "running"
        elif kind == "finish_run":
            self.runs.pop(op["id"], None)


class Chooser:
    """Seeded choice of the next valid operation."""

    def __init__(self, seed: int, trial: int, view: View) -> None:
        self.rng = random.Random(seed)
        self.trial = trial
        self.view = view
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        tail = self.rng.choice(["", " (copy)", "/nested/path.md", " ünï", "-'; DROP TABLE x; --"])
        return f"{stem}-{self.trial}-{self.count}{tail}"

    def body(self) -> list[Any]:
        roll = self.rng.random()
        if roll < 0.05:
            size = 0
        elif roll < 0.75:
            size = self.rng.randint(1, 400)
        elif roll < 0.97:
            size = self.rng.randint(400, 20_000)
        else:
            size = self.rng.randint(100_000, 300_000)
        kind = "text" if self.rng.random() < 0.7 else "bytes"
        return [self.rng.getrandbits(48), size, kind]

    def metadata(self) -> dict[str, Any]:
        return {
            "n": self.rng.randint(-5, 5),
            "tag": self.rng.choice(["a", "b", 'q"uote']),
            "nested": {"x": [self.rng.random() < 0.5, None]},
        }

    def create(self, collection: str, run_id: str | None = None) -> Op:
        return {
            "op": "create_artifact",
            "collection": collection,
            "name": self.name("a"),
            "body": self.body(),
            "type": self.rng.choice(["note", "doc"]),
            "metadata": self.metadata(),
            "run_id": run_id,
        }

    def update(self, artifact_id: str) -> Op:
        op: Op = {
            "op": "update_artifact",
            "id": artifact_id,
            "expected": self.view.artifacts[artifact_id][0],
        }
        roll = self.rng.random()
        if roll < 0.6:
            op["body"] = self.body()
        elif roll < 0.85:
            op["metadata"] = self.metadata()
        else:
            op["name"] = self.name("renamed")
        return op

    def next(self) -> Op:
        view, rng = self.view, self.rng
        if not view.collections:
            return {
                "op": "create_collection",
                "name": f"c-{self.trial}-{self.count}",
                "metadata": {"trial": self.trial},
            }
        collection = rng.choice(view.collections)
        artifacts = sorted(view.artifacts)
        running = view.running()
        choices: list[tuple[float, str]] = [
            (30, "create"),
            (5, "put"),
            (5, "transaction"),
            (6, "create_run"),
            (1, "collection"),
        ]
        if artifacts:
            choices += [(25, "update"), (7, "delete"), (12, "relate")]
        if view.relationships:
            choices.append((5, "unrelate"))
        if any(status == "pending" for status in view.runs.values()):
            choices.append((5, "start_run"))
        if running:
            choices += [(5, "output"), (4, "finish_run")]
            if artifacts:
                choices.append((4, "inputs"))
        pick = rng.choices([c for _, c in choices], weights=[w for w, _ in choices])[0]
        if pick == "collection" and len(view.collections) < 4:
            self.count += 1
            return {
                "op": "create_collection",
                "name": f"c-{self.trial}-{self.count}",
                "metadata": None,
            }
        if pick == "update":
            return self.update(rng.choice(artifacts))
        if pick == "delete":
            victim = rng.choice(artifacts)
            return {"op": "delete_artifact", "id": victim, "expected": view.artifacts[victim][0]}
        if pick == "relate":
            source, target = rng.choice(artifacts), rng.choice(artifacts)
            rel_type = rng.choice(["cites", "derived-from", "'; DROP TABLE relationships; --"])
            if (source, target, rel_type) not in view.relationships.values():
                return {
                    "op": "create_relationship",
                    "source": source,
                    "target": target,
                    "type": rel_type,
                    "metadata": {"w": rng.random()},
                }
        if pick == "unrelate":
            return {"op": "delete_relationship", "id": rng.choice(sorted(view.relationships))}
        if pick == "create_run":
            return {
                "op": "create_run",
                "operation": rng.choice(["summarize", "embed"]),
                "parameters": {"k": rng.randint(1, 9)},
            }
        if pick == "start_run":
            pending = sorted(r for r, s in view.runs.items() if s == "pending")
            return {"op": "start_run", "id": rng.choice(pending)}
        if pick == "output":
            return self.create(collection, run_id=rng.choice(running))
        if pick == "finish_run":
            return {
                "op": "finish_run",
                "id": rng.choice(running),
                "status": rng.choice(["succeeded", "failed", "cancelled"]),
                "error": None,
            }
        if pick == "inputs":
            chosen = rng.sample(artifacts, min(len(artifacts), rng.randint(1, 3)))
            return {"op": "add_inputs", "id": rng.choice(running), "inputs": chosen}
        if pick == "put":
            items = [
                {
                    "name": self.name("bulk"),
                    "body": self.body(),
                    "type": "note",
                    "metadata": self.metadata(),
                }
                for _ in range(rng.randint(2, 20))
            ]
            same = sorted(a for a, (_, c, _) in view.artifacts.items() if c == collection)
            if same and rng.random() < 0.5:
                # Put an existing name again: an update inside the batch.
                items[0]["name"] = view.artifacts[rng.choice(same)][2]
            return {
                "op": "put_artifacts",
                "collection": collection,
                "items": items,
                "run_id": rng.choice(running) if running and rng.random() < 0.3 else None,
            }
        if pick == "transaction":
            subs: list[Op] = [
                self.create(collection),
                self.create(collection),
                {
                    "op": "create_relationship",
                    "source": "$0",
                    "target": "$1",
                    "type": "pairs-with",
                    "metadata": None,
                },
            ]
            if artifacts:
                subs.append(self.update(rng.choice(artifacts)))
            return {"op": "transaction", "ops": subs}
        return self.create(collection)


def _write_line(fd: int, record: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode("utf-8"))
    os.fsync(fd)


def main(argv: list[str]) -> int:
    store, durability, seed, trial, log = argv[1:6]
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

    ids, clock = TrialIds(int(trial)), TrialClock(int(trial))
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    repo = SQLiteKnowledgeRepository.open(store, durability, clock=clock, ids=ids, create=True)
    # Whatever opening did (it writes nothing on a healthy store) must not shift
    # the ids and times that the reference model reproduces.
    ids.reset()
    clock.reset()
    view = View(repo)
    chooser = Chooser(int(seed), int(trial), view)
    _write_line(fd, {"ready": True, "pid": os.getpid()})
    for number in range(MAX_OPS):
        op = chooser.next()
        _write_line(fd, {"i": number, "intent": op})
        result = apply(repo, op)
        _write_line(fd, {"i": number, "ack": result})
        view.learn(op, result)
    repo.close()
    _write_line(fd, {"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
