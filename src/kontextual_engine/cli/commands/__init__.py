"""The commands, one module per area; importing them registers them on ``cli``."""

from . import artifacts, changes, collections, plumbing, runs, store

__all__ = ["artifacts", "changes", "collections", "plumbing", "runs", "store"]
