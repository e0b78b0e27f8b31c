"""The shared store: one URL naming a PostgreSQL index and an S3 bucket, the
command line on it, gc with upload intents, fsck, and moving a store between
local and shared with export/import.

The servers are real: the session's throwaway PostgreSQL (tests/servers.py)
and SeaweedFS (tests/s3server.py).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kontextual_engine.cli import cli
from kontextual_engine.errors import (
    DuplicateNameError,
    RemoteStoreAccessError,
    RemoteStoreError,
    RemoteStoreUnreachableError,
    StoreFormatError,
    StoreNotFound,
    ValidationError,
)
from kontextual_engine.models import ContextReference, NewArtifact
from kontextual_engine.storage.shared import SharedKnowledgeRepository, SharedLocation, fsck, gc
from kontextual_engine.storage.stores import open_store, shared_location

from .s3server import SeaweedServer
from .servers import PostgresServer
from .shared_fixtures import aws_environment, repo, store_url, url_of

pytestmark = pytest.mark.usefixtures("aws_environment")

__all__ = ["aws_environment", "repo", "store_url"]  # fixtures used here


def run(*args: str, store: str | Path, input: bytes | None = None) -> Result:
    return CliRunner().invoke(cli, ["--store", str(store), *args], input=input)


def ok(*args: str, store: str | Path) -> str:
    result = run(*args, store=store)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


# -- the URL -------------------------------------------------------------------


def test_the_url_names_the_index_the_bucket_prefix_and_endpoint() -> None:
    location = shared_location(
        "postgresql://ana:secret@db.example:5433/kb?sslmode=require"
        "&objects=s3://team-bucket/stores/kb&s3_endpoint=https://s3.example"
    )
    assert location == SharedLocation(
        "postgresql://ana:secret@db.example:5433/kb?sslmode=require",
        "team-bucket",
        "stores/kb",
        "https://s3.example",
    )
    assert shared_location("postgres:///kb?objects=s3://b").prefix == ""


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://ana:secret@db/kb", "objects="),
        ("postgresql://ana:secret@db/kb?objects=s3://a&objects=s3://b", "objects="),
        ("postgresql://ana:secret@db/kb?objects=/tmp/bodies", "s3://BUCKET/PREFIX"),
        ("postgresql://ana:secret@db/kb?objects=s3://", "s3://BUCKET/PREFIX"),
        ("postgresql://ana:secret@db/kb?objects=s3://b&s3_endpoint=ftp://x", "s3_endpoint"),
    ],
)
def test_a_malformed_url_is_refused_naming_the_part_without_the_password(
    url: str, says: str
) -> None:
    with pytest.raises(ValidationError, match=says) as caught:
        shared_location(url)
    assert "secret" not in str(caught.value)


def test_an_unreachable_index_is_a_typed_error_without_the_password(s3_bucket: str) -> None:
    url = f"postgresql://ana:hunter2@127.0.0.1:9/kb?connect_timeout=2&objects=s3://{s3_bucket}/kb"
    with pytest.raises(RemoteStoreUnreachableError, match="unreachable") as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)
    result = run("ls", store=url)
    assert result.exit_code == 8, result.output
    assert "hunter2" not in result.output


def test_a_missing_database_and_a_refused_user_are_told_apart(
    postgres_server: PostgresServer, s3_bucket: str
) -> None:
    missing = url_of(postgres_server.dsn("no_such_database"), s3_bucket)
    with pytest.raises(StoreNotFound, match="no such database"):
        open_store(missing)
    assert run("ls", store=missing).exit_code == 3
    stranger = url_of(
        postgres_server.dsn("postgres").replace("user=postgres", "user=nobody_here"), s3_bucket
    )
    with pytest.raises(RemoteStoreAccessError, match="refused the connection"):
        open_store(stranger)
    assert run("ls", store=stranger).exit_code == 9


def test_a_missing_bucket_is_a_typed_error_naming_it(
    postgres_server: PostgresServer,
) -> None:
    url = url_of(postgres_server.new_database(), "no-such-bucket-here")
    with pytest.raises(RemoteStoreError, match="no-such-bucket-here"):
        open_store(url, create=True)


def test_opening_never_creates_a_store_and_init_does(store_url: str) -> None:
    with pytest.raises(StoreNotFound, match="kontextual --store URL init"):
        open_store(store_url)
    assert run("ls", store=store_url).exit_code == 3
    assert "ready" in ok("init", store=store_url)
    assert "ready" in ok("init", store=store_url)  # again: it exists, nothing changes
    open_store(store_url).close()


def test_an_index_refuses_bodies_other_than_its_own(
    repo: SharedKnowledgeRepository, store_url: str
) -> None:
    other = store_url.replace("/kb", "/elsewhere")
    with pytest.raises(StoreFormatError, match=r"belongs with the bodies in s3://.*/kb"):
        open_store(other)


# -- the command line ----------------------------------------------------------


def test_every_everyday_command_works_on_a_shared_store(store_url: str, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "kickoff.md").write_text("hybrid retrieval kickoff\n")
    (notes / "summary.md").write_text("a summary of retrieval work\n")
    ok("init", store=store_url)
    ok("add", "notes", str(notes), "-m", "first notes", "--actor", "ana", store=store_url)
    assert "notes/kickoff.md" in ok("ls", "notes", store=store_url)
    assert "kickoff" in ok("find", "--text", "hybrid", store=store_url)
    assert ok("cat", "notes/kickoff.md", store=store_url) == "hybrid retrieval kickoff\n"
    (notes / "kickoff.md").write_text("hybrid retrieval kickoff, revised\n")
    ok("add", "notes", str(notes / "kickoff.md"), store=store_url)
    assert "first notes" in ok("log", "notes/kickoff.md", store=store_url)
    assert "+hybrid retrieval kickoff, revised" in ok(
        "diff", "notes/kickoff.md", "1", "2", store=store_url
    )
    ok("link", "notes/summary.md", "derived_from", "notes/kickoff.md", store=store_url)
    assert "derived_from" in ok("show", "notes/summary.md", store=store_url)
    assert "first notes" in ok("changes", store=store_url)
    with open_store(store_url) as lib:
        sequences = [change.sequence for change in lib.list_changes()]
    assert sequences == list(range(1, len(sequences) + 1))
    stats = json.loads(ok("stats", "--json", store=store_url))
    assert stats["artifacts"] == 2 and stats["revisions"] == 3 and stats["objects"] == 3
    assert stats["index_bytes"] > 0
    text = ok("stats", store=store_url)
    assert "objects=s3://" not in text and "with bodies in s3://" in text
    assert "0 errors" in ok("fsck", "--full", store=store_url)


def test_plumbing_reaches_the_bucket(store_url: str, tmp_path: Path) -> None:
    ok("init", store=store_url)
    body = b"plumbing through a shared store\n"
    source = tmp_path / "body.txt"
    source.write_bytes(body)
    digest = ok("hash-object", "-w", str(source), store=store_url).strip()
    assert digest in ok("ls-objects", store=store_url)
    short = digest.split(":")[1][:8]
    assert run("cat-object", short, store=store_url).stdout_bytes == body
    assert ok("verify-object", short, store=store_url).startswith("ok ")


def test_backup_of_a_shared_store_says_what_to_use_instead(store_url: str, tmp_path: Path) -> None:
    ok("init", store=store_url)
    result = run("backup", str(tmp_path / "copy"), store=store_url)
    assert result.exit_code == 2
    assert "pg_dump" in result.output and "kontextual export" in result.output
    assert not (tmp_path / "copy").exists()


# -- gc and upload intents -----------------------------------------------------


def test_gc_removes_only_old_unreferenced_bodies_and_explains_what_stays(
    repo: SharedKnowledgeRepository,
) -> None:
    collection = repo.create_collection("notes")
    kept = repo.create_artifact(
        collection.id,
        "kept.md",
        b"referenced body",
        artifact_type="note",
    )
    with repo.transaction():  # stored, then never referenced
        garbage = repo.bodies.add(b"a body nothing references")
    dry = gc(repo, grace_seconds=0, dry_run=True)
    assert dry.removed == [(garbage, len(b"a body nothing references"))]
    assert any("revision 1" in reason for reason in dry.kept[kept.digest])
    assert repo.bodies.exists(garbage)
    young = gc(repo, grace_seconds=3600)
    assert young.removed == [] and young.young == 1
    assert young.grace_note() is not None and "gc --grace 0" in young.grace_note()  # type: ignore[operator]
    done = gc(repo, grace_seconds=0)
    assert done.removed == [(garbage, len(b"a body nothing references"))]
    assert not repo.bodies.exists(garbage)
    assert repo.read_content(kept.id) == b"referenced body"


def test_a_body_a_writer_is_about_to_reference_survives_gc(
    repo: SharedKnowledgeRepository,
) -> None:
    """gc runs while a transaction has stored a body but not yet committed the
    revision that names it: the upload intent keeps it, and afterwards the
    intent is gone and the body referenced."""
    collection = repo.create_collection("notes")
    with repo.transaction():
        artifact = repo.create_artifact(
            collection.id,
            "late.md",
            b"about to be named",
            artifact_type="note",
        )
        found: list[Any] = []
        worker = threading.Thread(target=lambda: found.append(gc(repo, grace_seconds=0)))
        worker.start()
        worker.join()
        report = found[0]
        assert report.removed == []
        assert any("upload intent" in reason for reason in report.kept[artifact.digest])
    assert repo.read_content(artifact.id) == b"about to be named"
    assert gc(repo, grace_seconds=0).removed == []
    assert _intents(repo) == 0


def test_a_rolled_back_body_drops_its_intent_and_becomes_garbage(
    repo: SharedKnowledgeRepository,
) -> None:
    collection = repo.create_collection("notes")
    with pytest.raises(RuntimeError), repo.transaction():
        repo.create_artifact(
            collection.id,
            "gone.md",
            b"never committed",
            artifact_type="note",
        )
        raise RuntimeError("the writer changed its mind")
    assert _intents(repo) == 0
    assert len(gc(repo, grace_seconds=0).removed) == 1


def test_a_bulk_put_commits_one_intent_statement_per_chunk_before_any_body(
    repo: SharedKnowledgeRepository, postgres_server: PostgresServer
) -> None:
    """put_artifacts records the intents of a chunk's bodies in one statement,
    committed (visible to another connection) before any of them is written;
    gc keeps them until the writer's transaction ends, which drops them."""
    import psycopg

    collection = repo.create_collection("notes")
    statements: list[list[str]] = []
    seen_committed: dict[str, bool] = {}
    record, write = repo.intents.record, repo.bodies._write

    def counting_record(digests: Sequence[str]) -> None:
        statements.append(list(digests))
        record(digests)

    def checking_write(digest: Any, view: memoryview) -> None:
        with psycopg.connect(repo.index.connection.dsn, autocommit=True) as other:
            found = other.execute(
                "SELECT count(*) FROM upload_intents WHERE digest = %s", (digest,)
            ).fetchone()
        seen_committed[digest] = found is not None and found[0] == 1
        write(digest, view)

    repo.bodies.before_write = counting_record
    repo.bodies._write = checking_write  # type: ignore[method-assign]
    items = [NewArtifact(f"n{k}.md", f"body {k}".encode(), "note") for k in range(5)]
    with repo.transaction():
        results = repo.put_artifacts(collection.id, items)
        digests = [result.artifact.digest for result in results]
        assert statements == [digests]
        assert seen_committed == dict.fromkeys(digests, True)
        found: list[Any] = []
        worker = threading.Thread(target=lambda: found.append(gc(repo, grace_seconds=0)))
        worker.start()
        worker.join()
        assert found[0].removed == []
        assert _intents(repo) == 5
    assert _intents(repo) == 0
    assert [repo.read_content(result.artifact.id) for result in results] == [
        item.content for item in items
    ]
    # A body already stored is not written again by the index's own path.
    again = repo.put_artifacts(collection.id, [NewArtifact("n0.md", b"body 0", "note")])
    assert again[0].outcome.value == "unchanged"
    assert len(statements) == 2 and _intents(repo) == 0


