"""The SQLite backend, and the shared backend (``PostgresIndex`` with bodies in
an ``S3BodyStore``), against the in-memory reference, operation by operation.

A hypothesis state machine applies the same random operations to the
reference and to the backend under test (each with its own ``SequentialIds``
and ``TickingClock``, so both hand out the same ids and timestamps) and
checks that every result, every error and every read agrees, record by
record.

Text alphabet. Bodies and text queries are drawn from :data:`ALPHABET`:
``a``/``A`` and ``s``/``S`` (plain case folding), ``ß`` and ``ẞ`` (fold to
``ss``, so one character matches two), ``İ`` (folds to ``i`` plus U+0307
COMBINING DOT ABOVE, which is not a word character and so splits a word),
``i``, U+0131 (dotless i: no fold), U+0307 itself, ``é`` (precomposed), the
``ﬁ`` ligature (NFKC: ``fi``), ``-`` and a space (word separators). Queries
add the syntax characters ``"``, ``*`` and ``-``, so phrases, prefixes,
exclusions and malformed queries all occur. With so few characters random
bodies and queries hit each other often. Bodies that are not searchable
(invalid UTF-8, a NUL byte) are drawn too.

Ranking. Ranked results are compared by :func:`same_ranking`: the same hits
with scores equal to a relative tolerance of 1e-9, in the same order except
among hits whose scores are within that tolerance of each other (a float tie
that the two backends could break differently). In practice the scores have
been bit-identical, since both compute FTS5's formula with the same
operations.

Runs. Runs are created, started (some with a lease so short that it has
expired by the next tick of the test clock), renewed, finished with legal and
illegal statuses, recovered, given steps, inputs and outputs, and referred to
by context packages and external references. Opening the SQLite store
recovers abandoned runs, so when the state machine reopens it the reference
backend is asked to recover too (opening the shared store recovers nothing).
At the end of every run of the machine both backends' ``export_records()``
must be equal.

Runs of the machine. The SQLite machine runs 100 times. The shared one runs
against the session's PostgreSQL and SeaweedFS servers (a leased database
and a new prefix in the session's bucket per run), where every operation is
a round trip or more: 10 times by default, 100 with ``--runslow``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from kontextual_engine import (
    Delete,
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    NewArtifact,
    Query,
    RelatedTo,
    Rename,
    SearchHit,
    SQLiteKnowledgeRepository,
)
from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import KontextualError
from kontextual_engine.models import ContextReference, RunStatus
from kontextual_engine.storage import SequentialIds, TickingClock
from kontextual_engine.storage.postgres import PostgresIndex
from kontextual_engine.storage.runs import Pin

from .backends import SharedS3
from .servers import PostgresServer

ALPHABET = "aAsSßẞİi\u0131\u0307éﬁ- "
MISSING = "art_ffffffffffffffffffffffffffffffff"

texts = st.text(alphabet=ALPHABET, max_size=30)
bodies = st.one_of(
    texts.map(str.encode),
    st.sampled_from([b"", b"\xff\xfeas", b"as\x00ss", "ẞ".encode() * 3]),
)
queries = st.text(alphabet=ALPHABET + '"*-', min_size=1, max_size=6).filter(str.strip)
actors = st.sampled_from(["ana", "bo", "cy"])
# Explicit change-set times: before and after the test clock's, so that
# backdating is both needed and refused.
moments_of = [
    datetime(2025, 6, 1, tzinfo=timezone.utc),
    datetime(2026, 1, 1, 0, 0, 1, tzinfo=timezone.utc),
    datetime(2030, 1, 1, tzinfo=timezone.utc),
]
moments = st.sampled_from(moments_of)
# Scores closer than this (relative) are a tie for comparing rankings.
SCORE_TOLERANCE = 1e-9
collection_names = st.sampled_from(["c1", "c2", "c3"])
artifact_names = st.sampled_from(["a", "b", "c", "d", "A", "ß"])
artifact_types = st.sampled_from(["note", "doc"])
relationship_types = st.sampled_from(["cites", "derived-from"])
json_values = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        2**63 - 1,
        0.0,
        -0.0,
        1.0,
        1.5,
        "1",
        "a",
        "",
        [],
        [1],
        [1, "1"],
        {},
        {"x": 1},
        {"x": [True]},
    ]
)
metadata_keys = st.sampled_from(["k", "n", 'q"', "ü.x", ""])
metadata = st.none() | st.dictionaries(metadata_keys, json_values, max_size=3)
directions = st.sampled_from(["outgoing", "incoming", "both"])
# An index into a pool of known ids; -1 (one time in 20) means a missing id.
indexes = st.integers(0, 19).flatmap(lambda n: st.just(-1) if n == 0 else st.integers(0, 99))
operations = st.sampled_from(["extract", "summarize"])
statuses = st.sampled_from([status.value for status in RunStatus] + ["exploded"])
# Mostly the statuses finish_run takes, so that runs do end; sometimes any other.
end_statuses = st.integers(0, 4).flatmap(
    lambda n: statuses if n == 0 else st.sampled_from(["succeeded", "failed", "cancelled"])
)
revisions = st.none() | st.integers(1, 3)
roles = st.none() | st.just("doc")
reference_kinds = st.sampled_from(["artifact", "relationship", "run", "external"])
systems = st.sampled_from(["pm", "other"])


def sometimes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``None`` three times in four: queries with few filters still find things."""
    return st.integers(0, 3).flatmap(lambda n: strategy if n == 0 else st.none())


