"""PostgreSQL-specific behaviour of ``PostgresIndex``; the contract suite covers the rest."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine.errors import (
    IntegrityError,
    RemoteStoreUnreachableError,
    StoreFormatError,
)
from kontextual_engine.models import NewArtifact, Query
from kontextual_engine.storage import KnowledgeRepository
from kontextual_engine.storage.bodies import MemoryBodyStore

from .servers import PostgresServer
from .workers import release_together, start

psycopg = pytest.importorskip("psycopg")

from kontextual_engine.storage.postgres import PostgresIndex, schema  # noqa: E402
from kontextual_engine.storage.postgres.index import LEXEME_CHARS  # noqa: E402
from kontextual_engine.storage.postgres.intents import UploadIntents  # noqa: E402

WORKER = Path(__file__).with_name("postgres_worker.py")

# What a schema is made of, read from the catalog (migration times left out).
_CATALOG = (
    "SELECT table_name, column_name, ordinal_position, data_type, is_nullable, "
    "column_default, is_generated, generation_expression FROM information_schema.columns "
    "WHERE table_schema = 'public' ORDER BY 1, 3",
    "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
    "ORDER BY 1, 2",
    "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2",
    "SELECT version FROM schema_migrations ORDER BY 1",
    "SELECT * FROM sequence_counter",
)


def _catalog(dsn: str) -> list[list[tuple[Any, ...]]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [conn.execute(sql).fetchall() for sql in _CATALOG]


def _repo(dsn: str) -> KnowledgeRepository:
    return KnowledgeRepository(PostgresIndex(dsn), MemoryBodyStore())


def test_a_fresh_schema_equals_one_migrated_step_by_step(postgres_server: PostgresServer) -> None:
    fresh = postgres_server.new_database(migrated=False)
    stepped = postgres_server.new_database(migrated=False)
    with psycopg.connect(fresh, autocommit=True) as conn:
        assert schema.migrate(conn) == schema.SCHEMA_VERSION
    for version in range(1, schema.SCHEMA_VERSION + 1):
        with psycopg.connect(stepped, autocommit=True) as conn:
            assert schema.migrate(conn, version) == version
    assert _catalog(fresh) == _catalog(stepped)
    assert _catalog(fresh)[3] == [(v,) for v in range(1, schema.SCHEMA_VERSION + 1)]
    # Opening an up-to-date database applies nothing.
    PostgresIndex(stepped).close()
    assert _catalog(fresh) == _catalog(stepped)


def _dump(server: PostgresServer, dsn: str) -> str:
    """The database's schema and contents as ``pg_dump`` writes them."""
    done = subprocess.run(
        [str(server.bindir / "pg_dump"), "--no-owner", "--no-comments", dsn],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # The dump names no database, only a random key that guards its psql commands.
    return "\n".join(
        line
        for line in done.stdout.splitlines()
        if not line.startswith(("\\restrict", "\\unrestrict"))
    )


def test_a_released_database_equals_a_fresh_copy_of_the_template(
    postgres_server: PostgresServer,
) -> None:
    """A leased database written in every table and given back is leased again
    exactly as a new copy of the template would be."""
    from .test_snapshot import populate

    dsn = postgres_server.lease()
    repo = _repo(dsn)
    populate(repo)
    repo.apply(repo.list_collections()[0].id, [NewArtifact("more", b"more", "note")])
    repo.index.set_setting("objects", "s3://bucket/prefix")  # the shared store's tables
    intents = UploadIntents(dsn)
    intents.record([repo.get_revision(repo.list_artifacts()[0].id, 1).digest])
    intents.close()
    repo.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
        ]
        empty = [t for t in tables if not conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone()]
        # Sequences would have to be restarted too: the schema has none.
        assert conn.execute("SELECT count(*) FROM pg_sequences").fetchone() == (0,)
    assert empty == []  # every table is written, so the comparison covers all of them
    postgres_server.release(dsn)
    assert postgres_server.lease() == dsn
    assert _dump(postgres_server, dsn) == _dump(postgres_server, postgres_server.new_database())
    postgres_server.release(dsn)


