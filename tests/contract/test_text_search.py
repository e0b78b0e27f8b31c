"""Word search: tokenizer, query language, BM25 ranking, snippets, substring mode,
text state and rebuilds, on every backend (``docs/contract.md``, ADR 0006)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kontextual_engine import Query, SearchHit
from kontextual_engine.errors import StoreFormatError, ValidationError
from kontextual_engine.storage import KnowledgeRepository, contract, text

from .conftest import Backend, MakeArtifact


def names(found: list) -> list[str]:  # type: ignore[type-arg]
    return [item.artifact.name if isinstance(item, SearchHit) else item.name for item in found]


def found(repo: KnowledgeRepository, query: str, **filters: object) -> list[str]:
    """Names of the hits of ``query``, best first."""
    return names(repo.query(text=query, **filters))


def matching(repo: KnowledgeRepository, query: str) -> set[str]:
    return set(found(repo, query))


@pytest.fixture
def corpus(make: MakeArtifact) -> dict[str, str]:
    return {
        "a": make("a", b"The quick brown fox"),
        "b": make("b", b"jumps over the lazy dog; the dog sleeps"),
        "c": make("c", b"QUICK thinking: foo-bar AND don't, e-mail"),
        "d": make("d", "Straße in München, the ﬁle in \uff26\uff35\uff2c\uff2c width, x²".encode()),
        "e": make("e", b"brown fox quick, not the quick brown fox order"),
    }


# -- words -----------------------------------------------------------------------


def test_words_are_case_folded_and_nfkc_normalised(
    repo: KnowledgeRepository, corpus: dict[str, str]
) -> None:
    assert matching(repo, "QUICK") == {"a", "c", "e"}
    assert matching(repo, "strasse") == {"d"}  # casefold: ß is ss
    assert matching(repo, "MÜNCHEN") == {"d"}
    assert matching(repo, "file") == {"d"}  # NFKC: the ﬁ ligature is fi
    assert matching(repo, "full") == {"d"}  # NFKC: full-width letters
    assert matching(repo, "x2") == {"d"}  # NFKC: a superscript two is 2
    assert matching(repo, "munchen") == set()  # no diacritic stripping


def test_words_not_substrings(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    assert matching(repo, "uic") == set()
    assert matching(repo, "quic") == set()
    assert matching(repo, "fox") == {"a", "e"}


def test_punctuation_splits_words_and_a_split_item_is_a_phrase(
    repo: KnowledgeRepository, corpus: dict[str, str]
) -> None:
    assert matching(repo, "foo-bar") == {"c"}
    assert matching(repo, "bar-foo") == set()  # the phrase "bar foo" is not there
    assert matching(repo, "don't") == {"c"}
    assert matching(repo, "AND") == {"c"}  # no boolean syntax: a word
    assert matching(repo, "e-mail") == {"c"}


# -- the query language ------------------------------------------------------------


def test_all_items_are_required(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    assert matching(repo, "quick fox") == {"a", "e"}
    assert matching(repo, "fox quick") == {"a", "e"}
    assert matching(repo, "quick dog") == set()


def test_phrases_need_adjacent_words_in_order(
    repo: KnowledgeRepository, corpus: dict[str, str]
) -> None:
    assert matching(repo, '"quick brown"') == {"a", "e"}
    assert matching(repo, '"brown quick"') == set()
    assert matching(repo, '"fox quick"') == {"e"}
    assert matching(repo, '"the lazy dog"') == {"b"}
    assert matching(repo, '"lazy the"') == set()
    assert matching(repo, '"QUICK  Brown" fox') == {"a", "e"}


def test_prefixes(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    assert matching(repo, "qui*") == {"a", "c", "e"}
    assert matching(repo, "th*") == {"a", "b", "c", "d", "e"}
    assert matching(repo, "thi*") == {"c"}
    assert matching(repo, '"quick bro"*') == {"a", "e"}
    assert matching(repo, '"brown qui"*') == set()
    assert matching(repo, "münch*") == {"d"}


def test_exclusions(repo: KnowledgeRepository, corpus: dict[str, str]) -> None:
    assert matching(repo, "quick -fox") == {"c"}
    assert matching(repo, "the -dog") == {"a", "d", "e"}
    assert matching(repo, 'fox -"fox order"') == {"a"}
    assert matching(repo, "quick -thi*") == {"a", "e"}


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("", "no term"),
        ("   ", "no term"),
        ("nul\x00", "NUL"),
        ('"unclosed phrase', "unclosed quote"),
        ('fox "', "unclosed quote"),
        ("a*b", "'*' may only end"),
        ("fox**", "'*' may only end"),
        ("*", "'*' may only end"),
        ("-fox", "only excludes"),
        ("-fox -dog", "only excludes"),
        ("+++", "no word"),
        ('""', "no word"),
        ("fox -", "no word"),
        (" ".join(f"w{n}" for n in range(text.MAX_TERMS + 1)), "at most"),
    ],
)
def test_bad_queries_name_the_problem(
    repo: KnowledgeRepository, corpus: dict[str, str], query: str, problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        repo.query(text=query)
    with pytest.raises(ValidationError, match=problem):
        repo.search(query)


@pytest.mark.parametrize(
    ("filters", "problem"),
    [
        ({"order": "best"}, "Query.order"),
        ({"order": "relevance"}, "needs a text query"),
        ({"substring": True}, "needs a text query"),
        ({"text": "fox", "substring": True, "order": "relevance"}, "cannot be ranked"),
        ({"text": "fox", "after": 3}, "order='sequence'"),
        ({"text": "fox", "substring": "yes"}, "True or False"),
    ],
)
def test_bad_orders(repo: KnowledgeRepository, filters: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        repo.query(**filters)


def test_search_needs_text(repo: KnowledgeRepository) -> None:
    with pytest.raises(ValidationError, match="needs a text query"):
        repo.search(artifact_type="note")


# -- ranking -----------------------------------------------------------------------


def test_bm25_by_the_formula(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    """Scores computed by hand from the formula FTS5's bm25() uses."""
    bodies = {
        "one": "apple banana cherry",
        "two": "apple apple date",
        "three": "egg fig grape honey kiwi",
        "four": "lemon mango",
    }
    for name, body in bodies.items():
        make(name, body.encode())
    lengths = {name: len(body.split()) for name, body in bodies.items()}
    average = sum(lengths.values()) / len(lengths)

    def term(frequency: int, length: int, hits: int) -> float:
        idf = max(math.log((len(bodies) - hits + 0.5) / (hits + 0.5)), 1e-6)
        return idf * frequency * 2.2 / (frequency + 1.2 * (0.25 + 0.75 * length / average))

    hits = repo.search("apple", snippets=False)
    assert names(hits) == ["two", "one"]  # two occurrences beat one
    assert hits[0].score == pytest.approx(term(2, 3, 2), rel=1e-12)
    assert hits[1].score == pytest.approx(term(1, 3, 2), rel=1e-12)
    (fig,) = repo.search("fig grape", snippets=False)
    assert fig.score == pytest.approx(2 * term(1, 5, 1), rel=1e-12)