def test_a_bulk_put_refused_after_its_bodies_are_stored_drops_their_intents(
    repo: SharedKnowledgeRepository,
) -> None:
    """The chunk's bodies go up before the index refuses the call (a name twice):
    nothing is committed, the intents are dropped, and the bodies are garbage."""
    collection = repo.create_collection("notes")
    items = [NewArtifact("same.md", b"one", "note"), NewArtifact("same.md", b"two", "note")]
    with pytest.raises(DuplicateNameError, match=r"same\.md"):
        repo.put_artifacts(collection.id, items)
    assert repo.list_artifacts(collection.id) == []
    assert _intents(repo) == 0
    assert sorted(size for _, size in gc(repo, grace_seconds=0).removed) == [3, 3]


def test_expired_intents_keep_nothing(store_url: str) -> None:
    location = shared_location(store_url)
    with SharedKnowledgeRepository(location, create=True, intent_seconds=0.0) as short:
        # Outside a transaction nobody drops the intent: it lasts until it expires.
        digest = short.bodies.add(b"left by a writer that died")
        assert _intents(short) == 1
        assert [digest for digest, _ in gc(short, grace_seconds=0).removed] == [digest]
        assert _intents(short) == 0


def test_gc_refuses_when_the_index_references_a_missing_body(
    repo: SharedKnowledgeRepository,
) -> None:
    collection = repo.create_collection("notes")
    artifact = repo.create_artifact(
        collection.id,
        "lost.md",
        b"lost body",
        artifact_type="note",
    )
    repo.bodies.delete(artifact.digest)
    other = repo.bodies.add(b"garbage that must stay while the index is in doubt")
    with pytest.raises(StoreFormatError, match="missing from s3://"):
        gc(repo, grace_seconds=0)
    assert repo.bodies.exists(other)


