"""The schema of ``index.sqlite``, as an ordered set of migrations.

Every change to the schema is a new migration appended to :data:`MIGRATIONS`;
an applied migration is never edited. A fresh index and an upgraded one end
with the same ``sqlite_master``. The caller runs :func:`migrate` inside its
own ``BEGIN IMMEDIATE`` transaction, so sqlite-utils' ``atomic()`` nests each
migration in a SAVEPOINT instead of opening a deferred ``BEGIN`` (which fails
at once, busy timeout or not, when another process writes).

Which migrations are applied and which are pending is read with plain
``sqlite3`` from sqlite-utils' table; sqlite-utils itself (slow to import) is
imported only by :func:`migrations`, when there is one to apply.

Layout decisions:

* ``collections``, ``artifacts`` and ``relationships`` use the sequence number
  of the change that created the row as their ``INTEGER PRIMARY KEY``, so
  creation order is rowid order and an ``after`` cursor is a rowid range.
* Deleted collections and artifacts stay as rows with ``deleted_at`` set:
  revisions and change records still point at them. Uniqueness of names
  holds among live rows through partial unique indexes.
* Text search: ``0001_core`` made ``artifact_text``, an FTS5 trigram table,
  and ``0004_text_backlog`` a backlog in front of it (ADR 0004). Since
  ``0005_words`` both are gone: ``artifact_words`` is an FTS5 table of words
  (:mod:`.text_index`, ADR 0006), written in the write transaction, with
  ``unsearchable`` (why a live artifact has no words) and ``text_pending``
  (artifacts whose words must be derived from their bodies again). Its text
  is stored rather than contentless because SQLite before 3.43 cannot delete
  from a contentless table without the original text.
* JSON columns hold canonical JSON and are checked with ``json_valid``.

``0002_runs_context`` adds runs, steps, input bundles, manifests, context
packages and external references:

* ``runs``, ``steps``, ``bundles``, ``context_packages`` and
  ``external_references`` are keyed by creation sequence like the core
  tables. Status columns are checked against the lifecycle's six states.
* Ordered parts live in ``WITHOUT ROWID`` child tables keyed by
  ``(parent, position)``: ``bundle_inputs``, ``manifest_refs`` (inputs and
  outputs) and ``context_references``. A manifest's step ids are a JSON array.
* Foreign keys hold where the contract guarantees the target exists: steps,
  bundles and manifests to their run, a child run to its parent, and every
  pinned artifact revision (bundle inputs, manifest refs, pinned context
  references, external references) to ``revisions``. A composite key with a
  NULL part is not enforced, which is what unpinned and non-artifact
  references need. Other context references have none: one ``target_id``
  column serves every kind, and a deleted relationship must stay nameable by
  a package made before.
* ``bundle_inputs`` is indexed by ``(artifact_id, revision)`` and by
  ``digest`` (which runs consumed this?), ``revisions`` by producing
  ``run_id`` (the outputs of a run), ``runs`` by status (recovery on open).
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...errors import StoreFormatError
from ...models import canonical_json

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

MIGRATION_SET = "kontextual"
# sqlite-utils' ``Migrations.migrations_table``: one row per applied migration.
MIGRATIONS_TABLE = "_sqlite_migrations"
_Step = Callable[["Database"], None]

# The migrations in order: name and step.
_STEPS: list[tuple[str, _Step]] = []
KNOWN: list[str] = []


def _migration(name: str) -> Callable[[_Step], _Step]:
    def register(step: _Step) -> _Step:
        KNOWN.append(name)
        _STEPS.append((name, step))
        return step

    return register


_CORE = (
    """
    CREATE TABLE collections (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        metadata TEXT NOT NULL CHECK (json_valid(metadata)),
        created_at TEXT NOT NULL,
        deleted_at TEXT
    )
    """,
    "CREATE UNIQUE INDEX collections_live_name ON collections (name) WHERE deleted_at IS NULL",
    """
    CREATE TABLE artifacts (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        collection_id TEXT NOT NULL REFERENCES collections (id),
        name TEXT NOT NULL,
        artifact_type TEXT NOT NULL,
        media_type TEXT,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL CHECK (size >= 0),
        revision INTEGER NOT NULL CHECK (revision >= 1),
        metadata TEXT NOT NULL CHECK (json_valid(metadata)),
        provenance TEXT NOT NULL CHECK (json_valid(provenance)),
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        run_id TEXT,
        deleted_at TEXT
    )
    """,
    "CREATE UNIQUE INDEX artifacts_live_name ON artifacts (collection_id, name) "
    "WHERE deleted_at IS NULL",
    "CREATE INDEX artifacts_live_collection ON artifacts (collection_id) WHERE deleted_at IS NULL",
    "CREATE INDEX artifacts_live_by_name ON artifacts (name) WHERE deleted_at IS NULL",
    "CREATE INDEX artifacts_live_digest ON artifacts (digest) WHERE deleted_at IS NULL",
    "CREATE INDEX artifacts_live_type ON artifacts (artifact_type) WHERE deleted_at IS NULL",
    """
    CREATE TABLE revisions (
        artifact_id TEXT NOT NULL REFERENCES artifacts (id),
        revision INTEGER NOT NULL CHECK (revision >= 1),
        collection_id TEXT NOT NULL REFERENCES collections (id),
        name TEXT NOT NULL,
        artifact_type TEXT NOT NULL,
        media_type TEXT,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL CHECK (size >= 0),
        metadata TEXT NOT NULL CHECK (json_valid(metadata)),
        provenance TEXT NOT NULL CHECK (json_valid(provenance)),
        created_at TEXT NOT NULL,
        change_sequence INTEGER NOT NULL UNIQUE,
        run_id TEXT,
        PRIMARY KEY (artifact_id, revision)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX revisions_digest ON revisions (digest)",
    """
    CREATE TABLE relationships (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        source_id TEXT NOT NULL REFERENCES artifacts (id),
        target_id TEXT NOT NULL REFERENCES artifacts (id),
        relationship_type TEXT NOT NULL,
        metadata TEXT NOT NULL CHECK (json_valid(metadata)),
        created_at TEXT NOT NULL
    )
    """,
    "CREATE UNIQUE INDEX relationships_key ON relationships "
    "(source_id, target_id, relationship_type)",
    "CREATE INDEX relationships_source ON relationships (source_id, relationship_type)",
    "CREATE INDEX relationships_target ON relationships (target_id, relationship_type)",
    "CREATE INDEX relationships_type ON relationships (relationship_type)",
    """
    CREATE TABLE changes (
        sequence INTEGER PRIMARY KEY CHECK (sequence >= 1),
        entity_kind TEXT NOT NULL,
        entity_id TEXT NOT NULL,
        action TEXT NOT NULL,
        timestamp TEXT NOT NULL,
        revision INTEGER,
        old_digest TEXT,
        new_digest TEXT,
        details TEXT NOT NULL CHECK (json_valid(details))
    )
    """,
    "CREATE INDEX changes_entity ON changes (entity_id)",
    "CREATE VIRTUAL TABLE artifact_text USING fts5 (folded, tokenize = 'trigram case_sensitive 1')",
)


