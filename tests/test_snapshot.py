"""Snapshot export/import: determinism, round trips between backends, tampering."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine.errors import DamagedStoreError, SnapshotError
from kontextual_engine.models import ContextReference
from kontextual_engine.snapshot import export_snapshot, import_snapshot
from kontextual_engine.storage import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    SequentialIds,
)
from kontextual_engine.storage.runs import Pin
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

from .backends import BACKENDS, SQLITE_KINDS, Backend


def populate(repo: KnowledgeRepository) -> None:
    """A repository with every kind of record, deletions and history included."""
    notes = repo.create_collection("notes", metadata={"owner": "ana"})
    scratch = repo.create_collection("scratch")
    a = repo.create_artifact(
        notes.id,
        "a.md",
        b"alpha text",
        artifact_type="note",
        metadata={"n": 1, "tags": ["x"]},
        media_type="text/markdown",
    )
    b = repo.create_artifact(notes.id, "b.md", b"beta \xc3\x9f", artifact_type="note")
    gone = repo.create_artifact(scratch.id, "gone", b"\x00\x01binary", artifact_type="blob")
    repo.update_artifact(a.id, content=b"alpha text v2", provenance={"by": "editor"})
    repo.create_relationship(a.id, b.id, "cites", metadata={"w": 0.5})
    repo.create_relationship(gone.id, a.id, "cites")
    repo.delete_artifact(gone.id)
    repo.delete_collection(scratch.id)
    run = repo.start_run(
        repo.create_run("summarize", parameters={"k": 2}).id, holder={"host": "h", "pid": 1}
    )
    repo.add_inputs(run.id, [Pin(a.id, role="doc"), b.id], parameters={"p": True})
    step = repo.add_step(run.id, "llm")
    repo.set_step_status(step.id, "running")
    out = repo.create_artifact(
        notes.id, "summary.md", b"summary", artifact_type="summary", run_id=run.id
    )
    repo.set_step_status(step.id, "succeeded", diagnostics={"tokens": 5})
    repo.finish_run(run.id, diagnostics={"ok": True})
    repo.create_run("pending-one")
    repo.create_context_package(
        "pack",
        [
            ContextReference("artifact", a.id, revision=1),
            ContextReference("run", run.id),
            ContextReference("external", "m1", system="pm"),
        ],
        metadata={"purpose": "test"},
    )
    repo.record_external_reference("pm", "m1", recorded_by="sync", artifact_id=out.id)


def tree_digest(root: Path) -> str:
    hasher = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        hasher.update(path.relative_to(root).as_posix().encode())
        if path.is_file():
            hasher.update(path.read_bytes())
    return hasher.hexdigest()


@pytest.mark.parametrize("source_kind", BACKENDS)
@pytest.mark.parametrize("target_kind", BACKENDS)
def test_round_trip_is_byte_identical(
    backends: Callable[[str], Backend], tmp_path: Path, source_kind: str, target_kind: str
) -> None:
    source = backends(source_kind).new()
    populate(source)
    export_snapshot(source, tmp_path / "first")
    export_snapshot(source, tmp_path / "again")
    assert tree_digest(tmp_path / "first") == tree_digest(tmp_path / "again")
    target_backend = backends(target_kind)
    target_backend.ids = SequentialIds(start=1000)  # ids never collide with imported ones
    target = target_backend.new()
    import_snapshot(tmp_path / "first", target)
    export_snapshot(target, tmp_path / "second")
    assert tree_digest(tmp_path / "first") == tree_digest(tmp_path / "second")
    assert target.export_records() == source.export_records()
    assert target.query(text="alpha")[0].revision == 2
    a = target.query(name="a.md")[0]
    assert target.read_content(a.id, 1) == b"alpha text"
    # The imported repository goes on where the source stopped.
    next_collection = target.create_collection("later")
    assert target.list_changes(entity_id=next_collection.id)[0].sequence == (
        source.last_sequence() + 1
    )


def test_tar_is_deterministic_and_imports(backend: Backend, tmp_path: Path) -> None:
    repo = backend.new()
    populate(repo)
    export_snapshot(repo, tmp_path / "one.tar", tar=True)
    export_snapshot(repo, tmp_path / "two.tar", tar=True)
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    target = backend.new()
    import_snapshot(tmp_path / "one.tar", target)
    assert target.export_records() == repo.export_records()


def test_import_refuses_non_empty(backend: Backend, tmp_path: Path) -> None:
    repo = backend.new()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap")
    with pytest.raises(SnapshotError, match="empty"):
        import_snapshot(tmp_path / "snap", repo)


def test_export_refuses_non_empty_destination(backend: Backend, tmp_path: Path) -> None:
    repo = backend.new()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(SnapshotError, match="not empty"):
        export_snapshot(repo, tmp_path / "busy")


def _objects(root: Path) -> list[Path]:
    return sorted(p for p in (root / "objects").rglob("*") if p.is_file())


def _edit_line(root: Path, kind: str, edit: Callable[[dict], dict], *, rehash: bool) -> None:  # type: ignore[type-arg]
    path = root / "index" / f"{kind}.jsonl"
    lines = path.read_text().splitlines()
    lines[0] = json.dumps(edit(json.loads(lines[0])), sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    if rehash:
        from kontextual_engine.digests import digest_bytes

        manifest = json.loads((root / "snapshot.json").read_text())
        manifest["files"][f"index/{kind}.jsonl"] = digest_bytes(path.read_bytes())
        (root / "snapshot.json").write_text(json.dumps(manifest))


def flip_body_byte(root: Path) -> None:
    victim = _objects(root)[0]
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[0] ^= 0x01
    victim.write_bytes(bytes(data))


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "flipped body byte": flip_body_byte,
    "missing object": lambda root: _objects(root)[0].unlink(),
    "extra object": lambda root: (
        (root / "objects" / "00").mkdir()
        or (root / "objects" / "00" / ("0" * 62)).write_bytes(b"stray")
    ),
    "edited jsonl line": lambda root: _edit_line(
        root, "artifacts", lambda d: {**d, "name": "renamed"}, rehash=False
    ),
    "dangling relationship": lambda root: _edit_line(
        root, "relationships", lambda d: {**d, "target_id": "art_missing"}, rehash=True
    ),
    "duplicate id": lambda root: (
        _edit_line(root, "collections", lambda d: d, rehash=False)
        or _duplicate_first_line(root, "collections")
    ),
    "truncated file": lambda root: (root / "index" / "changes.jsonl").write_bytes(
        (root / "index" / "changes.jsonl").read_bytes()[:-40]
    ),
    "missing manifest": lambda root: (root / "snapshot.json").unlink(),
    "newer version": lambda root: (root / "snapshot.json").write_text(
        json.dumps({**json.loads((root / "snapshot.json").read_text()), "version": 99})
    ),
    "wrong field type": lambda root: _edit_line(
        root, "revisions", lambda d: {**d, "revision": "1"}, rehash=True
    ),
    "unknown field": lambda root: _edit_line(
        root, "runs", lambda d: {**d, "extra": 1}, rehash=True
    ),
    "sequence gap": lambda root: _edit_line(
        root, "changes", lambda d: {**d, "sequence": 0}, rehash=True
    ),
    "bad digest in revision": lambda root: _edit_line(
        root, "revisions", lambda d: {**d, "digest": "blake3:" + "f" * 64}, rehash=True
    ),
    "symlinked object": lambda root: _symlink_object(root),
    "symlinked fan-out": lambda root: _symlink_dir(_objects(root)[0].parent),
    "symlinked objects": lambda root: _symlink_dir(root / "objects"),
    "stray file": lambda root: (_objects(root)[0].parent / "notes.txt").write_text("hi"),
    "nested object": lambda root: _nest_object(root),
}


def _symlink_dir(directory: Path) -> None:
    moved = directory.parent.parent / f"moved-{directory.name}"
    directory.rename(moved)
    directory.symlink_to(moved, target_is_directory=True)


def _nest_object(root: Path) -> None:
    victim = _objects(root)[0]
    (victim.parent / "deeper").mkdir()
    victim.rename(victim.parent / "deeper" / victim.name)


def _duplicate_first_line(root: Path, kind: str) -> None:
    from kontextual_engine.digests import digest_bytes

    path = root / "index" / f"{kind}.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], *lines]) + "\n")
    manifest = json.loads((root / "snapshot.json").read_text())
    manifest["files"][f"index/{kind}.jsonl"] = digest_bytes(path.read_bytes())
    manifest["counts"][kind] += 1
    (root / "snapshot.json").write_text(json.dumps(manifest))


def _symlink_object(root: Path) -> None:
    victim = _objects(root)[0]
    outside = root.parent / "outside-body"
    outside.write_bytes(victim.read_bytes())
    victim.unlink()
    victim.symlink_to(outside)


@pytest.mark.parametrize("damage", list(TAMPERINGS))
def test_tampered_snapshots_import_nothing(backend: Backend, tmp_path: Path, damage: str) -> None:
    repo = backend.new()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap")
    TAMPERINGS[damage](tmp_path / "snap")
    target = backend.new()
    with pytest.raises(SnapshotError):
        import_snapshot(tmp_path / "snap", target)
    assert target.is_empty()
    assert target.list_collections() == []


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = 0
    return info


@pytest.mark.parametrize(
    "member",
    [
        _member("/etc/passwd"),
        _member("../escape"),
        _member("objects/../../escape"),
        _member("index/link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("index/hard", tarfile.LNKTYPE, "snapshot.json"),
        _member("dev", tarfile.CHRTYPE),
        _member("fifo", tarfile.FIFOTYPE),
        _member("unexpected.txt"),
    ],
    ids=lambda m: m.name,
)
def test_hostile_tars_are_refused(
    backend: Backend, tmp_path: Path, member: tarfile.TarInfo
) -> None:
    archive = tmp_path / "hostile.tar"
    archive.write_bytes(_tar_with(member))
    target = backend.new()
    with pytest.raises(SnapshotError):
        import_snapshot(archive, target)
    assert target.is_empty()
    assert not (tmp_path.parent / "escape").exists()


def test_garbage_tar(backend: Backend, tmp_path: Path) -> None:
    archive = tmp_path / "garbage.tar"
    archive.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(SnapshotError):
        import_snapshot(archive, backend.new())


def reuse_names(repo: KnowledgeRepository) -> None:
    """Names freed by a delete or a rename, then taken by another record."""
    old = repo.create_collection("c")
    repo.delete_collection(old.id)
    c = repo.create_collection("c")
    b = repo.create_artifact(c.id, "q", b"b", artifact_type="t")
    a = repo.create_artifact(c.id, "x", b"a", artifact_type="t")
    repo.update_artifact(a.id, name="r")
    repo.update_artifact(b.id, name="x")


@pytest.mark.parametrize("target_kind", BACKENDS)
def test_round_trip_with_reused_names(
    backends: Callable[[str], Backend], tmp_path: Path, target_kind: str
) -> None:
    source = backends("memory").new()
    reuse_names(source)
    export_snapshot(source, tmp_path / "snap")
    target = backends(target_kind).new()
    import_snapshot(tmp_path / "snap", target)
    assert [c.name for c in target.list_collections()] == ["c"]
    assert sorted(a.name for a in target.list_artifacts()) == ["r", "x"]


class _FailsAtTheEnd(list):  # type: ignore[type-arg]
    """A record list whose iteration raises after its last record."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from super().__iter__()
        raise RuntimeError("restore interrupted")


