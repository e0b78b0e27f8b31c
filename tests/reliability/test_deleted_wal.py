"""``index.sqlite-wal`` deleted under a process that has the store open.

SQLite keeps writing to the unlinked file, so without a check every write
the process commits afterwards, and every earlier write not yet checkpointed,
vanishes when it dies. The repository notices the -wal is no longer the file
it opened before it acknowledges a commit: that write fails, the earlier ones
are copied into the index, and later writes are refused.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kontextual_engine.errors import DamagedStoreError
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck

WRITES = 30

WRITER = textwrap.dedent("""
    import os, sys
    from kontextual_engine.errors import DamagedStoreError
    from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
    repo = SQLiteKnowledgeRepository.open(sys.argv[1], "full")
    cid = repo.get_collection_by_name("c").id
    for i in range(int(sys.argv[2])):
        repo.create_artifact(cid, f"a{i}", b"acknowledged %d" % i, artifact_type="t")
    print("written", flush=True)
    sys.stdin.readline()  # the parent deletes the -wal meanwhile
    for name in ("late", "later"):
        try:
            repo.create_artifact(cid, name, b"after the wal was deleted", artifact_type="t")
            print("acknowledged", name, flush=True)
        except DamagedStoreError as exc:
            print("refused", name, str(exc).replace("\\n", " "), flush=True)
    os._exit(0)  # dies without closing, as a killed process would
""")


@pytest.mark.parametrize("replace", [False, True])
def test_deleted_wal_loses_no_acknowledged_write(tmp_path: Path, replace: bool) -> None:
    store = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(store, "full", create=True) as repo:
        repo.create_collection("c")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store), str(WRITES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "written"
    wal = store / "index.sqlite-wal"
    assert wal.stat().st_size > 0  # the writes are in the WAL, not yet in the index
    wal.unlink()
    if replace:
        wal.write_bytes(b"")
    child.stdin.write("go\n")
    child.stdin.flush()
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [["refused", "late"], ["refused", "later"]]
    assert "-wal" in lines[0] and ("deleted" in lines[0] or "replaced" in lines[0]), lines[0]
    assert "kontextual fsck" in lines[0] and "were copied into the index" in lines[0], lines[0]
    with SQLiteKnowledgeRepository.open(store, "full") as repo:
        names = {a.name for a in repo.query()}
        assert names == {f"a{i}" for i in range(WRITES)}
        for i in range(WRITES):
            assert repo.read_content(repo.query(name=f"a{i}")[0].id) == b"acknowledged %d" % i
        assert fsck(repo, full=True).errors == []


def test_in_process_writes_stop_after_the_wal_is_deleted(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(store, "full", create=True) as repo:
        cid = repo.create_collection("c").id
        repo.create_artifact(cid, "first", b"one", artifact_type="t")
        (store / "index.sqlite-wal").unlink()
        with pytest.raises(DamagedStoreError, match="was deleted"):
            repo.create_artifact(cid, "second", b"two", artifact_type="t")
        with pytest.raises(DamagedStoreError, match="was deleted"):
            repo.create_collection("d")
        assert [a.name for a in repo.query()] == ["first"]  # reads still work
    with SQLiteKnowledgeRepository.open(store, "full") as repo:
        assert [a.name for a in repo.query()] == ["first"]
        repo.create_artifact(repo.get_collection_by_name("c").id, "third", b"3", artifact_type="t")


def test_writes_lost_with_the_wal_are_reported_as_possibly_lost(tmp_path: Path) -> None:
    """Killed right after its -wal is deleted, a writer cannot save anything: fsck
    then names the bodies of the lost writes as possibly lost, not as plain garbage."""
    store = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(store, "full", create=True) as repo:
        cid = repo.create_collection("c").id
        repo.create_artifact(cid, "old", b"checkpointed long ago", artifact_type="t")
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store), str(WRITES)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "written"
    (store / "index.sqlite-wal").unlink()
    child.kill()
    child.wait(timeout=60)
    with SQLiteKnowledgeRepository.open(store, "full") as repo:
        assert [a.name for a in repo.query()] == ["old"]  # the 30 are gone
        report = fsck(repo, full=True)
    lost = [f for f in report.findings if f.kind == "possibly-lost-write"]
    assert len(lost) == WRITES
    assert all(
        f.severity == "warning" and "restore the store from a backup" in f.detail for f in lost
    )
    assert [f for f in report.findings if f.kind == "unreferenced-object"] == []
