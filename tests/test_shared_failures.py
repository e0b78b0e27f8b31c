"""What only a shared store must survive: writers on separate connections at
once, a writer killed mid-transaction, and its servers stopping mid-ingest.

Real servers throughout: the session's PostgreSQL and SeaweedFS where the test
leaves them running, and a throwaway server of its own where it stops one.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from kontextual_engine.cli import cli
from kontextual_engine.digests import digest_bytes
from kontextual_engine.errors import RemoteStoreError, RemoteStoreUnreachableError
from kontextual_engine.models import NewArtifact, Query
from kontextual_engine.storage.shared import SharedKnowledgeRepository, fsck, gc
from kontextual_engine.storage.stores import open_store

from . import shared_worker
from .s3server import running_seaweed
from .servers import PostgresServer, running_postgres
from .shared_fixtures import aws_environment, repo, store_url, url_of
from .workers import release_together, start, stop_all

pytest.importorskip("psycopg")

WORKER = Path(__file__).with_name("shared_worker.py")
pytestmark = pytest.mark.usefixtures("aws_environment")

__all__ = ["aws_environment", "repo", "store_url"]  # fixtures used here


# -- writers at once -----------------------------------------------------------


def test_four_processes_write_a_thousand_artifacts_each_through_s3_bodies(
    repo: SharedKnowledgeRepository, store_url: str
) -> None:
    writers, count, batch = 4, 1000, 50
    collection = repo.create_collection("shared")
    procs = [
        start(WORKER, "write", store_url, collection.id, str(w), str(count), str(batch))
        for w in range(writers)
    ]
    results = release_together(procs)
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        assert out.strip() == str(count)

    expected = {
        f"w{w}-{n}": shared_worker.body(str(w), n) for w in range(writers) for n in range(count)
    }
    artifacts = repo.query(Query(collection_id=collection.id))
    assert sorted(a.name for a in artifacts) == sorted(expected)
    assert all(a.digest == digest_bytes(expected[a.name]) for a in artifacts)
    listed = {entry.digest: entry.size for entry in repo.bodies.entries() if entry.digest}
    assert all(listed.get(a.digest) == len(expected[a.name]) for a in artifacts)
    for artifact in artifacts[::97]:
        assert repo.read_content(artifact.id) == expected[artifact.name]

    total = writers * count + 1
    changes = repo.list_changes()
    assert [c.sequence for c in changes] == list(range(1, total + 1))
    assert len({c.entity_id for c in changes}) == total
    assert sorted(a.sequence for a in artifacts) == list(range(2, total + 1))
    assert repo.last_sequence() == total
    # Every writer's transaction dropped its intents when it ended.
    assert _intents(repo) == 0
    assert fsck(repo).ok


# -- a writer killed mid-transaction -------------------------------------------


def _intents(repo: SharedKnowledgeRepository) -> int:
    return int(repo.index.connection.rows("SELECT count(*) FROM upload_intents")[0][0])


def test_a_writer_killed_mid_transaction_leaves_nothing_and_gc_takes_only_its_bodies(
    repo: SharedKnowledgeRepository, store_url: str
) -> None:
    collection = repo.create_collection("notes")
    kept = repo.put_artifacts(
        collection.id,
        [NewArtifact(f"kept-{n}", shared_worker.kept_body(n), "note") for n in range(5)],
    )
    changes_before = repo.list_changes()
    intent_seconds, count = 3.0, 6
    proc = start(WORKER, "hang", store_url, collection.id, str(intent_seconds), str(count))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the handshake: bodies stored, rows written
        assert line, proc.communicate(timeout=30)[1]
        digests: list[str] = json.loads(line)
        # The kill lands inside the transaction: its bodies are in the bucket,
        # its intents committed, its rows written and not committed.
        assert all(repo.bodies.exists(digest) for digest in digests)
        assert _intents(repo) == count
        in_transaction = repo.index.connection.rows(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND state = 'idle in transaction'"
        )[0][0]
        assert in_transaction == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        stop_all([proc])
    assert proc.returncode == -signal.SIGKILL

    # Nothing of the transaction is visible, and writers carry on after it.
    assert sorted(a.name for a in repo.query(Query(collection_id=collection.id))) == [
        f"kept-{n}" for n in range(5)
    ]
    assert repo.list_changes() == changes_before
    after = repo.create_artifact(
        collection.id, "after.md", b"written after the kill", artifact_type="note"
    )
    assert after.sequence == changes_before[-1].sequence + 1

    doomed = set(digests) - {result.artifact.digest for result in kept}
    assert len(doomed) == count - 1
    # Until its intents expire, gc keeps every body the dead writer stored.
    early = gc(repo, grace_seconds=0)
    assert early.removed == []
    assert all("intends to reference" in early.kept[digest][0] for digest in doomed)
    left = repo.index.connection.rows(
        "SELECT extract(epoch FROM max(expires_at) - now()) FROM upload_intents"
    )[0][0]
    time.sleep(max(float(left), 0.0) + 0.2)

    done = gc(repo, grace_seconds=0)
    assert {digest for digest, _ in done.removed} == doomed
    assert not any(repo.bodies.exists(digest) for digest in doomed)
    assert _intents(repo) == 0
    for result in kept:
        name = result.artifact.name
        assert repo.read_content(result.artifact.id) == shared_worker.kept_body(int(name[5:]))
    assert repo.read_content(after.id) == b"written after the kill"
    report = fsck(repo, full=True)
    assert report.ok and not report.garbage


# -- a server stopped mid-ingest -------------------------------------------------


@dataclass
class Ingest:
    """Bulk calls of small documents from a thread, batch after batch; which
    batches were acknowledged and what stopped it."""

    repo: SharedKnowledgeRepository
    collection_id: str
    batches: int
    size: int = 10
    acknowledged: list[int] = field(default_factory=list)
    error: BaseException | None = None

    @staticmethod
    def content(batch: int, number: int) -> bytes:
        return f"document {number} of batch {batch}\n".encode()

    def items(self, batch: int) -> list[NewArtifact]:
        return [
            NewArtifact(f"b{batch}-d{n}", self.content(batch, n), "note") for n in range(self.size)
        ]

    def run(self) -> None:
        try:
            for batch in range(self.batches):
                self.repo.put_artifacts(self.collection_id, self.items(batch))
                self.acknowledged.append(batch)
        except BaseException as exc:
            self.error = exc

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        return thread

    def wait_for(self, batches: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < batches and self.error is None:
            assert time.monotonic() < deadline, "the ingest did not start"
            time.sleep(0.01)
        assert self.error is None, self.error

    def check(self, batches: list[int], *, read: bool = True) -> None:
        """Each batch named is there whole, with its bodies in the bucket (and
        with ``read``, read back)."""
        names = {a.name: a for a in self.repo.query(Query(collection_id=self.collection_id))}
        listed = {entry.digest for entry in self.repo.bodies.entries() if entry.digest}
        for batch in batches:
            for item in self.items(batch):
                artifact = names[item.name]
                assert artifact.digest == digest_bytes(item.content)
                assert artifact.digest in listed
                if read:
                    assert self.repo.read_content(artifact.id) == item.content

    def check_whole(self) -> None:
        """No batch is there in part."""
        names = {a.name for a in self.repo.query(Query(collection_id=self.collection_id))}
        for batch in range(self.batches):
            present = {item.name in names for item in self.items(batch)}
            assert len(present) == 1, f"batch {batch} is there in part"

    def stopped_by(self, stop: Callable[[], None]) -> BaseException:
        """Run until three batches are acknowledged, ``stop`` a server, and return
        the error that ended the ingest (it must end, with one)."""
        thread = self.start()
        self.wait_for(3)
        stop()
        thread.join(timeout=120)
        assert not thread.is_alive()
        assert self.error is not None
        return self.error

    def recovers(self, acknowledged: list[int]) -> None:
        """With the server back: every acknowledged batch is there, none in part,
        and a re-run of them all completes on the same repository, fsck clean."""
        self.check(acknowledged)
        self.check_whole()
        rerun = Ingest(self.repo, self.collection_id, batches=self.batches)
        rerun.run()
        assert rerun.error is None, rerun.error
        rerun.check(list(range(rerun.batches)), read=False)
        assert fsck(self.repo).ok


def test_the_s3_server_stopped_mid_ingest_is_a_clear_error_and_a_rerun_completes(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with running_seaweed(tmp_path / "seaweedfs") as server:
        bucket = f"test-{uuid.uuid4().hex[:20]}"
        server.client().create_bucket(Bucket=bucket)
        url = url_of(
            postgres_server.new_database(migrated=False),
            bucket,
            extra=f"&s3_endpoint={server.endpoint}",
        )
        with open_store(url, create=True) as repo:
            assert isinstance(repo, SharedKnowledgeRepository)
            ingest = Ingest(repo, repo.create_collection("docs").id, batches=30)
            error = ingest.stopped_by(server.stop)
            assert isinstance(error, RemoteStoreError), repr(error)
            assert isinstance(error, RemoteStoreUnreachableError), str(error)
            message = str(error)
            assert server.endpoint in message and "unreachable" in message
            assert "nothing unacknowledged was kept" in message
            acknowledged = list(ingest.acknowledged)
            assert 3 <= len(acknowledged) < ingest.batches

            # The command line says the same, with exit code 8.
            source = tmp_path / "notes"
            source.mkdir()
            (source / "a.md").write_text("a note\n")
            result = CliRunner().invoke(cli, ["--store", url, "add", "notes", str(source)])
            assert result.exit_code == 8, result.output
            assert "unreachable" in result.output and server.endpoint in result.output

            server.start()
            ingest.recovers(acknowledged)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, to stop and start again."""
    with running_postgres(template=False) as server:
        yield server


