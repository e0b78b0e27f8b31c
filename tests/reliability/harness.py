"""Helpers shared by the reliability tests: figures, env-scaled sizes, state diffs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Where a run's figures go (one JSON line per test) when this is set; the long
# run whose figures are quoted in docs/reliability.md set it.
REPORT_ENV = "KONTEXTUAL_RELIABILITY_REPORT"


def scaled(name: str, default: int) -> int:
    """An integer size from the environment (``KONTEXTUAL_<NAME>``), else ``default``."""
    value = os.environ.get(f"KONTEXTUAL_{name}")
    return default if value is None else int(value)


def record_figures(test: str, figures: dict[str, Any]) -> None:
    """Print a test's figures and, if asked, append them to the report file."""
    line = json.dumps({"test": test, **figures}, sort_keys=True)
    print(line)
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as report:
            report.write(line + "\n")


def describe_difference(observed: dict[str, list[Any]], expected: dict[str, list[Any]]) -> str:
    """The first record that differs between two ``export_records()`` results."""
    lines = []
    for kind in sorted(set(observed) | set(expected)):
        got, want = observed.get(kind, []), expected.get(kind, [])
        if got == want:
            continue
        lines.append(f"{kind}: store has {len(got)} records, the model {len(want)}")
        for index, (a, b) in enumerate(zip(got, want, strict=False)):
            if a != b:
                lines.append(f"  first difference at #{index}:\n    store: {a!r}\n    model: {b!r}")
                break
        else:
            extra = got[len(want) :] or want[len(got) :]
            lines.append(f"  extra: {extra[:3]!r}")
    return "\n".join(lines) or "no difference"


def tree_state(root: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every path under ``root`` with its mode, size and content (or link target)."""
    state: dict[str, tuple[int, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            state[path.relative_to(root).as_posix()] = (st.st_mode, 0, os.readlink(path))
        elif path.is_file():
            state[path.relative_to(root).as_posix()] = (st.st_mode, st.st_size, path.read_bytes())
        else:
            state[path.relative_to(root).as_posix()] = (st.st_mode, 0, b"")
    return state
