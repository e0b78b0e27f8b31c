"""Permissions: the modes a new store gets, and a store its user may only read.

Modes are checked in child processes under two umasks. Read-only access is
checked the only way that means anything for a test suite running as root:
the store is owned by root (directories 0755, files 0644, objects 0444) and
``permission_worker.py`` drops to ``nobody`` before opening it, then runs
every read (all must work) and every write (each must raise
``ReadOnlyStoreError``).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck

from ..test_snapshot import populate

WORKER = Path(__file__).with_name("permission_worker.py")
NOBODY = 65534
as_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="dropping to another user needs root (the CI VM runs the suite as root)",
)

MAKE_STORE = textwrap.dedent("""
    import json, os, stat, sys
    os.umask(int(sys.argv[2], 8))
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
    root = sys.argv[1]
    with SQLiteKnowledgeRepository.open(root, "full", create=True) as repo:
        cid = repo.create_collection("c").id
        artifact = repo.create_artifact(cid, "a", b"body", artifact_type="t")
        hexd = artifact.digest.removeprefix("blake3:")
        open_modes = {name: stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode)
                      for name in ("index.sqlite-wal", "index.sqlite-shm")}
    def mode(*parts):
        return stat.S_IMODE(os.lstat(os.path.join(root, *parts)).st_mode)
    print(json.dumps({
        "root": mode(), "objects": mode("objects"), "tmp": mode("tmp"),
        "fanout": mode("objects", hexd[:2]), "object": mode("objects", hexd[:2], hexd[2:]),
        "marker": mode("kontextual.json"), "index": mode("index.sqlite"), **open_modes,
    }))
""")


def modes(root: Path, umask: int) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-c", MAKE_STORE, str(root), f"{umask:o}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {name: int(value) for name, value in json.loads(result.stdout).items()}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002, 0o000])
def test_new_store_modes(tmp_path: Path, umask: int) -> None:
    got = modes(tmp_path / "new" / "store", umask)
    directory = 0o755 & ~umask
    sqlite_file = 0o644 & ~umask
    assert got == {
        "root": 0o700,  # private documents: only the owner lists or reads
        "objects": directory,  # the root already gates access
        "tmp": directory,
        "fanout": directory,
        "object": 0o444,  # set explicitly: never writable, whatever the umask
        "marker": 0o444,
        "index": sqlite_file,  # SQLite's own default (0644 less the umask)
        "index.sqlite-wal": sqlite_file,
        "index.sqlite-shm": sqlite_file,
    }


def test_an_existing_empty_directory_keeps_its_mode(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    root.chmod(0o750)
    assert modes(root, 0o022)["root"] == 0o750


def test_writable_objects_are_reported(tmp_path: Path) -> None:
    with SQLiteKnowledgeRepository.open(tmp_path / "s", "none", create=True) as repo:
        cid = repo.create_collection("c").id
        digest = repo.create_artifact(cid, "a", b"body", artifact_type="t").digest
        repo.objects.path(digest).chmod(0o644)
        report = fsck(repo)
        assert report.ok  # a warning, not damage
        assert [(f.severity, f.kind, f.subject) for f in report.findings] == [
            ("warning", "writable", digest)
        ]


# -- a store the user may only read ---------------------------------------------


def lock_down(store: Path) -> None:
    """Owned by root; directories 0755, files 0644, objects 0444."""
    for path in [store, *store.rglob("*")]:
        os.chown(path, 0, 0, follow_symlinks=False)
        if path.is_dir():
            path.chmod(0o755)
        elif path.parent.parent.name != "objects":
            path.chmod(0o644)


@pytest.fixture
def public(tmp_path: Path) -> Iterator[Path]:
    """A directory every user can reach (pytest's own tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="kontextual-permissions-"))
    path.chmod(0o755)
    for parent in path.parents:
        assert parent.stat().st_mode & 0o001, f"{parent} is not searchable by others"
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def readable_store(public: Path) -> Path:
    store = public / "store"
    with SQLiteKnowledgeRepository.open(store, "full", create=True) as repo:
        populate(repo)
    lock_down(store)
    return store


@pytest.fixture
def scratch(public: Path) -> Path:
    path = public / "scratch"
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    return path


def run_as_nobody(store: Path, scratch: Path, *, read_only: bool) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, str(WORKER), str(store), str(scratch), "1" if read_only else "0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    assert out["uid"] == NOBODY
    return out


def assert_reads_work_and_writes_refused(out: dict[str, Any]) -> None:
    assert out["open"] == "ok"
    failed_reads = {name: outcome for name, outcome in out["reads"].items() if outcome != "ok"}
    assert failed_reads == {}
    wrong_writes = {
        name: outcome
        for name, outcome in out["writes"].items()
        if not outcome.startswith("ReadOnlyStoreError: ")
    }
    assert wrong_writes == {}
    assert out["import"].startswith(("SnapshotError", "ReadOnlyStoreError"))
    assert out["close"] == "ok"


@pytest.fixture
def held_open(readable_store: Path) -> Iterator[Path]:
    """The owner has the store open (so its -wal and -shm exist) while others read."""
    code = textwrap.dedent("""
        import sys, time
        from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
        repo = SQLiteKnowledgeRepository.open(sys.argv[1], "full")
        repo.list_collections()
        print("open", flush=True)
        sys.stdin.read()
        repo.close()
    """)
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(readable_store)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().strip() == "open"
        assert (readable_store / "index.sqlite-shm").exists()
        yield readable_store
    finally:
        owner.communicate("", timeout=60)
    assert owner.returncode == 0


@as_root
def test_other_user_reads_everything_while_the_owner_has_it_open(
    held_open: Path, scratch: Path
) -> None:
    assert_reads_work_and_writes_refused(run_as_nobody(held_open, scratch, read_only=True))
    assert (scratch / "export" / "snapshot.json").exists()


@as_root
def test_other_user_reads_a_closed_store_read_only(readable_store: Path, scratch: Path) -> None:
    out = run_as_nobody(readable_store, scratch, read_only=True)
    assert_reads_work_and_writes_refused(out)


@as_root
def test_plain_open_of_an_unwritable_store_reads_and_refuses_writes(
    readable_store: Path, scratch: Path
) -> None:
    assert_reads_work_and_writes_refused(run_as_nobody(readable_store, scratch, read_only=False))


@as_root
def test_plain_open_while_the_owner_has_it_open_reads(held_open: Path, scratch: Path) -> None:
    out = run_as_nobody(held_open, scratch, read_only=False)
    assert out["open"] == "ok"
    assert {name: outcome for name, outcome in out["reads"].items() if outcome != "ok"} == {}
    # Bodies go through the object store, which maps EACCES to the typed error.
    assert out["writes"]["add_object"].startswith("ReadOnlyStoreError: ")
    assert out["writes"]["create_artifact"].startswith("ReadOnlyStoreError: ")


@as_root
def test_plain_open_while_the_owner_has_it_open_refuses_writes_typed(
    held_open: Path, scratch: Path
) -> None:
    out = run_as_nobody(held_open, scratch, read_only=False)
    assert out["open"] == "ok"
    assert_reads_work_and_writes_refused(out)
    assert out["close"] == "ok"


def test_lock_down_leaves_nothing_writable_to_others(readable_store: Path) -> None:
    for path in [readable_store, *readable_store.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == 0
        assert not stat.S_IMODE(st.st_mode) & 0o022, path
