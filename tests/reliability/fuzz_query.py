"""Coverage-guided fuzzing of text and metadata queries with atheris (optional).

The CI form of this property is ``test_fuzz.py`` (hypothesis). This entry
point runs it under libFuzzer when atheris is installed and asked for::

    KONTEXTUAL_FUZZ=1 .venv/bin/python tests/reliability/fuzz_query.py -runs=50000

Each input becomes a text query and a metadata filter, run against the same
artifacts in the in-memory reference and in a SQLite store: both must give
the same ids, or both raise ``ValidationError``. Anything else is a finding.
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any


def main() -> int:
    if os.environ.get("KONTEXTUAL_FUZZ") != "1":
        print("fuzz_query: set KONTEXTUAL_FUZZ=1 to run the atheris fuzzer")
        return 0
    try:
        import atheris
    except ImportError:
        print("fuzz_query: atheris is not installed (pip install atheris)")
        return 0
    root = Path(__file__).resolve().parents[2]
    sys.path[:0] = [str(root / "src"), str(root)]
    with atheris.instrument_imports():
        from kontextual_engine.errors import ValidationError
        from kontextual_engine.storage import (
            InMemoryKnowledgeRepository,
            KnowledgeRepository,
            SequentialIds,
            TickingClock,
        )
        from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
    from tests.reliability.test_fuzz import LETTERS, SPECIALS

    scratch = Path(tempfile.mkdtemp(prefix="fuzz-query-"))
    memory = InMemoryKnowledgeRepository(clock=TickingClock(), ids=SequentialIds())
    sqlite = SQLiteKnowledgeRepository.open(
        scratch / "store", "none", clock=TickingClock(), ids=SequentialIds(), create=True
    )
    repos: list[KnowledgeRepository] = [memory, sqlite]
    for repo in repos:
        rng = random.Random(5)
        cid = repo.create_collection("c").id
        for index in range(150):
            body = "".join(
                rng.choice([*SPECIALS, *LETTERS, " ", " "]) for _ in range(rng.randint(0, 60))
            )
            repo.create_artifact(
                cid,
                f"d{index}",
                body.encode(),
                artifact_type="t",
                metadata={rng.choice(["k", 'q"', ""]): rng.choice([1, "1", None])},
            )

    def outcome(repo: KnowledgeRepository, filters: dict[str, Any]) -> Any:
        try:
            return [a.id for a in repo.query(**filters)]
        except ValidationError:
            return "ValidationError"

    def one_input(data: bytes) -> None:
        provider = atheris.FuzzedDataProvider(data)
        text = provider.ConsumeUnicode(provider.ConsumeIntInRange(0, 40))
        filters: dict[str, Any] = {"text": text}
        if provider.ConsumeBool():
            key = provider.ConsumeUnicode(provider.ConsumeIntInRange(0, 6))
            value = provider.PickValueInList([1, "1", None, True, 1.0, [1], {"x": 1}, text])
            filters["metadata"] = {key: value}
        results = [outcome(repo, filters) for repo in repos]
        if results[0] != results[1]:
            raise AssertionError(f"backends disagree on {filters!r}: {results}")

    try:
        atheris.Setup(sys.argv, one_input)
        atheris.Fuzz()
    finally:
        sqlite.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
