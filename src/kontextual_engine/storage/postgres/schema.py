"""The PostgreSQL schema: numbered migrations kept in the package.

:func:`migrate` applies the migrations a database lacks, in order, inside one
transaction holding an advisory lock (so two processes opening one fresh
database do not both create it), and records each in ``schema_migrations``.
A fresh database and one migrated step by step end with the same schema.

Every record is kept whole as JSON text in a ``record`` column; the columns
beside it are the keys the primitives look records up or order them by.
"""

from __future__ import annotations

from typing import Any

from ...errors import StoreFormatError

# pg_advisory_xact_lock key for migrations ("kontextua" in ASCII, truncated).
MIGRATION_LOCK = 0x6B6F6E74657874

MIGRATIONS: tuple[str, ...] = (
    # 1: the records.
    """
    CREATE TABLE sequence_counter (
        id integer PRIMARY KEY CHECK (id = 1),
        last bigint NOT NULL CHECK (last >= 0)
    );
    INSERT INTO sequence_counter VALUES (1, 0);
    CREATE TABLE collections (
        id text PRIMARY KEY,
        name text NOT NULL,
        sequence bigint NOT NULL UNIQUE,
        deleted_at text,
        record text NOT NULL
    );
    CREATE UNIQUE INDEX collections_live_name ON collections (name) WHERE deleted_at IS NULL;
    CREATE TABLE artifacts (
        id text PRIMARY KEY,
        sequence bigint NOT NULL UNIQUE,
        collection_id text NOT NULL,
        name text NOT NULL,
        artifact_type text NOT NULL,
        digest text NOT NULL,
        deleted_at text,
        record text NOT NULL
    );
    CREATE UNIQUE INDEX artifacts_live_name ON artifacts (collection_id, name)
        WHERE deleted_at IS NULL;
    CREATE TABLE revisions (
        artifact_id text NOT NULL,
        revision integer NOT NULL,
        change_sequence bigint NOT NULL,
        collection_id text NOT NULL,
        name text NOT NULL,
        digest text NOT NULL,
        run_id text,
        record text NOT NULL,
        PRIMARY KEY (artifact_id, revision)
    );
    CREATE INDEX revisions_by_sequence ON revisions (change_sequence);
    CREATE INDEX revisions_by_digest ON revisions (digest);
    CREATE INDEX revisions_by_run ON revisions (run_id) WHERE run_id IS NOT NULL;
    CREATE INDEX revisions_by_name ON revisions (collection_id, name);
    CREATE TABLE relationships (
        id text PRIMARY KEY,
        source_id text NOT NULL,
        target_id text NOT NULL,
        relationship_type text NOT NULL,
        sequence bigint NOT NULL UNIQUE,
        deleted_sequence bigint,
        record text NOT NULL
    );
    CREATE UNIQUE INDEX relationships_live_key
        ON relationships (source_id, target_id, relationship_type)
        WHERE deleted_sequence IS NULL;
    CREATE INDEX relationships_by_target ON relationships (target_id);
    CREATE TABLE changes (
        sequence bigint PRIMARY KEY,
        entity_id text NOT NULL,
        action text NOT NULL,
        change_set_id text,
        timestamp text NOT NULL,
        record text NOT NULL
    );
    CREATE INDEX changes_by_entity ON changes (entity_id, sequence);
    CREATE INDEX changes_by_change_set ON changes (change_set_id, sequence);
    CREATE TABLE change_sets (
        id text PRIMARY KEY,
        sequence bigint NOT NULL UNIQUE,
        record text NOT NULL
    );
    CREATE TABLE runs (
        id text PRIMARY KEY,
        sequence bigint NOT NULL UNIQUE,
        status text NOT NULL,
        record text NOT NULL
    );
    CREATE TABLE steps (
        id text PRIMARY KEY,
        run_id text NOT NULL,
        position integer NOT NULL,
        sequence bigint NOT NULL UNIQUE,
        record text NOT NULL
    );
    CREATE INDEX steps_by_run ON steps (run_id, position);
    CREATE TABLE bundles (
        id text PRIMARY KEY,
        run_id text NOT NULL,
        sequence bigint NOT NULL UNIQUE,
        inputs jsonb NOT NULL,
        record text NOT NULL
    );
    CREATE INDEX bundles_by_run ON bundles (run_id);
    CREATE INDEX bundles_by_input ON bundles USING gin (inputs jsonb_path_ops);
    CREATE TABLE manifests (
        run_id text PRIMARY KEY,
        record text NOT NULL
    );
    CREATE TABLE context_packages (
        id text PRIMARY KEY,
        sequence bigint NOT NULL UNIQUE,
        record text NOT NULL
    );
    CREATE TABLE external_references (
        id text PRIMARY KEY,
        sequence bigint NOT NULL UNIQUE,
        record text NOT NULL
    );
    """,
    # 2: the words of each live artifact's body (storage/text.py), or why it has none.
    """
    CREATE TABLE artifact_text (
        artifact_sequence bigint PRIMARY KEY,
        reason text,
        pending boolean NOT NULL DEFAULT false,
        words text[] NOT NULL DEFAULT '{}',
        lexemes text[],
        indexed tsvector GENERATED ALWAYS AS (array_to_tsvector(lexemes)) STORED
    );
    CREATE INDEX artifact_text_words ON artifact_text USING gin (indexed);
    CREATE INDEX artifact_text_pending ON artifact_text (artifact_sequence) WHERE pending;
    """,
    # 3: bodies a writer is about to store and reference (storage/postgres/intents.py),
    # and settings of the store, such as the bodies the index belongs with.
    """
    CREATE TABLE upload_intents (
        id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
        digest text NOT NULL,
        expires_at timestamptz NOT NULL
    );
    CREATE INDEX upload_intents_by_digest ON upload_intents (digest);
    CREATE TABLE store_settings (
        name text PRIMARY KEY,
        value text NOT NULL
    );
    """,
    # 4: each artifact's metadata as jsonb, so that metadata filters run in the server.
    """
    ALTER TABLE artifacts ADD COLUMN metadata jsonb
        GENERATED ALWAYS AS (((record::jsonb) ->> 'metadata_json')::jsonb) STORED;
    CREATE INDEX artifacts_metadata ON artifacts USING gin (metadata jsonb_path_ops);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def is_store(conn: Any) -> bool:
    """Whether the database holds a store (a migrated schema), at any version."""
    row = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
    return row is not None and row[0] is not None


def migrate(conn: Any, target: int | None = None) -> int:
    """Apply the migrations ``conn``'s database lacks, up to ``target`` (all by
    default), in one transaction; return the version it is at afterwards."""
    target = SCHEMA_VERSION if target is None else target
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0])
        if current > SCHEMA_VERSION:
            raise StoreFormatError(
                f"the PostgreSQL index is at schema version {current}; this version of "
                f"kontextual-engine knows versions up to {SCHEMA_VERSION}"
            )
        for version in range(current + 1, target + 1):
            conn.execute(MIGRATIONS[version - 1])
            conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
        return max(current, target)
