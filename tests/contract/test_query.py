from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kontextual_engine import Query, RelatedTo
from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import ValidationError
from kontextual_engine.storage import KnowledgeRepository, text

from .conftest import Backend, MakeArtifact


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


def test_text_semantics(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    assert names(repo.query(text="quick")) == ["a", "c"]  # binary body d never matches
    assert names(repo.query(text="QUICK")) == ["a", "c"]
    assert names(repo.query(text="quick fox")) == ["a"]
    assert names(repo.query(text="fox quick")) == ["a"]
    assert names(repo.query(text="uic")) == ["a", "c"]  # substrings match
    assert names(repo.query(text="ox")) == ["a"]  # short terms too
    assert names(repo.query(text="a")) == ["b", "c", "e"]
    assert names(repo.query(text="strasse")) == ["e"]  # casefold: ß == ss
    assert names(repo.query(text="MÜNCHEN")) == ["e"]
    assert repo.query(text="munchen") == []  # no diacritic stripping


@pytest.mark.parametrize(
    "query",
    [
        "foo-bar",
        "AND",
        "don't",
        '"',
        "*",
        "NEAR(",
        "(",
        ")",
        "quick*",
        '"quick"',
        "a:b",
        "^",
        "OR NOT",
    ],
)
def test_text_syntax_is_literal(
    repo: KnowledgeRepository, corpus: dict[str, str], query: str
) -> None:
    expected = [
        name
        for name in "abcde"
        if text.matches(
            text.parse_terms(query), text.searchable_text(repo.read_content(corpus[name]))
        )
    ]
    assert names(repo.query(text=query)) == expected


def test_foo_bar_finds_literal(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    assert names(repo.query(text="foo-bar")) == ["c"]
    assert names(repo.query(text="don't")) == ["c"]
    assert names(repo.query(text="AND")) == ["c"]


def test_text_follows_updates_and_deletes(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    artifact_id = make("a", b"alpha words")
    assert names(repo.query(text="alpha")) == ["a"]
    repo.update_artifact(artifact_id, content=b"beta words")
    assert repo.query(text="alpha") == []
    assert names(repo.query(text="beta")) == ["a"]
    repo.update_artifact(artifact_id, metadata={"k": 1})
    assert names(repo.query(text="beta")) == ["a"]
    repo.delete_artifact(artifact_id)
    assert repo.query(text="beta") == []


def test_index_text_changes_no_answer(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    """Documents indexed and documents waiting for the index answer alike (ADR 0004),
    through updates and deletes on either side, with pages that span both."""
    ids = [
        make(f"n{number}", f"common note {number} {'odd' if number % 2 else 'even'}".encode())
        for number in range(6)
    ]
    before = names(repo.query(text="note"))
    assert repo.index_text() in (0, 6)  # none (no index, or indexed by the query) or all
    assert repo.index_text() == 0  # nothing left
    assert names(repo.query(text="note")) == before == [f"n{n}" for n in range(6)]
    ids += [make(f"n{number}", f"common note {number} later".encode()) for number in (6, 7)]
    repo.update_artifact(ids[1], content=b"common note one rewritten")  # indexed -> waiting
    repo.delete_artifact(ids[2])  # indexed, deleted
    repo.delete_artifact(ids[7])  # waiting, deleted
    expected = ["n0", "n1", "n3", "n4", "n5", "n6"]
    assert names(repo.query(text="common note")) == expected
    assert names(repo.query(text="odd")) == ["n3", "n5"]
    assert names(repo.query(text="rewritten")) == ["n1"]
    pages, after = [], None
    while True:
        page = repo.query(text="note", limit=2, after=after)
        if not page:
            break
        pages.append(names(page))
        after = page[-1].sequence
    assert pages == [expected[0:2], expected[2:4], expected[4:6]]
    progress: list[int] = []
    moved = repo.index_text(progress=progress.append)
    assert sum(progress) == moved <= len(expected)
    assert names(repo.query(text="common note")) == expected
    assert names(repo.query(text="note", name="n6")) == ["n6"]


def test_large_bodies_are_not_text(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    make("big", b"needle " + b"x" * text.MAX_TEXT_BYTES)
    make("small", b"needle")
    assert names(repo.query(text="needle")) == ["small"]


@pytest.mark.parametrize("bad", ["", "   ", "nul\x00"])
def test_bad_text_query(repo: KnowledgeRepository, bad: str) -> None:
    with pytest.raises(ValidationError):
        repo.query(text=bad)


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


ALPHABET = "aAbBß İı ."


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bodies=st.lists(st.text(ALPHABET, max_size=12), min_size=1, max_size=6),
    query=st.text(ALPHABET, min_size=1, max_size=6).filter(lambda q: q.split()),
)
def test_text_matches_reference_semantics(backend: Backend, bodies: list[str], query: str) -> None:
    repo = backend.new()
    cid = repo.create_collection("c").id
    for index, body in enumerate(bodies):
        repo.create_artifact(cid, f"n{index}", body.encode(), artifact_type="t")
    terms = text.parse_terms(query)
    expected = [
        f"n{index}"
        for index, body in enumerate(bodies)
        if all(term in body.casefold() for term in terms)
    ]
    assert names(repo.query(text=query)) == expected