def test_postgresql_restarted_mid_ingest_is_a_clear_error_and_a_rerun_completes(
    own_postgres: PostgresServer, s3_bucket: str
) -> None:
    url = url_of(own_postgres.new_database(migrated=False), s3_bucket, extra="&password=hunter2")
    with open_store(url, create=True) as repo:
        assert isinstance(repo, SharedKnowledgeRepository)
        ingest = Ingest(repo, repo.create_collection("docs").id, batches=40)
        error = ingest.stopped_by(lambda: own_postgres.stop("fast"))
        assert isinstance(error, RemoteStoreUnreachableError), repr(error)
        message = str(error)
        assert "PostgreSQL index" in message and "unreachable" in message
        assert f"host={own_postgres.root}" in message and "hunter2" not in message
        assert "nothing unacknowledged was kept" in message
        assert error.exit_code == 8
        acknowledged = list(ingest.acknowledged)
        assert 3 <= len(acknowledged) < ingest.batches

        # While the server is down every call says so at once.
        started = time.monotonic()
        with pytest.raises(RemoteStoreUnreachableError, match="PostgreSQL index"):
            repo.put_artifacts(ingest.collection_id, ingest.items(0))
        with pytest.raises(RemoteStoreUnreachableError, match="PostgreSQL index"):
            repo.list_changes()
        assert time.monotonic() - started < 5

        own_postgres.start()
        # The same repository carries on: broken connections are replaced.
        ingest.recovers(acknowledged)
        sequences = [change.sequence for change in repo.list_changes()]
        assert sequences == list(range(1, len(sequences) + 1))
