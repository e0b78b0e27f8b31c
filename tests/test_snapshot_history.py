"""Snapshots carry history: change sets and deleted relationships (format version 2),
restored exactly and checked before import; version-1 snapshots still import."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine.errors import SnapshotError
from kontextual_engine.snapshot import VERSION, export_snapshot, import_snapshot, verify_snapshot
from kontextual_engine.storage import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    SequentialIds,
)
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

from .backends import BACKENDS, Backend
from .test_snapshot import _canonical, _fix_manifest, _rewrite, populate, tree_digest

OLD_STORE = Path(__file__).parent / "fixtures" / "store-schema-0004" / "store"
NEW_KINDS = ("change_sets", "deleted_relationships")


def with_history(repo: KnowledgeRepository) -> None:
    """Change sets with actors, messages and given times; relationships deleted
    directly and with their artifact, and a triple taken again after its delete."""
    populate(repo)
    notes = repo.get_collection_by_name("notes")
    with repo.transaction(
        actor="ana", message="two links", at=datetime(2031, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    ):
        x = repo.create_artifact(notes.id, "x", b"x", artifact_type="t")
        y = repo.create_artifact(notes.id, "y", b"y", artifact_type="t")
        xy = repo.create_relationship(x.id, y.id, "cites", metadata={"why": "first"})
        repo.create_relationship(y.id, x.id, "answers")
    repo.delete_relationship(xy.id, actor="bo", message="wrong link")
    repo.create_relationship(x.id, y.id, "cites", metadata={"why": "again"})
    repo.delete_artifact(y.id, message="gone, links too")
    z = repo.create_artifact(notes.id, "y", b"z", artifact_type="t")  # the name, taken again
    repo.create_relationship(x.id, z.id, "cites")


def fresh_ids(backend: Backend) -> Backend:
    """A backend whose new records never take an id of an imported one."""
    backend.ids = SequentialIds(start=1000)
    return backend


def as_of_every_point(repo: KnowledgeRepository) -> list[Any]:
    return [repo.list_relationships(as_of=sequence) for sequence in range(repo.last_sequence() + 1)]


@pytest.mark.parametrize("source_kind", BACKENDS)
@pytest.mark.parametrize("target_kind", BACKENDS)
def test_change_sets_and_deleted_relationships_restore_exactly(
    backends: Callable[[str], Backend], tmp_path: Path, source_kind: str, target_kind: str
) -> None:
    source = backends(source_kind).new()
    with_history(source)
    records = source.export_records()
    assert len(records["deleted_relationships"]) == 4  # one by populate()
    assert {cs.actor for cs in records["change_sets"]} == {None, "ana", "bo"}
    summary = export_snapshot(source, tmp_path / "first")
    assert summary.counts["change_sets"] == len(records["change_sets"])
    manifest = json.loads((tmp_path / "first" / "snapshot.json").read_text())
    assert manifest["version"] == VERSION == 2
    target = fresh_ids(backends(target_kind)).new()
    import_snapshot(tmp_path / "first", target)
    # Exactly the source's change sets: ids, actors, messages, times; none of its own.
    assert target.list_change_sets() == source.list_change_sets()
    assert target.list_changes() == source.list_changes()
    assert all(change.change_set_id is not None for change in target.list_changes())
    assert target.export_records() == records
    assert as_of_every_point(target) == as_of_every_point(source)
    for change_set in source.list_change_sets():
        assert target.list_relationships(as_of=change_set.id) == source.list_relationships(
            as_of=change_set.id
        )
    export_snapshot(target, tmp_path / "second")
    assert tree_digest(tmp_path / "second") == tree_digest(tmp_path / "first")
    # The next write starts the next change set.
    later = target.create_collection("later", actor="cy")
    [change] = target.list_changes(entity_id=later.id)
    assert change.change_set_id == f"cs_{source.last_sequence() + 1}"
    assert target.get_change_set(change.change_set_id).actor == "cy"


# -- version 1 ----------------------------------------------------------------


def to_version_1(root: Path) -> None:
    """Rewrite a version-2 snapshot into exactly the layout version 1 wrote: no
    change sets or deleted relationships, change records without ``change_set_id``."""

    def strip(record: dict[str, Any]) -> None:
        del record["change_set_id"]

    _rewrite(root, "changes", strip)
    for kind in NEW_KINDS:
        (root / "index" / f"{kind}.jsonl").unlink()
    manifest = json.loads((root / "snapshot.json").read_text())
    manifest["version"] = 1
    for kind in NEW_KINDS:
        del manifest["files"][f"index/{kind}.jsonl"]
        del manifest["counts"][kind]
    (root / "snapshot.json").write_text(_canonical(manifest) + "\n")


@pytest.fixture
def version_1(tmp_path: Path) -> tuple[Path, KnowledgeRepository]:
    source = InMemoryKnowledgeRepository()
    with_history(source)
    export_snapshot(source, tmp_path / "v1")
    to_version_1(tmp_path / "v1")
    return tmp_path / "v1", source


@pytest.mark.parametrize("target_kind", BACKENDS)
def test_a_version_1_snapshot_imports(
    backends: Callable[[str], Backend],
    tmp_path: Path,
    version_1: tuple[Path, KnowledgeRepository],
    target_kind: str,
) -> None:
    snapshot, source = version_1
    assert sorted(p.name for p in (snapshot / "index").iterdir()) == sorted(
        f"{kind}.jsonl"
        for kind in (
            "collections",
            "artifacts",
            "revisions",
            "relationships",
            "changes",
            "runs",
            "steps",
            "bundles",
            "manifests",
            "context_packages",
            "external_references",
        )
    )
    target = fresh_ids(backends(target_kind)).new()
    import_snapshot(snapshot, target)
    # No change sets; change records as they were, naming none.
    assert target.list_change_sets() == []
    expected = [
        (c.sequence, c.entity_id, c.action, c.timestamp, c.details) for c in source.list_changes()
    ]
    assert [
        (c.sequence, c.entity_id, c.action, c.timestamp, c.details) for c in target.list_changes()
    ] == expected
    assert all(change.change_set_id is None for change in target.list_changes())
    records, original = target.export_records(), source.export_records()
    for kind in ("collections", "artifacts", "revisions", "relationships", "runs", "steps"):
        assert records[kind] == original[kind], kind
    # Deleted relationships are rebuilt from their change records, without the
    # metadata version 1 never held: as-of reads see them.
    assert [(r.id, r.sequence, r.created_at, d) for r, d in records["deleted_relationships"]] == [
        (r.id, r.sequence, r.created_at, d) for r, d in original["deleted_relationships"]
    ]
    assert all(r.metadata == {} for r, _ in records["deleted_relationships"])
    without_metadata = [
        [(r.id, r.source_id, r.target_id, r.relationship_type) for r in point]
        for point in as_of_every_point(source)
    ]
    assert [
        [(r.id, r.source_id, r.target_id, r.relationship_type) for r in point]
        for point in as_of_every_point(target)
    ] == without_metadata
    # The imported store writes change sets from here on, and exports version 2.
    later = target.create_collection("later")
    assert target.list_changes(entity_id=later.id)[0].change_set_id == (
        f"cs_{source.last_sequence() + 1}"
    )
    export_snapshot(target, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "snapshot.json").read_text())["version"] == 2
    import_snapshot(tmp_path / "again", InMemoryKnowledgeRepository())


def _add_field(record: dict[str, Any]) -> None:
    record["change_set_id"] = None


def _listed_change_sets(root: Path) -> None:
    (root / "index" / "change_sets.jsonl").write_text("")
    _fix_manifest(root, "change_sets")


V1_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "change_set_id field": (
        lambda root: _rewrite(root, "changes", _add_field),
        "unexpected field 'change_set_id' (version 1 has none)",
    ),
    "change sets file": (
        lambda root: (root / "index" / "change_sets.jsonl").write_text(""),
        "snapshot version 1 holds index/change_sets.jsonl",
    ),
    "change sets in the manifest": (
        _listed_change_sets,
        "of version 1 must list exactly the files",
    ),
}


@pytest.mark.parametrize("damage", list(V1_DAMAGE))
def test_a_version_1_snapshot_with_version_2_parts_is_refused(
    version_1: tuple[Path, KnowledgeRepository], damage: str
) -> None:
    snapshot, _ = version_1
    edit, says = V1_DAMAGE[damage]
    edit(snapshot)
    target = InMemoryKnowledgeRepository()
    with pytest.raises(SnapshotError, match=re.escape(says)):
        import_snapshot(snapshot, target)
    assert target.is_empty()


def test_a_version_2_manifest_must_list_the_new_files(tmp_path: Path) -> None:
    repo = InMemoryKnowledgeRepository()
    with_history(repo)
    export_snapshot(repo, tmp_path / "snap")
    manifest = json.loads((tmp_path / "snap" / "snapshot.json").read_text())
    del manifest["files"]["index/change_sets.jsonl"]
    (tmp_path / "snap" / "snapshot.json").write_text(_canonical(manifest) + "\n")
    with pytest.raises(SnapshotError, match="of version 2 must list exactly the files"):
        verify_snapshot(tmp_path / "snap")


def test_a_store_upgraded_from_an_old_release_exports_and_imports(tmp_path: Path) -> None:
    """Change records written before change sets name none; those after do."""
    store = tmp_path / "old"
    shutil.copytree(OLD_STORE, store)
    for path in store.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
    with SQLiteKnowledgeRepository.open(store, "none") as repo:
        before = repo.last_sequence()
        [link] = repo.list_relationships()
        repo.delete_relationship(link.id, actor="ana")
        export_snapshot(repo, tmp_path / "snap")
        records = repo.export_records()
    changes = records["changes"]
    assert [c.change_set_id for c in changes] == [None] * before + [f"cs_{before + 1}"]
    assert records["deleted_relationships"] == [(link, before + 1)]
    for target in (
        InMemoryKnowledgeRepository(),
        SQLiteKnowledgeRepository.open(tmp_path / "target", "none", create=True),
    ):
        with target:
            import_snapshot(tmp_path / "snap", target)
            assert target.export_records() == records
            assert target.list_relationships(as_of=before) == [link]


# -- the importer checks the new parts -----------------------------------------


def _snapshot(tmp_path: Path) -> Path:
    repo = InMemoryKnowledgeRepository()
    with_history(repo)
    export_snapshot(repo, tmp_path / "snap")
    return tmp_path / "snap"


def _lines(root: Path, kind: str) -> list[dict[str, Any]]:
    path = root / "index" / f"{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(root: Path, kind: str, records: list[dict[str, Any]]) -> None:
    path = root / "index" / f"{kind}.jsonl"
    path.write_text("".join(_canonical(record) + "\n" for record in records))
    _fix_manifest(root, kind)


def _drop_a_change_set(root: Path) -> None:
    sets = _lines(root, "change_sets")
    _write(root, "change_sets", [s for s in sets if s["actor"] != "ana"])


def _empty_a_change_set(root: Path) -> None:
    """The records of the set 'bo' made are claimed by the set before it."""
    sets = _lines(root, "change_sets")
    index = next(i for i, s in enumerate(sets) if s["actor"] == "bo")
    previous, emptied = sets[index - 1]["id"], sets[index]["id"]
    _rewrite(
        root,
        "changes",
        lambda c: c.update(change_set_id=previous) if c["change_set_id"] == emptied else None,
    )


def _edit_set(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return lambda root: _rewrite(root, "change_sets", lambda s: edit(s) if s["actor"] else None)


def _edit_deleted(
    edit: Callable[[dict[str, Any]], None], *, first_only: bool = True
) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        records = _lines(root, "deleted_relationships")
        for record in records[:1] if first_only else records:
            edit(record)
        _write(root, "deleted_relationships", records)

    return damage


def _deleted_before_made(record: dict[str, Any]) -> None:
    record["deleted_sequence"] = record["sequence"]


def _deleted_at_another_time(record: dict[str, Any]) -> None:
    record["deleted_sequence"] += 1


def _deleted_but_held(root: Path) -> None:
    [first] = _lines(root, "deleted_relationships")[:1]
    held = _lines(root, "relationships")
    del first["deleted_sequence"]
    _write(root, "relationships", sorted([*held, first], key=lambda r: r["sequence"]))


def _unset_after_sets(root: Path) -> None:
    changes = _lines(root, "changes")
    changes[-1]["change_set_id"] = None
    _write(root, "changes", changes)


def _live_moved_to_deleted(root: Path) -> None:
    """A live relationship listed as deleted at a sequence no change record has."""
    held = _lines(root, "relationships")
    moved = held.pop()
    moved["deleted_sequence"] = len(_lines(root, "changes")) + 5
    deleted = sorted([*_lines(root, "deleted_relationships"), moved], key=lambda r: r["sequence"])
    _write(root, "relationships", held)
    _write(root, "deleted_relationships", deleted)


NEW_PART_DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "change record names a missing change set": (
        _drop_a_change_set,
        "names change set 'cs_[0-9]+', which the snapshot does not hold",
    ),
    "change set with no change records": (_empty_a_change_set, "has no change records"),
    "deleted no later than created": (
        _edit_deleted(_deleted_before_made),
        "is deleted at sequence [0-9]+, not after its creation",
    ),
    "deleted at another sequence": (
        _edit_deleted(_deleted_at_another_time),
        "deleted relationship says it was deleted at",
    ),
    "deleted where no change record deletes it": (
        _live_moved_to_deleted,
        "yet no change record deletes it",
    ),
    "deleted relationship also held live": (_deleted_but_held, "is both live and deleted"),
    "change set time differs from its first record": (
        _edit_set(lambda s: s.update(timestamp="2000-01-01T00:00:00.000000Z")),
        "but its first change record is",
    ),
    "change set id": (_edit_set(lambda s: s.update(id=s["id"] + "0")), "its id must be cs_"),
    "change set actor": (_edit_set(lambda s: s.update(actor="a\x00b")), "change set actor"),
    "change record without a set after sets": (
        _unset_after_sets,
        "names no change set, yet follows change set",
    ),
}


@pytest.mark.parametrize("damage", list(NEW_PART_DAMAGE))
def test_import_refuses_impossible_change_sets_and_deleted_relationships(
    backend: Backend, tmp_path: Path, damage: str
) -> None:
    snapshot = _snapshot(tmp_path)
    edit, says = NEW_PART_DAMAGE[damage]
    edit(snapshot)
    target = backend.new()
    with pytest.raises(SnapshotError, match=says):
        import_snapshot(snapshot, target)
    assert target.is_empty()
    assert target.list_change_sets() == []
