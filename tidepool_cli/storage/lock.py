"""The writer lock: ``INDEX/LOCK``, an advisory ``fcntl.flock``.

Writers hold it only to publish (a WAL file rename, a manifest swap), so waits are short;
readers never take it. The kernel releases a flock when its holder dies, so a killed
writer cannot leave the index locked. The holder writes its pid and purpose into the
file, which only serves the error message of a writer that timed out.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from tidepool_cli.errors import LockTimeoutError

DEFAULT_LOCK_TIMEOUT = 30.0
"""Seconds a writer waits for the lock before giving up (``--lock-timeout``)."""


class WriterLock:
    """Exclusive writer lock on an index directory, as a context manager.

    Parameters
    ----------
    root : Path
        Index directory (must exist).
    purpose : str
        What the holder does ("ingest", "compact"), shown to writers that wait.
    timeout : float
        Seconds to wait; 0 tries once.

    Raises
    ------
    LockTimeoutError
        On ``__enter__``, when another process held the lock for the whole timeout.
    """

    def __init__(self, root: Path, purpose: str, timeout: float = DEFAULT_LOCK_TIMEOUT):
        self.path = root / "LOCK"
        self.purpose = purpose
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockTimeoutError(
                        f"{self.path.parent} is locked by another writer ({holder}) for more than "
                        f"{self.timeout:g} s; retry later or raise --lock-timeout"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({self.purpose}) since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return text or "unknown holder"