def test_fsck_finds_missing_damaged_and_unreferenced_bodies(
    repo: SharedKnowledgeRepository, s3_server: SeaweedServer
) -> None:
    collection = repo.create_collection("notes")
    missing = repo.create_artifact(
        collection.id,
        "missing.md",
        b"will vanish",
        artifact_type="note",
    )
    damaged = repo.create_artifact(
        collection.id,
        "damaged.md",
        b"will rot",
        artifact_type="note",
    )
    repo.bodies.add(b"unreferenced")
    assert fsck(repo).ok
    repo.bodies.delete(missing.digest)
    s3_server.client().put_object(
        Bucket=repo.bodies.bucket, Key=repo.bodies.key(damaged.digest), Body=b"will ROT"
    )
    quick = fsck(repo)
    assert {(f.kind, f.subject) for f in quick.errors} == {("missing-object", missing.digest)}
    full = fsck(repo, full=True)
    kinds = {(f.kind, f.subject) for f in full.errors}
    assert kinds == {("missing-object", missing.digest), ("corrupt", damaged.digest)}
    assert [f.kind for f in full.garbage] == ["unreferenced-object"]
    assert any("bucket" in sentence for sentence in full.advice())


def _intents(repo: SharedKnowledgeRepository) -> int:
    return int(repo.index.connection.rows("SELECT count(*) FROM upload_intents")[0][0])