class Boom(Exception):
    """Raised on purpose inside a transaction."""


Outcome = tuple[str, Any]


def same_ranking(memory: list[SearchHit], other: list[SearchHit]) -> None:
    """The same hits and snippets, scores equal within :data:`SCORE_TOLERANCE`, in
    the same order but for hits whose scores tie within it."""
    assert len(memory) == len(other), (memory, other)
    if all(hit.score is None for hit in memory + other):
        assert memory == other  # not ranked: by sequence, exactly
        return

    def tied(a: float | None, b: float | None) -> bool:
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=SCORE_TOLERANCE, abs_tol=1e-15)

    for left, right in zip(memory, other, strict=True):
        assert tied(left.score, right.score), (memory, other)
    start = 0
    while start < len(memory):
        end = start + 1
        while end < len(memory) and tied(memory[end].score, memory[start].score):
            end += 1
        group = {(hit.artifact, hit.snippet) for hit in memory[start:end]}
        assert group == {(hit.artifact, hit.snippet) for hit in other[start:end]}, (
            memory,
            other,
        )
        start = end


class Differential(RuleBasedStateMachine):
    """The reference (``memory``) against the backend under test (``other``):
    SQLite here; a subclass opens another backend with :meth:`open_other`."""

    # Whether opening the backend under test recovers abandoned runs.
    recovers_on_open = True

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="kontextual-diff-"))
        self.memory = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
        self.other_clock = TickingClock()
        self.other_ids = SequentialIds()
        self.other = self.open_other(create=True)
        self.collections: list[str] = []
        self.artifacts: list[str] = []
        self.relationships: list[str] = []
        self.runs: list[str] = []
        self.steps: list[str] = []

    def open_other(self, *, create: bool = False) -> KnowledgeRepository:
        """The backend under test, new (``create``) or opened again."""
        return SQLiteKnowledgeRepository.open(
            self.tmp / "store",
            "none",
            clock=self.other_clock,
            ids=self.other_ids,
            create=create,
        )

    def release(self) -> None:
        """Give back what the backend under test holds (after it is closed)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def teardown(self) -> None:
        try:
            self.all_lineage_agrees()
            assert self.memory.export_records() == self.other.export_records()
        finally:
            try:
                self.other.close()
            finally:
                self.release()

    # -- running one operation on both --------------------------------------

    def both(self, operation: Callable[[KnowledgeRepository], Any]) -> Outcome:
        outcomes: list[Outcome] = []
        for repo in (self.memory, self.other):
            try:
                outcomes.append(("ok", operation(repo)))
            except KontextualError as exc:
                outcomes.append(("error", (type(exc).__name__, str(exc))))
        assert outcomes[0] == outcomes[1], outcomes
        return outcomes[0]

    def pick(self, pool: list[str], index: int, missing: str = MISSING) -> str:
        return pool[index % len(pool)] if pool and index >= 0 else missing

    def live_artifact(self, index: int) -> str:
        """Mostly a live artifact; one time in five any artifact ever made (maybe deleted)."""
        if index % 5 == 4:
            return self.pick(self.artifacts, index)
        return self.pick([a.id for a in self.memory.list_artifacts()], index)

    def live_collection(self, index: int) -> str:
        if index % 5 == 4:
            return self.pick(self.collections, index, "col_missing")
        return self.pick([c.id for c in self.memory.list_collections()], index, "col_missing")

    def live_relationship(self, index: int) -> str:
        if index % 5 == 4:
            return self.pick(self.relationships, index, "rel_missing")
        return self.pick([r.id for r in self.memory.list_relationships()], index, "rel_missing")

    def remember(self, outcome: Outcome, pool: list[str]) -> None:
        if outcome[0] == "ok" and outcome[1] is not None:
            pool.append(outcome[1].id)

    @initialize(
        items=st.lists(st.tuples(artifact_names, bodies, artifact_types, metadata), max_size=6)
    )
    def start(self, items: list[tuple[str, bytes, str, dict[str, Any] | None]]) -> None:
        self.create_collection("c1", None)
        self.create_collection("c2", {"k": 1})
        self.put_artifacts(0, items)
        self.create_run("extract", None, None)
        self.create_run("summarize", {"k": 1}, 0)
        self.start_run(1, short_lease=False)
        self.add_step(0, "fetch", None)

    # -- collections ---------------------------------------------------------

    @rule(name=collection_names, meta=metadata)
    def create_collection(self, name: str, meta: dict[str, Any] | None) -> None:
        outcome = self.both(lambda repo: repo.create_collection(name, metadata=meta))
        self.remember(outcome, self.collections)

    @rule(index=indexes)
    def delete_collection(self, index: int) -> None:
        collection_id = self.live_collection(index)
        self.both(lambda repo: repo.delete_collection(collection_id))

    # -- artifacts -----------------------------------------------------------

    @rule(index=indexes, name=artifact_names, body=bodies, kind=artifact_types, meta=metadata)
    def create_artifact(
        self, index: int, name: str, body: bytes, kind: str, meta: dict[str, Any] | None
    ) -> None:
        collection_id = self.live_collection(index)
        outcome = self.both(
            lambda repo: repo.create_artifact(
                collection_id,
                name,
                body,
                artifact_type=kind,
                metadata=meta,
                provenance={"by": "test"},
            )
        )
        self.remember(outcome, self.artifacts)

    @rule(
        index=indexes,
        items=st.lists(st.tuples(artifact_names, bodies, artifact_types, metadata), max_size=5),
    )
    def put_artifacts(
        self, index: int, items: list[tuple[str, bytes, str, dict[str, Any] | None]]
    ) -> None:
        collection_id = self.live_collection(index)
        batch = [NewArtifact(name, body, kind, metadata=meta) for name, body, kind, meta in items]
        outcome = self.both(lambda repo: repo.put_artifacts(collection_id, batch))
        if outcome[0] == "ok":
            for result in outcome[1]:
                if result.artifact.id not in self.artifacts:
                    self.artifacts.append(result.artifact.id)

    @rule(
        index=indexes,
        body=st.none() | bodies,
        kind=st.none() | artifact_types,
        name=st.none() | artifact_names,
        meta=metadata,
        media=st.none() | st.sampled_from(["text/plain", "text/markdown"]),
        expected=st.none() | st.integers(1, 4),
    )
    def update_artifact(
        self,
        index: int,
        body: bytes | None,
        kind: str | None,
        name: str | None,
        meta: dict[str, Any] | None,
        media: str | None,
        expected: int | None,
    ) -> None:
        artifact_id = self.live_artifact(index)
        self.both(
            lambda repo: repo.update_artifact(
                artifact_id,
                content=body,
                artifact_type=kind,
                name=name,
                metadata=meta,
                media_type=media,
                provenance={"step": 2},
                expected_revision=expected,
            )
        )

    @rule(index=indexes, expected=st.none() | st.integers(1, 4), who=st.none() | actors)
    def delete_artifact(self, index: int, expected: int | None, who: str | None) -> None:
        artifact_id = self.live_artifact(index)
        self.both(
            lambda repo: repo.delete_artifact(
                artifact_id, expected_revision=expected, actor=who, message="delete"
            )
        )

    @rule(
        index=indexes,
        operations=st.lists(
            st.one_of(
                st.tuples(st.just("put"), artifact_names, bodies),
                st.tuples(st.just("rename"), artifact_names, artifact_names),
                st.tuples(st.just("delete"), artifact_names),
            ),
            max_size=5,
        ),
        who=st.none() | actors,
        at=st.none() | moments,
        backdate=st.booleans(),
    )
    def apply(
        self,
        index: int,
        operations: list[tuple[str, ...]],
        who: str | None,
        at: datetime | None,
        backdate: bool,
    ) -> None:
        """Every kind of change in one call, sometimes at an explicit time."""
        collection_id = self.live_collection(index)
        batch: list[NewArtifact | Rename | Delete] = []
        for kind, *args in operations:
            if kind == "put":
                batch.append(NewArtifact(args[0], args[1], "note"))
            elif kind == "rename":
                batch.append(Rename(args[0], args[1]))
            else:
                batch.append(Delete(args[0]))
        outcome = self.both(
            lambda repo: repo.apply(
                collection_id, batch, actor=who, message="apply", at=at, backdate=backdate
            )
        )
        if outcome[0] == "ok":
            for result in outcome[1]:
                if result.artifact.id not in self.artifacts:
                    self.artifacts.append(result.artifact.id)

    @rule(point=st.integers(0, 80), form=st.sampled_from(["sequence", "change set", "time"]))
    def as_of(self, point: int, form: str) -> None:
        """Every as-of read at one point in history agrees."""
        sets = self.memory.list_change_sets()
        last = self.memory.last_sequence()
        when: Any = min(point, last)
        if form == "change set" and sets:
            when = sets[point % len(sets)].id
        elif form == "time":
            changes = self.memory.list_changes()
            when = changes[point % len(changes)].timestamp if changes else moments_of[0]

        def read(repo: KnowledgeRepository) -> Any:
            artifacts = repo.list_artifacts(as_of=when)
            return (
                artifacts,
                [repo.read_content(a.id, as_of=when) for a in artifacts],
                repo.list_relationships(as_of=when),
                [repo.get_artifact_by_name(a.collection_id, a.name, as_of=when) for a in artifacts],
                repo.query(metadata={"k": 1}, as_of=when),
            )

        self.both(read)
        for query in ("a", "s*", '"a a"'):
            self.search_both(Query(text=query, as_of=when))

    @rule(index=indexes, name=artifact_names)
    def history_of_name(self, index: int, name: str) -> None:
        collection_id = self.live_collection(index)
        self.both(lambda repo: repo.history_of_name(collection_id, name))

    # -- relationships -------------------------------------------------------

    @rule(source=indexes, to=indexes, kind=relationship_types, meta=metadata)
    def create_relationship(
        self, source: int, to: int, kind: str, meta: dict[str, Any] | None
    ) -> None:
        source_id = self.live_artifact(source)
        target_id = self.live_artifact(to)
        outcome = self.both(
            lambda repo: repo.create_relationship(source_id, target_id, kind, metadata=meta)
        )
        self.remember(outcome, self.relationships)

    @rule(index=indexes)
    def delete_relationship(self, index: int) -> None:
        relationship_id = self.live_relationship(index)
        self.both(lambda repo: repo.delete_relationship(relationship_id))

    # -- transactions and reopening -------------------------------------------

    @rule(index=indexes, name=artifact_names, body=bodies, nested=st.booleans())
    def failed_transaction(self, index: int, name: str, body: bytes, nested: bool) -> None:
        """Work that raises part-way: all of it is undone, in both backends."""
        collection_id = self.live_collection(index)
        artifact_id = self.live_artifact(index)

        def work(repo: KnowledgeRepository) -> str:
            try:
                with repo.transaction():
                    repo.create_collection("in-transaction")
                    if nested:
                        with repo.transaction():
                            repo.create_artifact(collection_id, name, body, artifact_type="note")
                    repo.put_artifacts(collection_id, [NewArtifact(name + "+", body, "doc")])
                    repo.update_artifact(artifact_id, content=body + b"!")
                    repo.delete_artifact(artifact_id)
                    run = repo.start_run(repo.create_run("in-transaction").id)
                    repo.add_step(run.id, "s")
                    repo.add_inputs(run.id, [Pin(a.id) for a in repo.list_artifacts()[:2]])
                    repo.create_context_package("in-transaction", [ContextReference("run", run.id)])
                    repo.finish_run(run.id)
                    raise Boom
            except Boom:
                return "rolled back"

        self.both(work)

    @rule(index=indexes, name=artifact_names, body=bodies)
    def inner_rollback_outer_commit(self, index: int, name: str, body: bytes) -> None:
        collection_id = self.live_collection(index)

        def work(repo: KnowledgeRepository) -> list[str]:
            with repo.transaction():
                created = repo.create_collection(f"outer-{name}")
                try:
                    with repo.transaction():
                        repo.create_artifact(collection_id, name, body, artifact_type="note")
                        raise Boom
                except Boom:
                    pass
                return [created.id]

        outcome = self.both(work)
        if outcome[0] == "ok":
            self.collections.extend(outcome[1])

    @rule()
    def reopen(self) -> None:
        self.other.close()
        self.other = self.open_other()
        # Opening SQLite recovers abandoned runs (when any run is running); mirror it.
        if self.recovers_on_open and self.memory.list_runs(status="running"):
            self.memory.recover_abandoned()

    # -- runs ----------------------------------------------------------------

    def run_id(self, index: int, *wanted: RunStatus) -> str:
        """Mostly a run in one of the ``wanted`` states (if any); one time in five any run."""
        if index % 5 == 4 or not wanted:
            return self.pick(self.runs, index, "run_missing")
        fitting = [run.id for run in self.memory.list_runs() if RunStatus(run.status) in wanted]
        return self.pick(fitting or self.runs, index, "run_missing")

    @rule(operation=operations, params=metadata, parent=st.none() | indexes)
    def create_run(self, operation: str, params: dict[str, Any] | None, parent: int | None) -> None:
        parent_id = None if parent is None else self.run_id(parent)
        outcome = self.both(
            lambda repo: repo.create_run(operation, parameters=params, parent_run_id=parent_id)
        )
        self.remember(outcome, self.runs)

    @rule(index=indexes, short_lease=st.booleans())
    def start_run(self, index: int, short_lease: bool) -> None:
        run_id = self.run_id(index, RunStatus.PENDING, RunStatus.ABANDONED)
        # Half a tick of the test clock: expired at the next operation.
        lease = 0.0005 if short_lease else 300.0
        self.both(lambda repo: repo.start_run(run_id, lease_seconds=lease))

    @rule(index=indexes)
    def heartbeat(self, index: int) -> None:
        run_id = self.run_id(index, RunStatus.RUNNING)
        self.both(lambda repo: repo.heartbeat(run_id))

    @rule(
        index=indexes,
        status=end_statuses,
        error=st.none() | st.just("it broke"),
        diagnostics=metadata,
    )
    def finish_run(
        self, index: int, status: str, error: str | None, diagnostics: dict[str, Any] | None
    ) -> None:
        run_id = self.run_id(index, RunStatus.RUNNING, RunStatus.PENDING, RunStatus.ABANDONED)
        self.both(
            lambda repo: repo.finish_run(run_id, status, error=error, diagnostics=diagnostics)
        )

    @rule()
    def recover_abandoned(self) -> None:
        self.both(lambda repo: repo.recover_abandoned())

    @rule(index=indexes, name=st.sampled_from(["fetch", "parse"]), diagnostics=metadata)
    def add_step(self, index: int, name: str, diagnostics: dict[str, Any] | None) -> None:
        run_id = self.run_id(index, RunStatus.RUNNING, RunStatus.PENDING)
        outcome = self.both(lambda repo: repo.add_step(run_id, name, diagnostics=diagnostics))
        self.remember(outcome, self.steps)

    @rule(
        index=indexes,
        status=st.sampled_from(["running", "running", "succeeded"]) | statuses,
        diagnostics=metadata,
    )
    def set_step_status(self, index: int, status: str, diagnostics: dict[str, Any] | None) -> None:
        step_id = self.pick(self.steps, index, "stp_missing")
        self.both(lambda repo: repo.set_step_status(step_id, status, diagnostics=diagnostics))

    @rule(
        index=indexes,
        inputs=st.lists(st.tuples(indexes, revisions, roles, st.booleans()), max_size=4),
        params=metadata,
    )
    def add_inputs(
        self,
        index: int,
        inputs: list[tuple[int, int | None, str | None, bool]],
        params: dict[str, Any] | None,
    ) -> None:
        run_id = self.run_id(index, RunStatus.RUNNING, RunStatus.PENDING)
        pins: list[Pin | str] = [
            self.live_artifact(artifact)
            if plain
            else Pin(self.live_artifact(artifact), revision, role)
            for artifact, revision, role, plain in inputs
        ]
        self.both(lambda repo: repo.add_inputs(run_id, pins, parameters=params))

    @rule(index=indexes, collection=indexes, name=artifact_names, body=bodies)
    def create_output(self, index: int, collection: int, name: str, body: bytes) -> None:
        run_id = self.run_id(index, RunStatus.RUNNING)
        collection_id = self.live_collection(collection)
        outcome = self.both(
            lambda repo: repo.create_artifact(
                collection_id, name, body, artifact_type="output", run_id=run_id
            )
        )
        self.remember(outcome, self.artifacts)

    @rule(index=indexes, artifact=indexes, body=bodies)
    def update_output(self, index: int, artifact: int, body: bytes) -> None:
        run_id = self.run_id(index, RunStatus.RUNNING)
        artifact_id = self.live_artifact(artifact)
        self.both(lambda repo: repo.update_artifact(artifact_id, content=body, run_id=run_id))

    @rule(
        index=indexes,
        collection=indexes,
        items=st.lists(st.tuples(artifact_names, bodies), max_size=3),
    )
    def put_outputs(self, index: int, collection: int, items: list[tuple[str, bytes]]) -> None:
        run_id = self.run_id(index, RunStatus.RUNNING)
        collection_id = self.live_collection(collection)
        batch = [NewArtifact(name, body, "output") for name, body in items]
        outcome = self.both(lambda repo: repo.put_artifacts(collection_id, batch, run_id=run_id))
        if outcome[0] == "ok":
            for result in outcome[1]:
                if result.artifact.id not in self.artifacts:
                    self.artifacts.append(result.artifact.id)

    @rule(
        collection=indexes,
        inputs=st.lists(st.tuples(indexes, revisions), min_size=1, max_size=3),
        outputs=st.lists(st.tuples(artifact_names, bodies), max_size=2),
        rewrite=st.none() | indexes,
        status=end_statuses,
    )
    def workflow(
        self,
        collection: int,
        inputs: list[tuple[int, int | None]],
        outputs: list[tuple[str, bytes]],
        rewrite: int | None,
        status: str,
    ) -> None:
        """A whole run at once, so that chains of consumed and produced revisions form."""
        collection_id = self.live_collection(collection)
        pins = [Pin(self.live_artifact(index), revision) for index, revision in inputs]
        rewritten = None if rewrite is None else self.live_artifact(rewrite)

        def work(repo: KnowledgeRepository) -> list[str]:
            run = repo.start_run(repo.create_run("workflow").id)
            step = repo.add_step(run.id, "work")
            repo.set_step_status(step.id, "running")
            repo.add_inputs(run.id, pins, parameters={"n": len(pins)})
            made = [
                result.artifact.id
                for result in repo.put_artifacts(
                    collection_id,
                    [NewArtifact(name, body, "output") for name, body in outputs],
                    run_id=run.id,
                )
            ]
            if rewritten is not None:
                repo.update_artifact(
                    rewritten, content=b"rewritten by " + run.id.encode(), run_id=run.id
                )
            repo.set_step_status(step.id, "succeeded")
            repo.finish_run(run.id, status, diagnostics={"outputs": len(made)})
            return [run.id, *made]

        outcome = self.both(work)
        self.runs.extend(run.id for run in self.memory.list_runs() if run.id not in self.runs)
        if outcome[0] == "ok":
            self.artifacts.extend(a for a in outcome[1][1:] if a not in self.artifacts)

    # -- context packages and external references ------------------------------

    @rule(
        name=st.sampled_from(["brief", "answer"]),
        meta=metadata,
        refs=st.lists(st.tuples(reference_kinds, indexes, revisions, st.booleans()), max_size=4),
    )
    def create_context_package(
        self, name: str, meta: dict[str, Any] | None, refs: list[tuple[str, int, int | None, bool]]
    ) -> None:
        references = []
        for kind, index, revision, flag in refs:
            if kind == "artifact":
                references.append(
                    ContextReference(
                        "artifact", self.live_artifact(index), revision, note="n" if flag else None
                    )
                )
            elif kind == "relationship":
                references.append(ContextReference("relationship", self.live_relationship(index)))
            elif kind == "run":
                references.append(ContextReference("run", self.run_id(index)))
            else:
                references.append(
                    ContextReference(
                        "external", f"mem-{index}", system="pm", uri="pm://x" if flag else None
                    )
                )
        self.both(lambda repo: repo.create_context_package(name, references, metadata=meta))

    @rule(
        system=systems,
        index=indexes,
        artifact=st.none() | indexes,
        revision=revisions,
        uri=st.none() | st.just("pm://y"),
        meta=metadata,
    )
    def record_external_reference(
        self,
        system: str,
        index: int,
        artifact: int | None,
        revision: int | None,
        uri: str | None,
        meta: dict[str, Any] | None,
    ) -> None:
        artifact_id = None if artifact is None else self.live_artifact(artifact)
        self.both(
            lambda repo: repo.record_external_reference(
                system,
                f"ext-{index}",
                recorded_by="sync",
                uri=uri,
                artifact_id=artifact_id,
                revision=revision,
                metadata=meta,
            )
        )

    # -- run reads -----------------------------------------------------------

    @rule(index=indexes)
    def read_run(self, index: int) -> None:
        run_id = self.run_id(index)
        self.both(
            lambda repo: (
                repo.get_run(run_id),
                repo.list_steps(run_id),
                repo.list_bundles(run_id),
                repo.get_manifest(run_id),
                repo.run_outputs(run_id),
            )
        )

    @rule(status=st.none() | statuses, operation=st.none() | operations, parent=st.none() | indexes)
    def list_runs(self, status: str | None, operation: str | None, parent: int | None) -> None:
        parent_id = None if parent is None else self.run_id(parent)
        self.both(
            lambda repo: repo.list_runs(status=status, operation=operation, parent_run_id=parent_id)
        )

    @rule(
        index=indexes,
        revision=revisions,
        types=st.lists(relationship_types, max_size=2, unique=True),
    )
    def lineage(self, index: int, revision: int | None, types: list[str]) -> None:
        artifact_id = self.live_artifact(index)
        self.both(lambda repo: repo.consuming_runs(artifact_id, revision))
        self.both(lambda repo: repo.producing_run(artifact_id, revision))
        self.both(
            lambda repo: repo.impact(artifact_id, revision=revision, relationship_types=types)
        )

    @rule(
        index=indexes,
        body=st.none() | bodies,
        types=st.lists(relationship_types, max_size=2, unique=True),
    )
    def impact_of_digest(self, index: int, body: bytes | None, types: list[str]) -> None:
        """From a drawn body's digest, or (mostly) the digest of a live artifact."""
        if body is None:
            live = self.memory.list_artifacts()
            body = self.memory.read_content(live[index % len(live)].id) if live else b""
        digest = digest_bytes(body)
        self.both(lambda repo: repo.impact(digest=digest, relationship_types=types))

    @rule(system=st.none() | systems, artifact=st.none() | indexes)
    def list_external_references(self, system: str | None, artifact: int | None) -> None:
        artifact_id = None if artifact is None else self.live_artifact(artifact)
        self.both(
            lambda repo: repo.list_external_references(system=system, artifact_id=artifact_id)
        )

    # -- reads ---------------------------------------------------------------

    @rule(
        ids=sometimes(st.lists(indexes, max_size=3)),
        collection=sometimes(indexes),
        name=sometimes(artifact_names),
        digest_of=sometimes(bodies),
        kind=sometimes(artifact_types),
        meta=sometimes(st.dictionaries(metadata_keys, json_values, min_size=1, max_size=2)),
        text=sometimes(queries),
        related=sometimes(st.tuples(indexes, st.none() | relationship_types, directions)),
        limit=sometimes(st.integers(0, 4)),
        after=sometimes(st.integers(0, 40)),
        order=sometimes(st.sampled_from(["relevance", "sequence"])),
        substring=st.booleans(),
    )
    def query(
        self,
        ids: list[int] | None,
        collection: int | None,
        name: str | None,
        digest_of: bytes | None,
        kind: str | None,
        meta: dict[str, Any] | None,
        text: str | None,
        related: tuple[int, str | None, str] | None,
        limit: int | None,
        after: int | None,
        order: str | None,
        substring: bool,
    ) -> None:
        from kontextual_engine.digests import digest_bytes

        query = Query(
            ids=None if ids is None else tuple(self.live_artifact(i) for i in ids),
            collection_id=None if collection is None else self.live_collection(collection),
            name=name,
            digest=None if digest_of is None else digest_bytes(digest_of),
            artifact_type=kind,
            metadata=meta,
            text=text,
            related_to=None
            if related is None
            else RelatedTo(self.live_artifact(related[0]), related[1], related[2]),
            limit=limit,
            after=after,
            order=order,
            substring=substring and text is not None,
        )
        self.search_both(query)

    def search_both(self, query: Query) -> None:
        """The query on both backends, as a query and as a search (scores and
        snippets); ranked results are compared by :func:`same_ranking`."""
        if query.text is None:
            self.both(lambda repo: repo.query(query))
            return
        outcomes: list[Outcome] = []
        for repo in (self.memory, self.other):
            try:
                hits = repo.search(query)
                assert repo.query(query) == [hit.artifact for hit in hits]
                outcomes.append(("ok", hits))
            except KontextualError as exc:
                outcomes.append(("error", (type(exc).__name__, str(exc))))
        (kind, memory), (other_kind, other) = outcomes
        assert kind == other_kind, outcomes
        if kind == "error":
            assert memory == other
        else:
            same_ranking(memory, other)

    @precondition(lambda self: bool(self.artifacts))
    @rule(
        index=indexes,
        fields=st.sets(
            st.sampled_from(
                ["ids", "collection", "name", "digest", "type", "metadata", "related", "after"]
            ),
            min_size=1,
            max_size=3,
        ),
        limit=sometimes(st.integers(0, 4)),
    )
    def query_like_an_artifact(self, index: int, fields: set[str], limit: int | None) -> None:
        """A query built from a live artifact's own fields, so it finds at least that one."""
        live = self.memory.list_artifacts()
        if not live:
            return
        artifact = live[index % len(live)]
        filters: dict[str, Any] = {"limit": limit}
        if "ids" in fields:
            filters["ids"] = (artifact.id, MISSING)
        if "collection" in fields:
            filters["collection_id"] = artifact.collection_id
        if "name" in fields:
            filters["name"] = artifact.name
        if "digest" in fields:
            filters["digest"] = artifact.digest
        if "type" in fields:
            filters["artifact_type"] = artifact.artifact_type
        if "metadata" in fields and artifact.metadata:
            key = sorted(artifact.metadata)[index % len(artifact.metadata)]
            filters["metadata"] = {key: artifact.metadata[key]}
        if "related" in fields:
            relationships = self.memory.list_relationships(artifact.id)
            if relationships:
                other = relationships[0]
                filters["related_to"] = RelatedTo(
                    other.source_id, other.relationship_type, "outgoing"
                )
        if "after" in fields:
            filters["after"] = artifact.sequence - 1
        self.both(lambda repo: repo.query(Query(**filters)))

    @precondition(lambda self: bool(self.artifacts))
    @rule(index=indexes, start=st.integers(0, 29), length=st.integers(1, 6), flip=st.booleans())
    def query_text_of_a_body(self, index: int, start: int, length: int, flip: bool) -> None:
        """Search for a piece of a live body, so that text queries find things."""

        def piece(repo: KnowledgeRepository) -> str | None:
            artifact_id = self.live_artifact(index)
            try:
                body = repo.read_content(artifact_id).decode("utf-8")
            except (KontextualError, UnicodeDecodeError):
                return None
            start_at = start % len(body) if body else 0
            part = body[start_at : start_at + length]
            return part.swapcase() if flip else part

        got = self.both(piece)[1]
        if got is not None and got.strip():
            for query in (got, f'"{got}"', f"{got}*", f"{got} -a"):
                self.search_both(Query(text=query))

    @rule(everything=st.booleans())
    def rebuild_text(self, everything: bool) -> None:
        self.both(lambda repo: (repo.rebuild_text(everything=everything), repo.text_counts()))

    @rule(index=indexes, revision=st.integers(1, 4))
    def read_revision(self, index: int, revision: int) -> None:
        artifact_id = self.live_artifact(index)
        self.both(
            lambda repo: (
                repo.get_revision(artifact_id, revision),
                repo.read_content(artifact_id, revision),
            )
        )

    @rule(index=indexes, direction=directions, kind=st.none() | relationship_types)
    def list_relationships(self, index: int, direction: str, kind: str | None) -> None:
        artifact_id = self.live_artifact(index)
        self.both(
            lambda repo: repo.list_relationships(
                artifact_id, direction=direction, relationship_type=kind
            )
        )

    @rule(since=st.integers(0, 40), index=st.none() | indexes, limit=st.none() | st.integers(0, 5))
    def list_changes(self, since: int, index: int | None, limit: int | None) -> None:
        entity = None if index is None else self.live_artifact(index)
        self.both(lambda repo: repo.list_changes(since, entity_id=entity, limit=limit))

    @precondition(lambda self: bool(self.collections))
    @rule(index=indexes, name=artifact_names)
    def by_name(self, index: int, name: str) -> None:
        collection_id = self.live_collection(index)
        self.both(lambda repo: repo.get_artifact_by_name(collection_id, name))

    def all_lineage_agrees(self) -> None:
        """Every lineage query on every revision and digest ever made (once per run)."""
        types = ["cites", "derived-from"]

        def lineage(artifact_id: str, number: int | None) -> Callable[[KnowledgeRepository], Any]:
            return lambda repo: (
                repo.consuming_runs(artifact_id, number),
                None if number is None else repo.producing_run(artifact_id, number),
                repo.impact(artifact_id, revision=number, relationship_types=types),
            )

        def impact_of(digest: str) -> Callable[[KnowledgeRepository], Any]:
            return lambda repo: repo.impact(digest=digest, relationship_types=types)

        revisions_made = [r for a in self.artifacts for r in self.memory.list_revisions(a)]
        for revision in revisions_made:
            self.both(lineage(revision.artifact_id, revision.revision))
        for artifact_id in self.artifacts:
            self.both(lineage(artifact_id, None))
        for digest in dict.fromkeys(r.digest for r in revisions_made):
            self.both(impact_of(digest))

    @invariant()
    def everything_agrees(self) -> None:
        def snapshot(repo: KnowledgeRepository) -> dict[str, Any]:
            artifacts = repo.list_artifacts()
            return {
                "collections": repo.list_collections(),
                "artifacts": artifacts,
                "bodies": [repo.read_content(a.id) for a in artifacts],
                "revisions": [repo.list_revisions(aid) for aid in self.artifacts],
                "relationships": repo.list_relationships(),
                "changes": repo.list_changes(),
                "change_sets": repo.list_change_sets(),
                "last": repo.last_sequence(),
                "runs": [
                    (
                        run,
                        repo.list_steps(run.id),
                        repo.list_bundles(run.id),
                        repo.get_manifest(run.id),
                        repo.run_outputs(run.id),
                    )
                    for run in repo.list_runs()
                ],
                "packages": repo.list_context_packages(),
                "external": repo.list_external_references(),
            }

        self.both(snapshot)


