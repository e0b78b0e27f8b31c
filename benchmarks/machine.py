"""A description of the machine the numbers were measured on."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import baselines


def _run(*args: str) -> str:
    try:
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip()


def _meminfo_gib() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def describe(tmp: Path) -> dict[str, Any]:
    import blake3

    memory = _meminfo_gib()
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": None if memory is None else round(memory, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlite3_cli": (
            _run(baselines.SQLITE3, "--version").split(" ")[0]
            if baselines.SQLITE3
            else "missing (dump baseline uses iterdump)"
        ),
        "git": _run(baselines.GIT, "--version").removeprefix("git version "),
        "blake3": getattr(blake3, "__version__", "?"),
        "tmp": str(tmp),
        "df": _run("df", "-hT", str(tmp)),
        "lsblk": _run("lsblk", "-d", "-o", "NAME,SIZE,ROTA,TYPE,MODEL"),
    }


def render(info: dict[str, Any]) -> str:
    lines = [
        f"machine: {info['nproc']} CPUs ({info['cpu']}), {info['memory_gib']} GiB RAM, "
        f"Linux {info['kernel']}",
        f"software: Python {info['python']}, SQLite {info['sqlite']} (sqlite3 CLI "
        f"{info['sqlite3_cli']}), git {info['git']}, blake3 {info['blake3']}",
        f"temp dir: {info['tmp']}",
    ]
    if info["df"]:
        lines += ["df -hT:", *("  " + line for line in info["df"].splitlines())]
    if info["lsblk"]:
        lines += ["lsblk:", *("  " + line for line in info["lsblk"].splitlines())]
    return "\n".join(lines)
