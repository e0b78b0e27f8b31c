"""What a user would pick instead, and the machine's physical floors."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import blake3

from kontextual_engine.storage import text
from kontextual_engine.storage.durable import fsync_dir, sync_filesystem
from kontextual_engine.storage.sqlite import schema

GIT = shutil.which("git") or "/usr/bin/git"
# .ci/run installs the sqlite3 command; without it the dump baseline falls back
# to Python's iterdump (slower, so our ratio against it looks better: noted).
SQLITE3 = shutil.which("sqlite3")

# git >= 2.36: fsync loose objects with the batch method (one flush for all).
GIT_DURABLE_BATCH = ("-c", "core.fsync=loose-object", "-c", "core.fsyncMethod=batch")


def _git_env(git_dir: Path, work_tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_DIR=str(git_dir),
        GIT_WORK_TREE=str(work_tree),
        GIT_CONFIG_NOSYSTEM="1",
        HOME=str(git_dir.parent),
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="bench@example.invalid",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="bench@example.invalid",
    )
    return env


def git_add(source: Path, git_dir: Path, config: Sequence[str] = ()) -> float:
    """``git init`` then ``git add -A`` of ``source``; seconds for both."""
    env = _git_env(git_dir, source)
    start = time.perf_counter()
    subprocess.run([GIT, "init", "-q"], env=env, cwd=source, check=True)
    subprocess.run([GIT, *config, "add", "-A"], env=env, check=True, cwd=source)
    return time.perf_counter() - start


def git_grep(source: Path, git_dir: Path, terms: Sequence[str], *, words: bool = False) -> int:
    """Files of the work tree holding every term (case-insensitive, fixed strings;
    with ``words``, only where a term is neither preceded nor followed by a
    letter, digit or underscore)."""
    env = _git_env(git_dir, source)
    args = [GIT, "grep", "-l", "-F", "-i", "--all-match", *(["-w"] if words else [])]
    for term in terms:
        args += ["-e", term]
    result = subprocess.run(args, env=env, cwd=source, capture_output=True, check=False)
    if result.returncode not in (0, 1):
        raise RuntimeError(result.stderr.decode(errors="replace"))
    return len(result.stdout.splitlines())


_CEILING_SCHEMA = (
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, digest TEXT NOT NULL, "
    "size INTEGER NOT NULL, metadata TEXT NOT NULL)"
)


# The store's own words table, as migration 0005_words creates it.
(WORDS_TABLE,) = [statement for statement in schema._WORDS if "USING fts5" in statement]
_INSERT_WORDS = "INSERT INTO artifact_words (rowid, words) VALUES (?, ?)"


def _ceiling_connection(path: Path) -> sqlite3.Connection:
    """An index as our ``batch`` mode opens one: WAL, ``synchronous=NORMAL``."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def raw_ceiling(
    source: Path,
    names: Sequence[str],
    target: Path,
    *,
    text_index: bool = False,
    files_only: bool = False,
) -> float:
    """The physical ceiling of a bulk ingest.

    Read each file, name it by its BLAKE3 digest, write it to ``tmp/`` and
    rename it into a fan-out directory; one syncfs; then one row per file with
    ``executemany`` in one SQLite transaction (WAL, synchronous=NORMAL, as our
    ``batch`` mode). No validation, no revisions, no change log, and no text
    index unless ``text_index``: then each body's :func:`text.indexed_form`
    also goes into an FTS5 table defined as our ``artifact_words``, to show
    what that index alone costs. With
    ``files_only``: the files and nothing else, no sync and no SQLite, the least
    that any store keeping one file per body must do.
    """
    start = time.perf_counter()
    objects, tmp = target / "objects", target / "tmp"
    objects.mkdir(parents=True)
    tmp.mkdir()
    fans: set[str] = set()
    rows = []
    texts: list[tuple[int, str]] = []
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for number, name in enumerate(names):
        with open(source / name, "rb") as reader:
            data = reader.read()
        hexd = blake3.blake3(data).hexdigest()
        fan = hexd[:2]
        if fan not in fans:
            os.mkdir(objects / fan)
            fans.add(fan)
        staged = f"{tmp}/{number}"
        fd = os.open(staged, flags, 0o444)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(staged, f"{objects}/{fan}/{hexd[2:]}")
        rows.append((name, "blake3:" + hexd, len(data), "{}"))
        if text_index:
            texts.append((number + 1, text.indexed_form(data.decode("utf-8"))))
    if files_only:
        return time.perf_counter() - start
    sync_filesystem(target)
    conn = _ceiling_connection(target / "index.sqlite")
    conn.execute(_CEILING_SCHEMA)
    if text_index:
        conn.execute(WORDS_TABLE)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO items (name, digest, size, metadata) VALUES (?, ?, ?, ?)", rows)
    if text_index:
        conn.executemany(_INSERT_WORDS, texts)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - start


