"""Fuzzing (hypothesis) of the snapshot importer and of queries.

Snapshot importer: a valid snapshot of a repository holding every kind of
record is mutated (bytes flipped, inserted, deleted, lines duplicated,
swapped, dropped or replaced, files truncated), with or without the manifest's
hash and count of the mutated file fixed up so the mutation gets past the
first check. Importing it must either succeed and hold exactly what the
mutated files say (re-exporting gives the same records), or raise
``SnapshotError`` and leave the target empty. No other exception type, no
partial import. The same for mutated ``.tar`` archives.

Queries: arbitrary text (FTS5 syntax characters, quotes, case folds, control
characters, any Unicode) and arbitrary metadata filters either give the same
results on the in-memory reference and on SQLite, or raise ``ValidationError``
on both.

CI runs a few hundred examples per property; ``--runslow`` ten times as many.
``KONTEXTUAL_FUZZ_EXAMPLES`` scales the CI count. The atheris entry points
(``fuzz_snapshot.py``, ``fuzz_query.py``) run the same properties under a
coverage-guided fuzzer when asked to.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import SnapshotError, ValidationError
from kontextual_engine.snapshot import KINDS, MANIFEST, export_snapshot, import_snapshot
from kontextual_engine.storage import (
    InMemoryKnowledgeRepository,
    KnowledgeRepository,
    SequentialIds,
    TickingClock,
)
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository

from ..test_snapshot import populate
from .harness import scaled

SCALE = scaled("FUZZ_EXAMPLES", 100) / 100
MEMBERS = [MANIFEST] + [f"index/{kind}.jsonl" for kind in KINDS]


def examples(count: int) -> settings:
    return settings(
        max_examples=max(1, int(count * SCALE)),
        deadline=None,
        derandomize=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- snapshot importer ------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot of a repository with every kind of record, deletions included."""
    repo = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
    populate(repo)
    root = tmp_path_factory.mktemp("fuzz") / "snap"
    export_snapshot(repo, root)
    return root


@st.composite
def mutations(draw: st.DrawFn) -> dict[str, Any]:
    member = draw(st.sampled_from(MEMBERS))
    kind = draw(
        st.sampled_from(
            [
                "flip",
                "insert",
                "delete",
                "truncate",
                "duplicate-line",
                "drop-line",
                "swap-lines",
                "replace-line",
                "splice-value",
            ]
        )
    )
    return {
        "member": member,
        "kind": kind,
        "position": draw(st.floats(0, 1)),
        "length": draw(st.integers(1, 40)),
        "bits": draw(st.integers(1, 255)),
        "data": draw(
            st.binary(min_size=1, max_size=24)
            | st.sampled_from(
                [
                    b'"',
                    b"\\",
                    b"null",
                    b"-1",
                    b"1e999",
                    b"9" * 25,
                    b'{"a":',
                    b"[]",
                    b"{}",
                    b"\xff\xfe",
                    b"\n",
                    b"true",
                    b'"blake3:' + b"0" * 64 + b'"',
                ]
            )
        ),
        "fix_hash": draw(st.booleans()),
        "fix_count": draw(st.booleans()),
        "other_line": draw(st.integers(0, 10_000)),
    }


