"""Worker processes of the multi-process tests: started on this source tree,
released together, their output collected, none left running."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# How long a released worker may take before the test fails.
WORKER_TIMEOUT = 300


def worker_env() -> dict[str, str]:
    """This environment, with the source tree and the tests package importable."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def start(script: Path, *args: str) -> subprocess.Popen[str]:
    """``script`` with ``args`` in a child Python, its standard streams piped."""
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=worker_env(),
    )


def stop_all(procs: list[subprocess.Popen[str]]) -> None:
    """Kill the workers still running and reap every one."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def release_together(procs: list[subprocess.Popen[str]]) -> list[tuple[str, str]]:
    """Write ``go`` to every worker (each waits for it on stdin), then their
    stdout and stderr once they end; a worker that does not end is killed."""
    try:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return [proc.communicate(timeout=WORKER_TIMEOUT) for proc in procs]
    finally:
        stop_all(procs)
