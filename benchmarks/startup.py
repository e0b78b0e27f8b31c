"""Start-up: whole ``kontextual`` processes against ``python -c pass``.

The target: ``kontextual --version`` and ``kontextual ls`` on a small store
each take at most twice what ``python -c pass`` takes, plus 30 ms (the
median of many runs of each, interleaved).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import data
from .harness import Measurement, Run, alternate, at_most

if TYPE_CHECKING:
    from .workloads import Context

WORKLOAD = "startup"
# Documents in the small store that ``kontextual ls`` lists.
SMALL_STORE_DOCS = 20
# The target: within FACTOR x ``python -c pass`` + SLACK_SECONDS.
FACTOR = 2.0
SLACK_SECONDS = 0.030
# The least a click command line can do: import click and answer --version.
# Timed beside ours because it is the floor of every ``kontextual`` command.
CLICK_FLOOR = """
import click
@click.group()
@click.version_option("1", prog_name="floor")
def group() -> None: pass
group(["--version"])
"""


def kontextual_command() -> list[str]:
    """``kontextual`` as installed next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("kontextual")
    if script.is_file():
        return [str(script)]
    found = shutil.which("kontextual")
    return [found] if found else [sys.executable, "-m", "kontextual_engine"]


def child_env() -> dict[str, str]:
    """The environment of every timed process: bytecode is cached, as after an install."""
    env = {key: value for key, value in os.environ.items() if key != "KONTEXTUAL_STORE"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def process(argv: list[str], env: dict[str, str]) -> Run:
    def run() -> float:
        start = time.perf_counter()
        subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start

    return run


def startup(ctx: Context) -> None:
    env = child_env()
    kontextual = kontextual_command()
    source = ctx.fresh("startup-source")
    data.write_tree(source, data.documents(0, SMALL_STORE_DOCS))
    store = ctx.fresh("startup-store")
    on_store = [*kontextual, "--store", str(store)]
    for argv in ([*on_store, "init"], [*on_store, "add", "-q", "notes", str(source)]):
        subprocess.run(argv, env=env, capture_output=True, check=True)
    baselines = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "click: a group answering --version": [sys.executable, "-c", CLICK_FLOOR],
    }
    ours = {
        "kontextual --version": [*kontextual, "--version"],
        f"kontextual ls ({SMALL_STORE_DOCS} artifacts)": [*on_store, "ls"],
    }
    contenders = {**baselines, **ours}
    for argv in contenders.values():  # warm: bytecode written, files in the page cache
        process(argv, env)()
    measured = alternate(
        ctx.report,
        WORKLOAD,
        [
            (Measurement(WORKLOAD, name, 1, "run", name in baselines), process(argv, env))
            for name, argv in contenders.items()
        ],
        ctx.scale.startup_runs,
    )
    floor, click_floor, commands = measured[0], measured[1], measured[2:]
    floor.extra["compare_with"] = "*"
    click_floor.extra["compare_with"] = "*"
    bound = FACTOR * floor.median + SLACK_SECONDS
    for m in commands:
        ctx.report.targets.append(
            at_most(
                WORKLOAD,
                f"{m.contender} vs {FACTOR:g}x python -c pass + {SLACK_SECONDS * 1e3:g} ms",
                m.median / bound,
                1.0,
                detail=(
                    f"{m.median * 1e3:.0f} ms of {bound * 1e3:.0f} ms "
                    f"({m.median / floor.median:.1f}x python -c pass)"
                ),
            )
        )
    ctx.report.note(
        WORKLOAD,
        f"median of {ctx.scale.startup_runs} whole processes each, interleaved; "
        f"{' '.join(kontextual)}; bytecode cached; the click floor alone is "
        f"{click_floor.median * 1e3:.0f} ms of the {bound * 1e3:.0f} ms allowed",
    )
    ctx.discard(source)
    ctx.discard(store)
