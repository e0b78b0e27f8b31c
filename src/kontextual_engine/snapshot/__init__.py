"""Snapshots: a whole repository as a directory (or one ``.tar``), any backend.

Layout, version 2 (see ``docs/snapshot-format.md``; version 1 is still read)::

    snapshot.json          format, version, counts, BLAKE3 of every index file
    index/<kind>.jsonl     one canonical JSON record a line, in sequence order
    objects/ab/cdef...     every body that any revision references

A snapshot is a transfer and backup format, not a second way to write
records: import holds every record to the rules the API applied when it made
it, through the same functions (:func:`check_records` replays the change
records against them), and refuses what no sequence of API calls could have
produced. Export reads through the repository contract (``export_records``),
so it works from every backend; it is deterministic (the same state gives the
same bytes, and so does export -> import -> export), and it runs import's
checks on what it wrote before renaming it into place. Only regular files are
read, never through a link; a tar is read in place, never extracted; bodies
are streamed. Import verifies everything before it writes anything, then
restores all or nothing into an empty repository.

One module per concern:

- :mod:`.format`: names, the manifest's fields, the members a snapshot may
  hold, limits, one record a line (through :mod:`kontextual_engine.codec`);
- :mod:`.export`: writing a snapshot and verifying it before it is renamed into place;
- :mod:`.reading`: opening members (regular files only, never through a link),
  bounded reads, a tar read in place;
- :mod:`.restore`: import and verify: the manifest, the index files, the bodies;
- :mod:`.replay`: the records against every rule of the API, the change records replayed;
- :mod:`.change_sets`: the change sets against the transactions that made them;
- :mod:`.version1`: a version-1 snapshot's records read as version 2's.
"""

from ..codec import record_to_json
from .export import export_snapshot
from .format import (
    FORMAT,
    KINDS,
    MANIFEST,
    MAX_LINE_BYTES,
    MAX_MANIFEST_BYTES,
    VERSION,
    SnapshotSummary,
)
from .replay import check_records
from .restore import import_snapshot, verify_snapshot

__all__ = [
    "FORMAT",
    "KINDS",
    "MANIFEST",
    "MAX_LINE_BYTES",
    "MAX_MANIFEST_BYTES",
    "VERSION",
    "SnapshotSummary",
    "check_records",
    "export_snapshot",
    "import_snapshot",
    "record_to_json",
    "verify_snapshot",
]
