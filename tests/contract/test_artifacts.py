from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kontextual_engine import MetadataMode, NewArtifact, PutOutcome
from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import (
    ArtifactNotFound,
    CollectionNotFound,
    DuplicateNameError,
    RevisionConflictError,
    RevisionNotFound,
    ValidationError,
)
from kontextual_engine.models import MAX_JSON_DEPTH, canonical_json
from kontextual_engine.storage import KnowledgeRepository
from kontextual_engine.storage.pipeline import NewFile

from .conftest import Backend, MakeArtifact


def test_create_get_read(repo: KnowledgeRepository, collection_id: str) -> None:
    made = repo.create_artifact(
        collection_id,
        "docs/a.md",
        b"# Title\n",
        artifact_type="document",
        media_type="text/markdown",
        metadata={"tags": ["x"], "n": 3},
        provenance={"source": "import"},
    )
    assert made.revision == 1
    assert made.digest == digest_bytes(b"# Title\n")
    assert made.size == 8
    assert made.metadata == {"tags": ["x"], "n": 3}
    assert made.provenance == {"source": "import"}
    assert repo.get_artifact(made.id) == made
    assert repo.get_artifact_by_name(collection_id, "docs/a.md") == made
    assert repo.read_content(made.id) == b"# Title\n"


def test_records_are_immutable(repo: KnowledgeRepository, collection_id: str) -> None:
    made = repo.create_artifact(
        collection_id, "a", b"x", artifact_type="note", metadata={"list": [1]}
    )
    handed_out = made.metadata
    handed_out["list"].append(2)
    handed_out["new"] = True
    assert repo.get_artifact(made.id).metadata == {"list": [1]}
    with pytest.raises(AttributeError):
        made.name = "other"  # type: ignore[misc]


