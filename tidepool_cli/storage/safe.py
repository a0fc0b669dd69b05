"""Opening what an index names without trusting the names: confined paths, bounded reads.

Every path read from a file of the index (a manifest's segment and sidecar paths, its
obsolete list, WAL names) is relative, has no ``..`` component, and resolves (symlinks
followed) to a regular file inside the index directory. Small metadata files (CURRENT,
``tidepool.json``, manifests) are read with a size bound through a non-blocking
descriptor, so a FIFO cannot hang a reader and a symlink to ``/dev/zero`` cannot exhaust
memory. Violations are :class:`~tidepool_cli.errors.CorruptIndexError` (exit 5): an index
directory someone hands you can never make tidepool read or delete outside of it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from tidepool_cli.errors import CorruptIndexError, StorageIOError

SMALL_FILE_LIMIT = 1 << 16
"""Bytes allowed in CURRENT and ``tidepool.json``."""

MANIFEST_LIMIT = 1 << 28
"""Bytes allowed in one manifest (256 MiB: millions of segments' worth)."""


def check_rel(rel: object, where: str) -> str:
    """Return ``rel`` if it is a safe manifest-relative path, else raise.

    Parameters
    ----------
    rel : object
        The path as read from a file of the index.
    where : str
        Names the file that holds the path, for the message.

    Raises
    ------
    CorruptIndexError
        Not a string, empty, absolute, containing ``..``, a backslash or a NUL byte.
    """
    if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
        raise CorruptIndexError(f"{where}: invalid file path {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute() or any(part in ("..", "") for part in p.parts) or p.parts[0] == ".":
        raise CorruptIndexError(f"{where}: file path {rel!r} leaves the index directory")
    return rel


def inside(root: Path, path: Path) -> bool:
    """True if ``path``, symlinks resolved, lies inside ``root`` (also resolved)."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def regular_file(root: Path, path: Path, where: str) -> os.stat_result:
    """Check that ``path`` resolves to a regular file inside ``root``; return its stat.

    Raises
    ------
    CorruptIndexError
        Missing, a symlink out of the index or in a loop, a directory, FIFO or device.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CorruptIndexError(f"{where}: file is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CorruptIndexError(f"{where}: symlink loop") from None
        raise read_error(exc, where) from None
    if not inside(root, path):
        raise CorruptIndexError(f"{where}: is a symlink to a file outside the index directory")
    if not stat.S_ISREG(st.st_mode):
        raise CorruptIndexError(f"{where}: is not a regular file")
    return st


def read_small(root: Path, path: Path, where: str, limit: int = SMALL_FILE_LIMIT) -> bytes | None:
    """The bytes of a small metadata file, or None if it does not exist.

    Raises
    ------
    CorruptIndexError
        Not a regular file inside the index, or larger than ``limit`` bytes.
    StorageIOError
        The operating system refused the read (permissions).
    """
    if not os.path.lexists(path):
        return None
    regular_file(root, path, where)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise read_error(exc, where) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between the checks
            raise CorruptIndexError(f"{where}: is not a regular file")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise read_error(exc, where) from None
    finally:
        os.close(fd)
    if total > limit:
        raise CorruptIndexError(f"{where}: larger than {limit} bytes; not a file tidepool wrote")
    return b"".join(chunks)


def read_error(exc: OSError, where: str) -> StorageIOError:
    """Translate an OSError raised while reading into a one-line :class:`StorageIOError`."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageIOError(f"permission denied reading {where}")
    return StorageIOError(f"cannot read {where}: {exc.strerror or exc}")