def mutate(root: Path, mutation: dict[str, Any]) -> None:
    path = root / mutation["member"]
    data = path.read_bytes()
    at = int(mutation["position"] * len(data))
    length = mutation["length"]
    lines = data.split(b"\n")
    line = min(int(mutation["position"] * len(lines)), len(lines) - 1)
    other = mutation["other_line"] % len(lines)
    kind = mutation["kind"]
    if kind == "flip" and data:
        data = data[:at] + bytes([data[min(at, len(data) - 1)] ^ mutation["bits"]]) + data[at + 1 :]
    elif kind == "insert":
        data = data[:at] + mutation["data"] + data[at:]
    elif kind == "delete":
        data = data[:at] + data[at + length :]
    elif kind == "truncate":
        data = data[:at]
    elif kind == "duplicate-line":
        data = b"\n".join([*lines[:line], lines[line], *lines[line:]])
    elif kind == "drop-line":
        data = b"\n".join(lines[:line] + lines[line + 1 :])
    elif kind == "swap-lines":
        lines[line], lines[other] = lines[other], lines[line]
        data = b"\n".join(lines)
    elif kind == "replace-line":
        lines[line] = mutation["data"]
        data = b"\n".join(lines)
    elif kind == "splice-value":
        # Replace one JSON scalar somewhere with hostile bytes: reaches the type checks.
        start = data.find(b":", at)
        end = min(
            (i for i in (data.find(b",", start), data.find(b"}", start)) if i > 0), default=-1
        )
        if start >= 0 and end > start:
            data = data[: start + 1] + mutation["data"] + data[end:]
    path.write_bytes(data)
    if mutation["member"] == MANIFEST:
        return
    manifest_path = root / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_bytes())
        if mutation["fix_hash"]:
            manifest["files"][mutation["member"]] = digest_bytes(data)
        if mutation["fix_count"]:
            kind_name = mutation["member"].removeprefix("index/").removesuffix(".jsonl")
            manifest["counts"][kind_name] = len(data.decode("utf-8", "replace").splitlines())
        manifest_path.write_text(json.dumps(manifest))
    except (ValueError, KeyError, TypeError):
        pass


def assert_all_or_nothing(snapshot: Path, target: KnowledgeRepository) -> str:
    """Import; either SnapshotError and an empty target, or exactly what the files say."""
    try:
        import_snapshot(snapshot, target)
    except SnapshotError:
        assert target.is_empty()
        assert target.list_collections() == []
        assert target.list_changes() == []
        if isinstance(target, SQLiteKnowledgeRepository):
            assert list(target.query()) == []
        return "refused"
    wanted = {kind: (snapshot / f"index/{kind}.jsonl").read_bytes() for kind in KINDS}
    assert_holds_exactly(target, wanted)
    return "imported"


def assert_holds_exactly(target: KnowledgeRepository, files: dict[str, bytes]) -> None:
    """``target`` re-exports to the records of the index files it was imported from."""
    with tempfile.TemporaryDirectory() as scratch:
        export_snapshot(target, Path(scratch) / "again")
        for kind in KINDS:
            member = f"index/{kind}.jsonl"
            # Records out of order are put in order: compare them as sets.
            wanted = sorted(
                json.dumps(json.loads(line), sort_keys=True)
                for line in files[kind].decode().splitlines()
            )
            got = sorted(
                json.dumps(json.loads(line), sort_keys=True)
                for line in (Path(scratch) / "again" / member).read_text().splitlines()
            )
            assert got == wanted, member


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("mutants")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _mutant(pristine: Path, base: Path, mutation: dict[str, Any]) -> Path:
    work = Path(tempfile.mkdtemp(dir=base))
    shutil.copytree(pristine, work / "snap")
    mutate(work / "snap", mutation)
    return work


def check_snapshot_mutation(pristine: Path, base: Path, mutation: dict[str, Any], kind: str) -> str:
    work = _mutant(pristine, base, mutation)
    target: KnowledgeRepository = (
        InMemoryKnowledgeRepository()
        if kind == "memory"
        else SQLiteKnowledgeRepository.open(work / "store", "none", create=True)
    )
    try:
        return assert_all_or_nothing(work / "snap", target)
    finally:
        target.close()
        shutil.rmtree(work, ignore_errors=True)


def test_unmutated_snapshot_imports(pristine: Path, copies: Path) -> None:
    """The fuzzers start from a snapshot that imports: refusals are the mutations' doing."""
    mutation = {
        "member": "index/changes.jsonl",
        "kind": "insert",
        "position": 1.0,
        "length": 1,
        "bits": 1,
        "data": b"",
        "fix_hash": True,
        "fix_count": False,
        "other_line": 0,
    }
    assert check_snapshot_mutation(pristine, copies, mutation, "memory") == "imported"
    assert check_snapshot_mutation(pristine, copies, mutation, "sqlite") == "imported"


@examples(300)
@given(mutation=mutations())
def test_mutated_snapshot_imports_all_or_nothing(
    pristine: Path, copies: Path, mutation: dict[str, Any]
) -> None:
    check_snapshot_mutation(pristine, copies, mutation, "memory")


