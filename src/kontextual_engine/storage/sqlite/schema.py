"""The schema of ``index.sqlite``, as an ordered set of migrations.

Every change to the schema is a new migration appended to :data:`MIGRATIONS`;
an applied migration is never edited. A fresh index and an upgraded one end
with the same ``sqlite_master``. The caller runs :func:`migrate` inside its
own ``BEGIN IMMEDIATE`` transaction, so sqlite-utils' ``atomic()`` nests each
migration in a SAVEPOINT instead of opening a deferred ``BEGIN`` (which fails
at once, busy timeout or not, when another process writes).

Layout decisions:

* ``collections``, ``artifacts`` and ``relationships`` use the sequence number
  of the change that created the row as their ``INTEGER PRIMARY KEY``, so
  creation order is rowid order and an ``after`` cursor is a rowid range.
* Deleted collections and artifacts stay as rows with ``deleted_at`` set:
  revisions and change records still point at them. Uniqueness of names
  holds among live rows through partial unique indexes.
* ``artifact_text`` is an FTS5 table with the ``trigram`` tokenizer over the
  already case-folded text (``case_sensitive 1``: no second folding by
  SQLite). Its rowid is the artifact's sequence; only live artifacts with a
  searchable current body have a row. The text is stored, not contentless,
  because terms shorter than a trigram are matched with ``instr()`` on it.
* JSON columns hold canonical JSON and are checked with ``json_valid``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ...errors import StoreFormatError

MIGRATION_SET = "kontextual"
MIGRATIONS_TABLE = Migrations.migrations_table
_Step = Callable[[Database], None]

MIGRATIONS = Migrations(MIGRATION_SET)
KNOWN: list[str] = []


def _migration(name: str) -> Callable[[_Step], _Step]:
    KNOWN.append(name)
    return MIGRATIONS(name=name)


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
    "CREATE INDEX artifacts_live_collection ON artifacts (collection_id) "
    "WHERE deleted_at IS NULL",
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
    "CREATE VIRTUAL TABLE artifact_text USING fts5 "
    "(folded, tokenize = 'trigram case_sensitive 1')",
)


@_migration("0001_core")
def _core(db: Database) -> None:
    for statement in _CORE:
        db.conn.execute(statement)


def _database(conn: sqlite3.Connection) -> Database:
    return Database(conn, recursive_triggers=False, execute_plugins=False)


def pending(conn: sqlite3.Connection, where: str) -> list[str]:
    """Names of the migrations not yet applied; refuse an index this code cannot read.

    ``where`` names the index file in error messages.
    """
    db = _database(conn)
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    )}
    if tables and MIGRATIONS_TABLE not in tables:
        raise StoreFormatError(
            f"{where} is a SQLite database but not a kontextual index "
            f"(it has no {MIGRATIONS_TABLE} table)"
        )
    applied = [migration.name for migration in MIGRATIONS.applied(db)]
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
    MIGRATIONS.apply(_database(conn))