@pytest.mark.parametrize("where", ["first body", "last record"])
def test_an_interrupted_restore_leaves_nothing(backend: Backend, where: str) -> None:
    source = backend.new()
    populate(source)
    records = source.export_records()
    target = backend.new()
    empty = target.export_records()
    broken = dict(records)
    bodies = source.open_object
    if where == "first body":

        def bodies(digest: str) -> bytes:
            raise RuntimeError("restore interrupted")
    else:
        broken["external_references"] = _FailsAtTheEnd(records["external_references"])
    with pytest.raises(RuntimeError, match="interrupted"):
        target.restore(broken, bodies)
    assert target.is_empty()
    assert target.export_records() == empty
    if where == "last record" and backend.kind in SQLITE_KINDS:
        # The bodies stored before the failure stay, referenced by nothing: garbage
        # (in an object directory; the other kinds keep bodies in memory).
        assert all(target.object_path(r.digest) is not None for r in records["revisions"])
    target = backend.reopen(target)
    assert target.export_records() == empty
    target.restore(records, source.open_object)
    assert target.export_records() == records


# -- a valid state always restores -------------------------------------------


@pytest.mark.parametrize("how", ["directly", "by deleting its artifact"])
@pytest.mark.parametrize("target_kind", BACKENDS)
def test_a_package_naming_a_deleted_relationship_restores(
    backends: Callable[[str], Backend], tmp_path: Path, how: str, target_kind: str
) -> None:
    """Deleted relationships are not exported, yet packages may keep naming them."""
    source = backends("memory").new()
    notes = source.create_collection("notes")
    a = source.create_artifact(notes.id, "a", b"a", artifact_type="t")
    b = source.create_artifact(notes.id, "b", b"b", artifact_type="t")
    relationship = source.create_relationship(a.id, b.id, "cites")
    package = source.create_context_package(
        "pack", [ContextReference("relationship", relationship.id)]
    )
    if how == "directly":
        source.delete_relationship(relationship.id)
    else:
        source.delete_artifact(b.id)
    export_snapshot(source, tmp_path / "first")
    target_backend = backends(target_kind)
    target_backend.ids = SequentialIds(start=1000)
    target = target_backend.new()
    import_snapshot(tmp_path / "first", target)
    export_snapshot(target, tmp_path / "second")
    assert tree_digest(tmp_path / "first") == tree_digest(tmp_path / "second")
    assert target.get_context_package(package.id).references[0].target_id == relationship.id
    # The restored store takes writes, relationships and packages included.
    c = target.create_artifact(notes.id, "c", b"c", artifact_type="t")
    again = target.create_relationship(a.id, c.id, "cites")
    target.create_context_package("later", [ContextReference("relationship", again.id)])


