"""Benchmarks of kontextual-engine against git and the machine's own limits.

Run ``python -m benchmarks`` from the repository root (``--help`` for the
flags). Every workload builds its data in a temporary directory, runs our
store and its baselines alternately in the same process, several times, and
reports medians, ratios and whether each target of ``docs/performance.md`` is
met. Nothing here is imported by the package or by its tests, except the
smoke test that runs the entry point at tiny scale.
"""
