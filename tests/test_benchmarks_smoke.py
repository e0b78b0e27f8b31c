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
    "single-create",
    "stdlib-corpus",
    "lookups",
    "large-body",
    "snapshot",
    "growth",
    "startup",
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
    assert {t["workload"] for t in document["targets"]} >= set(WORKLOADS) - {"stdlib-corpus"}
