"""Atomic, durable file creation: the only way tidepool writes a file.

Every file is written under a temporary name in its final directory, fsync'ed, renamed
over its final name with ``os.replace`` and made durable by an fsync of the directory
(the recipe of zarr's ``_atomic_write`` and of LevelDB's CURRENT swap). A reader
therefore sees either the old file or the complete new one, never a torn one.

Temporary names contain :data:`TMP_MARK` and their writer's owner tag
(:mod:`~tidepool_cli.storage.owner`); garbage collection removes one only once its
writer is gone.

Crash testing: when the environment variable ``TIDEPOOL_FAULT_STEP=N`` is set, the
process kills itself with SIGKILL at the N-th durable step (each write, fsync and rename
counts one). Tests run a command with N = 1, 2, 3, ... to crash it at every point.
"""

from __future__ import annotations

import errno
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tidepool_cli.errors import StorageIOError
from tidepool_cli.storage.owner import owner_tag

TMP_MARK = ".tmp."
"""Substring that marks an unpublished temporary file."""

FAULT_ENV = "TIDEPOOL_FAULT_STEP"
_fault_at = int(os.environ.get(FAULT_ENV, "0") or 0)
_steps = 0


def fault_point() -> None:
    """Count one durable step; under ``TIDEPOOL_FAULT_STEP=N`` die by SIGKILL at step N."""
    global _steps
    if _fault_at:
        _steps += 1
        if _steps == _fault_at:
            os.kill(os.getpid(), signal.SIGKILL)


def tmp_path(final: Path) -> Path:
    """A unique temporary name beside ``final`` (same directory, so rename is atomic)."""
    return final.with_name(f"{final.name}{TMP_MARK}{owner_tag()}.{uuid.uuid4().hex[:8]}")


def fsync_dir(directory: Path) -> None:
    """Make renames and creations inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(final: Path, fill: Callable[[BinaryIO], None] | bytes) -> int:
    """Create or replace ``final`` atomically and durably.

    Parameters
    ----------
    final : Path
        Destination; its directory must exist.
    fill : bytes or callable(file) -> None
        The content, or a function that writes it to the open binary file (it may seek).

    Returns
    -------
    int
        Size of the written file in bytes.

    Raises
    ------
    StorageIOError
        The operating system refused the write (disk full, permissions); the
        temporary file is removed and ``final`` is untouched.
    """
    tmp = tmp_path(final)
    try:
        with open(tmp, "wb") as f:
            if isinstance(fill, bytes):
                f.write(fill)
            else:
                fill(f)
            fault_point()
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        fault_point()
        publish_file(tmp, final)
        return size
    except OSError as exc:
        discard(tmp)
        raise storage_error(exc, final) from exc
    except BaseException:
        discard(tmp)
        raise


def discard(path: Path) -> None:
    """Remove an unpublished file if it exists; an error here (a read-only file system)
    must not hide the error that made the caller give up, so it is ignored."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


def publish_file(tmp: Path, final: Path) -> None:
    """Rename a complete, fsync'ed temporary file to its final name and fsync the directory."""
    os.replace(tmp, final)
    fault_point()
    fsync_dir(final.parent)
    fault_point()


def storage_error(exc: OSError, path: Path) -> StorageIOError:
    """Translate an OSError into a one-line :class:`StorageIOError` naming ``path``."""
    if exc.errno == errno.ENOSPC:
        return StorageIOError(f"no space left on device while writing {path}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageIOError(f"permission denied writing {path}")
    return StorageIOError(f"cannot write {path}: {exc.strerror or exc}")