def words_insert(texts: Sequence[str], target: Path) -> float:
    """Only the words: ``texts`` (each already :func:`text.indexed_form`) inserted
    into a fresh words table in one transaction, committed and checkpointed."""
    target.mkdir(parents=True)
    conn = _ceiling_connection(target / "index.sqlite")
    conn.execute(WORDS_TABLE)
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_INSERT_WORDS, enumerate(texts, start=1))
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    seconds = time.perf_counter() - start
    conn.close()
    return seconds


class FsyncFloor:
    """Per item: a file written and fsynced, renamed into place, its directory
    fsynced, and one row committed by SQLite with synchronous=FULL in WAL mode."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.objects = target / "objects"
        self.tmp = target / "tmp"
        self.objects.mkdir(parents=True)
        self.tmp.mkdir()
        self.fans: set[str] = set()
        self.conn = sqlite3.connect(target / "index.sqlite", isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute(_CEILING_SCHEMA)
        self.count = 0

    def put(self, name: str, data: bytes) -> None:
        hexd = blake3.blake3(data).hexdigest()
        fan = hexd[:2]
        staged = f"{self.tmp}/{self.count}"
        self.count += 1
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        created = fan not in self.fans
        if created:
            os.mkdir(self.objects / fan)
            self.fans.add(fan)
        os.rename(staged, f"{self.objects}/{fan}/{hexd[2:]}")
        fsync_dir(f"{self.objects}/{fan}")
        if created:
            fsync_dir(str(self.objects))
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.execute(
            "INSERT INTO items (name, digest, size, metadata) VALUES (?, ?, ?, ?)",
            (name, "blake3:" + hexd, len(data), "{}"),
        )
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def copy_and_dump(store: Path, snapshot: Path) -> float:
    """Export baseline: ``cp -r`` of the objects, ``sqlite3 .dump`` of the index."""
    snapshot.mkdir(parents=True)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(store / "objects"), str(snapshot / "objects")], check=True)
    if SQLITE3 is not None:
        with open(snapshot / "dump.sql", "wb") as out:
            subprocess.run([SQLITE3, str(store / "index.sqlite"), ".dump"], stdout=out, check=True)
    else:
        conn = sqlite3.connect(store / "index.sqlite")
        with open(snapshot / "dump.sql", "w", encoding="utf-8") as text:
            for statement in conn.iterdump():
                text.write(statement + "\n")
        conn.close()
    return time.perf_counter() - start


def copy_and_load(snapshot: Path, store: Path) -> float:
    """Import baseline: ``cp -r`` the objects back, load the dump, one syncfs."""
    store.mkdir(parents=True)
    start = time.perf_counter()
    subprocess.run(["cp", "-r", str(snapshot / "objects"), str(store / "objects")], check=True)
    if SQLITE3 is not None:
        with open(snapshot / "dump.sql", "rb") as dump:
            subprocess.run([SQLITE3, str(store / "index.sqlite")], stdin=dump, check=True)
    else:
        conn = sqlite3.connect(store / "index.sqlite")
        conn.executescript((snapshot / "dump.sql").read_text(encoding="utf-8"))
        conn.close()
    sync_filesystem(store)
    return time.perf_counter() - start


def child_result(output: bytes) -> dict[str, float]:
    result: dict[str, float] = json.loads(output.decode().strip().splitlines()[-1])
    return result
