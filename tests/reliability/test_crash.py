"""Crash safety: SIGKILL a writer at random moments; nothing acknowledged is ever lost.

Each trial starts ``crash_worker.py`` on the same SQLite store, lets it run a
seeded random mix of operations (artifact creates, updates, renames and
deletes, bulk puts, multi-operation transactions, relationship creates and
deletes, run creation, start, inputs, outputs and finish), and kills it with
SIGKILL after a random delay (one trial in ten before it has even finished
opening the store). Then the harness

1. replays every acknowledged operation (its ack line reached the log) against
   an ``InMemoryKnowledgeRepository`` with the same deterministic ids and
   clock, checking that the model hands back the same ids and revisions;
2. opens the store (read-only on even trials, so the next child inherits the
   crashed WAL as it was; writable on odd ones) and runs a full fsck: no
   finding may be worse than garbage;
3. compares the store's complete exported state (every collection, artifact,
   revision, relationship, change record, run, bundle and manifest) with the
   model's: equal without the in-flight operation, or equal with it applied
   in full. Anything else is a lost acknowledged write or a half-applied one;
4. reads every new body back through the verifying read path and compares it
   with the model's bytes;
5. every fifth trial, runs gc with no grace period and checks that it removed
   only garbage (the state is unchanged and fsck still clean).

The CI form runs 20 trials in ``full`` and in ``batch`` durability; the long
form (``--runslow``) 200 trials in each of ``full``, ``batch`` and ``none``.
Sizes scale with ``KONTEXTUAL_CRASH_TRIALS`` and ``KONTEXTUAL_CRASH_TRIALS_LONG``.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from kontextual_engine.storage import InMemoryKnowledgeRepository
from kontextual_engine.storage.sqlite import SQLiteKnowledgeRepository
from kontextual_engine.storage.sqlite.maintenance import fsck, gc

from . import crash_worker
from .crash_worker import TrialClock, TrialIds
from .harness import describe_difference, record_figures, scaled

WORKER = Path(__file__).with_name("crash_worker.py")
# Longest random wait between the child's "ready" line and the kill, seconds.
MAX_DELAY = 0.35
# Ceiling for a child to open the store; far above the usual 0.3 s.
READY_TIMEOUT = 60.0


class Switch:
    """An id source or clock that the harness points at the current trial's."""

    def __init__(self) -> None:
        self.current: Callable[..., Any] | None = None

    def __call__(self, *args: Any) -> Any:
        assert self.current is not None
        return self.current(*args)


@dataclass
class Figures:
    durability: str
    trials: int = 0
    killed_before_ready: int = 0
    acknowledged: int = 0
    in_flight_present: int = 0
    in_flight_absent: int = 0
    no_operation_in_flight: int = 0
    lost: int = 0
    # Crash debris seen at any one check (gc removes unreferenced objects every
    # fifth trial; tmp files only once they are an hour old).
    max_tmp_files: int = 0
    max_unreferenced_objects: int = 0
    gc_runs: int = 0
    seconds: float = 0.0


@dataclass
class Log:
    ready: bool
    acknowledged: list[tuple[dict[str, Any], Any]]
    in_flight: dict[str, Any] | None