def machine_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


Differential.TestCase.settings = machine_settings(100)
TestDifferential = Differential.TestCase


def run_shared(postgres_server: PostgresServer, shared_s3: SharedS3, examples: int) -> None:
    """The machine against the shared backend: a leased database and a new prefix
    in the session's bucket for each run."""

    class SharedDifferential(Differential):
        recovers_on_open = False

        def __init__(self) -> None:
            self.dsn = postgres_server.lease()
            self.prefix = f"differential-{uuid.uuid4().hex}"
            super().__init__()

        def open_other(self, *, create: bool = False) -> KnowledgeRepository:
            return KnowledgeRepository(
                PostgresIndex(self.dsn),
                shared_s3.bodies(self.prefix),
                clock=self.other_clock,
                ids=self.other_ids,
            )

        def release(self) -> None:
            super().release()
            postgres_server.release(self.dsn)

    run_state_machine_as_test(SharedDifferential, settings=machine_settings(examples))


def test_the_shared_backend_agrees_with_the_reference(
    postgres_server: PostgresServer, shared_s3: SharedS3
) -> None:
    run_shared(postgres_server, shared_s3, 10)


@pytest.mark.slow
def test_the_shared_backend_agrees_with_the_reference_at_length(
    postgres_server: PostgresServer, shared_s3: SharedS3
) -> None:
    run_shared(postgres_server, shared_s3, 100)
