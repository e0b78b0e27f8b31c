from __future__ import annotations

import threading

import pytest

from kontextual_engine.errors import DuplicateNameError
from kontextual_engine.storage import KnowledgeRepository

from .conftest import MakeArtifact


class Boom(Exception):
    pass


def snapshot(repo: KnowledgeRepository) -> tuple[object, ...]:
    return (repo.list_collections(), repo.query(), repo.list_relationships(), repo.list_changes())


def test_failed_transaction_rolls_back_everything(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    a = make("a", b"v1")
    b = make("b", b"other")
    rel = repo.create_relationship(a, b, "cites")
    before = snapshot(repo)
    history = repo.list_revisions(a)
    with pytest.raises(Boom), repo.transaction():
        repo.update_artifact(a, content=b"v2")
        repo.create_artifact(collection_id, "c", b"new", artifact_type="note")
        repo.create_collection("other")
        repo.delete_relationship(rel.id)
        repo.delete_artifact(b)
        raise Boom
    assert snapshot(repo) == before
    assert repo.list_revisions(a) == history
    assert repo.read_content(a) == b"v1"
    assert repo.query(text="new") == []
    assert repo.query(text="v1")[0].id == a


def test_sequence_numbers_are_given_back(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    make("a")
    with pytest.raises(Boom), repo.transaction():
        make("b")
        raise Boom
    make("c")
    assert [c.sequence for c in repo.list_changes()] == [1, 2, 3]


def test_nested_inner_failure_keeps_outer_work(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    with repo.transaction():
        make("outer")
        with pytest.raises(Boom), repo.transaction():
            make("inner")
            raise Boom
        make("after")
    assert [a.name for a in repo.query()] == ["outer", "after"]
    assert [c.sequence for c in repo.list_changes()] == [1, 2, 3]


def test_outer_failure_undoes_committed_inner(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    with pytest.raises(Boom), repo.transaction():
        with repo.transaction():
            make("inner")
        raise Boom
    assert repo.query() == []


def test_contract_error_inside_transaction_rolls_back(
    repo: KnowledgeRepository, make: MakeArtifact
) -> None:
    make("a")
    with pytest.raises(DuplicateNameError), repo.transaction():
        make("b")
        make("a")
    assert [a.name for a in repo.query()] == ["a"]


def test_threads_do_not_lose_writes(repo: KnowledgeRepository, collection_id: str) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for index in range(25):
                repo.create_artifact(
                    collection_id,
                    f"w{worker}-{index}",
                    f"{worker}/{index}".encode(),
                    artifact_type="note",
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(repo.query()) == 100
    assert [c.sequence for c in repo.list_changes()] == list(range(1, 102))