def test_ranking_prefers_frequent_and_short(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    make("once-long", b"needle " + b"hay " * 40)
    make("twice-long", b"needle needle " + b"hay " * 40)
    make("once-short", b"needle hay")
    for number in range(6):
        make(f"other{number}", b"nothing to see here")
    assert found(repo, "needle") == ["once-short", "twice-long", "once-long"]
    scores = [hit.score for hit in repo.search("needle")]
    assert all(score is not None and score > 0 for score in scores)
    assert scores == sorted(scores, reverse=True)  # type: ignore[type-var]


def test_equal_scores_come_by_sequence(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    for name in ("z", "y", "x", "w"):
        make(name, b"same words here")
    make("other", b"unrelated")
    assert found(repo, "same words") == ["z", "y", "x", "w"]
    assert found(repo, "same", limit=2) == ["z", "y"]


def test_order_sequence_and_paging(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    make("a", b"word")
    make("b", b"word word word")
    make("c", b"word word")
    assert found(repo, "word") == ["b", "c", "a"]
    assert found(repo, "word", order="sequence") == ["a", "b", "c"]
    first = repo.query(text="word", order="sequence", limit=2)
    rest = repo.query(text="word", order="sequence", after=first[-1].sequence)
    assert names(first + rest) == ["a", "b", "c"]
    hits = repo.search("word", order="sequence")
    assert [hit.score for hit in hits] == [None, None, None]


def test_filters_combine_with_ranking(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    other = repo.create_collection("other").id
    make("a", b"word", metadata={"k": 1})
    make("b", b"word word", metadata={"k": 2})
    make("c", b"word word word", collection=other, metadata={"k": 1})
    assert found(repo, "word") == ["c", "b", "a"]
    assert found(repo, "word", metadata={"k": 1}) == ["c", "a"]
    notes = repo.get_collection_by_name("notes").id
    assert found(repo, "word", collection_id=notes) == ["b", "a"]
    assert found(repo, "word", collection_id=notes, limit=1) == ["b"]


def test_statistics_are_store_wide(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    """A filter narrows the hits, never the statistics: a score is the same with
    and without it (as in FTS5, where the index holds the whole store)."""
    other = repo.create_collection("other").id
    make("a", b"rare common")
    make("b", b"common", collection=other)
    make("c", b"common", collection=other)
    (alone,) = repo.search("rare", collection_id=repo.get_collection_by_name("notes").id)
    (everywhere,) = repo.search("rare")
    assert alone.score == everywhere.score


# -- what text follows ---------------------------------------------------------------


def test_text_follows_updates_and_deletes(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    artifact_id = make("a", b"alpha words")
    assert found(repo, "alpha") == ["a"]
    repo.update_artifact(artifact_id, content=b"beta words")
    assert found(repo, "alpha") == []
    assert found(repo, "beta") == ["a"]
    repo.update_artifact(artifact_id, metadata={"k": 1})
    assert found(repo, "beta") == ["a"]
    repo.delete_artifact(artifact_id)
    assert found(repo, "beta") == []
    assert found(repo, "words") == []


def test_a_failed_transaction_leaves_no_words(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    make("kept", b"kept words")
    with pytest.raises(RuntimeError), repo.transaction():
        make("lost", b"lost words")
        raise RuntimeError("undo")
    assert found(repo, "words") == ["kept"]
    assert repo.text_counts()["searchable"] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"needle " + b"x" * text.MAX_TEXT_BYTES, text.NotSearchable.TOO_LARGE),
        (b"needle \xff\xfe", text.NotSearchable.NOT_UTF8),
        (b"needle \x00", text.NotSearchable.BINARY),
    ],
    ids=["too-large", "not-utf8", "binary"],
)
def test_unsearchable_bodies_say_why(
    repo: KnowledgeRepository, make: MakeArtifact, body: bytes, reason: text.NotSearchable
) -> None:
    odd = make("odd", body)
    plain = make("plain", b"needle")
    assert found(repo, "needle") == ["plain"]
    assert repo.text_status(odd) is reason
    assert repo.text_status(plain) is None
    counts = repo.text_counts()
    assert counts[reason.value] == 1 and counts["searchable"] == 1 and counts["pending"] == 0
    assert reason.describe()
    repo.update_artifact(odd, content=b"needle now")
    assert repo.text_status(odd) is None
    assert repo.text_counts()[reason.value] == 0
    assert set(found(repo, "needle")) == {"odd", "plain"}


def test_text_status_of_a_missing_artifact(repo: KnowledgeRepository) -> None:
    from kontextual_engine.errors import ArtifactNotFound

    with pytest.raises(ArtifactNotFound):
        repo.text_status("art_missing")


def test_rebuild_gives_the_same_answers(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    for number in range(7):
        make(f"n{number}", f"common note {number} {'odd' if number % 2 else 'even'}".encode())
    make("bin", b"\x00")
    before = repo.search("common note")
    progress: list[int] = []
    assert repo.rebuild_text(everything=True, progress=progress.append) == 8
    assert sum(progress) == 8
    assert repo.search("common note") == before
    assert repo.text_counts() == {
        "searchable": 7,
        "pending": 0,
        "too-large": 0,
        "not-utf8": 0,
        "binary": 1,
    }
    assert repo.rebuild_text() == 0  # nothing pending


def test_queries_refuse_while_words_are_pending(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    make("a", b"alpha")
    with repo.transaction():
        repo.index.request_text_rebuild()
    assert repo.text_counts()["pending"] == 1
    with pytest.raises(StoreFormatError, match="rebuilt"):
        repo.query(text="alpha")
    assert names(repo.query()) == ["a"]  # other queries still answer
    assert repo.rebuild_text() == 1
    assert found(repo, "alpha") == ["a"]


# -- snippets ---------------------------------------------------------------------------


def test_snippets_mark_the_matched_words(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    make("a", b"The  Quick\nbrown fox jumps")
    (hit,) = repo.search('quick "brown fox"')
    assert hit.snippet is not None
    assert hit.snippet.text == "The Quick brown fox jumps"
    marked = [hit.snippet.text[start:end] for start, end in hit.snippet.highlights]
    assert marked == ["Quick", "brown", "fox"]


def test_snippets_show_the_best_place(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    words = [f"w{number}" for number in range(200)]
    words[120] = "needle"
    words[122] = "thread"
    make("long", " ".join(words).encode())
    (hit,) = repo.search("needle thread")
    assert hit.snippet is not None
    snippet = hit.snippet.text
    assert snippet.startswith("… ") and snippet.endswith(" …")
    assert len(snippet.split()) == text.SNIPPET_WORDS + 2
    marked = [snippet[start:end] for start, end in hit.snippet.highlights]
    assert marked == ["needle", "thread"]


def test_snippets_keep_the_edges_and_context_before(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    make("short", b"# Alpha\n\nthis guide.")
    (hit,) = repo.search("guide")
    assert hit.snippet is not None and hit.snippet.text == "# Alpha this guide."
    make("late", b"x " * 100 + b"needle. " + b"y " * 100)
    (hit,) = repo.search("needle")
    assert hit.snippet is not None
    before = hit.snippet.text.split("needle")[0].split()
    assert before[0] == "…" and len(before) - 1 == text.SNIPPET_WORDS // 3


def test_snippets_only_when_asked(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    make("a", b"alpha")
    (hit,) = repo.search("alpha", snippets=False)
    assert hit.snippet is None and hit.score is not None
    (hit,) = repo.search(Query(text="alpha"))
    assert hit.snippet is not None


# -- substring mode -------------------------------------------------------------------------


def test_substring_mode_keeps_the_old_meaning(
    repo: KnowledgeRepository, corpus: dict[str, str]
) -> None:
    assert found(repo, "uic", substring=True) == ["a", "c", "e"]  # substrings, by sequence
    assert found(repo, "ox QUI", substring=True) == ["a", "e"]
    assert found(repo, "foo-bar", substring=True) == ["c"]
    assert found(repo, "strasse", substring=True) == ["d"]
    assert found(repo, '"quick', substring=True) == []  # quotes are ordinary characters
    assert found(repo, "uic", substring=True, limit=2) == ["a", "c"]
    hits = repo.search("uic", substring=True)
    assert [hit.score for hit in hits] == [None, None, None]
    assert [hit.snippet for hit in hits] == [None, None, None]


def test_substring_mode_pages_through_the_store(
    repo: KnowledgeRepository, make: MakeArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(contract, "SUBSTRING_PAGE", 3)
    for number in range(10):
        make(f"n{number}", b"match" if number % 3 == 0 else b"other")
    make("bin", b"match\x00")
    assert found(repo, "atc", substring=True) == ["n0", "n3", "n6", "n9"]
    assert found(repo, "atc", substring=True, limit=3) == ["n0", "n3", "n6"]


# -- against the reference, on random input ---------------------------------------------------

ALPHABET = "aAbBß İı .-'\"*"


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    bodies=st.lists(st.text(ALPHABET, max_size=16), min_size=1, max_size=6),
    query=st.text(ALPHABET, min_size=1, max_size=8),
)
def test_results_and_scores_match_the_reference(
    backend: Backend, bodies: list[str], query: str
) -> None:
    """Every backend matches and ranks as :mod:`text` defines, score for score."""
    try:
        parsed = text.parse_query(query)
    except ValidationError:
        parsed = None
    with backend.example() as repo:
        matches_the_reference(repo, bodies, query, parsed)


def matches_the_reference(
    repo: KnowledgeRepository, bodies: list[str], query: str, parsed: text.TextQuery | None
) -> None:
    cid = repo.create_collection("c").id
    for index, body in enumerate(bodies):
        repo.create_artifact(cid, f"n{index}", body.encode(), artifact_type="t")
    if parsed is None:
        with pytest.raises(ValidationError):
            repo.query(text=query)
        return
    documents = {index: text.words(body) for index, body in enumerate(bodies)}
    matches = [index for index, words in documents.items() if parsed.matches(words)]
    scores = text.bm25_scores(parsed, documents, matches)
    expected = sorted(matches, key=lambda index: (-scores[index], index))
    hits = repo.search(query, snippets=False)
    assert names(hits) == [f"n{index}" for index in expected]
    for hit, index in zip(hits, expected, strict=True):
        assert hit.score == pytest.approx(scores[index], rel=1e-12, abs=1e-15)
    assert found(repo, query, order="sequence") == [f"n{index}" for index in sorted(matches)]
