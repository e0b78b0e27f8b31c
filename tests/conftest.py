from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .backends import BACKENDS, Backend


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
    made = Backend(request.param, tmp_path)
    yield made
    made.close_all()


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[Callable[[str], Backend]]:
    """Backends of any kind, each in its own directory; all closed afterwards."""
    made: list[Backend] = []

    def make(kind: str) -> Backend:
        made.append(Backend(kind, tmp_path / f"{kind}-{len(made)}"))
        made[-1].root.mkdir()
        return made[-1]

    yield make
    for backend in made:
        backend.close_all()
