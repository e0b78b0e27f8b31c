"""Fixtures of the tests that open a shared store by its URL: the AWS
environment a user's shell would hold, and a store URL on the session's
throwaway PostgreSQL and SeaweedFS. A test module imports the fixtures it uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kontextual_engine.storage.shared import SharedKnowledgeRepository
from kontextual_engine.storage.stores import open_store

from .s3server import ACCESS_KEY, SECRET_KEY, SeaweedServer
from .servers import PostgresServer


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, s3_server: SeaweedServer) -> None:
    """The standard AWS variables, as a user's shell (and each child process) holds them."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)


def url_of(database_dsn: str, bucket: str, *, prefix: str = "kb", extra: str = "") -> str:
    """The store URL of a database (given by its keyword DSN) and a bucket;
    ``extra`` is more libpq parameters (``&name=value``)."""
    parts = dict(item.split("=", 1) for item in database_dsn.split())
    return (
        f"postgresql:///{parts['dbname']}?host={parts['host']}&port={parts['port']}"
        f"&user={parts['user']}{extra}&objects=s3://{bucket}/{prefix}"
    )


@pytest.fixture
def store_url(postgres_server: PostgresServer, s3_bucket: str) -> str:
    """A shared store's URL: an empty database and a new bucket (nothing created yet)."""
    return url_of(postgres_server.new_database(migrated=False), s3_bucket)


@pytest.fixture
def repo(store_url: str) -> Iterator[SharedKnowledgeRepository]:
    """A new shared store, opened (and created) by its URL."""
    opened = open_store(store_url, create=True)
    assert isinstance(opened, SharedKnowledgeRepository)
    yield opened
    opened.close()
