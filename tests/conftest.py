from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .backends import BACKENDS, POSTGRES_KINDS, S3_KINDS, Backend, SharedS3
from .s3server import SeaweedServer, running_seaweed
from .servers import postgres_server

__all__ = ["postgres_server"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("KONTEXTUAL_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow or KONTEXTUAL_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _make_backend(request: pytest.FixtureRequest, kind: str, root: Path) -> Backend:
    """A backend of ``kind`` with the session's servers it needs."""
    server = request.getfixturevalue("postgres_server") if kind in POSTGRES_KINDS else None
    s3 = None
    if kind in S3_KINDS:
        s3 = request.getfixturevalue("shared_s3")
    return Backend(kind, root, server, s3)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn; every repository it made is closed afterwards."""
    made = _make_backend(request, request.param, tmp_path)
    yield made
    made.close_all()


@pytest.fixture
def backends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Backend]]:
    """Backends of any kind, each in its own directory; all closed afterwards."""
    made: list[Backend] = []

    def make(kind: str) -> Backend:
        made.append(_make_backend(request, kind, tmp_path / f"{kind}-{len(made)}"))
        made[-1].root.mkdir()
        return made[-1]

    yield make
    for backend in made:
        backend.close_all()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """One throwaway SeaweedFS for the session, stopped at its end (also on failure).

    Under ``CI=true`` a server that cannot start fails the tests that need it;
    elsewhere they skip, naming the command that installs it."""
    with running_seaweed(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session")
def shared_s3(s3_server: SeaweedServer) -> SharedS3:
    """The session's bucket for the shared backend (each store has a prefix of its
    own), and one boto3 session for all its clients: a client made from a session
    that has loaded the S3 model once takes milliseconds, from a new one a third
    of a second."""
    name = f"shared-{uuid.uuid4().hex[:20]}"
    s3_server.client().create_bucket(Bucket=name)
    return SharedS3(s3_server, name, s3_server.session())


@pytest.fixture
def s3_bucket(s3_server: SeaweedServer) -> str:
    """A new, empty bucket on the session's server."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_server.client().create_bucket(Bucket=name)
    return name
