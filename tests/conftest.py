from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .backends import BACKENDS, Backend
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


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn; every repository it made is closed afterwards."""
    server = request.getfixturevalue("postgres_server") if request.param == "postgres" else None
    made = Backend(request.param, tmp_path, server)
    yield made
    made.close_all()
