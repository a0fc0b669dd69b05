"""Access logs: which segment rows queries returned, and when, recorded best-effort without the writer lock.

Readers (queries) append to small files in ``INDEX/access/``, one file per process, which
``metamorph`` folds into the per-row temperature columns and then removes. The rules:

* Recording never fails a query and never touches an index file: any OS error turns
  recording off for the rest of the process. Losing records on a crash is allowed.
* A log file is created under a temporary name, locked (``flock``, exclusive) by its writer,
  then renamed into place, so a collector never sees a file before its writer holds it.
  The writer keeps the lock until it closes (or dies, when the kernel releases it).
* A collector takes only files whose lock it can get, i.e. files no live process still
  appends to, and holds their locks until it removes them.
* Each append is one ``write`` of one self-checking frame; a file torn by a crash (a short
  or zero-filled tail) is read up to its last complete frame.

Frame layout (little-endian)::

    offset  size  field
    0       4     magic b"TPAL"
    4       4     u32 n, the number of rows
    8       8     f64 Unix seconds of the accesses
    16      2     u16 byte length L of the segment name
    18      2     zero
    20      4     u32 CRC-32 of the whole frame with this field read as 0
    24      L'    segment name, UTF-8, zero-padded to L' = L rounded up to 4
    24+L'   4n    u32 segment rows

To fold without counting twice after a crash between publishing and removing, the folding
command records the names of the files it folded (:attr:`AccessLogBatch.names`) in what it
publishes, and passes them as ``folded`` to the next :func:`collect_access_logs`, which then
removes those files without returning their records.
"""

from __future__ import annotations

import fcntl
import os
import stat
import struct
import time
import uuid
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tidepool_cli.errors import InvalidInputError
from tidepool_cli.storage.atomic import TMP_MARK, tmp_path

ACCESS_DIR = "access"
"""Directory of the access logs inside an index directory."""
SUFFIX = ".tpal"
MAGIC = b"TPAL"
FRAME = struct.Struct("<4sIdHHI")
STALE_TMP_SECONDS = 60.0
"""A temporary log file older than this whose lock is free was left by a killed writer."""


def _frame(segment: str, rows: np.ndarray, timestamp: float) -> bytes:
    name = segment.encode()
    body = name + b"\0" * (-len(name) % 4) + rows.astype("<u4").tobytes()
    head = FRAME.pack(MAGIC, rows.shape[0], timestamp, len(name), 0, 0)
    crc = zlib.crc32(body, zlib.crc32(head))
    return FRAME.pack(MAGIC, rows.shape[0], timestamp, len(name), 0, crc) + body


class AccessRecorder:
    """Appends access records of one process to its own log file (created on first use).

    Parameters
    ----------
    directory : Path
        The index's access-log directory (``INDEX/access``); created if missing.

    Notes
    -----
    Best effort: :meth:`record` never raises for an OS error; it turns recording off
    (:attr:`enabled` becomes False) and the query goes on. Nothing is fsync'ed.
    """

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path: Path | None = None
        self.enabled = True
        self._fd: int | None = None

    def _open(self) -> int:
        self.directory.mkdir(exist_ok=True)
        final = self.directory / f"{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
        tmp = tmp_path(final)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(tmp, final)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        self.path = final
        return fd

    def record(self, segment: str, rows: np.ndarray, timestamp: float | None = None) -> None:
        """Append that the rows ``rows`` of ``segment`` were accessed at ``timestamp``.

        Parameters
        ----------
        segment : str
            Segment name (``seg-NNNNNN``).
        rows : (n,) int
            Row numbers within the segment, 0 to 2**32 - 1.
        timestamp : float, optional
            Unix seconds (default: now).

        Raises
        ------
        InvalidInputError
            A row outside 0..2**32-1 (a caller's bug, not an I/O failure).
        """
        rows = np.asarray(rows).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() > 0xFFFFFFFF):
            raise InvalidInputError(f"access record rows must be 0..2**32-1, got {int(rows.min())}..{int(rows.max())}")
        if not self.enabled or rows.size == 0:
            return
        data = _frame(segment, rows, time.time() if timestamp is None else float(timestamp))
        try:
            if self._fd is None:
                self._fd = self._open()
            if os.write(self._fd, data) != len(data):
                self._disable()  # a short write leaves a torn frame: append nothing after it
        except OSError:
            self._disable()

    def _disable(self) -> None:
        self.enabled = False
        self.close()

    def close(self) -> None:
        """Close the log file, releasing its lock so that it can be folded."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def __enter__(self) -> "AccessRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class AccessRecords:
    """Access records, column-wise.

    Attributes
    ----------
    segments : tuple of str
        Distinct segment names.
    segment : (m,) int32
        Index into ``segments`` of each record.
    rows : (m,) int64
        Segment row of each record.
    ts : (m,) float64
        Unix seconds of each record.
    """

    segments: tuple[str, ...]
    segment: np.ndarray
    rows: np.ndarray
    ts: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def of(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(rows int64, ts float64) of the records of segment ``name`` (empty if none)."""
        if name not in self.segments:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        sel = self.segment == self.segments.index(name)
        return self.rows[sel], self.ts[sel]


