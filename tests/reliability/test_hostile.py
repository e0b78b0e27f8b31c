"""Hostile input through the library: refused or handled as plain data, never obeyed.

Every test keeps a sentinel directory next to the store and checks that it is
byte-for-byte unchanged afterwards (nothing written, removed or followed
outside the store), and that a refused operation left no partial state (the
exported records, the objects and ``tmp/`` are as before).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sqlite3
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import (
    CorruptObjectError,
    KontextualError,
    NotFoundError,
    SnapshotError,
    StoreFormatError,
    ValidationError,
)
from kontextual_engine.models import ContextReference, NewArtifact, RelatedTo
from kontextual_engine.snapshot import export_snapshot, import_snapshot
from kontextual_engine.storage import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    SequentialIds,
    TickingClock,
)
from kontextual_engine.storage.objects import staging as staging_module
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck, gc

from .harness import tree_state

INJECTION = "'; DROP TABLE artifacts; --"
HOSTILE_KEYS = [
    INJECTION,
    'a"b',
    "a'b",
    "a.b",
    "$.a",
    "$",
    "[0]",
    "a[0]",
    "\\",
    "*",
    "",
    "%",
    "_",
    "key with spaces",
    "ключ",
    "🔑",
    '"); DROP TABLE x; --',
]
BODIES = [
    'say "hello" NEAR(world) AND (x OR y) * wildcard',
    "don't stop; col:val a-b 100% under_score back\\slash ^caret {brace} [bracket]",
    "plain prose about rivers and stones",
    "'; DROP TABLE artifacts; -- is just text here",
    "NEAR NOT OR AND ( ) \" ' * ^ : + -",
]


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    """A directory outside every store; it must be unchanged when the test ends."""
    outside = tmp_path / "sentinel"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"do not touch\n")
    (outside / "victim.db").write_bytes(b"not a database, but precious\n")
    (outside / "nested").mkdir()
    (outside / "nested" / "deep.txt").write_bytes(b"deeper\n")
    before = tree_state(outside)
    yield outside
    assert tree_state(outside) == before, "something outside the store changed"


def new_pair(
    tmp_path: Path, name: str = "store"
) -> tuple[KnowledgeRepository, SQLiteKnowledgeRepository]:
    memory = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
    sqlite = SQLiteKnowledgeRepository.open(
        tmp_path / name, "none", clock=TickingClock(), ids=SequentialIds(), create=True
    )
    return memory, sqlite


def populate(repo: KnowledgeRepository) -> None:
    hostile = repo.create_collection(
        INJECTION, description=INJECTION, metadata={key: key for key in HOSTILE_KEYS}
    )
    for index, body in enumerate(BODIES):
        repo.create_artifact(
            hostile.id,
            f"{INJECTION} {index}",
            body.encode(),
            artifact_type=INJECTION,
            metadata={**{key: index for key in HOSTILE_KEYS}, INJECTION + "!": [index, INJECTION]},
        )
    first, second = repo.list_artifacts()[:2]
    repo.create_relationship(first.id, second.id, INJECTION, metadata={'k"': INJECTION})


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[KnowledgeRepository, SQLiteKnowledgeRepository]]:
    memory, sqlite = new_pair(tmp_path)
    populate(memory)
    populate(sqlite)
    yield memory, sqlite
    sqlite.close()


def store_state(repo: KnowledgeRepository, *, healthy: bool = True) -> tuple[Any, ...]:
    """Everything a refused operation must leave as it was.

    Objects are compared by what the index references: a transaction that
    stored a body and then failed leaves that body behind as garbage, by
    design (docs/persistence.md); fsck must then call it garbage, nothing worse.
    """
    if not isinstance(repo, SQLiteKnowledgeRepository):
        return (repo.export_records(), repo.last_sequence())
    report = fsck(repo)
    if healthy:
        assert report.ok and all(f.severity == "garbage" for f in report.findings), report.findings
    referenced = sorted(
        d for d in repo.objects.all() if d not in {f.subject for f in report.findings}
    )
    return (repo.export_records(), referenced, repo.objects.tmp_files(), repo.last_sequence())


def assert_schema_intact(repo: SQLiteKnowledgeRepository) -> None:
    with sqlite3.connect(repo.index_path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"artifacts", "revisions", "collections", "relationships", "changes"} <= tables


# -- digests and ids --------------------------------------------------------------

HEX = "0123456789abcdef" * 4
HOSTILE_DIGESTS: list[object] = [
    "../../etc/passwd",
    "blake3:../../../../etc/passwd",
    "/etc/passwd",
    "blake3:" + HEX[:62] + "/.",
    "blake3:" + HEX + "/../x",
    "blake3:" + HEX.upper(),
    "blake3:" + HEX + "\n",
    "blake3:" + HEX + "\x00",
    "\x00",
    "",
    " blake3:" + HEX,
    "sha256:" + HEX,
    "blake3:" + HEX[:63],
    HEX[:63] + "g",
    "blake3:" + "\u0660" * 64,
    "blake3:" + "\uff10" * 64,
    "blake3:*",
    "blake3:%",
    "objects/ab/" + HEX[2:],
    None,
    7,
    b"x",
]


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS, ids=repr)
def test_hostile_digests_never_become_paths(
    pair: tuple[KnowledgeRepository, SQLiteKnowledgeRepository], sentinel: Path, digest: object
) -> None:
    _, repo = pair
    before = store_state(repo)
    calls: list[Callable[[], object]] = [
        lambda: repo.objects.path(digest),  # type: ignore[arg-type]
        lambda: repo.objects.get(digest),  # type: ignore[arg-type]
        lambda: repo.objects.get(digest, verify=True),  # type: ignore[arg-type]
        lambda: repo.objects.open(digest),  # type: ignore[arg-type]
        lambda: repo.objects.exists(digest),  # type: ignore[arg-type]
        lambda: repo.objects.size(digest),  # type: ignore[arg-type]
        lambda: repo.objects.verify(digest),  # type: ignore[arg-type]
        lambda: repo.objects.delete(digest),  # type: ignore[arg-type]
        lambda: repo.read_object(digest),  # type: ignore[arg-type]
        lambda: repo.open_object(digest),  # type: ignore[arg-type]
        lambda: repo.object_path(digest),  # type: ignore[arg-type]
    ]
    if digest is not None:  # None means "no digest filter" here
        calls += [lambda: repo.query(digest=digest), lambda: repo.impact(digest=digest)]  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(ValidationError):
            call()
    # Some of these are valid prefixes (4 to 64 hex digits) that match nothing.
    with pytest.raises((ValidationError, NotFoundError)):
        repo.objects.resolve(digest)  # type: ignore[arg-type]
    assert store_state(repo) == before


def id_lookups(repo: KnowledgeRepository, hostile: str) -> list[Callable[[], object]]:
    return [
        lambda: repo.get_artifact(hostile),
        lambda: repo.get_collection(hostile),
        lambda: repo.get_relationship(hostile),
        lambda: repo.get_run(hostile),
        lambda: repo.list_revisions(hostile),
        lambda: repo.get_revision(hostile, 1),
        lambda: repo.read_content(hostile),
        lambda: repo.update_artifact(hostile, content=b"x"),
        lambda: repo.delete_artifact(hostile),
        lambda: repo.delete_relationship(hostile),
        lambda: repo.get_artifact_by_name(hostile, hostile),
        lambda: repo.get_collection_by_name(hostile),
    ]


HOSTILE_IDS = [
    "' OR '1'='1",
    f"art_x{INJECTION}",
    "%",
    "_",
    "*",
    "art_%",
    "\x00",
    "art_\x00",
    "../../etc",
    "a" * 128,
    "art_\ud800",
    "NULL",
    "1",
    "0 OR 1",
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS, ids=repr)
def test_hostile_ids_find_nothing(
    pair: tuple[KnowledgeRepository, SQLiteKnowledgeRepository], sentinel: Path, hostile: str
) -> None:
    for repo in pair:
        before = repo.export_records()
        for call in id_lookups(repo, hostile):
            with pytest.raises((NotFoundError, ValidationError)):
                call()
        assert repo.query(ids=[hostile]) == []
        assert repo.query(name=hostile) == []
        assert repo.query(related_to=RelatedTo(hostile)) == []
        assert repo.list_changes(entity_id=hostile) == []
        assert repo.export_records() == before
    assert_schema_intact(pair[1])


def test_injection_strings_are_stored_and_found_as_plain_data(
    pair: tuple[KnowledgeRepository, SQLiteKnowledgeRepository], sentinel: Path
) -> None:
    memory, sqlite = pair
    assert memory.export_records() == sqlite.export_records()
    for repo in pair:
        collection = repo.get_collection_by_name(INJECTION)
        assert collection.metadata == {key: key for key in HOSTILE_KEYS}
        artifact = repo.get_artifact_by_name(collection.id, f"{INJECTION} 3")
        assert repo.read_content(artifact.id) == BODIES[3].encode()
        assert artifact.metadata[INJECTION + "!"] == [3, INJECTION]
    for key in [*HOSTILE_KEYS, INJECTION + "!"]:
        for value in (0, 1, 2, 3, 4, "0", [0, INJECTION], None, key):
            found = [a.id for a in memory.query(metadata={key: value})]
            assert [a.id for a in sqlite.query(metadata={key: value})] == found, (key, value)
    for key in HOSTILE_KEYS:
        assert [a.name for a in sqlite.query(metadata={key: 3})] == [f"{INJECTION} 3"], key
    assert [a.name for a in sqlite.query(metadata={INJECTION + "!": [2, INJECTION]})] == [
        f"{INJECTION} 2"
    ]
    assert len(sqlite.query(artifact_type=INJECTION)) == len(BODIES)
    assert_schema_intact(sqlite)


@pytest.mark.parametrize("key", ["\x00", "a\x00b", "'\x00; DROP TABLE x"], ids=repr)
def test_metadata_keys_with_nul_are_refused(
    pair: tuple[KnowledgeRepository, SQLiteKnowledgeRepository], key: str
) -> None:
    for repo in pair:
        cid = repo.list_collections()[0].id
        before = repo.export_records()
        with pytest.raises(ValidationError, match="NUL"):
            repo.create_artifact(cid, "nul", b"x", artifact_type="t", metadata={key: 1})
        with pytest.raises(ValidationError, match="NUL"):
            repo.query(metadata={key: 1})
        assert repo.export_records() == before


TEXT_QUERIES = [
    '"',
    '""',
    '"hello"',
    '"a',
    "a*",
    "*",
    "NEAR(world)",
    "NEAR(a b, 2)",
    "NEAR",
    "x OR y",
    "AND",
    "NOT a",
    "(",
    ")",
    "((x",
    "col:val",
    "artifact_words:river",
    "words:river",
    "^caret",
    "-a",
    "+a",
    "{brace}",
    "[bracket]",
    "'",
    "';--",
    "\\",
    "%",
    "_",
    "don't",
    "100%",
    "a-b",
    INJECTION,
    "rowid:1",
    "x" * 10_000,
    "NEAR NOT OR AND",
    '" OR 1=1 --',
    "\x00",
    "   ",
    "",
    "\ud800",
    "a\tb\nc",
    "ST",
    "ﬁ",
    "İ",
]


@pytest.mark.parametrize("text", TEXT_QUERIES, ids=lambda t: repr(t)[:30])
def test_text_query_syntax_is_plain_text(
    pair: tuple[KnowledgeRepository, SQLiteKnowledgeRepository], text: str
) -> None:
    outcomes = []
    for repo in pair:
        try:
            outcomes.append([a.id for a in repo.query(text=text)])
        except ValidationError as exc:
            outcomes.append(type(exc))
    assert outcomes[0] == outcomes[1]
    assert_schema_intact(pair[1])


# -- JSON, names ---------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def nested_dicts(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


HOSTILE_JSON: dict[str, Any] = {
    "33 levels": {"x": nested(33)},
    "100 000 levels of lists": {"x": nested(100_000)},
    "100 000 levels of objects": nested_dicts(100_000),
    "2 MiB string": {"x": "x" * (2 << 20)},
    "a million keys": {str(i): i for i in range(200_000)},
    "integer beyond 64 bits": {"x": 2**64},
    "NaN": {"x": float("nan")},
    "infinity": {"x": float("inf")},
    "a set": {"x": {1, 2}},
    "bytes": {"x": b"raw"},
    "an int key": {1: "x"},
    "a NUL in a value": {"x": "a\x00b"},
    "a lone surrogate": {"x": "\ud800"},
    "not an object": [1, 2],
}


def json_writes(repo: KnowledgeRepository, value: Any) -> list[Callable[[], object]]:
    cid = repo.list_collections()[0].id
    target = repo.list_artifacts()[0].id
    return [
        lambda: repo.create_artifact(cid, "json", b"new body", artifact_type="t", metadata=value),
        lambda: repo.create_artifact(cid, "json", b"new body", artifact_type="t", provenance=value),
        lambda: repo.update_artifact(target, content=b"changed body", metadata=value),
        lambda: repo.put_artifacts(
            cid,
            [NewArtifact("ok", b"fine", "t"), NewArtifact("bad", b"other", "t", metadata=value)],
        ),
        lambda: repo.create_collection("json", metadata=value),
        lambda: repo.create_relationship(target, target, "self", metadata=value),
        lambda: repo.create_run("op", parameters=value),
        lambda: repo.create_context_package(
            "pkg", [ContextReference("artifact", target)], metadata=value
        ),
        lambda: repo.query(metadata=value),
    ]


@pytest.mark.parametrize("what", list(HOSTILE_JSON))
def test_hostile_json_is_refused_without_partial_state(
    pair: tuple[KnowledgeRepository, SQLiteKnowledgeRepository], what: str
) -> None:
    value = HOSTILE_JSON[what]
    for repo in pair:
        before = store_state(repo)
        for call in json_writes(repo, value):
            with pytest.raises(ValidationError):
                call()
        assert store_state(repo) == before


BAD_NAMES = [
    "",
    "\n",
    "a\nb",
    "tab\there",
    "\x1b[2J\x1b[H",
    "bell\x07",
    "del\x7f",
    "nul\x00",
    "\x85next line",
    "csi\x9b31m",
    " leading",
    "trailing ",
    "\ud800",
    "x" * 1025,
]


def name_writes(repo: KnowledgeRepository, name: str) -> list[Callable[[], object]]:
    cid = repo.list_collections()[0].id
    target = repo.list_artifacts()[0].id
    return [
        lambda: repo.create_collection(name),
        lambda: repo.create_artifact(cid, name, b"x", artifact_type="t"),
        lambda: repo.create_artifact(cid, "ok", b"x", artifact_type=name),
        lambda: repo.update_artifact(target, name=name),
        lambda: repo.put_artifacts(
            cid, [NewArtifact("fine", b"x", "t"), NewArtifact(name, b"y", "t")]
        ),
        lambda: repo.create_relationship(target, target, name),
        lambda: repo.create_run(name),
    ]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_names_with_control_characters_are_refused(
    pair: tuple[KnowledgeRepository, SQLiteKnowledgeRepository], name: str
) -> None:
    for repo in pair:
        before = repo.export_records()
        for call in name_writes(repo, name):
            with pytest.raises(ValidationError):
                call()
        assert repo.export_records() == before


# -- snapshots and tars ------------------------------------------------------------


def tar_bytes(*members: tuple[tarfile.TarInfo, bytes | None], end: bool = True) -> bytes:
    """A tar archive of ``members``; without ``end``, open for raw headers to follow."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            archive.addfile(info, None if data is None else io.BytesIO(data))
        written = archive.offset
    return buffer.getvalue() if end else buffer.getvalue()[:written]


