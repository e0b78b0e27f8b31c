"""History on every backend: change sets, apply, reads as of a point, name history."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from kontextual_engine import Delete, NewArtifact, PutOutcome, Rename
from kontextual_engine.errors import (
    ArtifactNotFound,
    ChangeSetNotFound,
    CollectionNotFound,
    DuplicateNameError,
    ValidationError,
)
from kontextual_engine.storage import KnowledgeRepository

from .conftest import MakeArtifact

T0 = datetime(2027, 3, 1, 9, 0, tzinfo=timezone.utc)  # after the test clock


def names(found: list) -> list[str]:  # type: ignore[type-arg]
    return [artifact.name for artifact in found]


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


# -- change sets ------------------------------------------------------------------


def test_every_transaction_is_one_change_set(repo: KnowledgeRepository, collection_id: str) -> None:
    before = repo.list_change_sets()
    with repo.transaction(actor="ana", message="two notes"):
        repo.create_artifact(collection_id, "a", b"one", artifact_type="note")
        repo.create_artifact(collection_id, "b", b"two", artifact_type="note")
    (made,) = repo.list_change_sets(after=before[-1].sequence)
    assert (made.actor, made.message) == ("ana", "two notes")
    changes = repo.index.change_set_changes(made.id)
    assert [c.entity_kind for c in changes] == ["artifact", "artifact"]
    assert made.sequence == changes[0].sequence and made.id == f"cs_{made.sequence}"
    assert all(c.change_set_id == made.id for c in changes)
    assert repo.get_change_set(made.id) == made


def test_single_calls_are_change_sets_of_one(repo: KnowledgeRepository, collection_id: str) -> None:
    a = repo.create_artifact(
        collection_id, "a", b"one", artifact_type="note", actor="bo", message="add a"
    )
    repo.update_artifact(a.id, content=b"two", actor="cy", message="edit a")
    repo.delete_artifact(a.id, actor="dee", message="drop a")
    sets = repo.list_change_sets()[-3:]
    assert [(cs.actor, cs.message) for cs in sets] == [
        ("bo", "add a"),
        ("cy", "edit a"),
        ("dee", "drop a"),
    ]
    assert [c.action for c in repo.list_changes()[-3:]] == ["create", "update", "delete"]


def test_relationship_calls_carry_change_set_fields(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    a, b = make("a"), make("b")
    link = repo.create_relationship(a, b, "cites", actor="eve", message="link")
    repo.delete_relationship(link.id, actor="fay", message="unlink")
    assert [(cs.actor, cs.message) for cs in repo.list_change_sets()[-2:]] == [
        ("eve", "link"),
        ("fay", "unlink"),
    ]


def test_at_sets_every_time_of_the_change_set(
    repo: KnowledgeRepository, collection_id: str
) -> None:
    made = repo.create_artifact(collection_id, "a", b"x", artifact_type="note", at=day(400))
    assert made.created_at == made.updated_at == day(400)
    assert repo.list_changes()[-1].timestamp == day(400)
    assert repo.list_change_sets()[-1].timestamp == day(400)
    local = datetime(2029, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    later = repo.update_artifact(made.id, content=b"y", at=local)
    assert later.updated_at == local and later.updated_at.tzinfo == timezone.utc


def test_earlier_at_needs_backdate(repo: KnowledgeRepository, collection_id: str) -> None:
    repo.create_artifact(collection_id, "a", b"x", artifact_type="note", at=day(500))
    with pytest.raises(ValidationError, match="backdate"):
        repo.create_artifact(collection_id, "b", b"y", artifact_type="note", at=day(1))
    assert names(repo.list_artifacts()) == ["a"]
    with repo.transaction(at=day(1), backdate=True, message="import"):
        repo.create_artifact(collection_id, "b", b"y", artifact_type="note")
    assert repo.list_change_sets()[-1].timestamp == day(1)


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"at": datetime(2025, 1, 1)}, "no time zone"),
        ({"at": "2025-01-01"}, "datetime"),
        ({"actor": 3}, "actor"),
        ({"message": "nul\x00"}, "message"),
        ({"backdate": "yes"}, "backdate"),
        ({"at": datetime(999, 1, 1, tzinfo=timezone.utc)}, "outside 1970..9999"),
        ({"at": datetime(1969, 12, 31, tzinfo=timezone.utc)}, "outside 1970..9999"),
    ],
)
def test_bad_change_set_fields(
    repo: KnowledgeRepository, collection_id: str, fields: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem), repo.transaction(**fields):  # type: ignore[arg-type]
        repo.create_artifact(collection_id, "a", b"x", artifact_type="note")
    assert repo.list_artifacts() == []


def test_inner_calls_take_no_change_set_fields(
    repo: KnowledgeRepository, collection_id: str
) -> None:
    with pytest.raises(ValidationError, match="outermost"), repo.transaction(actor="a"):
        repo.create_artifact(collection_id, "a", b"x", artifact_type="note", actor="b")
    assert repo.list_artifacts() == []


def test_a_rolled_back_transaction_leaves_no_change_set(
    repo: KnowledgeRepository, collection_id: str
) -> None:
    before = repo.list_change_sets()
    with pytest.raises(RuntimeError), repo.transaction(actor="x"):
        repo.create_artifact(collection_id, "a", b"x", artifact_type="note")
        raise RuntimeError
    assert repo.list_change_sets() == before
    made = repo.create_artifact(collection_id, "a", b"x", artifact_type="note")
    assert repo.list_change_sets()[-1].id == f"cs_{made.sequence}"


def test_unknown_change_set(repo: KnowledgeRepository) -> None:
    with pytest.raises(ChangeSetNotFound):
        repo.get_change_set("cs_999")
    with pytest.raises(ChangeSetNotFound):
        repo.change_set_changes("cs_999")
    for bad in ({"after": -1}, {"limit": -1}, {"limit": "x"}, {"after": True}):
        with pytest.raises(ValidationError):
            repo.list_change_sets(**bad)  # type: ignore[arg-type]


def test_every_record_of_a_change_set_has_one_time(
    repo: KnowledgeRepository, collection_id: str
) -> None:
    """Without ``at`` too: the clock is read once per change set."""
    with repo.transaction():
        first = repo.create_artifact(collection_id, "a", b"x", artifact_type="note")
        second = repo.create_artifact(collection_id, "b", b"y", artifact_type="note")
    change_set = repo.list_change_sets()[-1]
    records = repo.change_set_changes(change_set.id)
    assert {r.timestamp for r in records} == {change_set.timestamp}
    assert first.created_at == second.created_at == change_set.timestamp
    later = repo.create_artifact(collection_id, "c", b"z", artifact_type="note")
    assert later.created_at > change_set.timestamp


# -- apply ---------------------------------------------------------------------------


def test_apply_creates_updates_renames_and_deletes(
    repo: KnowledgeRepository, collection_id: str
) -> None:
    repo.put_artifacts(
        collection_id, [NewArtifact("a", b"a1", "note"), NewArtifact("b", b"b1", "note")]
    )
    results = repo.apply(
        collection_id,
        [
            Rename("a", "a2"),
            Delete("b"),
            NewArtifact("b", b"b again", "note"),
            NewArtifact("a2", b"a2 edited", "note"),
            NewArtifact("c", b"c1", "note"),
        ],
        actor="gil",
        message="reorganise",
    )
    assert [r.outcome for r in results] == [
        PutOutcome.RENAMED,
        PutOutcome.DELETED,
        PutOutcome.CREATED,
        PutOutcome.UPDATED,
        PutOutcome.CREATED,
    ]
    assert names(repo.list_artifacts(collection_id)) == ["a2", "b", "c"]
    (same,) = repo.apply(collection_id, [Rename("c", "c")])
    assert same.outcome is PutOutcome.UNCHANGED
    assert repo.read_content(repo.get_artifact_by_name(collection_id, "a2").id) == b"a2 edited"
    change_set = repo.list_change_sets()[-1]
    assert (change_set.actor, change_set.message) == ("gil", "reorganise")
    assert len(repo.index.change_set_changes(change_set.id)) == 5


@pytest.mark.parametrize(
    ("operations", "error"),
    [
        ([Rename("missing", "x")], ArtifactNotFound),
        ([Delete("missing")], ArtifactNotFound),
        ([Rename("a", "b")], DuplicateNameError),
        ([Rename("a", "bad\x00name")], ValidationError),
        ([NewArtifact("x", b"1", "note"), NewArtifact("x", b"2", "note")], DuplicateNameError),
        (["not an operation"], ValidationError),
    ],
)
def test_apply_is_all_or_nothing(
    repo: KnowledgeRepository,
    collection_id: str,
    operations: list[object],
    error: type[Exception],
) -> None:
    repo.put_artifacts(
        collection_id, [NewArtifact("a", b"a1", "note"), NewArtifact("b", b"b1", "note")]
    )
    before = (repo.last_sequence(), repo.list_change_sets())
    with pytest.raises(error):
        repo.apply(collection_id, [NewArtifact("new", b"n", "note"), *operations])  # type: ignore[list-item]
    assert (repo.last_sequence(), repo.list_change_sets()) == before
    assert names(repo.list_artifacts(collection_id)) == ["a", "b"]


def test_apply_of_many_creates_is_one_change_set(
    repo: KnowledgeRepository, collection_id: str
) -> None:
    results = repo.apply(
        collection_id, (NewArtifact(f"n{i}", f"body {i}".encode(), "note") for i in range(1200))
    )
    assert {r.outcome for r in results} == {PutOutcome.CREATED}
    assert len(repo.index.change_set_changes(repo.list_change_sets()[-1].id)) == 1200


# -- as of a point in history ----------------------------------------------------------


@pytest.fixture
def story(repo: KnowledgeRepository, collection_id: str) -> dict[str, str]:
    """a is made, edited, renamed to b; c is made and deleted; a new a is made."""
    a = repo.create_artifact(
        collection_id, "a", b"first words", artifact_type="note", metadata={"k": 1}, at=day(1)
    )
    c = repo.create_artifact(collection_id, "c", b"other words", artifact_type="note", at=day(2))
    link = repo.create_relationship(a.id, c.id, "cites", metadata={"why": "x"}, at=day(3))
    repo.update_artifact(a.id, content=b"second words", metadata={"k": 2}, at=day(4))
    repo.update_artifact(a.id, name="b", at=day(5))
    repo.delete_artifact(c.id, at=day(6))
    again = repo.create_artifact(collection_id, "a", b"a new a", artifact_type="note", at=day(7))
    sets = [cs.id for cs in repo.list_change_sets()]
    return {
        "a": a.id,
        "c": c.id,
        "link": link.id,
        "again": again.id,
        **{f"cs{n}": sets[-8 + n] for n in range(1, 8)},
    }


def test_list_artifacts_as_of_every_change_set(
    repo: KnowledgeRepository, collection_id: str, story: dict[str, str]
) -> None:
    seen = {
        n: [(a.name, a.revision) for a in repo.list_artifacts(collection_id, as_of=story[f"cs{n}"])]
        for n in range(1, 8)
    }
    assert seen == {
        1: [("a", 1)],
        2: [("a", 1), ("c", 1)],
        3: [("a", 1), ("c", 1)],
        4: [("a", 2), ("c", 1)],
        5: [("b", 3), ("c", 1)],
        6: [("b", 3)],
        7: [("b", 3), ("a", 1)],
    }
    then = repo.list_artifacts(collection_id, as_of=story["cs4"])[0]
    assert then.metadata == {"k": 2} and then.updated_at == day(4) and then.created_at == day(1)
    assert then == repo.get_artifact_by_name(collection_id, "a", as_of=story["cs4"])


def test_the_three_forms_of_as_of(
    repo: KnowledgeRepository, collection_id: str, story: dict[str, str]
) -> None:
    by_set = repo.list_artifacts(collection_id, as_of=story["cs4"])
    sequence = repo.resolve_as_of(story["cs4"])
    assert repo.list_artifacts(collection_id, as_of=sequence) == by_set
    assert repo.list_artifacts(collection_id, as_of=day(4) + timedelta(hours=1)) == by_set
    assert repo.list_artifacts(collection_id, as_of=day(0)) == []
    assert repo.list_artifacts(collection_id, as_of=0) == []
    assert repo.list_artifacts(collection_id, as_of=repo.last_sequence()) == (
        repo.list_artifacts(collection_id)
    )


def test_reads_by_name_and_content_as_of(
    repo: KnowledgeRepository, collection_id: str, story: dict[str, str]
) -> None:
    assert repo.get_artifact_by_name(collection_id, "a", as_of=story["cs4"]).id == story["a"]
    assert repo.get_artifact_by_name(collection_id, "a", as_of=story["cs7"]).id == story["again"]
    with pytest.raises(ArtifactNotFound, match="as of"):
        repo.get_artifact_by_name(collection_id, "a", as_of=story["cs5"])
    assert repo.read_content(story["a"], as_of=story["cs3"]) == b"first words"
    then = repo.get_artifact(story["a"], as_of=story["cs5"])
    assert (then.name, then.revision, then.created_at) == ("b", 3, day(1))
    assert then == repo.list_artifacts(collection_id, as_of=story["cs5"])[0]
    with pytest.raises(ArtifactNotFound, match="as of"):
        repo.get_artifact(story["c"], as_of=story["cs6"])
    assert repo.read_content(story["a"], as_of=story["cs7"]) == b"second words"
    assert repo.read_content(story["c"], as_of=story["cs5"]) == b"other words"
    with pytest.raises(ArtifactNotFound):
        repo.read_content(story["c"], as_of=story["cs6"])  # deleted by then
    with pytest.raises(ArtifactNotFound):
        repo.read_content(story["again"], as_of=story["cs6"])  # not made yet


def test_queries_as_of(
    repo: KnowledgeRepository, collection_id: str, story: dict[str, str]
) -> None:
    assert names(repo.query(metadata={"k": 1}, as_of=story["cs3"])) == ["a"]
    assert names(repo.query(metadata={"k": 1}, as_of=story["cs4"])) == []
    assert names(repo.query(text="first", as_of=story["cs3"])) == ["a"]
    assert names(repo.query(text="first")) == []
    assert names(repo.query(text="words", as_of=story["cs5"])) == ["b", "c"]
    assert names(repo.query(text="ord", substring=True, as_of=story["cs5"])) == ["b", "c"]
    first = repo.query(text="ord", substring=True, as_of=story["cs5"])[0]
    assert names(
        repo.query(text="ord", substring=True, after=first.sequence, as_of=story["cs5"])
    ) == ["c"]
    hits = repo.search("words", as_of=story["cs2"])
    assert [h.artifact.name for h in hits] == ["a", "c"]
    assert hits[0].snippet is not None and hits[0].snippet.text == "first words"
    assert names(repo.query(name="b", as_of=story["cs5"])) == ["b"]
    related = repo.query(
        related_to=__import__("kontextual_engine").RelatedTo(story["a"]), as_of=story["cs3"]
    )
    assert names(related) == ["c"]


def test_relationships_as_of(
    repo: KnowledgeRepository, collection_id: str, story: dict[str, str]
) -> None:
    assert repo.list_relationships(as_of=story["cs2"]) == []
    (then,) = repo.list_relationships(as_of=story["cs5"])
    assert then.id == story["link"] and then.metadata == {"why": "x"}
    assert repo.list_relationships(story["a"], direction="outgoing", as_of=story["cs5"]) == [then]
    assert repo.list_relationships(story["a"], direction="incoming", as_of=story["cs5"]) == []
    assert repo.list_relationships(as_of=story["cs6"]) == []  # gone with c
    assert repo.list_relationships() == []


@pytest.mark.parametrize(
    ("as_of", "error", "problem"),
    [
        (-1, ValidationError, "outside"),
        (10_000, ValidationError, "outside"),
        ("cs_10000", ChangeSetNotFound, "cs_10000"),
        (datetime(2025, 1, 1), ValidationError, "no time zone"),
        (True, ValidationError, "as_of"),
        (1.5, ValidationError, "as_of"),
    ],
)
def test_bad_as_of(
    repo: KnowledgeRepository,
    collection_id: str,
    story: dict[str, str],
    as_of: object,
    error: type[Exception],
    problem: str,
) -> None:
    with pytest.raises(error, match=problem):
        repo.list_artifacts(collection_id, as_of=as_of)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="not both"):
        repo.read_content(story["a"], revision=1, as_of=story["cs1"])


# -- name history ---------------------------------------------------------------------


def test_history_of_a_name(
    repo: KnowledgeRepository, collection_id: str, story: dict[str, str]
) -> None:
    history = repo.history_of_name(collection_id, "a")
    assert [h.artifact_id for h in history] == [story["a"], story["again"]]
    first, second = history
    assert [r.revision for r in first.revisions] == [1, 2, 3]
    assert [r.name for r in first.revisions] == ["a", "a", "b"]
    assert [c.action for c in first.changes] == ["create", "update", "update"]
    assert not first.deleted and not second.deleted
    (gone,) = repo.history_of_name(collection_id, "c")
    assert gone.deleted and [c.action for c in gone.changes] == ["create", "delete"]
    assert repo.history_of_name(collection_id, "never") == []
    with pytest.raises(CollectionNotFound):
        repo.history_of_name("col_missing", "a")
    with pytest.raises(CollectionNotFound):
        repo.list_artifacts("col_missing", as_of=story["cs1"])
    with pytest.raises(ValidationError):
        repo.history_of_name(collection_id, 3)  # type: ignore[arg-type]


def test_history_outlives_its_collection(repo: KnowledgeRepository) -> None:
    gone = repo.create_collection("gone").id
    made = repo.create_artifact(gone, "a", b"x", artifact_type="note")
    point = repo.last_sequence()
    repo.delete_artifact(made.id)
    repo.delete_collection(gone)
    (history,) = repo.history_of_name(gone, "a")
    assert history.deleted
    assert names(repo.list_artifacts(gone, as_of=point)) == ["a"]


def test_threads_keep_their_own_change_sets(repo: KnowledgeRepository, collection_id: str) -> None:
    """Each thread's transaction is its own change set, with its own actor, even
    where a backend runs transactions of several threads at once."""
    import threading

    errors: list[BaseException] = []

    def write(actor: str) -> None:
        try:
            for round_ in range(3):
                with repo.transaction(actor=actor, message=f"round {round_}"):
                    for n in range(3):
                        repo.create_artifact(
                            collection_id, f"{actor}-{round_}-{n}", b"x", artifact_type="note"
                        )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    sets = [cs for cs in repo.list_change_sets() if cs.actor is not None]
    assert len(sets) == 12
    for change_set in sets:
        records = repo.change_set_changes(change_set.id)
        names = [r.details["name"] for r in records]
        assert len(names) == 3 and all(n.startswith(f"{change_set.actor}-") for n in names)
        assert {n.split("-")[1] for n in names} == {change_set.message.split()[1]}  # type: ignore[union-attr]