def _rewrite(root: Path, kind: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit every record of one index file, then fix its hash and count in the manifest."""

    path = root / "index" / f"{kind}.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        edit(record)
    path.write_text("".join(_canonical(record) + "\n" for record in records))
    _fix_manifest(root, kind)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _fix_manifest(root: Path, kind: str) -> None:
    from kontextual_engine.digests import digest_bytes

    path = root / "index" / f"{kind}.jsonl"
    manifest = json.loads((root / "snapshot.json").read_text())
    manifest["files"][f"index/{kind}.jsonl"] = digest_bytes(path.read_bytes())
    manifest["counts"][kind] = len(path.read_bytes().splitlines())
    (root / "snapshot.json").write_text(_canonical(manifest) + "\n")


def _replace(root: Path, places: list[tuple[str, str, str]], new: str) -> None:
    """Set ``field`` to ``new`` in every record of ``kind`` where it is ``old``."""
    for kind, field, old in places:

        def edit(record: dict[str, Any], field: str = field, old: str = old) -> None:
            if record.get(field) == old:
                record[field] = new

        _rewrite(root, kind, edit)


# Each field a caller names, and where a snapshot of populate() holds it.
NAMED_FIELDS: dict[str, list[tuple[str, str, str]]] = {
    "artifact name": [("artifacts", "name", "a.md"), ("revisions", "name", "a.md")],
    "artifact type": [
        ("artifacts", "artifact_type", "note"),
        ("revisions", "artifact_type", "note"),
    ],
    "media type": [
        ("artifacts", "media_type", "text/markdown"),
        ("revisions", "media_type", "text/markdown"),
    ],
    "collection name": [("collections", "name", "notes")],
    "relationship type": [("relationships", "relationship_type", "cites")],
    "operation": [("runs", "operation", "summarize"), ("manifests", "operation", "summarize")],
    "step name": [("steps", "name", "llm")],
    "context package name": [("context_packages", "name", "pack")],
    "external system": [("external_references", "system", "pm")],
}
BAD_NAMES = {
    "newline": "a\nb",
    "NUL": "a\x00b",
    "C1 control": "a\x9bb",
    "OSC sequence": "\x1b]0;pwned\x07",
    "CSI sequence": "\x1b[31mred",
    "empty": "",
    "leading space": " lead",
    "5000 characters": "x" * 5000,
}


@pytest.mark.parametrize("field", list(NAMED_FIELDS))
@pytest.mark.parametrize("bad", list(BAD_NAMES))
def test_import_refuses_names_the_api_refuses(
    backend: Backend, tmp_path: Path, field: str, bad: str
) -> None:
    from kontextual_engine.errors import ValidationError

    repo = backend.new()
    populate(repo)
    with pytest.raises(ValidationError):  # the API refuses it ...
        repo.create_collection(BAD_NAMES[bad])
    export_snapshot(repo, tmp_path / "snap")
    _replace(tmp_path / "snap", NAMED_FIELDS[field], BAD_NAMES[bad])
    target = backend.new()
    with pytest.raises(SnapshotError, match=field):  # ... and so does import
        import_snapshot(tmp_path / "snap", target)
    assert target.is_empty()


@pytest.mark.parametrize("field", list(NAMED_FIELDS))
def test_an_edit_the_api_allows_imports(backend: Backend, tmp_path: Path, field: str) -> None:
    """The rewriting above makes consistent snapshots: a fine new name imports."""
    repo = backend.new()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap")
    _replace(tmp_path / "snap", NAMED_FIELDS[field], "fine-name")
    target = backend.new()
    import_snapshot(tmp_path / "snap", target)
    assert not target.is_empty()


@pytest.mark.parametrize(("field", "value"), [("action", "transithon"), ("entity_kind", "galaxy")])
def test_import_refuses_a_change_record_of_an_unknown_kind_or_action(
    backend: Backend, tmp_path: Path, field: str, value: str
) -> None:
    repo = backend.new()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap")
    _rewrite(tmp_path / "snap", "changes", lambda record: record.update({field: value}))
    target = backend.new()
    with pytest.raises(SnapshotError, match=f"change record 1: .*{value}"):
        import_snapshot(tmp_path / "snap", target)
    assert target.is_empty()


def _drop_last_line(root: Path, kind: str) -> None:
    path = root / "index" / f"{kind}.jsonl"
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
    _fix_manifest(root, kind)


# Damage that keeps every file well-formed and the manifest consistent.
CONSISTENT_DAMAGE: dict[str, Callable[[Path], None]] = {
    "last change record dropped": lambda root: _drop_last_line(root, "changes"),
    "last revision dropped": lambda root: _drop_last_line(root, "revisions"),
    "last relationship dropped": lambda root: _drop_last_line(root, "relationships"),
    "last step dropped": lambda root: _drop_last_line(root, "steps"),
    "run status changed": lambda root: _rewrite(
        root, "runs", lambda r: r.update(status="running") if r["status"] == "pending" else None
    ),
    "revision time changed": lambda root: _rewrite(
        root,
        "revisions",
        lambda r: (
            r.update(created_at="2000-01-01T00:00:00.000000Z") if r["revision"] == 2 else None
        ),
    ),
    "unchanged revision": lambda root: _rewrite(
        root,
        "revisions",
        lambda r: r.update(digest=_FIRST_DIGEST[0]) if r["revision"] == 2 else None,
    ),
}
_FIRST_DIGEST: list[str] = []


@pytest.mark.parametrize("damage", list(CONSISTENT_DAMAGE))
def test_import_refuses_records_no_api_calls_make(
    backend: Backend, tmp_path: Path, damage: str
) -> None:
    repo = backend.new()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap")
    _FIRST_DIGEST[:] = [repo.get_revision(repo.query(name="a.md")[0].id, 1).digest]
    CONSISTENT_DAMAGE[damage](tmp_path / "snap")
    target = backend.new()
    with pytest.raises(SnapshotError):
        import_snapshot(tmp_path / "snap", target)
    assert target.is_empty()


def test_a_store_without_its_last_change_refuses_to_import(
    backend: Backend, tmp_path: Path
) -> None:
    """Accepted, it would leave a store whose next write reuses a sequence number."""
    repo = backend.new()
    populate(repo)
    notes = repo.get_collection_by_name("notes")
    repo.create_artifact(notes.id, "last.md", b"last", artifact_type="note")
    export_snapshot(repo, tmp_path / "snap")
    _drop_last_line(tmp_path / "snap", "changes")
    target = backend.new()
    with pytest.raises(SnapshotError, match="sequence"):
        import_snapshot(tmp_path / "snap", target)
    assert target.is_empty()


# -- export checks what it wrote ----------------------------------------------


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kontextual_engine", "--durability", "none", *args],
        capture_output=True,
        timeout=timeout,
    )


def _damage_index(store: Path, damage: str) -> None:
    index = store / "index.sqlite"
    if damage == "torn copy":
        data = index.read_bytes()
        index.write_bytes(data[: len(data) // 2])
        return
    with contextlib.closing(sqlite3.connect(index)) as conn:
        if damage == "revision row removed":
            conn.execute(
                "DELETE FROM revisions WHERE change_sequence = "
                "(SELECT max(change_sequence) FROM revisions)"
            )
        elif damage == "change row removed":
            conn.execute("DELETE FROM changes WHERE sequence = (SELECT max(sequence) FROM changes)")
        else:
            conn.execute("DELETE FROM changes WHERE sequence = 3")
        conn.commit()


@pytest.mark.parametrize(
    "damage", ["revision row removed", "change row removed", "change in the middle", "torn copy"]
)
@pytest.mark.parametrize("tar", [False, True], ids=["directory", "tar"])
def test_export_of_a_damaged_store_exits_5_and_leaves_nothing(
    tmp_path: Path, damage: str, tar: bool
) -> None:
    store = tmp_path / "store"
    with SQLiteKnowledgeRepository.open(store, "none", create=True) as repo:
        populate(repo)
    _damage_index(store, damage)
    out = tmp_path / "out"
    out.mkdir()
    destination = out / ("snap.tar" if tar else "snap")
    done = _cli("--store", str(store), "export", str(destination), *(["--tar"] if tar else []))
    assert done.returncode == 5, done.stderr
    assert len(done.stderr.splitlines()) == 1, done.stderr
    if damage != "torn copy":  # that one is refused when the store opens
        assert b"run `kontextual fsck`" in done.stderr, done.stderr
    assert list(out.iterdir()) == []


def test_export_verifies_before_it_renames(backend: Backend, tmp_path: Path) -> None:
    """Export runs import's checks on what it wrote; a refusal leaves no snapshot."""
    repo = backend.new()
    populate(repo)
    real = repo.export_records

    def damaged() -> dict[str, list[Any]]:
        records = real()
        records["changes"] = records["changes"][:-1]
        return records

    repo.export_records = damaged  # type: ignore[method-assign]
    out = tmp_path / "out"
    out.mkdir()
    for tar in (False, True):
        destination = out / ("snap.tar" if tar else "snap")
        with pytest.raises(DamagedStoreError, match="fsck"):
            export_snapshot(repo, destination, tar=tar)
        assert list(out.iterdir()) == []


# -- only regular files, no leftovers, bounded memory -------------------------


def _exported(tmp_path: Path) -> Path:
    repo = InMemoryKnowledgeRepository()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap")
    return tmp_path / "snap"


def _make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _make_directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _make_device(path: Path) -> None:
    path.unlink()
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # what /dev/zero is
    except PermissionError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("making a device node needs root")


@pytest.mark.parametrize(
    ("member", "make"),
    [
        ("snapshot.json", _make_fifo),
        ("index/changes.jsonl", _make_fifo),
        ("index/changes.jsonl", _make_directory),
        ("snapshot.json", _make_directory),
        ("index/artifacts.jsonl", _make_device),
        ("snapshot.json", _make_device),
    ],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_only_regular_files_are_read(
    tmp_path: Path, member: str, make: Callable[[Path], None]
) -> None:
    snapshot = _exported(tmp_path)
    make(snapshot / member)
    target = InMemoryKnowledgeRepository()
    with pytest.raises(SnapshotError, match="not a regular file"):
        import_snapshot(snapshot, target)
    assert target.is_empty()
    # The command line says so in one line, exit 5, and leaves no store behind.
    store = tmp_path / "restored"
    done = _cli("--store", str(store), "import", str(snapshot), timeout=30)
    assert done.returncode == 5, done.stderr
    assert done.stderr.startswith(b"error: ") and len(done.stderr.splitlines()) == 1
    assert not store.exists()


def test_a_fifo_as_the_snapshot_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "snap.tar")
    with pytest.raises(SnapshotError, match="FIFO"):
        import_snapshot(tmp_path / "snap.tar", InMemoryKnowledgeRepository())


@pytest.mark.parametrize("form", ["directory", "tar"])
def test_unknown_members_are_refused(tmp_path: Path, form: str) -> None:
    snapshot = _exported(tmp_path)
    (snapshot / "index" / "evil.jsonl").write_text("")
    if form == "tar":
        archive = tmp_path / "snap.tar"
        with tarfile.open(archive, "w") as tar:
            for path in sorted(snapshot.rglob("*")):
                tar.add(path, path.relative_to(snapshot).as_posix(), recursive=False)
        snapshot = archive
    with pytest.raises(SnapshotError, match="evil"):
        import_snapshot(snapshot, InMemoryKnowledgeRepository())


KILLED_IMPORT = """
import os, signal, sys
from kontextual_engine.snapshot import import_snapshot
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

repo = SQLiteKnowledgeRepository.open(sys.argv[2], "none", create=True)
def die(done):
    os.kill(os.getpid(), signal.SIGKILL)
import_snapshot(sys.argv[1], repo, progress=die)
"""


def test_a_killed_tar_import_leaves_nothing_in_the_temp_dir(tmp_path: Path) -> None:
    repo = InMemoryKnowledgeRepository()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap.tar", tar=True)
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    for attempt in range(3):
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                KILLED_IMPORT,
                str(tmp_path / "snap.tar"),
                str(tmp_path / f"s{attempt}"),
            ],
            env={**os.environ, "TMPDIR": str(system_tmp)},
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == -signal.SIGKILL, done.stderr
    assert list(system_tmp.iterdir()) == []