@examples(60)
@given(mutation=mutations())
def test_mutated_snapshot_imports_all_or_nothing_into_sqlite(
    pristine: Path, copies: Path, mutation: dict[str, Any]
) -> None:
    check_snapshot_mutation(pristine, copies, mutation, "sqlite")


@pytest.mark.slow
@examples(3000)
@given(mutation=mutations(), kind=st.sampled_from(["memory", "sqlite"]))
def test_mutated_snapshot_imports_all_or_nothing_long(
    pristine: Path, copies: Path, mutation: dict[str, Any], kind: str
) -> None:
    check_snapshot_mutation(pristine, copies, mutation, kind)


@pytest.fixture(scope="module")
def one_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A snapshot holding one collection and one artifact, named ``c`` and ``a``."""
    repo = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
    repo.create_artifact(repo.create_collection("c").id, "a", b"body", artifact_type="t")
    root = tmp_path_factory.mktemp("names") / "snap"
    export_snapshot(repo, root)
    return root


def renamed(pristine: Path, base: Path, name: str) -> Path:
    """A copy of ``one_artifact`` whose artifact is called ``name``, hashes fixed up."""
    work = Path(tempfile.mkdtemp(dir=base)) / "snap"
    shutil.copytree(pristine, work)
    manifest = json.loads((work / MANIFEST).read_bytes())
    for kind in ("artifacts", "revisions"):
        path = work / "index" / f"{kind}.jsonl"
        record = json.loads(path.read_bytes())
        record["name"] = name
        data = (
            json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"
        ).encode("utf-8", "surrogatepass")
        path.write_bytes(data)
        manifest["files"][f"index/{kind}.jsonl"] = digest_bytes(data)
    (work / MANIFEST).write_text(json.dumps(manifest))
    return work


@examples(300)
@given(
    name=st.text(max_size=12)
    | st.text(alphabet=st.characters(max_codepoint=0xA0), max_size=8)
    | st.sampled_from(["\x1b]0;x\x07", "\x1b[2J", " a", "a ", "x" * 1025, "\u2028", "\ufeff"])
)
def test_import_accepts_a_name_exactly_when_the_api_does(
    one_artifact: Path, copies: Path, name: str
) -> None:
    """One rule: an artifact name imports if and only if ``create_artifact`` takes it."""
    api = InMemoryKnowledgeRepository()
    try:
        api.create_artifact(api.create_collection("c").id, name, b"body", artifact_type="t")
        api_takes_it = True
    except ValidationError:
        api_takes_it = False
    target = InMemoryKnowledgeRepository()
    snapshot = renamed(one_artifact, copies, name)
    try:
        import_snapshot(snapshot, target)
        imported = True
    except SnapshotError:
        imported = False
        assert target.is_empty()
    assert imported == api_takes_it, name
    if imported:
        assert target.list_artifacts()[0].name == name


@pytest.fixture(scope="module")
def pristine_tar(pristine: Path) -> bytes:
    repo = InMemoryKnowledgeRepository()
    import_snapshot(pristine, repo)
    with tempfile.TemporaryDirectory() as scratch:
        export_snapshot(repo, Path(scratch) / "snap.tar", tar=True)
        return (Path(scratch) / "snap.tar").read_bytes()


@examples(150)
@given(
    position=st.floats(0, 1),
    data=st.binary(max_size=16),
    cut=st.integers(0, 64),
    flip=st.integers(0, 255),
)
def test_mutated_tar_imports_all_or_nothing(
    pristine_tar: bytes, copies: Path, position: float, data: bytes, cut: int, flip: int
) -> None:
    at = int(position * len(pristine_tar))
    mutated = bytearray(pristine_tar[:at] + data + pristine_tar[at + cut :])
    if flip and at < len(mutated):
        mutated[at] ^= flip
    archive = Path(tempfile.mkdtemp(dir=copies)) / "mutant.tar"
    archive.write_bytes(bytes(mutated))
    target = InMemoryKnowledgeRepository()
    try:
        import_snapshot(archive, target)
    except SnapshotError:
        assert target.is_empty()
    else:
        with tarfile.open(archive) as extracted:
            files = {}
            for kind in KINDS:
                reader = extracted.extractfile(f"index/{kind}.jsonl")
                assert reader is not None
                files[kind] = reader.read()
        assert_holds_exactly(target, files)


# -- queries -----------------------------------------------------------------------

SPECIALS = [
    *" \"'*()-:^+{}[]%_\\\t\n.,;",
    "NEAR",
    "OR",
    "AND",
    "NOT",
    "NEAR(",
    "rowid",
    "artifact_words",
    "words",
]
LETTERS = list("abcABCsSßẞİi\u0131\u0307éﬁ")
query_text = st.one_of(
    st.lists(st.sampled_from(SPECIALS + LETTERS), min_size=0, max_size=12).map("".join),
    st.text(max_size=20),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=20),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(-2, 2),
    st.sampled_from(["a", "1", "", "NEAR", "'", '"']),
)
metadata_filters = st.dictionaries(
    st.one_of(st.sampled_from(["k", "n", 'q"', "a.b", "$.k", "", "'; --"]), st.text(max_size=4)),
    st.one_of(json_scalars, st.lists(json_scalars, max_size=2)),
    max_size=2,
)


@pytest.fixture(scope="module")
def corpus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[KnowledgeRepository, KnowledgeRepository]]:
    """The same artifacts in both backends: bodies built from the query alphabet."""
    import random

    memory = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
    sqlite = SQLiteKnowledgeRepository.open(
        tmp_path_factory.mktemp("corpus") / "store",
        "none",
        clock=TickingClock(),
        ids=SequentialIds(),
        create=True,
    )
    for repo in (memory, sqlite):
        local = random.Random(5)  # the same artifacts in both
        collections = [repo.create_collection(name).id for name in ("one", "two")]
        for index in range(120):
            body = "".join(
                local.choice(SPECIALS + LETTERS + [" "] * 4) for _ in range(local.randint(0, 60))
            )
            raw = body.encode() if index % 10 else b"\xff\x00" + body.encode()
            repo.create_artifact(
                local.choice(collections),
                f"doc{index}",
                raw,
                artifact_type=local.choice(["note", "doc"]),
                metadata={
                    local.choice(["k", "n", 'q"', "a.b", "$.k", "", "'; --"]): local.choice(
                        [None, True, 1, 1.0, "1", "a", [1], {"x": 1}]
                    )
                },
            )
    assert memory.export_records() == sqlite.export_records()
    yield memory, sqlite
    sqlite.close()


def both(corpus: tuple[KnowledgeRepository, KnowledgeRepository], **filters: Any) -> None:
    outcomes: list[Any] = []
    for repo in corpus:
        try:
            outcomes.append([a.id for a in repo.query(**filters)])
        except ValidationError:
            outcomes.append(ValidationError)
    assert outcomes[0] == outcomes[1], filters


@examples(400)
@given(text=query_text, limit=st.none() | st.integers(0, 5))
def test_text_queries_agree_or_are_refused(
    corpus: tuple[KnowledgeRepository, KnowledgeRepository], text: str, limit: int | None
) -> None:
    both(corpus, text=text, limit=limit)


@examples(300)
@given(metadata=metadata_filters, text=st.none() | query_text)
def test_metadata_filters_agree_or_are_refused(
    corpus: tuple[KnowledgeRepository, KnowledgeRepository],
    metadata: dict[str, Any],
    text: str | None,
) -> None:
    both(corpus, metadata=metadata, text=text)


@pytest.mark.slow
@examples(5000)
@given(
    text=query_text,
    metadata=st.none() | metadata_filters,
    artifact_type=st.none() | st.sampled_from(["note", "doc", "'", ""]),
    limit=st.none() | st.integers(0, 5),
)
def test_queries_agree_or_are_refused_long(
    corpus: tuple[KnowledgeRepository, KnowledgeRepository],
    text: str,
    metadata: dict[str, Any] | None,
    artifact_type: str | None,
    limit: int | None,
) -> None:
    both(corpus, text=text, metadata=metadata, artifact_type=artifact_type, limit=limit)
