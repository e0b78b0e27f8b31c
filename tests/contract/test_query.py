from __future__ import annotations

import pytest

from kontextual_engine import Query, RelatedTo
from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import ValidationError
from kontextual_engine.storage import KnowledgeRepository

from .conftest import MakeArtifact


def names(found: list) -> list[str]:  # type: ignore[type-arg]
    return [artifact.name for artifact in found]


@pytest.fixture
def corpus(repo: KnowledgeRepository, make: MakeArtifact, collection_id: str) -> dict[str, str]:
    other = repo.create_collection("other").id
    ids = {
        "a": make(
            "a",
            b"The quick brown fox",
            artifact_type="note",
            metadata={"n": 1, "tag": "x", "flag": True},
        ),
        "b": make(
            "b",
            b"jumps over the lazy dog",
            artifact_type="summary",
            metadata={"n": 1.0, "tag": "y"},
        ),
        "c": make(
            "c",
            b"QUICK thinking; foo-bar AND don't",
            artifact_type="note",
            metadata={"n": "1", "list": [1, 2], "obj": {"k": "v"}},
        ),
        "d": make("d", b"\xff\xfe binary quick", artifact_type="blob", metadata={"n": None}),
        "e": make(
            "e",
            b"Stra\xc3\x9fe in M\xc3\xbcnchen",
            artifact_type="note",
            metadata={"flag": 1},
            collection=other,
        ),
    }
    return ids


def test_by_collection_type_name_digest(
    repo: KnowledgeRepository, corpus: dict[str, str], collection_id: str
) -> None:
    assert names(repo.query(collection_id=collection_id)) == ["a", "b", "c", "d"]
    assert names(repo.query(artifact_type="note")) == ["a", "c", "e"]
    assert names(repo.query(name="b")) == ["b"]
    assert names(repo.query(digest=digest_bytes(b"jumps over the lazy dog"))) == ["b"]
    bare = digest_bytes(b"jumps over the lazy dog").removeprefix("blake3:")
    assert names(repo.query(digest=bare)) == ["b"]
    assert names(repo.query(ids=[corpus["c"], corpus["a"], "art_missing"])) == ["a", "c"]


def test_filters_combine_with_and(
    repo: KnowledgeRepository, corpus: dict[str, str], collection_id: str
) -> None:
    assert names(repo.query(artifact_type="note", collection_id=collection_id)) == ["a", "c"]
    assert names(repo.query(artifact_type="note", text="quick", metadata={"n": 1})) == ["a"]
    assert repo.query(artifact_type="summary", text="fox") == []


def test_metadata_is_type_exact(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    assert names(repo.query(metadata={"n": 1})) == ["a"]
    assert names(repo.query(metadata={"n": 1.0})) == ["b"]
    assert names(repo.query(metadata={"n": "1"})) == ["c"]
    assert names(repo.query(metadata={"n": None})) == ["d"]
    assert names(repo.query(metadata={"flag": True})) == ["a"]
    assert names(repo.query(metadata={"flag": 1})) == ["e"]
    assert names(repo.query(metadata={"list": [1, 2]})) == ["c"]
    assert repo.query(metadata={"list": [2, 1]}) == []
    assert names(repo.query(metadata={"obj": {"k": "v"}})) == ["c"]
    assert names(repo.query(metadata={"n": 1, "tag": "x"})) == ["a"]
    assert repo.query(metadata={"n": 1, "tag": "y"}) == []
    assert repo.query(metadata={"missing": None}) == []


@pytest.mark.parametrize(
    "key", ['with"quote', "with.dot", "with'single", "$.path", "ü-ñ", "[0]", "back\\slash", ""]
)
def test_any_metadata_key_works(repo: KnowledgeRepository, make: MakeArtifact, key: str) -> None:
    make("hit", metadata={key: "v"})
    make("miss", metadata={"other": "v"})
    assert names(repo.query(metadata={key: "v"})) == ["hit"]


@pytest.mark.parametrize(
    ("wanted", "near_misses"),
    [
        (1.0, [1, True, "1.0"]),
        ([1, 2], [[1, 2, 3], [2, 1], [1.0, 2]]),
        ({"a": 1}, [{"a": 1, "b": 2}, {"a": 1.0}]),
        ("kb", ["KB", ["kb"], None]),
    ],
)
def test_a_limited_metadata_query_counts_only_exact_matches(
    repo: KnowledgeRepository, make: MakeArtifact, wanted: object, near_misses: list[object]
) -> None:
    """Near misses (equal in some JSON sense, or containing the value) come first
    and in between: a limit must count only the type-exact matches."""
    for number in range(3):
        for miss, value in enumerate(near_misses):
            make(f"miss-{number}-{miss}", metadata={"k": value})
        make(f"hit-{number}", metadata={"k": wanted})
    found = repo.query(metadata={"k": wanted}, limit=2)
    assert names(found) == ["hit-0", "hit-1"]
    rest = repo.query(metadata={"k": wanted}, after=found[-1].sequence)
    assert names(rest) == ["hit-2"]


def test_related_to(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    repo.create_relationship(corpus["a"], corpus["b"], "cites")
    repo.create_relationship(corpus["c"], corpus["a"], "cites")
    repo.create_relationship(corpus["a"], corpus["d"], "derived_from")
    a = corpus["a"]
    assert names(repo.query(related_to=RelatedTo(a, direction="outgoing"))) == ["b", "d"]
    assert names(repo.query(related_to=RelatedTo(a, direction="incoming"))) == ["c"]
    assert names(repo.query(related_to=RelatedTo(a))) == ["b", "c", "d"]
    assert names(repo.query(related_to=RelatedTo(a, "cites"))) == ["b", "c"]
    assert names(repo.query(related_to=RelatedTo(a, "cites", "outgoing"))) == ["b"]
    assert names(repo.query(related_to=RelatedTo(a, "cites"), artifact_type="note")) == ["c"]


def test_limit_and_cursor(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    for index in range(7):
        make(f"n{index}")
    seen: list[str] = []
    after = None
    while True:
        page = repo.query(limit=3, after=after)
        if not page:
            break
        seen.extend(names(page))
        after = page[-1].sequence
    assert seen == [f"n{index}" for index in range(7)]
    assert repo.query(limit=0) == []


def test_deleted_never_found(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    repo.delete_artifact(corpus["a"])
    assert "a" not in names(repo.query())
    assert repo.query(ids=[corpus["a"]]) == []
    assert repo.query(metadata={"tag": "x"}) == []
    assert repo.query(text="fox") == []


@pytest.mark.parametrize(
    "bad",
    [
        {"limit": -1},
        {"limit": "3"},
        {"after": -5},
        {"digest": "../../etc/passwd"},
        {"digest": "sha256:" + "0" * 64},
        {"metadata": {"x": float("nan")}},
        {"related_to": RelatedTo("art_x", direction="sideways")},
        {"ids": "art_x"},
        {"unknown_filter": 1},
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_bad_queries(repo: KnowledgeRepository, bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        repo.query(**bad)


def test_query_object_and_kwargs(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    assert repo.query(Query(artifact_type="note")) == repo.query(artifact_type="note")
    with pytest.raises(ValidationError):
        repo.query(Query(), artifact_type="note")