# -- moving between local and shared ---------------------------------------------


def _tree(path: Path) -> dict[str, str]:
    """Every file of a snapshot directory with the hash of its bytes."""
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def test_a_store_moves_local_to_shared_to_local_byte_for_byte(
    store_url: str, tmp_path: Path
) -> None:
    local = tmp_path / "local"
    notes = tmp_path / "notes"
    notes.mkdir()
    for number in range(5):
        (notes / f"n{number}.md").write_text(f"note {number} about retrieval\n")
    ok("init", str(local), store=local)
    ok("add", "notes", str(notes), "-m", "first", "--actor", "ana", store=local)
    (notes / "n1.md").write_text("note 1, revised\n")
    ok("add", "notes", str(notes), "--sync", store=local)
    ok("link", "notes/n2.md", "derived_from", "notes/n1.md", store=local)
    ok("rm", "notes/n4.md", store=local)
    with open_store(local) as lib:
        notes_id = lib.get_collection_by_name("notes").id
        source = lib.get_artifact_by_name(notes_id, "n0.md")
        run_record = lib.create_run("summarise", parameters={"k": 2})
        lib.start_run(run_record.id)
        lib.add_inputs(run_record.id, [source.id])
        summary = lib.create_artifact(
            notes_id, "summary.md", b"the summary\n", artifact_type="note", run_id=run_record.id
        )
        lib.finish_run(run_record.id, "succeeded")
        lib.create_context_package("briefing", [ContextReference("artifact", summary.id)])
    first = tmp_path / "first"
    ok("export", str(first), store=local)

    ok("import", str(first), "--store", store_url, store=local)
    second = tmp_path / "second"
    ok("export", str(second), store=store_url)
    assert _tree(second) == _tree(first)

    back = tmp_path / "back"
    ok("import", str(second), store=back)
    third = tmp_path / "third"
    ok("export", str(third), store=back)
    assert _tree(third) == _tree(first)
    assert ok("cat", "notes/n1.md", store=store_url) == "note 1, revised\n"


