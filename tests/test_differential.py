"""The SQLite backend against the in-memory reference, operation by operation.

A hypothesis state machine applies the same random operations to both
backends (each with its own ``SequentialIds`` and ``TickingClock``, so both
hand out the same ids and timestamps) and checks that every result, every
error and every read agrees, record by record.

Text alphabet. Bodies and text queries are drawn from :data:`ALPHABET`:
``a``/``A`` and ``s``/``S`` (plain case folding), ``ß`` and ``ẞ`` (fold to
``ss``, so one character matches two), ``İ`` (folds to ``i`` plus U+0307
COMBINING DOT ABOVE), ``i``, U+0131 (dotless i: no fold), U+0307 itself, ``é``
(precomposed) and a space (the term separator). With so few characters,
random bodies and queries hit each other often, terms of every length from 1
(``instr()`` path) to several trigrams (FTS5 ``MATCH`` path) occur, and the
folds that change a string's length are exercised. Bodies that are not
searchable (invalid UTF-8, a NUL byte) are drawn too.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from kontextual_engine import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    NewArtifact,
    Query,
    RelatedTo,
    SQLiteKnowledgeRepository,
)
from kontextual_engine.errors import KontextualError
from kontextual_engine.storage import SequentialIds, TickingClock

ALPHABET = "aAsSßẞİi\u0131\u0307é "
MISSING = "art_ffffffffffffffffffffffffffffffff"

texts = st.text(alphabet=ALPHABET, max_size=30)
bodies = st.one_of(
    texts.map(str.encode),
    st.sampled_from([b"", b"\xff\xfeas", b"as\x00ss", "ẞ".encode() * 3]),
)
queries = st.text(alphabet=ALPHABET, min_size=1, max_size=5).filter(str.strip)
collection_names = st.sampled_from(["c1", "c2", "c3"])
artifact_names = st.sampled_from(["a", "b", "c", "d", "A", "ß"])
artifact_types = st.sampled_from(["note", "doc"])
relationship_types = st.sampled_from(["cites", "derived-from"])
json_values = st.sampled_from([
    None, True, False, 0, 1, -1, 2**63 - 1, 0.0, -0.0, 1.0, 1.5, "1", "a", "", [], [1],
    [1, "1"], {}, {"x": 1}, {"x": [True]},
])
metadata_keys = st.sampled_from(["k", "n", 'q"', "ü.x", ""])
metadata = st.none() | st.dictionaries(metadata_keys, json_values, max_size=3)
directions = st.sampled_from(["outgoing", "incoming", "both"])
# An index into a pool of known ids; -1 (one time in 20) means a missing id.
indexes = st.integers(0, 19).flatmap(lambda n: st.just(-1) if n == 0 else st.integers(0, 99))


def sometimes(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``None`` three times in four: queries with few filters still find things."""
    return st.integers(0, 3).flatmap(lambda n: strategy if n == 0 else st.none())


class Boom(Exception):
    """Raised on purpose inside a transaction."""


Outcome = tuple[str, Any]