def test_empty_body(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    artifact_id = make("empty", b"")
    assert repo.read_content(artifact_id) == b""
    assert repo.get_artifact(artifact_id).size == 0


def test_binary_body(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    body = bytes(range(256)) * 10
    assert repo.read_content(make("bin", body)) == body


def test_duplicate_live_name_refused(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    make("a.md", b"one")
    with pytest.raises(DuplicateNameError, match=r"a\.md"):
        make("a.md", b"two")
    assert len(repo.list_artifacts(collection_id)) == 1


def test_same_name_in_other_collection(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    other = repo.create_collection("other").id
    make("a.md")
    make("a.md", collection=other)
    assert len(repo.query(name="a.md")) == 2


def test_name_free_after_delete(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    first = make("a.md", b"one")
    repo.delete_artifact(first)
    second = make("a.md", b"two")
    assert second != first
    assert repo.get_artifact_by_name(collection_id, "a.md").id == second


def test_create_in_missing_collection(repo: KnowledgeRepository) -> None:
    with pytest.raises(CollectionNotFound):
        repo.create_artifact("col_missing", "a", b"x", artifact_type="note")
    assert repo.list_changes() == []


def test_missing_artifact(repo: KnowledgeRepository, collection_id: str) -> None:
    with pytest.raises(ArtifactNotFound, match="art_missing"):
        repo.get_artifact("art_missing")
    with pytest.raises(ArtifactNotFound, match="ghost"):
        repo.get_artifact_by_name(collection_id, "ghost")
    with pytest.raises(ArtifactNotFound):
        repo.update_artifact("art_missing", content=b"x")
    with pytest.raises(ArtifactNotFound):
        repo.delete_artifact("art_missing")
    with pytest.raises(ArtifactNotFound):
        repo.list_revisions("art_missing")


def test_update_makes_revision_with_digests(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    artifact_id = make("a.md", b"v1")
    updated = repo.update_artifact(artifact_id, content=b"v2", provenance={"by": "me"})
    assert updated.revision == 2
    assert updated.digest == digest_bytes(b"v2")
    assert updated.provenance == {"by": "me"}
    history = repo.list_revisions(artifact_id)
    assert [r.revision for r in history] == [1, 2]
    assert [r.digest for r in history] == [digest_bytes(b"v1"), digest_bytes(b"v2")]
    assert repo.read_content(artifact_id, 1) == b"v1"
    assert repo.read_content(artifact_id) == b"v2"
    change = repo.list_changes(entity_id=artifact_id)[-1]
    assert change.action == "update"
    assert change.old_digest == digest_bytes(b"v1")
    assert change.new_digest == digest_bytes(b"v2")
    assert change.revision == 2
    assert change.details == {"changed": ["digest"]}


@pytest.mark.parametrize(
    "change",
    [
        {"artifact_type": "summary"},
        {"name": "b.md"},
        {"metadata": {"k": 2}},
        {"media_type": "text/plain"},
    ],
)
def test_each_field_change_makes_a_revision(
    repo: KnowledgeRepository, make: MakeArtifact, change: dict[str, object]
) -> None:
    artifact_id = make("a.md", b"same", metadata={"k": 1})
    updated = repo.update_artifact(artifact_id, **change)  # type: ignore[arg-type]
    assert updated.revision == 2
    assert updated.digest == digest_bytes(b"same")
    revision = repo.get_revision(artifact_id, 2)
    for key, value in change.items():
        assert getattr(revision, key) == value if key != "metadata" else revision.metadata == value


def test_noop_update_makes_nothing(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    artifact_id = make("a.md", b"same", metadata={"k": 1})
    before = repo.last_sequence()
    same = repo.update_artifact(
        artifact_id,
        content=b"same",
        metadata={"k": 1},
        artifact_type="note",
        name="a.md",
        provenance={"only": "provenance"},
    )
    assert same.revision == 1
    assert repo.last_sequence() == before
    assert len(repo.list_revisions(artifact_id)) == 1


def test_metadata_change_is_type_exact(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    artifact_id = make("a", metadata={"k": 1})
    assert repo.update_artifact(artifact_id, metadata={"k": 1.0}).revision == 2
    assert repo.update_artifact(artifact_id, metadata={"k": True}).revision == 3
    assert repo.update_artifact(artifact_id, metadata={"k": "1"}).revision == 4


def test_rename_respects_unique_names(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    first = make("a.md")
    make("b.md")
    with pytest.raises(DuplicateNameError):
        repo.update_artifact(first, name="b.md")
    repo.update_artifact(first, name="c.md")
    assert repo.get_artifact_by_name(collection_id, "c.md").id == first
    with pytest.raises(ArtifactNotFound):
        repo.get_artifact_by_name(collection_id, "a.md")


def test_expected_revision(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    artifact_id = make("a.md", b"v1")
    repo.update_artifact(artifact_id, content=b"v2", expected_revision=1)
    with pytest.raises(RevisionConflictError) as caught:
        repo.update_artifact(artifact_id, content=b"v3", expected_revision=1)
    assert (caught.value.expected, caught.value.actual) == (1, 2)
    assert artifact_id in str(caught.value)
    assert repo.read_content(artifact_id) == b"v2"
    with pytest.raises(RevisionConflictError):
        repo.delete_artifact(artifact_id, expected_revision=1)
    assert repo.get_artifact(artifact_id).revision == 2


def test_delete_hides_but_keeps_history(
    repo: KnowledgeRepository, make: MakeArtifact, collection_id: str
) -> None:
    artifact_id = make("a.md", b"v1")
    repo.update_artifact(artifact_id, content=b"v2")
    repo.delete_artifact(artifact_id)
    with pytest.raises(ArtifactNotFound):
        repo.get_artifact(artifact_id)
    with pytest.raises(ArtifactNotFound):
        repo.read_content(artifact_id)
    with pytest.raises(ArtifactNotFound):
        repo.update_artifact(artifact_id, content=b"v3")
    assert repo.list_artifacts(collection_id) == []
    assert repo.query(name="a.md") == []
    assert [r.revision for r in repo.list_revisions(artifact_id)] == [1, 2]
    assert repo.read_content(artifact_id, 1) == b"v1"
    actions = [c.action for c in repo.list_changes(entity_id=artifact_id)]
    assert actions == ["create", "update", "delete"]
    deleted = repo.list_changes(entity_id=artifact_id)[-1]
    assert deleted.old_digest == digest_bytes(b"v2")


def test_missing_revision(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    artifact_id = make("a.md")
    with pytest.raises(RevisionNotFound, match="revision 5"):
        repo.get_revision(artifact_id, 5)
    with pytest.raises(ValidationError):
        repo.get_revision(artifact_id, 0)


@pytest.mark.parametrize(
    "bad",
    [
        {"metadata": {"x": math.nan}},
        {"metadata": {"x": math.inf}},
        {"metadata": {"x": {1, 2}}},
        {"metadata": {"x": b"bytes"}},
        {"metadata": {1: "non-str key"}},
        {"metadata": {"x": 2**64}},
        {"metadata": {"nul\x00key": 1}},
        {"metadata": {"surrogate": "\ud800"}},
        {"metadata": ["not", "an", "object"]},
        {"metadata": {"big": "x" * (1 << 20)}},
        {"provenance": {"x": object()}},
        {"artifact_type": ""},
        {"media_type": "bad\nmedia"},
        {"content": "text, not bytes"},
    ],
    ids=lambda bad: next(iter(bad)) + ":" + repr(next(iter(bad.values())))[:20],
)
def test_bad_input_is_refused_whole(
    repo: KnowledgeRepository, collection_id: str, bad: dict[str, object]
) -> None:
    kwargs: dict[str, object] = {"artifact_type": "note", "content": b"x"}
    kwargs.update(bad)
    content = kwargs.pop("content")
    before = repo.last_sequence()
    with pytest.raises(ValidationError):
        repo.create_artifact(collection_id, "a", content, **kwargs)  # type: ignore[arg-type]
    assert repo.list_artifacts(collection_id) == []
    assert repo.last_sequence() == before


def test_too_deep_metadata(repo: KnowledgeRepository, collection_id: str) -> None:
    deep: object = 1
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = {"d": deep}
    with pytest.raises(ValidationError, match="deeper"):
        repo.create_artifact(collection_id, "a", b"x", artifact_type="note", metadata={"d": deep})


@pytest.mark.parametrize("name", ["", "line\nbreak", "bell\x07", " lead", "x" * 1025])
def test_bad_artifact_names(repo: KnowledgeRepository, collection_id: str, name: str) -> None:
    with pytest.raises(ValidationError):
        repo.create_artifact(collection_id, name, b"x", artifact_type="note")


def test_put_artifacts_creates_updates_and_skips(
    repo: KnowledgeRepository, collection_id: str
) -> None:
    first = repo.put_artifacts(
        collection_id,
        [
            NewArtifact("a", b"1", "note"),
            NewArtifact("b", b"2", "note"),
        ],
    )
    assert [r.outcome for r in first] == [PutOutcome.CREATED, PutOutcome.CREATED]
    second = repo.put_artifacts(
        collection_id,
        [
            NewArtifact("a", b"1", "note"),
            NewArtifact("b", b"changed", "note"),
            NewArtifact("c", b"3", "note"),
        ],
    )
    assert [r.outcome for r in second] == [
        PutOutcome.UNCHANGED,
        PutOutcome.UPDATED,
        PutOutcome.CREATED,
    ]
    assert second[1].artifact.revision == 2
    assert repo.read_content(second[1].artifact.id) == b"changed"
    assert [a.name for a in repo.list_artifacts(collection_id)] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (MetadataMode.REPLACE, {"b": 3}),
        (MetadataMode.MERGE, {"a": 1, "b": 3}),
        (MetadataMode.KEEP, {"a": 1, "b": 2}),
        ("merge", {"a": 1, "b": 3}),
    ],
)
def test_put_artifacts_metadata_modes(
    repo: KnowledgeRepository,
    collection_id: str,
    mode: MetadataMode | str,
    expected: dict[str, int],
) -> None:
    [old] = repo.put_artifacts(
        collection_id, [NewArtifact("a", b"1", "note", None, {"a": 1, "b": 2})]
    )
    [new] = repo.put_artifacts(
        collection_id, [NewArtifact("a", b"1", "note", None, {"b": 3})], metadata=mode
    )
    assert new.artifact.metadata == expected
    changed = expected != old.artifact.metadata
    assert new.outcome is (PutOutcome.UPDATED if changed else PutOutcome.UNCHANGED)
    assert new.artifact.revision == (2 if changed else 1)
    # A created artifact gets the item's metadata whatever the mode.
    [fresh] = repo.put_artifacts(
        collection_id, [NewArtifact("z", b"1", "note", None, {"b": 3})], metadata=mode
    )
    assert fresh.artifact.metadata == {"b": 3}


def test_put_artifacts_refuses_an_unknown_metadata_mode(
    repo: KnowledgeRepository, collection_id: str
) -> None:
    before = repo.last_sequence()
    with pytest.raises(ValidationError, match="metadata mode must be one of replace, merge, keep"):
        repo.put_artifacts(collection_id, [NewArtifact("a", b"1", "note")], metadata="union")
    assert repo.last_sequence() == before


def test_put_artifacts_keep_types(repo: KnowledgeRepository, collection_id: str) -> None:
    repo.put_artifacts(collection_id, [NewArtifact("a", b"1", "paper", "application/pdf")])
    [kept] = repo.put_artifacts(
        collection_id, [NewArtifact("a", b"2", "file", "text/plain")], keep_types=True
    )
    assert (kept.artifact.artifact_type, kept.artifact.media_type) == ("paper", "application/pdf")
    assert kept.artifact.revision == 2
    [created] = repo.put_artifacts(
        collection_id, [NewArtifact("b", b"2", "file", "text/plain")], keep_types=True
    )
    assert (created.artifact.artifact_type, created.artifact.media_type) == ("file", "text/plain")
    [replaced] = repo.put_artifacts(collection_id, [NewArtifact("a", b"2", "file", "text/plain")])
    assert (replaced.artifact.artifact_type, replaced.artifact.media_type) == ("file", "text/plain")


def test_put_artifacts_is_all_or_nothing(repo: KnowledgeRepository, collection_id: str) -> None:
    before = repo.last_sequence()
    with pytest.raises(ValidationError):
        repo.put_artifacts(
            collection_id,
            [
                NewArtifact("a", b"1", "note"),
                NewArtifact("b", b"2", "note", metadata={"x": math.nan}),
            ],
        )
    with pytest.raises(DuplicateNameError):
        repo.put_artifacts(
            collection_id, [NewArtifact("a", b"1", "note"), NewArtifact("a", b"2", "note")]
        )
    assert repo.list_artifacts(collection_id) == []
    assert repo.last_sequence() == before


@pytest.mark.parametrize(
    ("items", "message"),
    [
        # The second item shares the first one's artifact type, not its media type.
        (
            [NewArtifact("a", b"1", "note", "text/plain"), NewArtifact("b", b"2", "note", "\n")],
            "media type",
        ),
        ([NewArtifact("a", b"1", "note"), NewArtifact("b", b"2", "note", ["x"])], "media type"),  # type: ignore[arg-type]
        ([NewArtifact("a", b"1", "note"), NewArtifact("b", b"2", ["note"])], "artifact type"),  # type: ignore[arg-type]
        ([NewArtifact("a", b"1", "note"), NewArtifact("b", b"2", "")], "artifact type"),
        # Every field wrong: the name is named, as it is checked first.
        ([NewArtifact("\n", "text", "", "\n", {"x": math.nan})], "artifact name"),  # type: ignore[arg-type]
        ([NewArtifact("a", "text", "", "\n")], "content"),  # type: ignore[arg-type]
    ],
)
def test_put_artifacts_checks_every_item(
    repo: KnowledgeRepository, collection_id: str, items: list[NewArtifact], message: str
) -> None:
    before = repo.last_sequence()
    with pytest.raises(ValidationError, match=message):
        repo.put_artifacts(collection_id, items)
    assert repo.list_artifacts(collection_id) == []
    assert repo.last_sequence() == before


@pytest.mark.parametrize(
    "name", ['quote " and \\ backslash', "日本語 ✓", "a/b\u2028c", "\U0001f600"]
)
def test_creation_change_names_the_artifact(
    repo: KnowledgeRepository, collection_id: str, name: str
) -> None:
    created = repo.create_artifact(collection_id, name, b"x", artifact_type="note")
    [put] = repo.put_artifacts(collection_id, [NewArtifact(name + " 2", b"y", "note")])
    for artifact in (created, put.artifact):
        [change] = repo.list_changes(entity_id=artifact.id)
        expected = {"collection_id": collection_id, "name": artifact.name}
        assert change.details == expected
        assert change.details_json == canonical_json(expected)
        assert (change.action, change.entity_kind, change.revision) == ("create", "artifact", 1)
        assert change.new_digest == artifact.digest and change.old_digest is None


def test_artifacts_survive_reopen(backend: Backend) -> None:
    repo = backend.new()
    cid = repo.create_collection("c").id
    metadata = {
        "unicode": "日本語 ✓",
        "nested": {"a": [1, 2.5, None, True]},
        "big": 2**62,
        "neg": -(2**63),
        "float": 1e-300,
        "empty": {},
        "emptylist": [],
    }
    made = repo.create_artifact(cid, "a", b"v1", artifact_type="t", metadata=metadata)
    updated = repo.update_artifact(made.id, content=b"v2")
    repo = backend.reopen(repo)
    assert repo.get_artifact(made.id) == updated
    assert repo.get_artifact(made.id).metadata == metadata
    assert [r.digest for r in repo.list_revisions(made.id)] == [made.digest, updated.digest]
    assert repo.read_content(made.id, 1) == b"v1"


def json_text(max_size: int | None = None) -> st.SearchStrategy[str]:
    """Strings JSON can hold here: no NUL, no lone surrogates."""
    return st.text(
        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=max_size
    )


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(json_text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(metadata=st.dictionaries(json_text(max_size=8), json_values, max_size=4))
def test_metadata_roundtrips_exactly(backend: Backend, metadata: dict[str, object]) -> None:
    with backend.example() as repo:
        cid = repo.create_collection("c").id
        made = repo.create_artifact(cid, "a", b"x", artifact_type="t", metadata=metadata)
        repo = backend.reopen(repo)
        got = repo.get_artifact(made.id).metadata
        assert got == metadata
        assert repo.get_artifact(made.id).metadata_json == made.metadata_json


def test_any_mapping_is_a_json_object(repo: KnowledgeRepository, make: MakeArtifact) -> None:
    """Metadata may hold mappings other than dicts (read-only views, ordered
    dicts) at any depth; they are stored as the JSON objects they are."""
    from collections import OrderedDict
    from types import MappingProxyType

    metadata = MappingProxyType(
        {"view": MappingProxyType({"b": [OrderedDict(z=1, a=2)], "a": (1, "two")})}
    )
    found = repo.get_artifact(make("mapped", metadata=metadata))
    assert found.metadata == {"view": {"a": [1, "two"], "b": [{"a": 2, "z": 1}]}}
    assert found.metadata_json == '{"view":{"a":[1,"two"],"b":[{"a":2,"z":1}]}}'


@pytest.mark.parametrize("workers", [0, 2])
def test_put_files_is_put_artifacts_of_paths_and_streams(
    repo: KnowledgeRepository, collection_id: str, tmp_path: Path, workers: int
) -> None:
    """Bodies read from paths and streams give the outcomes, bodies and change set
    that the same bytes give through put_artifacts."""
    paths = []
    for number in range(5):
        path = tmp_path / f"f{number}.md"
        path.write_bytes(f"file {number} about retrieval\n".encode() * (number + 1))
        paths.append(path)
    repo.create_artifact(collection_id, "f1.md", b"old", artifact_type="note")
    with open(paths[4], "rb") as stream:
        results = repo.put_files(
            collection_id,
            [NewFile(p.name, str(p), "note", metadata={"n": i}) for i, p in enumerate(paths[:4])]
            + [NewFile("f4.md", stream, "note")],
            actor="ana",
            message="files",
            workers=workers,
        )
    assert [r.outcome for r in results] == [PutOutcome.CREATED, PutOutcome.UPDATED] + [
        PutOutcome.CREATED
    ] * 3
    for result, path in zip(results, paths, strict=True):
        assert result.artifact.name == path.name
        assert result.artifact.digest == digest_bytes(path.read_bytes())
        assert repo.read_content(result.artifact.id) == path.read_bytes()
    assert repo.get_artifact_by_name(collection_id, "f2.md").metadata == {"n": 2}
    assert [hit.artifact.name for hit in repo.search("retrieval")]
    [change_set] = repo.list_change_sets(after=results[0].artifact.sequence - 1)
    assert (change_set.actor, change_set.message) == ("ana", "files")


@pytest.mark.parametrize("workers", [0, 2])
def test_put_files_is_all_or_nothing(
    repo: KnowledgeRepository, collection_id: str, tmp_path: Path, workers: int
) -> None:
    good = tmp_path / "good.md"
    good.write_bytes(b"good")
    before = repo.last_sequence()
    with pytest.raises(ValidationError, match="NewFile"):
        repo.put_files(
            collection_id,
            [NewFile("good.md", str(good), "note"), NewArtifact("b", b"2", "note")],  # type: ignore[list-item]
            workers=workers,
        )
    with pytest.raises(ValidationError, match="cannot read"):
        repo.put_files(
            collection_id,
            [NewFile("good.md", str(good), "note"), NewFile("gone", str(tmp_path / "no"), "note")],
            workers=workers,
        )
    with pytest.raises(DuplicateNameError):
        repo.put_files(
            collection_id,
            [NewFile("a", str(good), "note"), NewFile("a", str(good), "note")],
            workers=workers,
        )
    assert repo.list_artifacts(collection_id) == []
    assert repo.last_sequence() == before
