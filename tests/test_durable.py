"""storage/durable.py is the one place that writes files durably, and the
object store package is cut into modules of one concern each."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import ValidationError
from kontextual_engine.storage import durable
from kontextual_engine.storage.objects import ObjectStore

SRC = Path(__file__).resolve().parent.parent / "src" / "kontextual_engine"
STORAGE = SRC / "storage"
# What only durable.py may do: raw fsync, link/rename into place, syncfs, the open flags.
RAW = re.compile(
    r"os\.fsync\(|os\.link\(|os\.rename\(|shutil\.copy|ctypes|O_NOFOLLOW|O_CLOEXEC|O_DIRECTORY"
)


def test_only_durable_py_fsyncs_links_or_sets_open_flags_in_storage() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(STORAGE.rglob("*.py"))
        if path.name != "durable.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if RAW.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []


def test_object_store_modules_are_small() -> None:
    package = STORAGE / "objects"
    assert package.is_dir() and not (STORAGE / "objects.py").exists()
    sizes = {path.name: len(path.read_text().splitlines()) for path in package.glob("*.py")}
    assert {"layout.py", "store.py", "staging.py", "scan.py", "reader.py"} <= set(sizes)
    assert max(sizes.values()) <= 650, sizes


def test_link_refuses_to_replace_and_link_or_copy_copies_whole(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"x" * 5000)
    taken = tmp_path / "taken"
    taken.write_bytes(b"mine")
    assert durable.link(str(source), str(taken)) is False
    assert taken.read_bytes() == b"mine"
    staging = tmp_path / "staging"
    staging.mkdir()
    counter = iter(range(100))

    def new_file() -> tuple[int, str]:
        path = str(staging / f"{next(counter)}.tmp")
        return os.open(path, durable.WRITE_FLAGS, 0o600), path

    with pytest.raises(FileExistsError):
        durable.link_or_copy(str(source), str(taken), new_file=new_file, mode=0o444)
    linked = tmp_path / "linked"
    assert durable.link_or_copy(str(source), str(linked), new_file=new_file, mode=0o444) == 5000
    assert linked.stat().st_ino == source.stat().st_ino


def test_link_or_copy_copies_where_linking_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"y" * (3 << 20))
    staging = tmp_path / "staging"
    staging.mkdir()
    real_link = os.link

    def cross_device(src: str, dst: str, **kwargs: object) -> None:
        if src == str(source):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst)

    monkeypatch.setattr(os, "link", cross_device)

    def new_file() -> tuple[int, str]:
        path = str(staging / "copy.tmp")
        return os.open(path, durable.WRITE_FLAGS, 0o600), path

    target = tmp_path / "target"
    size = durable.link_or_copy(str(source), str(target), new_file=new_file, mode=0o444)
    assert size == 3 << 20 and target.read_bytes() == source.read_bytes()
    assert target.stat().st_ino != source.stat().st_ino
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert list(staging.iterdir()) == []


def test_add_link_puts_a_file_in_place_and_keeps_an_existing_object(tmp_path: Path) -> None:
    body = b"linked in from elsewhere"
    digest = digest_bytes(body)
    outside = tmp_path / "outside"
    outside.write_bytes(body)
    with ObjectStore(tmp_path / "store") as store:
        assert store.add_link(outside, digest) == len(body)
        assert store.get(digest, verify=True) == body
        assert store.add_link(outside, digest) == len(body)  # already there: kept
        with pytest.raises(ValidationError, match="invalid digest"):
            store.add_link(outside, "blake3:../../etc")
        assert store.tmp_files() == []