def parse_log(buf: bytes) -> tuple[list[tuple[str, np.ndarray, float]], bool]:
    """The complete frames of one log file's bytes.

    Parameters
    ----------
    buf : bytes

    Returns
    -------
    frames : list of (segment, rows (n,) uint32, timestamp)
    torn : bool
        True if bytes after the last complete frame were ignored (a crash's torn tail,
        or damage: reading stops at the first frame that fails its checks).
    """
    frames, pos = [], 0
    while pos + FRAME.size <= len(buf):
        magic, n, ts, name_len, zero, crc = FRAME.unpack_from(buf, pos)
        end = pos + FRAME.size + name_len + (-name_len % 4) + 4 * n
        if magic != MAGIC or zero or end > len(buf):
            break
        head = FRAME.pack(magic, n, ts, name_len, 0, 0)
        if zlib.crc32(buf[pos + FRAME.size : end], zlib.crc32(head)) != crc:
            break
        name_end = pos + FRAME.size + name_len
        try:
            name = buf[pos + FRAME.size : name_end].decode()
        except UnicodeDecodeError:
            break
        frames.append((name, np.frombuffer(buf, "<u4", n, end - 4 * n), ts))
        pos = end
    return frames, pos != len(buf)


@dataclass
class AccessLogBatch:
    """Closed access logs taken by one collector, locked until removed or released.

    Attributes
    ----------
    records : AccessRecords
        Their records (excluding files named in ``folded``).
    files : list of Path
        Every file taken, to remove once the records are folded and published.
    torn : int
        Files whose tail was torn (their complete frames are in ``records``).
    """

    records: AccessRecords
    files: list[Path]
    torn: int = 0
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def names(self) -> list[str]:
        """File names taken (to record as folded, see the module notes)."""
        return sorted(p.name for p in self.files)

    def remove(self) -> int:
        """Delete the files taken and release their locks; returns how many were removed."""
        removed = 0
        for p in self.files:
            try:
                p.unlink()
                removed += 1
            except FileNotFoundError:
                pass
        self.release()
        return removed

    def release(self) -> None:
        """Release the locks without removing anything (the logs are folded again later)."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> "AccessLogBatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def collect_access_logs(directory: Path, folded: Collection[str] = (), now: float | None = None) -> AccessLogBatch:
    """Take every access log no process still writes, with its records.

    Parameters
    ----------
    directory : Path
        ``INDEX/access`` (a missing directory holds no logs).
    folded : collection of str
        Names of files already folded into published metadata: taken for removal, their
        records not returned.
    now : float, optional
        Unix seconds, for the age of temporary files left by killed writers.

    Returns
    -------
    AccessLogBatch
        Call :meth:`AccessLogBatch.remove` after publishing what was folded, or
        :meth:`AccessLogBatch.release` to leave the logs for later.
    """
    now = time.time() if now is None else now
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        names = []
    segs: dict[str, int] = {}
    parts_seg, parts_rows, parts_ts = [], [], []
    files, fds, torn = [], [], 0
    for name in names:
        path = Path(directory) / name
        if TMP_MARK in name:
            _remove_stale_tmp(path, now)
            continue
        if not name.endswith(SUFFIX):
            continue
        try:
            # Never follow a symlink out of the index nor block on a FIFO someone put here.
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            continue
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live writer still appends to it
            continue
        files.append(path)
        fds.append(fd)
        if name in folded:
            continue
        frames, was_torn = parse_log(_read_all(fd))
        torn += was_torn
        for seg, rows, ts in frames:
            code = segs.setdefault(seg, len(segs))
            parts_seg.append(np.full(rows.shape[0], code, np.int32))
            parts_rows.append(rows.astype(np.int64))
            parts_ts.append(np.full(rows.shape[0], ts, np.float64))
    records = AccessRecords(
        tuple(segs),
        np.concatenate(parts_seg) if parts_seg else np.zeros(0, np.int32),
        np.concatenate(parts_rows) if parts_rows else np.zeros(0, np.int64),
        np.concatenate(parts_ts) if parts_ts else np.zeros(0, np.float64),
    )
    return AccessLogBatch(records, files, torn, fds)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _remove_stale_tmp(path: Path, now: float) -> None:
    """Remove a temporary log a killed writer left before renaming it (it holds no records)."""
    try:
        if now - path.lstat().st_mtime < STALE_TMP_SECONDS:
            return
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
