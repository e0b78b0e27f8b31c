"""The snapshot package is cut along its seams; records <-> JSON is one codec
beside the models; the snapshot code writes and opens files only through
storage/durable.py and maps digests to paths only through storage/objects/layout.py."""

from __future__ import annotations

import ast
import errno
import os
import re
import stat
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine import codec
from kontextual_engine.errors import SnapshotError, ValidationError
from kontextual_engine.models import Collection, ContextPackage, ContextReference
from kontextual_engine.storage import InMemoryKnowledgeRepository, durable
from kontextual_engine.storage.objects import layout

from .test_snapshot import populate

SRC = Path(__file__).resolve().parent.parent / "src" / "kontextual_engine"
SNAPSHOT = SRC / "snapshot"


# -- the package -------------------------------------------------------------


def test_snapshot_is_a_package_of_small_modules() -> None:
    assert SNAPSHOT.is_dir() and not (SRC / "snapshot.py").exists()
    sizes = {path.stem: len(path.read_text().splitlines()) for path in SNAPSHOT.glob("*.py")}
    assert set(sizes) == {
        "__init__",
        "format",
        "export",
        "reading",
        "restore",
        "replay",
        "version1",
        "change_sets",
    }
    assert max(sizes.values()) <= 600, sizes


def test_the_names_imported_from_the_snapshot_module_are_still_there() -> None:
    from kontextual_engine import snapshot

    for name in (
        "FORMAT",
        "VERSION",
        "MANIFEST",
        "KINDS",
        "MAX_LINE_BYTES",
        "MAX_MANIFEST_BYTES",
        "SnapshotSummary",
        "check_records",
        "export_snapshot",
        "import_snapshot",
        "verify_snapshot",
    ):
        assert getattr(snapshot, name) is not None, name
    assert snapshot.record_to_json is codec.record_to_json
    assert list(snapshot.KINDS)[:2] == ["collections", "artifacts"] and len(snapshot.KINDS) == 13


# -- the codec ---------------------------------------------------------------


def test_the_codec_round_trips_every_kind_of_record() -> None:
    from kontextual_engine.snapshot import KINDS

    repo = InMemoryKnowledgeRepository()
    populate(repo)
    records = repo.export_records()
    for kind, cls in KINDS.items():
        assert records[kind], f"populate made no {kind}"
        for item in records[kind]:
            record = item[0] if isinstance(item, tuple) else item
            data = codec.record_to_json(record)
            assert not any(key.endswith("_json") for key in data)
            assert codec.record_from_json(cls, data, kind) == record


def _collection_json() -> dict[str, Any]:
    repo = InMemoryKnowledgeRepository()
    return codec.record_to_json(repo.create_collection("notes", metadata={"a": 1}))


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        (lambda d: d.update(name=7), r"here: field 'name': unexpected value 7"),
        (lambda d: d.update(sequence=1 << 63), "outside the signed 64-bit range"),
        (lambda d: d.update(sequence=True), "field 'sequence': unexpected value True"),
        (lambda d: d.update(created_at="yesterday"), "field 'created_at': invalid timestamp"),
        (lambda d: d.update(metadata=[1]), "field 'metadata': expected a JSON object"),
        (lambda d: d.update(name=None), "field 'name': must not be null"),
        (lambda d: d.update(extra=1), r"unexpected fields \['extra'\]"),
        (lambda d: d.pop("description"), r"missing fields \['description'\]"),
    ],
)
def test_the_codec_refuses_a_bad_field_with_a_validation_error_naming_it(
    edit: Any, says: str
) -> None:
    data = _collection_json()
    edit(data)
    with pytest.raises(ValidationError, match=says):
        codec.record_from_json(Collection, data, "here")


def test_the_codec_reads_nested_records_and_names_a_bad_one() -> None:
    package = ContextPackage(
        id="ctx_1",
        name="brief",
        metadata_json="{}",
        references=(ContextReference(kind="artifact", target_id="art_1", revision=2),),
        created_at=datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc),
        sequence=9,
    )
    data = codec.record_to_json(package)
    assert data["references"] == [
        {
            "kind": "artifact",
            "target_id": "art_1",
            "revision": 2,
            "digest": None,
            "system": None,
            "uri": None,
            "note": None,
        }
    ]
    assert codec.record_from_json(ContextPackage, data, "here") == package
    data["references"].append("not an object")
    with pytest.raises(ValidationError, match=r"here: field 'references'\[1\]: expected a JSON"):
        codec.record_from_json(ContextPackage, data, "here")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_the_codec_is_plain_functions_beside_the_models() -> None:
    """No I/O, and nothing of storage, snapshots or the command line."""
    imports = _imports(SRC / "codec.py")
    assert imports <= {
        "__future__",
        "dataclasses",
        "functools",
        "json",
        "types",
        "typing",
        "collections.abc",
        "datetime",
        ".errors",
        ".models",
    }, imports
    assert "open(" not in (SRC / "codec.py").read_text()


