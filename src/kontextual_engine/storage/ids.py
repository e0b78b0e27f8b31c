"""Id and clock sources. Both are injectable so tests are deterministic.

An id is ``<kind prefix>_<32 lowercase hex>``: 12 hex of milliseconds since
the epoch, then 20 hex that are random per millisecond and incremented within
one (as monotonic ULIDs do), so ids from one source sort in creation order and
ids from different processes do not collide.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

IdSource = Callable[[str], str]
Clock = Callable[[], datetime]

PREFIXES = {
    "collection": "col",
    "artifact": "art",
    "relationship": "rel",
    "run": "run",
    "step": "stp",
    "bundle": "bdl",
    "context_package": "ctx",
    "external_reference": "ext",
}


# Random bytes read at once: enough for the random parts of this many milliseconds.
RANDOM_POOL_MS = 64
_RANDOM_BYTES = 10


class MonotonicIds:
    """The default id source: time-ordered, unique across processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._last_random = 0
        self._stamp = ""  # the hex of _last_ms, as ids write it
        # Random bytes read ahead (one read instead of one per millisecond), and
        # the process that read them: a forked child must not draw the same.
        self._pool = b""
        self._pool_used = 0
        self._pool_pid = -1

    def __call__(self, kind: str) -> str:
        prefix = PREFIXES[kind]
        with self._lock:
            now_ms = time.time_ns() // 1_000_000
            if now_ms <= self._last_ms:
                self._last_random += 1
            else:
                self._last_ms = now_ms
                self._stamp = f"{now_ms:012x}"
                self._last_random = self._draw() >> 1
            return f"{prefix}_{self._stamp}{self._last_random:020x}"

    def _draw(self) -> int:
        """80 random bits, from the pool (refilled when empty or in a new process)."""
        if self._pool_used >= len(self._pool) or self._pool_pid != os.getpid():
            self._pool = os.urandom(_RANDOM_BYTES * RANDOM_POOL_MS)
            self._pool_used = 0
            self._pool_pid = os.getpid()
        start = self._pool_used
        self._pool_used = start + _RANDOM_BYTES
        return int.from_bytes(self._pool[start : start + _RANDOM_BYTES], "big")


class SequentialIds:
    """Deterministic ids for tests: ``art_000…001``, ``art_000…002``, …"""

    def __init__(self, start: int = 1) -> None:
        self._lock = threading.Lock()
        self._next = start - 1

    def __call__(self, kind: str) -> str:
        with self._lock:
            self._next += 1
            return f"{PREFIXES[kind]}_{self._next:032x}"


def system_clock() -> datetime:
    return datetime.now(timezone.utc)


class TickingClock:
    """A deterministic clock for tests: each call is one millisecond later."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = start or datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        from datetime import timedelta

        with self._lock:
            self._now += timedelta(milliseconds=1)
            return self._now