class Differential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="kontextual-diff-"))
        self.memory = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
        self.sqlite_clock = TickingClock()
        self.sqlite_ids = SequentialIds()
        self.sqlite = self._open()
        self.collections: list[str] = []
        self.artifacts: list[str] = []
        self.relationships: list[str] = []

    def _open(self) -> SQLiteKnowledgeRepository:
        return SQLiteKnowledgeRepository.open(self.tmp / "store", "none",
                                              clock=self.sqlite_clock, ids=self.sqlite_ids)

    def teardown(self) -> None:
        self.sqlite.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- running one operation on both --------------------------------------

    def both(self, operation: Callable[[KnowledgeRepository], Any]) -> Outcome:
        outcomes: list[Outcome] = []
        for repo in (self.memory, self.sqlite):
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

    @initialize(items=st.lists(st.tuples(artifact_names, bodies, artifact_types, metadata),
                               max_size=6))
    def start(self, items: list[tuple[str, bytes, str, dict[str, Any] | None]]) -> None:
        self.create_collection("c1", None)
        self.create_collection("c2", {"k": 1})
        self.put_artifacts(0, items)

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

    @rule(index=indexes, name=artifact_names, body=bodies, kind=artifact_types,
          meta=metadata)
    def create_artifact(self, index: int, name: str, body: bytes, kind: str,
                        meta: dict[str, Any] | None) -> None:
        collection_id = self.live_collection(index)
        outcome = self.both(lambda repo: repo.create_artifact(
            collection_id, name, body, artifact_type=kind, metadata=meta,
            provenance={"by": "test"}))
        self.remember(outcome, self.artifacts)

    @rule(index=indexes, items=st.lists(
        st.tuples(artifact_names, bodies, artifact_types, metadata), max_size=5))
    def put_artifacts(self, index: int,
                      items: list[tuple[str, bytes, str, dict[str, Any] | None]]) -> None:
        collection_id = self.live_collection(index)
        batch = [NewArtifact(name, body, kind, metadata=meta) for name, body, kind, meta in items]
        outcome = self.both(lambda repo: repo.put_artifacts(collection_id, batch))
        if outcome[0] == "ok":
            for result in outcome[1]:
                if result.artifact.id not in self.artifacts:
                    self.artifacts.append(result.artifact.id)

    @rule(index=indexes, body=st.none() | bodies, kind=st.none() | artifact_types,
          name=st.none() | artifact_names, meta=metadata,
          media=st.none() | st.sampled_from(["text/plain", "text/markdown"]),
          expected=st.none() | st.integers(1, 4))
    def update_artifact(self, index: int, body: bytes | None, kind: str | None,
                        name: str | None, meta: dict[str, Any] | None, media: str | None,
                        expected: int | None) -> None:
        artifact_id = self.live_artifact(index)
        self.both(lambda repo: repo.update_artifact(
            artifact_id, content=body, artifact_type=kind, name=name, metadata=meta,
            media_type=media, provenance={"step": 2}, expected_revision=expected))

    @rule(index=indexes, expected=st.none() | st.integers(1, 4))
    def delete_artifact(self, index: int, expected: int | None) -> None:
        artifact_id = self.live_artifact(index)
        self.both(lambda repo: repo.delete_artifact(artifact_id, expected_revision=expected))

    # -- relationships -------------------------------------------------------

    @rule(source=indexes, to=indexes, kind=relationship_types,
          meta=metadata)
    def create_relationship(self, source: int, to: int, kind: str,
                            meta: dict[str, Any] | None) -> None:
        source_id = self.live_artifact(source)
        target_id = self.live_artifact(to)
        outcome = self.both(lambda repo: repo.create_relationship(source_id, target_id, kind,
                                                                   metadata=meta))
        self.remember(outcome, self.relationships)

    @rule(index=indexes)
    def delete_relationship(self, index: int) -> None:
        relationship_id = self.live_relationship(index)
        self.both(lambda repo: repo.delete_relationship(relationship_id))

    # -- transactions and reopening -------------------------------------------

    @rule(index=indexes, name=artifact_names, body=bodies,
          nested=st.booleans())
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
                            repo.create_artifact(collection_id, name, body,
                                                 artifact_type="note")
                    repo.put_artifacts(collection_id, [NewArtifact(name + "+", body, "doc")])
                    repo.update_artifact(artifact_id, content=body + b"!")
                    repo.delete_artifact(artifact_id)
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
        self.sqlite.close()
        self.sqlite = self._open()

    # -- reads ---------------------------------------------------------------

    @rule(ids=sometimes(st.lists(indexes, max_size=3)),
          collection=sometimes(indexes), name=sometimes(artifact_names),
          digest_of=sometimes(bodies), kind=sometimes(artifact_types),
          meta=sometimes(st.dictionaries(metadata_keys, json_values, min_size=1, max_size=2)),
          text=sometimes(queries),
          related=sometimes(st.tuples(indexes, st.none() | relationship_types, directions)),
          limit=sometimes(st.integers(0, 4)), after=sometimes(st.integers(0, 40)))
    def query(self, ids: list[int] | None, collection: int | None, name: str | None,
              digest_of: bytes | None, kind: str | None, meta: dict[str, Any] | None,
              text: str | None, related: tuple[int, str | None, str] | None,
              limit: int | None, after: int | None) -> None:
        from kontextual_engine.digests import digest_bytes

        query = Query(
            ids=None if ids is None else tuple(self.live_artifact(i) for i in ids),
            collection_id=None if collection is None else self.live_collection(collection),
            name=name,
            digest=None if digest_of is None else digest_bytes(digest_of),
            artifact_type=kind,
            metadata=meta,
            text=text,
            related_to=None if related is None else RelatedTo(
                self.live_artifact(related[0]), related[1], related[2]),
            limit=limit,
            after=after,
        )
        self.both(lambda repo: repo.query(query))

    @precondition(lambda self: bool(self.artifacts))
    @rule(index=indexes, fields=st.sets(st.sampled_from(
        ["ids", "collection", "name", "digest", "type", "metadata", "related", "after"]),
        min_size=1, max_size=3), limit=sometimes(st.integers(0, 4)))
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
                filters["related_to"] = RelatedTo(other.source_id, other.relationship_type,
                                                  "outgoing")
        if "after" in fields:
            filters["after"] = artifact.sequence - 1
        self.both(lambda repo: repo.query(Query(**filters)))

    @precondition(lambda self: bool(self.artifacts))
    @rule(index=indexes, start=st.integers(0, 29), length=st.integers(1, 6),
          flip=st.booleans())
    def query_text_of_a_body(self, index: int, start: int, length: int, flip: bool) -> None:
        """Search for a piece of a live body, so that text queries find things."""
        def piece(repo: KnowledgeRepository) -> str | None:
            artifact_id = self.live_artifact(index)
            try:
                body = repo.read_content(artifact_id).decode("utf-8")
            except (KontextualError, UnicodeDecodeError):
                return None
            start_at = start % len(body) if body else 0
            part = body[start_at:start_at + length]
            return part.swapcase() if flip else part

        got = self.both(piece)[1]
        if got is not None and got.strip():
            self.both(lambda repo: repo.query(text=got))

    @rule(index=indexes, revision=st.integers(1, 4))
    def read_revision(self, index: int, revision: int) -> None:
        artifact_id = self.live_artifact(index)
        self.both(lambda repo: (repo.get_revision(artifact_id, revision),
                                repo.read_content(artifact_id, revision)))

    @rule(index=indexes, direction=directions,
          kind=st.none() | relationship_types)
    def list_relationships(self, index: int, direction: str, kind: str | None) -> None:
        artifact_id = self.live_artifact(index)
        self.both(lambda repo: repo.list_relationships(artifact_id, direction=direction,
                                                       relationship_type=kind))

    @rule(since=st.integers(0, 40), index=st.none() | indexes,
          limit=st.none() | st.integers(0, 5))
    def list_changes(self, since: int, index: int | None, limit: int | None) -> None:
        entity = None if index is None else self.live_artifact(index)
        self.both(lambda repo: repo.list_changes(since, entity_id=entity, limit=limit))

    @precondition(lambda self: bool(self.collections))
    @rule(index=indexes, name=artifact_names)
    def by_name(self, index: int, name: str) -> None:
        collection_id = self.live_collection(index)
        self.both(lambda repo: repo.get_artifact_by_name(collection_id, name))

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
                "last": repo.last_sequence(),
            }

        self.both(snapshot)


Differential.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDifferential = Differential.TestCase
