"""Who holds a running run: this process's identity, and whether one is alive.

A holder is ``{"host": ..., "pid": ..., "started": ...}``. ``started`` is the
process start time from ``/proc/<pid>/stat`` (clock ticks since boot) where
the platform has it, so a pid reused by another process is not mistaken for
the holder.
"""

from __future__ import annotations

import os
from typing import Any


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state first), or None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    fields = _stat_fields(pid)
    # Field 22 of proc(5)'s stat is the start time; fields 1 and 2 were dropped.
    return fields[19].decode() if fields is not None and len(fields) > 19 else None


def _host() -> str:
    # socket is imported here: every command that opens a store imports this
    # module, and only run leases need the host name.
    import socket

    return socket.gethostname()


def current_holder() -> dict[str, Any]:
    pid = os.getpid()
    return {"host": _host(), "pid": pid, "started": _process_start(pid)}


def holder_is_gone(holder: dict[str, Any]) -> bool:
    """True only when the holder ran on this host and that process is gone.

    A holder on another host cannot be checked from here; its lease decides.
    """
    if holder.get("host") != _host():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat_fields(pid)
    if fields and fields[0] in (b"Z", b"X"):
        return True  # killed, not yet reaped by its parent
    started = holder.get("started")
    return started is not None and _process_start(pid) not in (None, started)