def test_import_into_a_shared_store_with_records_is_refused(store_url: str, tmp_path: Path) -> None:
    local = tmp_path / "local"
    ok("init", str(local), store=local)
    snapshot = tmp_path / "snap"
    ok("export", str(snapshot), store=local)
    ok("init", store=store_url)
    repo = open_store(store_url)
    repo.create_collection("taken")
    repo.close()
    result = run("import", str(snapshot), store=store_url)
    assert result.exit_code == 4 and "already has records" in result.output


def test_the_store_environment_variable_takes_a_url(store_url: str) -> None:
    result = CliRunner().invoke(cli, ["init"], env={"KONTEXTUAL_STORE": store_url})
    assert result.exit_code == 0, result.output
    assert "ready at user=postgres dbname=test_" in result.output
    assert "with bodies in s3://" in result.output


def test_a_shared_store_without_its_clients_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, store_url: str
) -> None:
    from kontextual_engine.storage import stores

    monkeypatch.setattr(stores, "SHARED_MODULES", ("psycopg", "kontextual_no_such_client"))
    with pytest.raises(ValidationError, match=r"kontextual_no_such_client.*\[shared\]"):
        open_store(store_url)
    result = run("ls", store=store_url)
    assert result.exit_code == 2 and "pip install 'kontextual-engine[shared]'" in result.output


def test_changes_follow_sees_another_writers_commits(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kontextual_engine.cli.commands import changes as changes_module

    ok("init", store=store_url)
    polls: list[float] = []

    def sleep(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 1:
            with open_store(store_url) as other_writer:
                other_writer.create_collection("arrived-while-following")
            return
        raise KeyboardInterrupt

    monkeypatch.setattr(changes_module, "sleep", sleep)
    output = ok("changes", "--follow", "--json", store=store_url)
    records = [
        record
        for change_set in map(json.loads, output.splitlines())
        for record in change_set["changes"]
    ]
    assert [r["details"].get("name") for r in records] == ["arrived-while-following"]


def test_intents_are_dropped_only_after_the_commit(repo: SharedKnowledgeRepository) -> None:
    """Between the commit and the drop gc sees the reference or the intent, never
    neither: when the intents are dropped, another connection already sees the
    committed revision."""
    import psycopg

    collection = repo.create_collection("notes")
    seen: list[int] = []
    drop = repo.intents._drop

    def checked_drop(held: list[int]) -> None:
        with psycopg.connect(repo.location.dsn) as other:
            row = other.execute("SELECT count(*) FROM revisions").fetchone()
        assert row is not None
        seen.append(int(row[0]))
        drop(held)

    repo.intents._drop = checked_drop  # type: ignore[method-assign]
    repo.create_artifact(collection.id, "one.md", b"one", artifact_type="note")
    assert seen == [1]
    assert _intents(repo) == 0


def test_bodies_stored_by_ingest_threads_hold_their_intents_until_the_commit(
    repo: SharedKnowledgeRepository,
) -> None:
    from io import BytesIO

    from kontextual_engine.storage.pipeline import NewFile

    collection = repo.create_collection("notes")
    files = [NewFile(f"n{number}.md", BytesIO(b"note %d" % number), "note") for number in range(20)]
    with repo.transaction():
        results = repo.put_files(collection.id, files, workers=2)
        assert _intents(repo) == 20  # recorded by the worker threads, held for this transaction
    assert len(results) == 20
    assert _intents(repo) == 0
    assert repo.read_content(results[7].artifact.id) == b"note 7"
