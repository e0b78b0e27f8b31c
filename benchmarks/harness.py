"""Timing, alternation, medians, targets and the printed table."""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# A timed run returns the seconds of its timed region; setup and cleanup that a
# user would not pay for per operation stay outside it.
Run = Callable[[], float]


@dataclass
class Measurement:
    """Every repetition of one contender of one workload."""

    workload: str
    contender: str
    items: int  # operations (artifacts, files, bytes...) per repetition
    unit: str  # what one item is: "doc", "file", "MiB", "query"
    baseline: bool  # a baseline or ceiling rather than our store
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Items per second at the median."""
        return self.items / self.median if self.median > 0 else float("inf")


@dataclass
class Target:
    """One performance target, checked against this run's numbers."""

    workload: str
    name: str
    required: str  # as written in the issue, e.g. ">= 3.00x"
    measured: float
    passed: bool
    detail: str = ""

    @property
    def measured_text(self) -> str:
        return self.detail or f"{self.measured:.2f}"


def at_least(
    workload: str, name: str, measured: float, bound: float, unit: str = "x", detail: str = ""
) -> Target:
    return Target(
        workload,
        name,
        f">= {bound:g}{unit}",
        measured,
        measured >= bound,
        detail or f"{measured:.2f}{unit}",
    )


def at_most(
    workload: str, name: str, measured: float, bound: float, unit: str = "x", detail: str = ""
) -> Target:
    return Target(
        workload,
        name,
        f"<= {bound:g}{unit}",
        measured,
        measured <= bound,
        detail or f"{measured:.2f}{unit}",
    )


def below(
    workload: str, name: str, measured: float, bound: float, unit: str, detail: str = ""
) -> Target:
    return Target(
        workload,
        name,
        f"< {bound:g} {unit}",
        measured,
        measured < bound,
        detail or f"{measured:.3g} {unit}",
    )


@dataclass
class Report:
    measurements: list[Measurement] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    workloads: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)

    def note(self, workload: str, text: str) -> None:
        self.notes.setdefault(workload, []).append(text)
        log(f"  note: {text}")

    def of(self, workload: str) -> list[Measurement]:
        return [m for m in self.measurements if m.workload == workload]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def drop_dirty_pages() -> None:
    """Write back every dirty page so that no contender pays for another's writes."""
    os.sync()


@contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


def alternate(
    report: Report,
    workload: str,
    contenders: Sequence[tuple[Measurement, Run]],
    repetitions: int,
) -> list[Measurement]:
    """Run every contender ``repetitions`` times, interleaved.

    Repetition ``r`` starts with contender ``r mod k``, so no contender always
    runs first (cold caches); odd repetitions run in reverse, so no contender
    always follows the same neighbour (the heaviest writer, say).
    """
    count = len(contenders)
    for rep in range(repetitions):
        order = [contenders[(rep + i) % count] for i in range(count)]
        if rep % 2:
            order.reverse()
        for measurement, run in order:
            drop_dirty_pages()
            seconds = run()
            measurement.seconds.append(seconds)
            log(
                f"  {workload} rep {rep + 1}/{repetitions}: {measurement.contender}: "
                f"{seconds:.3f} s"
            )
    measured = [measurement for measurement, _ in contenders]
    report.measurements.extend(measured)
    return measured


def speedup(ours: Measurement, other: Measurement) -> float:
    """How many times the throughput of ``other`` ours has (>1: we are faster)."""
    return other.median / ours.median if ours.median > 0 else float("inf")


# -- output ----------------------------------------------------------------


def _format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def _format_rate(m: Measurement) -> str:
    rate = m.rate
    if m.unit == "MiB":
        return f"{rate:,.0f} MiB/s"
    if rate >= 100:
        return f"{rate:,.0f} {m.unit}/s"
    return f"{rate:,.1f} {m.unit}/s"


def _ratios(m: Measurement, baselines: list[Measurement]) -> str:
    if m.baseline or not baselines or m.extra.get("no_ratio"):
        return ""
    return ", ".join(
        f"{speedup(m, b):.2f}x {b.contender}"
        for b in baselines
        if _compared(b, m) and not b.extra.get("no_ratio")
    )


def _compared(baseline: Measurement, m: Measurement) -> bool:
    """Whether ``m`` is shown against ``baseline``: its ``compare_with`` names
    ``m``'s contender, a list of them, or "*" (absent: every contender)."""
    wanted = baseline.extra.get("compare_with", m.contender)
    if isinstance(wanted, (list, tuple)):
        return m.contender in wanted
    return wanted in (m.contender, "*")


def render(report: Report) -> str:
    rows: list[list[str]] = []
    for workload in report.workloads:
        measurements = report.of(workload)
        if workload in report.failures:
            rows.append([workload, "FAILED", "", "", "", report.failures[workload]])
            continue
        if not measurements:
            rows.append([workload, "(no measurement)", "", "", "", ""])
            continue
        baselines = [m for m in measurements if m.baseline]
        for m in measurements:
            latency = m.extra.get("latency")
            if latency is not None:
                median = f"p50 {_format_seconds(latency['p50'])}"
                rate = f"p95 {_format_seconds(latency['p95'])}"
            else:
                median = _format_seconds(m.median)
                rate = _format_rate(m)
            per_item = m.extra.get("per_item_text") or (
                "" if latency is not None else _format_seconds(m.median / max(m.items, 1))
            )
            rows.append([workload, m.contender, median, rate, per_item, _ratios(m, baselines)])
    header = [
        "workload",
        "contender",
        "median",
        "throughput",
        "per item",
        "our throughput vs baselines",
    ]
    table = _table(header, rows)
    target_rows = [
        [t.workload, t.name, t.required, t.measured_text, "pass" if t.passed else "FAIL"]
        for t in report.targets
    ]
    targets = _table(["workload", "target", "required", "measured", "result"], target_rows)
    notes = []
    for workload in report.workloads:
        for text in report.notes.get(workload, []):
            notes.append(f"- {workload}: {text}")
    out = ["", table, "", targets]
    if notes:
        out += ["", "Notes:", *notes]
    return "\n".join(out) + "\n"


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, so the output pastes straight into docs/performance.md."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(r) for r in rows)])


def write_json(report: Report, path: Path, machine: dict[str, Any], scale: dict[str, Any]) -> None:
    document = {
        "machine": machine,
        "scale": scale,
        "workloads": report.workloads,
        "failures": report.failures,
        "measurements": [
            {**asdict(m), "median": m.median, "rate": m.rate} for m in report.measurements
        ],
        "targets": [asdict(t) for t in report.targets],
        "notes": report.notes,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


def percentile(samples: Sequence[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