@_migration("0001_core")
def _core(db: Database) -> None:
    for statement in _CORE:
        db.conn.execute(statement)


# Status values are spelled out rather than taken from ``RunStatus``: an applied
# migration must create the same schema forever, whatever the enum becomes.
_STATUS_CHECK = (
    "CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'abandoned'))"
)

_RUNS_CONTEXT = (
    f"""
    CREATE TABLE runs (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        operation TEXT NOT NULL,
        status TEXT NOT NULL {_STATUS_CHECK},
        parameters TEXT NOT NULL CHECK (json_valid(parameters)),
        parent_run_id TEXT REFERENCES runs (id),
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT,
        diagnostics TEXT NOT NULL CHECK (json_valid(diagnostics)),
        holder TEXT NOT NULL CHECK (json_valid(holder)),
        lease_expires_at TEXT,
        heartbeat_at TEXT
    )
    """,
    "CREATE INDEX runs_status ON runs (status)",
    f"""
    CREATE TABLE steps (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        run_id TEXT NOT NULL REFERENCES runs (id),
        position INTEGER NOT NULL CHECK (position >= 1),
        name TEXT NOT NULL,
        status TEXT NOT NULL {_STATUS_CHECK},
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        diagnostics TEXT NOT NULL CHECK (json_valid(diagnostics))
    )
    """,
    "CREATE UNIQUE INDEX steps_run ON steps (run_id, position)",
    """
    CREATE TABLE bundles (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        run_id TEXT NOT NULL REFERENCES runs (id),
        parameters TEXT NOT NULL CHECK (json_valid(parameters)),
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX bundles_run ON bundles (run_id)",
    """
    CREATE TABLE bundle_inputs (
        bundle_id TEXT NOT NULL REFERENCES bundles (id),
        position INTEGER NOT NULL CHECK (position >= 1),
        artifact_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        digest TEXT NOT NULL,
        role TEXT,
        PRIMARY KEY (bundle_id, position),
        FOREIGN KEY (artifact_id, revision) REFERENCES revisions (artifact_id, revision)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX bundle_inputs_revision ON bundle_inputs (artifact_id, revision)",
    "CREATE INDEX bundle_inputs_digest ON bundle_inputs (digest)",
    "CREATE INDEX revisions_run ON revisions (run_id, change_sequence) WHERE run_id IS NOT NULL",
    f"""
    CREATE TABLE manifests (
        run_id TEXT PRIMARY KEY REFERENCES runs (id),
        operation TEXT NOT NULL,
        status TEXT NOT NULL {_STATUS_CHECK},
        parameters TEXT NOT NULL CHECK (json_valid(parameters)),
        steps TEXT NOT NULL CHECK (json_valid(steps) AND json_type(steps) = 'array'),
        diagnostics TEXT NOT NULL CHECK (json_valid(diagnostics)),
        error TEXT,
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        final INTEGER NOT NULL CHECK (final IN (0, 1))
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE manifest_refs (
        run_id TEXT NOT NULL REFERENCES manifests (run_id),
        direction TEXT NOT NULL CHECK (direction IN ('input', 'output')),
        position INTEGER NOT NULL CHECK (position >= 1),
        artifact_id TEXT NOT NULL,
        revision INTEGER NOT NULL,
        digest TEXT NOT NULL,
        role TEXT,
        PRIMARY KEY (run_id, direction, position),
        FOREIGN KEY (artifact_id, revision) REFERENCES revisions (artifact_id, revision)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE context_packages (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        metadata TEXT NOT NULL CHECK (json_valid(metadata)),
        created_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE context_references (
        package_id TEXT NOT NULL REFERENCES context_packages (id),
        position INTEGER NOT NULL CHECK (position >= 1),
        kind TEXT NOT NULL CHECK (kind IN ('artifact', 'relationship', 'run', 'external')),
        target_id TEXT NOT NULL,
        revision INTEGER,
        digest TEXT,
        system TEXT,
        uri TEXT,
        note TEXT,
        PRIMARY KEY (package_id, position),
        FOREIGN KEY (target_id, revision) REFERENCES revisions (artifact_id, revision)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE external_references (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        system TEXT NOT NULL,
        external_id TEXT NOT NULL,
        uri TEXT,
        artifact_id TEXT,
        revision INTEGER,
        digest TEXT,
        recorded_by TEXT NOT NULL,
        metadata TEXT NOT NULL CHECK (json_valid(metadata)),
        recorded_at TEXT NOT NULL,
        CHECK ((artifact_id IS NULL) = (revision IS NULL)
               AND (revision IS NULL) = (digest IS NULL)),
        FOREIGN KEY (artifact_id, revision) REFERENCES revisions (artifact_id, revision)
    )
    """,
)


@_migration("0002_runs_context")
def _runs_context(db: Database) -> None:
    for statement in _RUNS_CONTEXT:
        db.conn.execute(statement)


# One row per top-level metadata key of each live artifact, so a metadata
# filter is an index lookup instead of json_each over every artifact.
# ``value`` is NULL for true/false/null (``type`` says which), the number or
# text for scalars, and canonical JSON for arrays and objects.
_METADATA_INDEX = (
    """
    CREATE TABLE artifact_metadata (
        artifact_sequence INTEGER NOT NULL REFERENCES artifacts (sequence),
        key TEXT NOT NULL,
        type TEXT NOT NULL,
        value,
        PRIMARY KEY (artifact_sequence, key)
    ) WITHOUT ROWID
    """,
    "CREATE INDEX artifact_metadata_lookup ON artifact_metadata "
    "(key, type, value, artifact_sequence)",
)


@_migration("0003_metadata_index")
def _metadata_index(db: Database) -> None:
    for statement in _METADATA_INDEX:
        db.conn.execute(statement)
    rows = db.conn.execute(
        "SELECT sequence, metadata FROM artifacts WHERE deleted_at IS NULL"
    ).fetchall()
    db.conn.executemany(
        "INSERT INTO artifact_metadata VALUES (?, ?, ?, ?)",
        [row for sequence, metadata in rows for row in metadata_rows(sequence, metadata)],
    )


# Searchable text waiting for ``artifact_text`` (ADR 0004). A write adds one
# plain B-tree row here instead of some 1,100 trigram postings; the backend
# moves rows into FTS5 in large batches, and text queries read both tables,
# so every committed write is searchable at once. A sequence is in at most
# one of the two tables.
_TEXT_BACKLOG = (
    """
    CREATE TABLE text_backlog (
        sequence INTEGER PRIMARY KEY REFERENCES artifacts (sequence),
        folded TEXT NOT NULL
    )
    """,
)


@_migration("0004_text_backlog")
def _text_backlog(db: Database) -> None:
    for statement in _TEXT_BACKLOG:
        db.conn.execute(statement)


WORDS_TABLE = """
    CREATE VIRTUAL TABLE artifact_words USING fts5 (words, tokenize = "ascii tokenchars '_'")
    """

# Word search (ADR 0006) replaces the trigram table and its backlog. Every
# live artifact starts pending: the repository derives its words from its
# body once the index is open (the old table held folded text, from which
# NFKC words cannot always be recovered exactly).
_WORDS = (
    "DROP TABLE text_backlog",
    "DROP TABLE artifact_text",
    WORDS_TABLE,
    """
    CREATE TABLE unsearchable (
        sequence INTEGER PRIMARY KEY REFERENCES artifacts (sequence),
        reason TEXT NOT NULL CHECK (reason IN ('too-large', 'not-utf8', 'binary'))
    )
    """,
    """
    CREATE TABLE text_pending (
        sequence INTEGER PRIMARY KEY REFERENCES artifacts (sequence)
    )
    """,
    "INSERT INTO text_pending SELECT sequence FROM artifacts WHERE deleted_at IS NULL",
)


@_migration("0005_words")
def _words(db: Database) -> None:
    for statement in _WORDS:
        db.conn.execute(statement)


# Change sets (ADR 0007). Every change record names the change set of the
# transaction that wrote it; records written before this migration name none.
# Deleted relationships move to ``deleted_relationships`` (with the sequence
# of their deletion) instead of vanishing, so reads as of an earlier point see
# them; those deleted before this migration are rebuilt from their change
# records, which never held their metadata (``{}``). ``revisions_name`` finds
# every artifact that ever had a name.
_CHANGE_SETS = (
    """
    CREATE TABLE change_sets (
        sequence INTEGER PRIMARY KEY CHECK (sequence >= 1),
        id TEXT NOT NULL UNIQUE,
        timestamp TEXT NOT NULL,
        actor TEXT,
        message TEXT
    )
    """,
    "ALTER TABLE changes ADD COLUMN change_set TEXT REFERENCES change_sets (id)",
    "CREATE INDEX changes_change_set ON changes (change_set) WHERE change_set IS NOT NULL",
    "CREATE INDEX revisions_name ON revisions (collection_id, name)",
    """
    CREATE TABLE deleted_relationships (
        sequence INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        source_id TEXT NOT NULL,
        target_id TEXT NOT NULL,
        relationship_type TEXT NOT NULL,
        metadata TEXT NOT NULL CHECK (json_valid(metadata)),
        created_at TEXT NOT NULL,
        deleted_sequence INTEGER NOT NULL UNIQUE
    )
    """,
    """
    INSERT INTO deleted_relationships
    SELECT made.sequence, made.entity_id, json_extract(made.details, '$.source_id'),
           json_extract(made.details, '$.target_id'),
           json_extract(made.details, '$.relationship_type'), '{}', made.timestamp,
           gone.sequence
    FROM changes made JOIN changes gone ON gone.entity_id = made.entity_id
    WHERE made.entity_kind = 'relationship' AND made.action = 'create'
      AND gone.action = 'delete'
    """,
)


@_migration("0006_change_sets")
def _change_sets(db: Database) -> None:
    for statement in _CHANGE_SETS:
        db.conn.execute(statement)


# Digest lookups (the live artifacts, the revisions holding a body) go through
# indexes keyed by the digest's first byte, then the creation sequence, then
# the digest: a bulk ingest appends at the ends of 256 ranges. Keyed by the
# whole digest, every insert landed on a page of its own once the indexes
# outgrew a batch: at a million artifacts the two indexes were 58% of the
# pages a batch of 10,000 wrote (docs/performance.md, "Growth"). A lookup
# reads its range (1/256 of the rows) in the index, without the table.
def bucket_sql(column: str) -> str:
    """The SQL of a digest column's bucket, as the digest indexes begin with it.

    A query must write this expression, and its test of the whole digest as
    ``+column = ?``: given ``column = ?``, SQLite puts the value into the
    expression (constant propagation) and then finds no index for it."""
    return f"substr({column}, 8, 2)"


def digest_bucket(digest: str) -> str:
    """The bucket of ``digest`` (``blake3:<hex>``): its first byte, in hex."""
    return digest[7:9]


_DIGEST_BUCKETS = (
    "DROP INDEX artifacts_live_digest",
    f"CREATE INDEX artifacts_live_digest ON artifacts ({bucket_sql('digest')}, sequence, digest) "
    "WHERE deleted_at IS NULL",
    "DROP INDEX revisions_digest",
    f"CREATE INDEX revisions_digest ON revisions ({bucket_sql('digest')}, change_sequence, digest)",
)


@_migration("0007_digest_buckets")
def _digest_buckets(db: Database) -> None:
    for statement in _DIGEST_BUCKETS:
        db.conn.execute(statement)


def metadata_rows(sequence: int, metadata_json: str) -> list[tuple[int, str, str, Any]]:
    """The ``artifact_metadata`` rows of one artifact's metadata."""
    return [
        (sequence, key, *metadata_cell(value)) for key, value in json.loads(metadata_json).items()
    ]


def metadata_cell(value: Any) -> tuple[str, Any]:
    """``(type, value)`` as stored in ``artifact_metadata``, with SQLite's JSON type names."""
    if value is None:
        return "null", None
    if value is True:
        return "true", None
    if value is False:
        return "false", None
    if isinstance(value, int):
        return "integer", value
    if isinstance(value, float):
        return "real", value
    if isinstance(value, str):
        return "text", value
    return ("array" if isinstance(value, list) else "object"), canonical_json(value)


@functools.cache
def migrations() -> Migrations:
    """The sqlite-utils migration set that applies :data:`KNOWN` in order."""
    from sqlite_utils.migrations import Migrations

    migration_set = Migrations(MIGRATION_SET)
    for name, step in _STEPS:
        migration_set(name=name)(step)
    return migration_set


def _database(conn: sqlite3.Connection) -> Database:
    from sqlite_utils import Database

    return Database(conn, recursive_triggers=False, execute_plugins=False)


def applied_migrations(conn: sqlite3.Connection) -> list[str]:
    """Names of the applied migrations, in the order they were applied."""
    if not conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,)
    ).fetchone():
        return []
    rows = conn.execute(
        f"SELECT name FROM {MIGRATIONS_TABLE} WHERE migration_set = ? ORDER BY rowid",
        (MIGRATION_SET,),
    )
    return [name for (name,) in rows]


def pending(conn: sqlite3.Connection, where: str) -> list[str]:
    """Names of the migrations not yet applied; refuse an index this code cannot read.

    ``where`` names the index file in error messages.
    """
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if tables and MIGRATIONS_TABLE not in tables:
        raise StoreFormatError(
            f"{where} is a SQLite database but not a kontextual index "
            f"(it has no {MIGRATIONS_TABLE} table)"
        )
    applied = applied_migrations(conn)
    unknown = [name for name in applied if name not in KNOWN]
    if unknown:
        raise StoreFormatError(
            f"{where} has schema migrations this version of kontextual-engine does not "
            f"know ({', '.join(unknown)}); it was written by a newer version: upgrade "
            "kontextual-engine to open it"
        )
    return [name for name in KNOWN if name not in applied]


def migrate(conn: sqlite3.Connection) -> None:
    """Apply pending migrations. Call inside an open ``BEGIN IMMEDIATE`` transaction."""
    assert conn.in_transaction, "migrate() needs the caller's BEGIN IMMEDIATE"
    migrations().apply(_database(conn))
