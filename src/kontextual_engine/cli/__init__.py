"""The ``kontextual`` command line (``python -m kontextual_engine`` runs the same)."""

from __future__ import annotations

from .app import cli


def main() -> None:
    cli.main(prog_name="kontextual")


__all__ = ["cli", "main"]
