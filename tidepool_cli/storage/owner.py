"""Who wrote an unpublished file: the owner tag in temporary and new file names.

Files a writer creates before it publishes them (temporary files, new segments and
sidecars a manifest does not name yet) carry ``<pid>-<start>`` in their name: the
writer's process id and its start time in clock ticks since boot (field 22 of
``/proc/<pid>/stat``; 0 where ``/proc`` is unavailable). Garbage collection removes such
a file only once its owner is gone, so a slow build or ingest never loses a file it is
about to publish; the start time keeps a recycled pid from passing for the owner.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

OWNER = re.compile(r"(?:\.tmp\.|\.[0-9a-f]{12}-)(\d+)-(\d+)\.")
"""Finds the owner tag in a temporary name or a new segment-file name."""


def start_time(pid: int) -> int:
    """Start time of process ``pid`` in clock ticks since boot; 0 if unknown, -1 if no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return -1
    except OSError:
        return 0
    try:
        fields = raw[raw.rindex(b")") + 2 :].split()
        if fields[0] in (b"Z", b"X"):  # a zombie has finished: it publishes nothing more
            return -1
        return int(fields[19])
    except (ValueError, IndexError):
        return 0


@lru_cache(maxsize=1)
def _own(pid: int) -> str:
    return f"{pid}-{max(start_time(pid), 0)}"


def owner_tag() -> str:
    """``<pid>-<start>`` of this process."""
    return _own(os.getpid())


def owner_of(name: str) -> tuple[int, int] | None:
    """(pid, start) from a file name, or None if it carries no owner tag."""
    m = OWNER.search(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def owner_alive(pid: int, start: int) -> bool:
    """True if the process that wrote a file with this owner tag may still be running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    now = start_time(pid)
    if now == -1:
        return False
    return start == 0 or now == 0 or now == start
