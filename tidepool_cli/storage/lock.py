"""The writer lock: ``INDEX/LOCK``, an advisory ``fcntl.flock``.

Writers hold it only to publish (a WAL file rename, a manifest swap), so waits are short;
readers never take it. The kernel releases a flock when its holder dies, so a killed
writer cannot leave the index locked. The holder writes its pid and purpose into the
file, which only serves the error message of a writer that timed out.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path

from tidepool_cli.errors import CorruptIndexError, LockTimeoutError, StorageIOError

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
        fd = _open_lock(self.path)
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
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} ({self.purpose}) since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
        except OSError:
            pass  # the holder's name only serves messages; a full disk must not block the lock
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _open_lock(path: Path) -> int:
    """Open (or create) LOCK without following a symlink or opening a FIFO or device."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptIndexError(f"{path}: is a symlink; the writer lock must be a regular file") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StorageIOError(f"permission denied writing {path} (read-only file system or directory)") from None
        raise StorageIOError(f"cannot open {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CorruptIndexError(f"{path}: is not a regular file")
    return fd


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return text or "unknown holder"