def test_a_database_given_back_while_in_use_is_not_leased_again(
    postgres_server: PostgresServer,
) -> None:
    dsn = postgres_server.lease()
    repo = _repo(dsn)
    try:
        repo.create_collection("left open")
        postgres_server.release(dsn)
        assert postgres_server.lease() != dsn
        assert [c.name for c in repo.list_collections()] == ["left open"]
    finally:
        repo.close()


def test_a_newer_schema_is_refused_by_name(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (99,))
    with pytest.raises(StoreFormatError, match="schema version 99"):
        PostgresIndex(dsn)


def test_an_unreachable_server_is_a_typed_error_without_the_password(tmp_path: Path) -> None:
    dsn = f"host={tmp_path} port=5432 dbname=nothing user=nobody password=s3cret connect_timeout=2"
    with pytest.raises(RemoteStoreUnreachableError, match="unreachable") as caught:
        PostgresIndex(dsn, pool_size=1)
    assert "s3cret" not in str(caught.value)


def test_a_rolled_back_transaction_gives_its_sequences_back(
    postgres_server: PostgresServer,
) -> None:
    repo = _repo(postgres_server.new_database())
    try:
        collection = repo.create_collection("notes")
        with pytest.raises(RuntimeError), repo.transaction():
            repo.create_artifact(collection.id, "a", b"one", artifact_type="note")
            repo.create_artifact(collection.id, "b", b"two", artifact_type="note")
            raise RuntimeError("undo")
        assert repo.last_sequence() == 1
        created = repo.create_artifact(collection.id, "c", b"three", artifact_type="note")
        assert created.sequence == 2
        assert [c.sequence for c in repo.list_changes()] == [1, 2]
    finally:
        repo.close()


def test_a_duplicate_created_in_bulk_is_an_integrity_error(
    postgres_server: PostgresServer,
) -> None:
    index = PostgresIndex(postgres_server.new_database())
    repo = KnowledgeRepository(index, MemoryBodyStore())
    try:
        collection = repo.create_collection("notes")
        first = repo.create_artifact(collection.id, "a", b"one", artifact_type="note")
        revision = repo.list_revisions(first.id)[0]
        with pytest.raises(IntegrityError, match="artifacts"), index.transaction(), index.bulk():
            index.insert_artifact(first, revision, "one")
        assert repo.last_sequence() == 2
    finally:
        repo.close()


def test_words_longer_than_a_lexeme_are_found_exactly(postgres_server: PostgresServer) -> None:
    repo = _repo(postgres_server.new_database())
    try:
        collection = repo.create_collection("notes")
        long_word = "x" * (LEXEME_CHARS + 50)
        other = "x" * (LEXEME_CHARS + 10)
        hit = repo.create_artifact(collection.id, "long", long_word.encode(), artifact_type="n")
        repo.create_artifact(collection.id, "other", other.encode(), artifact_type="n")
        assert [a.id for a in repo.query(Query(text=long_word))] == [hit.id]
        assert len(repo.query(Query(text="x" * (LEXEME_CHARS + 5) + "*"))) == 2
        assert [a.id for a in repo.query(Query(text="x" * (LEXEME_CHARS + 20) + "*"))] == [hit.id]
    finally:
        repo.close()


def test_four_processes_writing_at_once_leave_a_gap_free_feed(
    postgres_server: PostgresServer,
) -> None:
    dsn = postgres_server.new_database()
    repo = _repo(dsn)
    writers, count = 4, 250
    try:
        collection = repo.create_collection("shared")
        procs = [
            start(WORKER, dsn, collection.id, str(worker), str(count)) for worker in range(writers)
        ]
        results = release_together(procs)
        for proc, (out, err) in zip(procs, results, strict=True):
            assert proc.returncode == 0, err
            assert out.strip() == str(count)
        total = writers * count
        artifacts = repo.query(Query(collection_id=collection.id))
        assert sorted(a.name for a in artifacts) == sorted(
            f"w{w}-{n}" for w in range(writers) for n in range(count)
        )
        changes = repo.list_changes()
        assert [c.sequence for c in changes] == list(range(1, total + 2))
        assert sorted(a.sequence for a in artifacts) == list(range(2, total + 2))
        assert repo.last_sequence() == total + 1
    finally:
        repo.close()