def read_log(path: Path) -> Log:
    """Parse a child's log; a torn last line (killed while writing it) never happened."""
    if not path.exists():
        return Log(False, [], None)
    complete = path.read_bytes().split(b"\n")[:-1]
    ready = False
    intents: dict[int, dict[str, Any]] = {}
    acknowledged: list[tuple[dict[str, Any], Any]] = []
    pending: int | None = None
    for raw in complete:
        entry = json.loads(raw)
        if "ready" in entry:
            ready = True
        elif "intent" in entry:
            assert pending is None, f"intent {entry['i']} logged while {pending} was pending"
            pending = entry["i"]
            intents[entry["i"]] = entry["intent"]
        elif "ack" in entry:
            assert entry["i"] == pending, f"ack {entry['i']} without its intent"
            acknowledged.append((intents[entry["i"]], entry["ack"]))
            pending = None
    return Log(ready, acknowledged, None if pending is None else intents[pending])


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def wait_ready(child: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if log.exists() and b"\n" in log.read_bytes()[:200]:
            return
        if child.poll() is not None:
            raise AssertionError(
                f"the worker exited ({child.returncode}) before it was ready: "
                f"{child.communicate()[1].decode(errors='replace')}"
            )
        time.sleep(0.005)
    raise AssertionError("the worker did not open the store in time")


def campaign(root: Path, durability: str, trials: int, seed: int) -> Figures:
    """``trials`` kill-and-check rounds on one store; raises on the first loss."""
    store = root / "store"
    rng = random.Random(seed)
    ids, clock = Switch(), Switch()
    model = InMemoryKnowledgeRepository(clock=clock, ids=ids)
    verified: set[str] = set()
    figures = Figures(durability)
    start = time.monotonic()
    for trial in range(trials):
        log_path = root / f"trial-{trial:04d}.log"
        child = subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(store),
                durability,
                str(seed * 100_000 + trial),
                str(trial),
                str(log_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            if rng.random() < 0.1:
                time.sleep(rng.uniform(0.0, 0.5))  # often while it is still opening
            else:
                wait_ready(child, log_path)
                time.sleep(rng.uniform(0.0, MAX_DELAY))
            child.send_signal(signal.SIGKILL)
        finally:
            _, stderr = child.communicate(timeout=60)
        if child.returncode != -signal.SIGKILL:
            raise AssertionError(
                f"trial {trial}: the worker ended by itself "
                f"({child.returncode}) instead of being killed: "
                f"{stderr.decode(errors='replace')}"
            )
        log = read_log(log_path)
        figures.trials += 1
        figures.killed_before_ready += not log.ready
        ids.current, clock.current = TrialIds(trial), TrialClock(trial)
        for op, result in log.acknowledged:
            replayed = as_json(crash_worker.apply(model, op))
            assert replayed == result, (
                f"trial {trial}: the model's result {replayed} differs from the store's "
                f"{result} for {op}"
            )
        figures.acknowledged += len(log.acknowledged)
        _check_store(store, durability, trial, model, log, figures, verified)
    figures.seconds = round(time.monotonic() - start, 1)
    return figures


def _check_store(
    store: Path,
    durability: str,
    trial: int,
    model: InMemoryKnowledgeRepository,
    log: Log,
    figures: Figures,
    verified: set[str],
) -> None:
    read_only = trial % 2 == 0 and (store / "index.sqlite").exists()
    repo = SQLiteKnowledgeRepository.open(store, durability, read_only=read_only)
    try:
        report = fsck(repo, full=True)
        # Bodies of the write a crash interrupted are garbage; when no -wal is
        # left they may be flagged as possibly lost, since fsck cannot tell.
        debris = ("unreferenced-object", "possibly-lost-write")
        worse = [f for f in report.findings if f.severity != "garbage" and f.kind not in debris]
        assert worse == [], f"trial {trial}: fsck after the crash: {worse}"
        figures.max_unreferenced_objects = max(
            figures.max_unreferenced_objects,
            sum(f.kind in debris for f in report.findings),
        )
        figures.max_tmp_files = max(figures.max_tmp_files, len(repo.objects.tmp_files()))
        observed = repo.export_records()
        expected = model.export_records()
        if log.in_flight is None:
            figures.no_operation_in_flight += 1
            assert observed == expected, (
                f"trial {trial}: acknowledged state differs:\n"
                + describe_difference(observed, expected)
            )
        elif observed == expected:
            figures.in_flight_absent += 1
        else:
            # The in-flight operation must then be there in full: apply it to the
            # model; if that does not give the store's state, roll the model back
            # and report.
            with model.transaction():
                crash_worker.apply(model, log.in_flight)
                with_it = model.export_records()
                assert observed == with_it, (
                    f"trial {trial}: the store is neither the acknowledged state nor that "
                    f"plus the in-flight {log.in_flight['op']}:\n"
                    + describe_difference(observed, with_it)
                )
            figures.in_flight_present += 1
        for revision in observed["revisions"]:
            if revision.digest not in verified:
                assert repo.read_object(revision.digest) == model.read_object(revision.digest)
                assert repo.objects.get(revision.digest, verify=True) == model.read_object(
                    revision.digest
                )
                verified.add(revision.digest)
        if trial % 5 == 4 and not read_only:
            gc(repo, grace_seconds=0)
            figures.gc_runs += 1
            after = fsck(repo, full=True)
            assert [f for f in after.findings if f.kind in debris] == []
            assert after.ok, after.errors
            assert repo.export_records() == observed
    finally:
        repo.close()


@pytest.mark.parametrize("durability", ["full", "batch"])
def test_sigkill_loses_nothing_acknowledged(tmp_path: Path, durability: str) -> None:
    trials = scaled("CRASH_TRIALS", 20)
    figures = campaign(tmp_path, durability, trials, seed=7 + len(durability))
    record_figures("crash", asdict(figures))
    assert figures.trials == trials
    assert figures.acknowledged > 0
    assert figures.lost == 0


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["full", "batch", "none"])
def test_sigkill_loses_nothing_acknowledged_long(tmp_path: Path, durability: str) -> None:
    trials = scaled("CRASH_TRIALS_LONG", 200)
    figures = campaign(tmp_path, durability, trials, seed=1000 + len(durability))
    record_figures("crash-long", asdict(figures))
    assert figures.trials == trials
    assert figures.lost == 0


def test_torn_log_lines_are_ignored(tmp_path: Path) -> None:
    """The harness's own log parser: a line cut short by the kill never happened."""
    log = tmp_path / "log"
    log.write_text(
        '{"ready": true}\n{"i": 0, "intent": {"op": "x"}}\n{"i": 0, "ack": 1}\n'
        '{"i": 1, "intent": {"op": "y"}}\n{"i": 1, "ac'
    )
    parsed = read_log(log)
    assert parsed.ready
    assert parsed.acknowledged == [({"op": "x"}, 1)]
    assert parsed.in_flight == {"op": "y"}
