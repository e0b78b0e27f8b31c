"""Stores on read-only media and on full filesystems.

Each test mounts a small tmpfs (root only; skipped with the reason where
mounting is impossible, never when ``CI=true``), puts a store on it, then
makes the filesystem read-only or fills it with a filler file. Reads must keep
working; writes must fail with their own typed error and exit code (6 for a
read-only store, 7 for a full disk), leave the store as it was, and never be
reported as damage.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kontextual_engine.errors import ReadOnlyStoreError, StorageFullError
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import backup, fsck

from .harness import tree_state
from .test_cli_hostile import assert_one_line_error, kontextual

BODY = b"a note that must stay readable\n" * 20


def _cannot(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must be able to mount a tmpfs: {reason}")
    pytest.skip(reason)


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        _cannot("mounting a tmpfs needs root")
    point = tmp_path / "mnt"
    point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        _cannot(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture
def store(mount: Path, tmp_path: Path) -> Path:
    """A closed store on the tmpfs with one artifact, notes/a.md."""
    path = mount / "store"
    source = tmp_path / "a.md"
    source.write_bytes(BODY)
    assert kontextual(path, "init").returncode == 0
    assert kontextual(path, "add", "notes", str(source)).returncode == 0
    return path


def remount(point: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(point)], check=True)


def fill(point: Path, leave: int) -> Path:
    """Fill the filesystem at ``point`` until about ``leave`` bytes are free."""
    filler = point / "filler"
    st = os.statvfs(point)
    size = max(st.f_bavail * st.f_frsize - leave, 0)
    with filler.open("wb") as out:
        out.write(b"\0" * size)
    return filler


def assert_reads_work(store: Path) -> None:
    listed = kontextual(store, "ls", "notes")
    assert listed.returncode == 0 and b"a.md" in listed.stdout, listed.stderr
    shown = kontextual(store, "cat", "notes/a.md")
    assert shown.returncode == 0 and shown.stdout == BODY, shown.stderr
    checked = kontextual(store, "fsck", "--full")
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_read_only_mount_reads_and_refuses_writes(store: Path, mount: Path, tmp_path: Path) -> None:
    remount(mount, "ro")
    try:
        before = tree_state(store)
        assert_reads_work(store)
        other = tmp_path / "b.md"
        other.write_bytes(b"new")
        for args in (["collection", "create", "more"], ["add", "notes", str(other)]):
            line = assert_one_line_error(kontextual(store, *args), code=6, says=str(store))
            assert "read-only" in line and "damaged" not in line, line
        with SQLiteKnowledgeRepository.open(store) as repo:
            assert repo.read_only
            assert repo.read_content(repo.query(name="a.md")[0].id) == BODY
            with pytest.raises(ReadOnlyStoreError, match=str(store)):
                repo.create_collection("more")
        assert tree_state(store) == before
    finally:
        remount(mount, "rw")


@pytest.mark.parametrize("leave", [0, 16 * 1024])
def test_full_disk_reads_work_and_writes_say_the_disk_is_full(
    store: Path, mount: Path, tmp_path: Path, leave: int
) -> None:
    filler = fill(mount, leave)
    assert_reads_work(store)
    other = tmp_path / "b.md"
    other.write_bytes(b"new")
    for args in (["collection", "create", "more"], ["add", "notes", str(other)]):
        line = assert_one_line_error(kontextual(store, *args), code=7, says="no space left on")
        assert "damaged" not in line and "unexpected" not in line, line
    with SQLiteKnowledgeRepository.open(store) as repo:
        assert repo.read_content(repo.query(name="a.md")[0].id) == BODY
        with pytest.raises(StorageFullError, match="no space left on"):
            repo.create_collection("more")
    filler.unlink()
    with SQLiteKnowledgeRepository.open(store) as repo:
        assert [c.name for c in repo.list_collections()] == ["notes"]
        assert fsck(repo, full=True).ok


def test_full_disk_during_writes_acknowledges_nothing(
    store: Path, mount: Path, tmp_path: Path
) -> None:
    """With a little room left SQLite opens for writing; the index write or the
    object write then runs out of space. Each is StorageFullError (exit 7)."""
    filler = fill(mount, 64 * 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(300_000))
    line = assert_one_line_error(kontextual(store, "add", "notes", str(big)), code=7)
    assert "no space left on" in line, line
    with SQLiteKnowledgeRepository.open(store) as repo:
        cid = repo.get_collection_by_name("notes").id
        with pytest.raises(StorageFullError, match="no space left on"):
            for i in range(200):  # index rows until the disk is full
                repo.create_artifact(cid, f"n{i}", os.urandom(2000), artifact_type="t")
        written = {a.name for a in repo.query(collection_id=cid)}
    filler.unlink()
    with SQLiteKnowledgeRepository.open(store) as repo:
        assert {a.name for a in repo.query(collection_id=cid)} == written
        assert "big.bin" not in written
        assert fsck(repo, full=True).errors == []


def _repo_with(path: Path, bodies: list[bytes]) -> SQLiteKnowledgeRepository:
    repo = SQLiteKnowledgeRepository.open(path, "none", create=True)
    collection = repo.create_collection("c").id
    for number, body in enumerate(bodies):
        repo.create_artifact(collection, f"n{number}", body, artifact_type="t")
    return repo


def test_backup_to_another_filesystem_copies_whole_read_only_objects(
    mount: Path, tmp_path: Path
) -> None:
    bodies = [b"copied across filesystems %d\n" % i * 50 for i in range(5)]
    with _repo_with(tmp_path / "store", bodies) as repo:
        report = backup(repo, mount / "copy")  # another filesystem: no hard links
    assert report.objects == len(bodies)
    assert report.bytes == sum(len(body) for body in bodies)
    objects = [path for path in (mount / "copy" / "objects").rglob("*") if path.is_file()]
    assert len(objects) == len(bodies)
    assert all(path.stat().st_nlink == 1 for path in objects)  # copies, not links
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o444 for path in objects)
    assert list((mount / "copy" / "tmp").iterdir()) == []
    with SQLiteKnowledgeRepository.open(mount / "copy", "none") as copy:
        assert fsck(copy, full=True).findings == []
        assert sorted(copy.read_content(a.id) for a in copy.query()) == sorted(bodies)


def test_backup_to_a_full_filesystem_says_so_and_leaves_nothing(
    mount: Path, tmp_path: Path
) -> None:
    big = os.urandom(3 << 20)  # larger than the whole 2 MiB tmpfs
    with _repo_with(tmp_path / "store", [b"small", big]) as repo:
        with pytest.raises(StorageFullError, match="no space left"):
            backup(repo, mount / "copy")
        assert not (mount / "copy").exists()
        (mount / "empty").mkdir()
        with pytest.raises(StorageFullError, match="no space left"):
            backup(repo, mount / "empty")
        assert list((mount / "empty").iterdir()) == []
