"""The benchmark entry point runs at tiny scale and prints every workload's row."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = (
    "bulk-ingest",
    "contract-per-doc",
    "single-create",
    "stdlib-corpus",
    "lookups",
    "large-body",
    "snapshot",
    "growth",
    "text-body",
    "text-scale",
    "startup",
)
# Measurements of the word search that every run must report.
TEXT_CONTENDERS = (
    "kontextual batch, bodies unsearchable (NUL)",
    "raw ceiling + FTS5 words",
    "FTS5 words insert alone (one transaction)",
    "phrase: search(snippets=False)",
    "prefix: query(text=)",
    "metadata + text: search with snippets",
    "rare term: sqlite3 FTS5 bm25() top 10",
    "queries: kontextual words, ranked (all)",
    "queries: kontextual substring=True (all)",
    "2 MiB body, words indexed",
    "2 MiB body, over the cap (no words)",
    "1 MiB body, words indexed",
)


@pytest.mark.skipif(
    not (ROOT / "benchmarks" / "__main__.py").is_file(),
    reason="benchmarks/ is not part of this checkout",
)
def test_benchmarks_run_at_tiny_scale(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--scale",
            "tiny",
            "--growth",
            "--text-scale",
            "--tmp",
            str(tmp_path),
            "--json",
            str(results),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = [line for line in completed.stdout.splitlines() if line.startswith("| ")]
    for workload in WORKLOADS:
        assert any(line.startswith(f"| {workload} ") for line in rows), (
            f"no table row for {workload}:\n{completed.stdout}"
        )
    assert "FAILED" not in completed.stdout
    assert "| target " in completed.stdout
    document = json.loads(results.read_text(encoding="utf-8"))
    assert set(document["workloads"]) == set(WORKLOADS)
    assert not document["failures"]
    assert {t["workload"] for t in document["targets"]} >= set(WORKLOADS) - {"text-body"}
    for workload in ("lookups", "text-scale"):
        contenders = {m["contender"] for m in document["measurements"] if m["workload"] == workload}
        assert {c for c in TEXT_CONTENDERS if c.split(":")[0] in ("phrase", "prefix")} <= contenders
    contenders = {m["contender"] for m in document["measurements"]}
    assert set(TEXT_CONTENDERS) <= contenders, set(TEXT_CONTENDERS) - contenders
    targets = {(t["workload"], t["name"]) for t in document["targets"]}
    assert {
        ("bulk-ingest", "batch time with words / without words"),
        ("contract-per-doc", "contract CPU per document, collector apart"),
        ("stdlib-corpus", "index size / searchable text"),
        ("text-scale", "search rare term p50"),
        ("text-scale", "search phrase p50"),
    } <= targets
    notes = document["notes"]
    assert any("free pages" in note for note in notes["stdlib-corpus"])
    assert any("FTS5 insert alone" in note for note in notes["bulk-ingest"])
    assert any("peak RSS" in note for note in notes["text-body"])
