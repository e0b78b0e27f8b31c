"""Lookups use indexes, not table scans: EXPLAIN QUERY PLAN of the SQL the backend runs.

The latency targets of docs/performance.md (by id or name under 100 us, text
and metadata queries under 10 ms at 100k artifacts) only hold while each of
these plans searches an index; a plan that turns into ``SCAN artifacts``
grows with the store.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kontextual_engine.models import NewArtifact
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[SQLiteKnowledgeRepository]:
    store = SQLiteKnowledgeRepository.open(tmp_path / "store", durability="none", create=True)
    collection = store.create_collection("plans")
    store.put_artifacts(
        collection.id,
        [
            NewArtifact(
                f"doc-{number}.md",
                f"document {number} about tokenizers".encode(),
                "note",
                metadata={"topic": f"t{number % 3}", "priority": number % 5},
            )
            for number in range(30)
        ],
    )
    yield store
    store.close()


def plan_of(
    repo: SQLiteKnowledgeRepository, call: Callable[[], object], containing: str = ""
) -> str:
    """The query plan of the last SELECT that ``call`` ran (of those that contain
    ``containing``), one step per line."""
    conn: sqlite3.Connection = repo.index.connection.sqlite
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        call()
    finally:
        conn.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT") and containing in s]
    assert selects, statements
    rows = conn.execute("EXPLAIN QUERY PLAN " + selects[-1]).fetchall()
    return "\n".join(row[-1] for row in rows)


def test_lookup_by_id_searches_the_id_index(repo: SQLiteKnowledgeRepository) -> None:
    artifact = repo.list_artifacts()[3]
    plan = plan_of(repo, lambda: repo.get_artifact(artifact.id))
    assert plan.startswith("SEARCH a USING"), plan
    assert "(id=?)" in plan, plan


def test_lookup_by_name_searches_the_live_name_index(repo: SQLiteKnowledgeRepository) -> None:
    artifact = repo.list_artifacts()[3]
    plan = plan_of(repo, lambda: repo.get_artifact_by_name(artifact.collection_id, artifact.name))
    assert "SEARCH a USING INDEX artifacts_live_name (collection_id=? AND name=?)" in plan, plan


def test_lookups_by_digest_search_the_digest_buckets(repo: SQLiteKnowledgeRepository) -> None:
    """Both digest indexes are keyed by the digest's bucket first: a lookup must
    name the bucket and test the whole digest apart, or it scans."""
    artifact = repo.list_artifacts()[3]
    plan = plan_of(repo, lambda: repo.query(digest=artifact.digest))
    assert "SEARCH a USING INDEX artifacts_live_digest (<expr>=?)" in plan, plan
    plan = plan_of(repo, lambda: repo.index.revisions_with_digest(artifact.digest))
    assert "SEARCH revisions USING COVERING INDEX revisions_digest (<expr>=?)" in plan, plan
    assert "SEARCH r USING PRIMARY KEY (artifact_id=? AND revision=?)" in plan, plan
    assert [r.artifact_id for r in repo.index.revisions_with_digest(artifact.digest)] == [
        artifact.id
    ]


def test_text_query_is_driven_by_fts5(repo: SQLiteKnowledgeRepository) -> None:
    """In creation order, FTS5 yields matches by rowid: a LIMIT stops it early."""
    plan = plan_of(
        repo, lambda: repo.query(text="tokenizers", order="sequence", limit=10), "artifact_words"
    )
    first = plan.splitlines()[0]
    assert first.startswith("SCAN t VIRTUAL TABLE INDEX"), plan
    assert "SCAN a" not in plan, plan
    assert "SEARCH a USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


def test_ranked_text_query_sorts_only_the_matches(repo: SQLiteKnowledgeRepository) -> None:
    """Text alone, by relevance: FTS5's matches are ranked by rowid and score, the
    page is cut there, and only the page's artifacts are read by rowid."""
    plan = plan_of(repo, lambda: repo.query(text="tokenizers", limit=10), "artifact_words")
    lines = plan.splitlines()
    assert lines[:2] == ["MATERIALIZE t", "SCAN artifact_words VIRTUAL TABLE INDEX 0:M1"], plan
    assert "SEARCH a USING INTEGER PRIMARY KEY (rowid=?)" in lines, plan
    assert "SCAN a" not in lines, plan


def test_ranked_text_query_with_filters_sorts_only_the_matches(
    repo: SQLiteKnowledgeRepository,
) -> None:
    """With another filter, FTS5 drives, each match's artifact is read by rowid,
    and the matches that pass are sorted by score; no other artifact is read."""
    notes = repo.get_collection_by_name("plans").id
    plan = plan_of(
        repo, lambda: repo.query(text="tokenizers", collection_id=notes, limit=10), "artifact_words"
    )
    lines = plan.splitlines()
    assert lines[0].startswith("SCAN t VIRTUAL TABLE INDEX"), plan
    assert "SEARCH a USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
    assert "SCAN a" not in plan, plan
    assert lines[-1] == "USE TEMP B-TREE FOR ORDER BY", plan


def test_ranked_text_query_puts_order_and_limit_in_sql(repo: SQLiteKnowledgeRepository) -> None:
    conn: sqlite3.Connection = repo.index.connection.sqlite
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    try:
        found = repo.query(text="tokenizers", limit=10)
    finally:
        conn.set_trace_callback(None)
    [select] = [s for s in statements if "artifact_words MATCH" in s]
    assert "ORDER BY score DESC, rowid LIMIT 10) t" in select, select
    assert select.endswith("ORDER BY t.score DESC, a.sequence"), select
    assert len(found) == 10


def test_pending_check_reads_one_row(repo: SQLiteKnowledgeRepository) -> None:
    """A text query first asks whether any words are pending: one row at most."""
    plan = plan_of(repo, lambda: repo.query(text="tokenizers", limit=10), "text_pending")
    assert plan == "SCAN text_pending", plan


def test_text_and_metadata_query_is_driven_by_fts5(repo: SQLiteKnowledgeRepository) -> None:
    """Metadata is checked per match by its primary key, the artifact by rowid."""
    for order in (None, "sequence"):
        call = functools.partial(
            repo.query, text="tokenizers", metadata={"priority": 2}, order=order
        )
        plan = plan_of(repo, call, "artifact_words")
        assert plan.splitlines()[0].startswith("SCAN t VIRTUAL TABLE INDEX"), plan
        assert "SEARCH a USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan
        assert "SEARCH m USING PRIMARY KEY (artifact_sequence=? AND key=?)" in plan, plan
        assert "SCAN a" not in plan, plan


def test_text_and_name_query_probes_fts5_by_rowid(repo: SQLiteKnowledgeRepository) -> None:
    """A name picks one artifact through its index; FTS5 is asked about that rowid only."""
    plan = plan_of(repo, lambda: repo.query(text="tokenizers", name="doc-3.md"), "artifact_words")
    lines = plan.splitlines()
    assert lines[0].startswith("SEARCH a USING INDEX artifacts_live_by_name"), plan
    assert any(re.match(r"SCAN t VIRTUAL TABLE INDEX \d+:=M", line) for line in lines), plan
    assert "SCAN a" not in plan, plan


def test_metadata_query_searches_an_index(repo: SQLiteKnowledgeRepository) -> None:
    plan = plan_of(repo, lambda: repo.query(metadata={"priority": 2}, limit=10))
    assert "artifact_metadata_lookup" in plan, plan
    assert not any(line.startswith("SCAN a") for line in plan.splitlines()), plan