def test_the_cli_prints_through_the_codec_and_loads_snapshots_only_to_export_or_import(
    tmp_path: Path,
) -> None:
    assert "..codec" in _imports(SRC / "cli" / "output.py")
    # Statically: every import of the snapshot package in cli/ is inside export or import.
    for path in sorted((SRC / "cli").rglob("*.py")):
        tree = ast.parse(path.read_text())
        inside: dict[int, str] = {}
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef):
                for node in ast.walk(function):
                    inside.setdefault(id(node), function.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and "snapshot" in (node.module or ""):
                assert inside.get(id(node)) in {"export", "import_"}, (path, node.lineno)
    # And when it runs: other commands never load it.
    script = f"""
import sys
from click.testing import CliRunner
from kontextual_engine.cli import cli
store = {str(tmp_path / "store")!r}
runner = CliRunner()
for args in (["init", store], ["--store", store, "stats"], ["--store", store, "fsck"]):
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, (args, result.output)
loaded = sorted(name for name in sys.modules if name.startswith("kontextual_engine.snapshot"))
assert loaded == [], loaded
result = runner.invoke(cli, ["--store", store, "export", {str(tmp_path / "snap")!r}])
assert result.exit_code == 0, result.output
assert "kontextual_engine.snapshot" in sys.modules
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


# -- one place for files and for the object layout ----------------------------

# What only storage/durable.py may do; and the digest <-> path mapping, which
# only storage/objects/layout.py spells out.
RAW = re.compile(
    r"os\.fsync\(|os\.link\(|os\.rename\(|O_NOFOLLOW|O_CLOEXEC|O_DIRECTORY|O_NONBLOCK|O_RDONLY"
)
LAYOUT = re.compile(r"\{62\}|\{2\}|\[:2\]|\[2:\]|0-9a-f|PREFIX \+")


def test_the_snapshot_code_uses_durable_py_and_layout_py() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in sorted(SNAPSHOT.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if (RAW.search(line) or LAYOUT.search(line)) and not line.lstrip().startswith("#")
    ]
    assert offenders == []


def test_a_snapshot_object_is_where_the_store_layout_puts_it() -> None:
    from kontextual_engine.snapshot.format import object_digest, object_member

    digest = "blake3:" + "ab" * 32
    member = object_member(digest)
    assert member == layout.object_path(layout.OBJECTS_DIR, layout.digest_hex(digest))
    assert object_digest(member) == digest
    assert object_digest("objects/ab/" + "c" * 61) is None
    assert object_digest("index/ab/" + "c" * 62) is None
    with pytest.raises(ValidationError, match="invalid digest"):
        object_member("blake3:../../etc/passwd")


def test_layout_names_every_kind_of_file() -> None:
    assert layout.kind(stat.S_IFCHR) == "character device"
    assert layout.kind(stat.S_IFBLK) == "block device"
    assert layout.kind(stat.S_IFIFO) == "FIFO"
    assert layout.kind(stat.S_IFLNK) == "symbolic link"
    assert layout.kind(0) == "special file"
    assert layout.digest_at("ab", "c" * 62) == "blake3:ab" + "c" * 62


def test_a_device_in_a_snapshot_is_named_as_one(tmp_path: Path) -> None:
    from kontextual_engine.snapshot import export_snapshot, import_snapshot

    repo = InMemoryKnowledgeRepository()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap")
    member = tmp_path / "snap" / "index" / "runs.jsonl"
    member.unlink()
    try:
        os.mknod(member, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("making a device node needs root")
    with pytest.raises(
        SnapshotError, match=r"index/runs\.jsonl is not a regular file: it is a character device"
    ):
        import_snapshot(tmp_path / "snap", InMemoryKnowledgeRepository())


def test_open_beneath_follows_no_link_in_any_component(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "file").write_bytes(b"inside")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_bytes(b"outside")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "a" / "link").symlink_to(outside / "file")
    open_before = len(os.listdir("/proc/self/fd"))
    directory = os.open(root, durable.DIR_FLAGS)
    try:
        with open(durable.open_beneath(directory, "a/file"), "rb") as reader:
            assert reader.read() == b"inside"
        for through_a_link in ("linked/file", "a/link"):
            with pytest.raises(OSError) as caught:
                os.close(durable.open_beneath(directory, through_a_link))
            assert caught.value.errno in (errno.ELOOP, errno.ENOTDIR), through_a_link
        with pytest.raises(FileNotFoundError):
            durable.open_beneath(directory, "a/missing")
    finally:
        os.close(directory)
    assert len(os.listdir("/proc/self/fd")) == open_before  # no directory left open


def test_hard_link_links_never_replaces_and_says_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "source"
    source.write_bytes(b"body")
    assert durable.hard_link(str(source), str(tmp_path / "linked")) is True
    assert (tmp_path / "linked").stat().st_ino == source.stat().st_ino
    with pytest.raises(FileExistsError):
        durable.hard_link(str(source), str(tmp_path / "linked"))
    link = tmp_path / "link"
    link.symlink_to(source)
    assert durable.hard_link(str(link), str(tmp_path / "of-the-link")) is True
    assert (tmp_path / "of-the-link").is_symlink()  # the link itself, not what it points to

    def cross_device(src: str, dst: str, **kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    assert durable.hard_link(str(source), str(tmp_path / "elsewhere")) is False
    assert not (tmp_path / "elsewhere").exists()


def test_export_makes_the_snapshot_durable_before_it_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kontextual_engine.snapshot import export as export_module

    repo = InMemoryKnowledgeRepository()
    cid = repo.create_collection("c").id
    repo.create_artifact(cid, "a", b"body", artifact_type="note")
    events: list[str] = []
    sync, replace, fsync_dir = (
        export_module.sync_filesystem,
        export_module.os.replace,
        export_module.fsync_dir,
    )
    monkeypatch.setattr(
        export_module, "sync_filesystem", lambda p: (events.append("sync"), sync(p))[1]
    )
    monkeypatch.setattr(
        export_module.os, "replace", lambda a, b: (events.append("rename"), replace(a, b))[1]
    )
    monkeypatch.setattr(
        export_module, "fsync_dir", lambda p: (events.append("fsync-parent"), fsync_dir(p))[1]
    )
    export_module.export_snapshot(repo, tmp_path / "snap")
    assert events == ["sync", "rename", "fsync-parent"]