END_OF_ARCHIVE = b"\0" * 1024


def info(
    name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = ""
) -> tarfile.TarInfo:
    member = tarfile.TarInfo(name)
    member.type = kind
    member.size = size
    member.linkname = linkname
    return member


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    """A valid snapshot directory of the hostile corpus."""
    repo = InMemoryKnowledgeRepository()
    populate(repo)
    export_snapshot(repo, tmp_path / "snap")
    return tmp_path / "snap"


def snapshot_members(root: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_dir():
            members.append((info(name, tarfile.DIRTYPE), None))
        else:
            data = path.read_bytes()
            members.append((info(name, size=len(data)), data))
    return members


def hostile_tars(snapshot: Path, sentinel: Path) -> dict[str, bytes]:
    """Each archive is a valid snapshot plus (or with) one attack."""
    valid = snapshot_members(snapshot)
    body = next(m for m in valid if m[0].name.startswith("objects/") and m[1] is not None)
    other = "objects/ff/" + "f" * 62  # a valid object member name, not in the snapshot
    sparse = info(other, tarfile.GNUTYPE_SPARSE)
    sparse.sparse = [(0, 0)]  # type: ignore[attr-defined]
    huge = info(other, size=1 << 40)  # GNU format: base-256 size field
    pax_escape = info("index/x.jsonl", size=0)
    pax_escape.pax_headers = {"path": "../../escaped.jsonl"}
    return {
        "hard link to an absolute outside file": tar_bytes(
            *valid,
            (
                info("index/extra.jsonl", tarfile.LNKTYPE, linkname=str(sentinel / "secret.txt")),
                None,
            ),
        ),
        "hard link to a relative outside file": tar_bytes(
            (info("snapshot.json", tarfile.LNKTYPE, linkname="../sentinel/secret.txt"), None),
            *valid[1:],
        ),
        "hard link to a member": tar_bytes(
            *valid,
            (info("objects/00/" + "0" * 62, tarfile.LNKTYPE, linkname="snapshot.json"), None),
        ),
        "symlink to the sentinel": tar_bytes(
            (info("objects", tarfile.SYMTYPE, linkname=str(sentinel)), None), *valid
        ),
        "declared size of a terabyte": tar_bytes(*valid, end=False)
        + huge.tobuf(tarfile.GNU_FORMAT)
        + b"x" * 512
        + END_OF_ARCHIVE,
        "sparse member": tar_bytes(*valid, end=False)
        + sparse.tobuf(tarfile.GNU_FORMAT)
        + END_OF_ARCHIVE,
        "duplicate member": tar_bytes(*valid, body),
        "duplicate manifest with other content": tar_bytes(
            *valid, (info("snapshot.json", size=2), b"{}")
        ),
        "pax header path escaping": tar_bytes(*valid, (pax_escape, b"")),
        "directory then file of one name": tar_bytes(
            (info("objects", tarfile.DIRTYPE), None), (info("objects", size=1), b"x"), *valid
        ),
        "gzip instead of tar": b"\x1f\x8b\x08\x00" + b"\x00" * 600,
        "empty file": b"",
        "only end-of-archive blocks": b"\0" * 10240,
        "character device": tar_bytes(*valid, (info("index/dev", tarfile.CHRTYPE), None)),
    }


# attack -> what the refusal says
HOSTILE_TAR_NAMES = {
    "hard link to an absolute outside file": "not a regular file",
    "hard link to a relative outside file": "not a regular file",
    "hard link to a member": "not a regular file",
    "symlink to the sentinel": "not a regular file",
    "declared size of a terabyte": "runs past the end of the archive",
    "sparse member": "not a regular file",
    "duplicate member": "twice",
    "duplicate manifest with other content": "twice",
    "pax header path escaping": "unsafe path",
    "directory then file of one name": "twice",
    "gzip instead of tar": "not a readable tar",
    "empty file": "not a readable tar|snapshot.json",
    "only end-of-archive blocks": "snapshot.json",
    "character device": "not a regular file",
}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("hostile", list(HOSTILE_TAR_NAMES))
def test_hostile_tars_are_refused_and_import_nothing(
    tmp_path: Path, snapshot: Path, sentinel: Path, hostile: str, kind: str
) -> None:
    archive = tmp_path / "hostile.tar"
    archive.write_bytes(hostile_tars(snapshot, sentinel)[hostile])
    target: KnowledgeRepository = (
        InMemoryKnowledgeRepository()
        if kind == "memory"
        else SQLiteKnowledgeRepository.open(tmp_path / "target", "none", create=True)
    )
    try:
        with pytest.raises(SnapshotError, match=HOSTILE_TAR_NAMES[hostile]):
            import_snapshot(archive, target)
        assert target.is_empty()
        if isinstance(target, SQLiteKnowledgeRepository):
            assert list(target.objects.all()) == []
    finally:
        target.close()
    assert not (tmp_path / "escaped.jsonl").exists()


def test_a_valid_tar_of_the_same_members_imports(tmp_path: Path, snapshot: Path) -> None:
    """The hostile variants above differ from an importable archive only in their attack."""
    archive = tmp_path / "valid.tar"
    archive.write_bytes(tar_bytes(*snapshot_members(snapshot)))
    target = InMemoryKnowledgeRepository()
    import_snapshot(archive, target)
    assert len(target.list_artifacts()) == len(BODIES)


def _rehash(root: Path, member: str) -> None:
    manifest = json.loads((root / "snapshot.json").read_text())
    manifest["files"][member] = digest_bytes((root / member).read_bytes())
    (root / "snapshot.json").write_text(json.dumps(manifest))


def _edit_first(root: Path, kind: str, edit: Callable[[dict[str, Any]], Any]) -> None:
    path = root / "index" / f"{kind}.jsonl"
    lines = path.read_text().splitlines()
    edited = edit(json.loads(lines[0]))
    lines[0] = edited if isinstance(edited, str) else json.dumps(edited)
    path.write_text("\n".join(lines) + "\n")
    _rehash(root, f"index/{kind}.jsonl")


def _symlink_index_file(root: Path, sentinel: Path) -> None:
    path = root / "index" / "collections.jsonl"
    shutil.copy(path, sentinel / "collections.copy")
    path.unlink()
    path.symlink_to(sentinel / "collections.copy")


def _symlink_fanout(root: Path, sentinel: Path) -> None:
    fan = next(p for p in (root / "objects").iterdir())
    shutil.copytree(fan, sentinel / "fan")
    shutil.rmtree(fan)
    fan.symlink_to(sentinel / "fan")


SNAPSHOT_TAMPERING: dict[str, Callable[[Path, Path], None]] = {
    "a line nested 100 000 deep": lambda root, _: _edit_first(
        root, "collections", lambda d: "[" * 100_000 + "]" * 100_000
    ),
    "a manifest nested 100 000 deep": lambda root, _: (root / "snapshot.json").write_text(
        '{"a":' * 100_000 + "1" + "}" * 100_000
    ),
    "an integer beyond 64 bits": lambda root, _: _edit_first(
        root, "changes", lambda d: {**d, "sequence": 2**70}
    ),
    "a negative size": lambda root, _: _edit_first(root, "artifacts", lambda d: {**d, "size": -5}),
    "a revision size that is not its body's": lambda root, _: _edit_first(
        root, "revisions", lambda d: {**d, "size": d["size"] + 1}
    ),
    "an artifact unlike its last revision": lambda root, _: _edit_first(
        root, "artifacts", lambda d: {**d, "artifact_type": "other"}
    ),
    "metadata nested 40 deep": lambda root, _: _edit_first(
        root, "collections", lambda d: {**d, "metadata": nested_dicts(40)}
    ),
    "a NUL in a name": lambda root, _: _edit_first(
        root, "collections", lambda d: {**d, "metadata": {"a\x00": 1}}
    ),
    "an index file symlinked outside": _symlink_index_file,
    "a fan-out directory symlinked outside": _symlink_fanout,
}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("tampering", list(SNAPSHOT_TAMPERING))
def test_tampered_snapshot_records_import_nothing(
    tmp_path: Path, snapshot: Path, tampering: str, kind: str
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    SNAPSHOT_TAMPERING[tampering](snapshot, elsewhere)
    before = tree_state(elsewhere)
    target: KnowledgeRepository = (
        InMemoryKnowledgeRepository()
        if kind == "memory"
        else SQLiteKnowledgeRepository.open(tmp_path / "target", "none", create=True)
    )
    try:
        with pytest.raises(SnapshotError):
            import_snapshot(snapshot, target)
        assert target.is_empty()
    finally:
        target.close()
    assert tree_state(elsewhere) == before  # what the links point at was only read


# -- symbolic links planted in the store ------------------------------------------


def body_and_path(repo: SQLiteKnowledgeRepository, text: str) -> tuple[bytes, Path]:
    body = text.encode()
    return body, repo.objects.path(digest_bytes(body))


def test_planted_object_symlink_is_never_followed(tmp_path: Path, sentinel: Path) -> None:
    with SQLiteKnowledgeRepository.open(tmp_path / "store", "full", create=True) as repo:
        cid = repo.create_collection("c").id
        for target_name, body_text in [("secret.txt", "body one"), ("victim.db", "body two")]:
            body, path = body_and_path(repo, body_text)
            path.parent.mkdir(exist_ok=True)
            path.symlink_to(sentinel / target_name)
            before = store_state(repo, healthy=False)
            with pytest.raises(CorruptObjectError, match="symbolic link"):
                repo.create_artifact(cid, body_text, body, artifact_type="t")
            with pytest.raises(CorruptObjectError):
                repo.objects.add(body)
            with pytest.raises(CorruptObjectError):
                repo.objects.get(digest_bytes(body))
            assert store_state(repo, healthy=False) == before
            assert path.is_symlink()
        # A link carrying the right bytes is refused all the same.
        body, path = body_and_path(repo, "do not touch\n")
        path.parent.mkdir(exist_ok=True)
        path.symlink_to(sentinel / "secret.txt")
        for read in (
            lambda: repo.objects.get(digest_bytes(body), verify=True),
            lambda: repo.read_object(digest_bytes(body)),
            lambda: repo.objects.open(digest_bytes(body)).read(),
        ):
            with pytest.raises(CorruptObjectError):
                read()
        report = fsck(repo, full=True)
        assert {f.kind for f in report.errors} >= {"not-a-file"}
        # gc never follows it either (and, not being an object, leaves it to fsck).
        os.utime(path, (0, 0), follow_symlinks=False)
        gc(repo, grace_seconds=0)
        assert path.is_symlink()


def test_planted_fanout_symlink_is_refused(tmp_path: Path, sentinel: Path) -> None:
    with SQLiteKnowledgeRepository.open(tmp_path / "store", "full", create=True) as repo:
        cid = repo.create_collection("c").id
        body, path = body_and_path(repo, "routed through a fan-out link")
        path.parent.symlink_to(sentinel / "nested")
        before = store_state(repo, healthy=False)
        with pytest.raises(StoreFormatError, match="fan-out"):
            repo.create_artifact(cid, "x", body, artifact_type="t")
        with pytest.raises(StoreFormatError, match="fan-out"):
            repo.objects.get(digest_bytes(body))
        assert store_state(repo, healthy=False) == before
        assert "bad-fanout" in {f.kind for f in fsck(repo, full=True).errors}


def test_planted_tmp_symlinks_are_never_written_through(tmp_path: Path, sentinel: Path) -> None:
    with SQLiteKnowledgeRepository.open(tmp_path / "store", "full", create=True) as repo:
        cid = repo.create_collection("c").id
        first = next(staging_module._tmp_counter)
        planted = []
        for number in range(first, first + 400):
            link = repo.root / "tmp" / f"{os.getpid()}.{number}.tmp"
            link.symlink_to(sentinel / ("secret.txt" if number % 2 else "missing-target"))
            planted.append(link)
        for index in range(30):
            repo.create_artifact(cid, f"n{index}", b"body %d" % index, artifact_type="t")
        repo.put_artifacts(cid, [NewArtifact(f"bulk{i}", b"bulk %d" % i, "t") for i in range(40)])
        with repo.objects.batch():
            for index in range(20):
                repo.objects.add(b"batched %d" % index)
        for index in range(30):
            assert repo.read_content(repo.query(name=f"n{index}")[0].id) == b"body %d" % index
        assert not (sentinel / "missing-target").exists()
        old = time.time() - 30 * 24 * 3600
        for link in planted:
            os.utime(link, (old, old), follow_symlinks=False)
        report = gc(repo, grace_seconds=0)
        assert report.tmp_removed == len(planted)
        assert not any(link.is_symlink() for link in planted)
        assert fsck(repo, full=True).ok


@pytest.mark.parametrize("part", ["tmp", "objects"])
def test_store_directories_symlinked_outside_are_refused_at_open(
    tmp_path: Path, sentinel: Path, part: str
) -> None:
    store = tmp_path / "store"
    SQLiteKnowledgeRepository.open(store, "full", create=True).close()
    shutil.rmtree(store / part)
    (store / part).symlink_to(sentinel / "nested")
    for read_only in (False, True):
        with pytest.raises(StoreFormatError, match=part):
            SQLiteKnowledgeRepository.open(store, "full", read_only=read_only)


def test_symlinked_wal_is_refused(tmp_path: Path, sentinel: Path) -> None:
    store = tmp_path / "store"
    SQLiteKnowledgeRepository.open(store, "full", create=True).close()
    (store / "index.sqlite-wal").symlink_to(sentinel / "secret.txt")
    with pytest.raises(KontextualError), SQLiteKnowledgeRepository.open(store, "full") as repo:
        repo.create_collection("c")


def test_symlinked_index_is_refused(tmp_path: Path) -> None:
    store, outside = tmp_path / "store", tmp_path / "elsewhere"
    outside.mkdir()
    victim = outside / "victim.db"
    with sqlite3.connect(victim) as conn:
        conn.execute("CREATE TABLE mine (x)")
    before = tree_state(outside)
    SQLiteKnowledgeRepository.open(store, "full", create=True).close()
    (store / "index.sqlite").unlink()
    (store / "index.sqlite").symlink_to(victim)
    try:
        with pytest.raises(StoreFormatError, match="symbolic link"):
            SQLiteKnowledgeRepository.open(store, "full").close()
    finally:
        assert tree_state(outside) == before