def test_a_tar_import_extracts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = InMemoryKnowledgeRepository()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap.tar", tar=True)
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    target = SQLiteKnowledgeRepository.open(tmp_path / "store", "none", create=True)
    restore = target.restore

    def watched(*args: Any) -> None:
        # Mid-import, where a kill would leave whatever had been extracted.
        assert list(system_tmp.iterdir()) == []
        restore(*args)

    target.restore = watched  # type: ignore[method-assign]
    try:
        import_snapshot(tmp_path / "snap.tar", target)
        assert target.export_records() == repo.export_records()
    finally:
        target.close()
    assert list(system_tmp.iterdir()) == []
    assert [p for p in (tmp_path / "store" / "tmp").iterdir()] == []


PEAK_MEMORY = """
import sys
from kontextual_engine.snapshot import import_snapshot
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

def peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

repo = SQLiteKnowledgeRepository.open(sys.argv[2], "none", create=True)
before = peak()
import_snapshot(sys.argv[1], repo)
repo.close()
print(peak() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("form", ["directory", "tar"])
def test_import_streams_bodies_in_bounded_memory(tmp_path: Path, form: str) -> None:
    body_size = 64 << 20
    source_path = tmp_path / "source"
    with SQLiteKnowledgeRepository.open(source_path, "none", create=True) as source:
        notes = source.create_collection("big")
        source.create_artifact(notes.id, "big.bin", os.urandom(1 << 20) * 64, artifact_type="blob")
        snapshot = tmp_path / ("snap.tar" if form == "tar" else "snap")
        export_snapshot(source, snapshot, tar=form == "tar")
    done = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, str(snapshot), str(tmp_path / "target")],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    growth = int(done.stdout)
    assert growth < body_size // 4, f"import grew the peak RSS by {growth >> 20} MiB"
    with SQLiteKnowledgeRepository.open(tmp_path / "target", "none", create=True) as target:
        [artifact] = target.list_artifacts()
        assert artifact.size == body_size
