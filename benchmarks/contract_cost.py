"""Contract per document: the repository's own Python work in a bulk ingest.

``put_artifacts`` of N generated documents into a
``KnowledgeRepository(MemoryIndex(), MemoryBodyStore())``, against the same
backend and body store given the same records directly (what the contract
asks of them, with nothing to check or build). The difference is what the
contract itself costs per document: validation, canonical JSON, ids, times,
records. The target: at most 30 us per document.

A third run gives the contract's work directly: the same call on an index
and a body store that keep nothing (:class:`NullIndex`, :class:`NullBodies`).
It comes out lower than the difference, which also holds what the contract
and the backend cost each other when they run together (caches, allocation).

Both are timed in CPU time of this process (``time.process_time``), not wall
time: the work is pure Python, and on a shared machine wall time also counts
the time slices of other processes. A full collection runs before each timed
run, so no run pays for the garbage of the one before. The cyclic garbage
collector's passes during a run are timed apart (``gc.callbacks``): what a
full pass costs depends on everything the process holds (here mostly the
memory backend's word lists), not on the work that happened to trigger it.
The target is the contract's work without them; the note gives both.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kontextual_engine.digests import Digest, digest_bytes
from kontextual_engine.models import (
    Artifact,
    ArtifactRevision,
    ChangeRecord,
    ChangeSet,
    Collection,
    NewArtifact,
)
from kontextual_engine.storage import text
from kontextual_engine.storage.bodies import MemoryBodyStore
from kontextual_engine.storage.contract import PUT_CHUNK, KnowledgeRepository
from kontextual_engine.storage.memory import MemoryIndex

from . import data
from .harness import Measurement, alternate, at_most

if TYPE_CHECKING:
    from .workloads import Context

WORKLOAD = "contract-per-doc"
# The target: the contract's own CPU time per document, in microseconds.
TARGET_US = 30.0


@dataclass
class Recorded:
    """What one ``put_artifacts`` handed to the backend and the body store."""

    collection: Collection
    create_change: ChangeRecord
    change_set: ChangeSet
    artifacts: list[Artifact]
    revisions: list[ArtifactRevision]
    changes: list[ChangeRecord]
    bodies: list[bytes]
    searchable: list[str | text.NotSearchable]
    names: list[str]


@contextmanager
def _collector_time(m: Measurement) -> Iterator[None]:
    """Add the CPU seconds of the collector's passes in the block to ``m``."""
    spent = [0.0]
    started = [0.0]

    def callback(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.process_time()
        else:
            spent[0] += time.process_time() - started[0]

    gc.callbacks.append(callback)
    try:
        yield
    finally:
        gc.callbacks.remove(callback)
        m.extra.setdefault("gc_seconds", []).append(spent[0])


class NullIndex(MemoryIndex):
    """A memory index that keeps no artifact, revision, change or change set:
    what remains of a bulk creation is the contract's own work."""

    def __init__(self) -> None:
        super().__init__()
        self._sequence = 1  # the collection's creation, kept as usual

    def insert_artifact(
        self, artifact: Artifact, revision: ArtifactRevision, searchable: object
    ) -> None:
        pass

    def insert_change_set(self, change_set: ChangeSet) -> None:
        pass

    def append_change(self, change: ChangeRecord) -> None:
        if change.entity_kind == "collection":
            super().append_change(change)
        self._sequence = change.sequence

    def next_sequence(self) -> int:
        return self._sequence + 1


class NullBodies(MemoryBodyStore):
    """A body store that keeps and hashes nothing (every body gets one digest)."""

    def add(self, data: bytes) -> Digest:
        return _ANY_DIGEST


_ANY_DIGEST = digest_bytes(b"")


def _repository(null: bool = False) -> tuple[KnowledgeRepository, str]:
    if null:
        repo = KnowledgeRepository(NullIndex(), NullBodies())
    else:
        repo = KnowledgeRepository(MemoryIndex(), MemoryBodyStore())
    return repo, repo.create_collection("bench").id


def _put(items: list[NewArtifact], m: Measurement, null: bool = False) -> float:
    repo, collection_id = _repository(null)
    gc.collect()
    with _collector_time(m):
        start = time.process_time()
        results = repo.put_artifacts(collection_id, items)
        seconds = time.process_time() - start
    assert len(results) == len(items)
    return seconds


def record(items: list[NewArtifact]) -> Recorded:
    """Run ``put_artifacts`` once and keep every record it wrote."""
    repo, collection_id = _repository()
    repo.put_artifacts(collection_id, items)
    index = repo.index
    assert isinstance(index, MemoryIndex)
    artifacts = list(index.artifacts.values())
    change_sets = list(index.change_sets.values())
    assert len(artifacts) == len(items) and len(change_sets) == 2
    return Recorded(
        collection=index.collections[collection_id],
        create_change=index.changes[0],
        change_set=change_sets[1],
        artifacts=artifacts,
        revisions=[index.revisions[artifact.id][0] for artifact in artifacts],
        changes=index.changes[1:],
        bodies=[item.content for item in items],
        searchable=[text.text_of(item.content) for item in items],
        names=[item.name for item in items],
    )


def _primitives(rec: Recorded, m: Measurement) -> float:
    """The backend and body store calls of one ``put_artifacts``, records ready."""
    index, bodies = MemoryIndex(), MemoryBodyStore()
    with index.transaction():
        index.insert_collection(rec.collection)
        index.append_change(rec.create_change)
    n = len(rec.artifacts)
    collection_id = rec.collection.id
    gc.collect()
    with _collector_time(m):
        start = time.process_time()
        with index.transaction(), bodies.batch(), index.bulk():
            index.find_collection(collection_id)
            for first in range(0, n, PUT_CHUNK):
                names = rec.names[first : first + PUT_CHUNK]
                index.find_artifacts_by_names(collection_id, names)
                for i in range(first, min(n, first + PUT_CHUNK)):
                    bodies.add(rec.bodies[i])
                    index.next_sequence()
                    index.insert_artifact(rec.artifacts[i], rec.revisions[i], rec.searchable[i])
                    if i == 0:
                        index.insert_change_set(rec.change_set)
                    index.append_change(rec.changes[i])
        return time.process_time() - start


def contract_per_doc(ctx: Context) -> None:
    n = ctx.scale.bulk_n
    items = [
        NewArtifact(doc.name, doc.content, "document", "text/markdown", doc.metadata)
        for doc in data.documents(0, n)
    ]
    recorded = record(items)
    m_put = Measurement(WORKLOAD, "put_artifacts, memory backend (CPU)", n, "doc", False)
    m_floor = Measurement(WORKLOAD, "memory backend + body store calls alone (CPU)", n, "doc", True)
    m_null = Measurement(
        WORKLOAD, "put_artifacts, index and body store keeping nothing (CPU)", n, "doc", True
    )
    # Parts of the work, not alternatives to it: listed, never compared.
    m_floor.extra["no_ratio"] = m_null.extra["no_ratio"] = True
    alternate(
        ctx.report,
        WORKLOAD,
        [
            (m_put, lambda: _put(items, m_put)),
            (m_floor, lambda: _primitives(recorded, m_floor)),
            (m_null, lambda: _put(items, m_null, null=True)),
        ],
        ctx.scale.repetitions,
    )
    per_doc = 1e6 / n
    put, floor = m_put.median * per_doc, m_floor.median * per_doc
    put_gc = statistics.median(m_put.extra["gc_seconds"]) * per_doc
    floor_gc = statistics.median(m_floor.extra["gc_seconds"]) * per_doc
    work = (put - put_gc) - (floor - floor_gc)
    null_gc = statistics.median(m_null.extra["gc_seconds"]) * per_doc
    alone = m_null.median * per_doc - null_gc
    for m in (m_put, m_floor, m_null):
        gc_us = statistics.median(m.extra["gc_seconds"]) * per_doc
        m.extra["per_item_text"] = f"{m.median * per_doc:.1f} us ({gc_us:.1f} collector)"
    ctx.report.targets.append(
        at_most(
            WORKLOAD,
            "contract CPU per document, collector apart",
            work,
            TARGET_US,
            " us",
            f"{work:.1f} us",
        )
    )
    ctx.report.note(
        WORKLOAD,
        f"{n:,} documents of ~1 KiB, CPU per document: put_artifacts {put:.1f} us "
        f"({put_gc:.1f} of it in the cyclic collector), the memory backend and body store "
        f"given the same records {floor:.1f} ({floor_gc:.1f} collector; the tokenizer "
        f"{_words_us(recorded):.1f}); the contract {work:.1f} us without the collector, "
        f"{put - floor:.1f} with it; on an index and body store keeping nothing "
        f"{alone:.1f} without the collector",
    )


def _words_us(rec: Recorded) -> float:
    """CPU per document of the memory backend's tokenizer alone (part of the floor)."""
    start = time.process_time()
    for searchable in rec.searchable:
        if isinstance(searchable, str):
            text.words(searchable)
    return (time.process_time() - start) * 1e6 / len(rec.searchable)
