"""The write-ahead log: immutable WAL files, one per committed ingest or delete.

A WAL file is a sequence of records, one per input batch. Each record is a container
(kind ``WALR``): its header carries the record length and a CRC-32 that covers the
metadata and every section's CRC-32, so a record is ``[length][crc32][payload]`` with the
framing of :mod:`~tidepool_cli.storage.container`.

A writer builds the whole file under a temporary name, fsyncs it, and only then, under
the writer lock, renames it to the next sequence number ``wal/NNNNNNNNNNNN.wal`` and
fsyncs the directory. A command's writes are thus atomic (all its batches or none), a
published file is never appended to, a torn tail cannot exist, and the sequence numbers
give every write a total order: a later write of an id replaces an earlier one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidepool_cli.storage.atomic import fault_point, publish_file, storage_error, tmp_path
from tidepool_cli.storage.container import Container, map_file, write_container_to
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import Manifest, read_current
from tidepool_cli.storage.records import Batch, batch_sections, read_columns, read_ids

WAL_KIND = b"WALR"
WAL_VERSION = 1
_WAL_NAME = re.compile(r"^(\d{12})\.wal$")


@dataclass(frozen=True)
class WalRecord:
    """One record of a published WAL file.

    Attributes
    ----------
    seq : int
        Sequence number of its file.
    index : int
        Position of the record in the file.
    container : Container
        The record's sections (memory-mapped).
    """

    seq: int
    index: int
    container: Container

    @property
    def meta(self) -> dict:
        """The record's metadata (op, rows, auto_ids, max_id, schema, columns)."""
        return self.container.meta

    @property
    def rows(self) -> int:
        """Rows in the record."""
        return int(self.meta["rows"])

    def batch(self) -> Batch:
        """The record as a :class:`Batch`; arrays are memory-mapped views (ids None if automatic)."""
        c = self.container
        ids = None if self.meta["auto_ids"] else read_ids(c)
        vectors = c.array("vectors") if "vectors" in c else None
        return Batch(self.meta["op"], self.rows, ids, vectors, read_columns(c))


def list_wal(layout: Layout) -> list[tuple[int, Path]]:
    """Published WAL files as (sequence number, path), in sequence order."""
    try:
        names = os.listdir(layout.wal_dir)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), layout.wal_dir / name) for name in names if (m := _WAL_NAME.match(name))]
    return sorted(found)


def read_wal_file(layout: Layout, seq: int, path: Path, verify: str = "all") -> list[WalRecord]:
    """Records of one published WAL file.

    Parameters
    ----------
    verify : {"header", "small", "all"}
        Checksums to check (see :class:`~tidepool_cli.storage.container.Container`).

    Raises
    ------
    CorruptIndexError
        A record fails its checks or the file is truncated.
    """
    where = layout.rel(path)
    buf = map_file(path, where)
    records, offset = [], 0
    while offset < buf.shape[0]:
        c = Container(buf, offset, f"{where} record {len(records)}", WAL_KIND, WAL_VERSION, verify=verify)
        records.append(WalRecord(seq, len(records), c))
        offset += c.length
    return records


def pending_records(layout: Layout, manifest: Manifest, verify: str = "all") -> list[WalRecord]:
    """Records not yet applied by the manifest's generation, in write order."""
    out: list[WalRecord] = []
    for seq, path in list_wal(layout):
        if seq > manifest.wal_applied_through:
            out.extend(read_wal_file(layout, seq, path, verify))
    return out


class WalWriter:
    """Builds one WAL file under a temporary name and publishes it atomically.

    Use as a context manager: leaving it without :meth:`publish` (an error, a bad batch)
    removes the temporary file, so the index is unchanged.

    Parameters
    ----------
    layout : Layout
    """

    def __init__(self, layout: Layout):
        self.layout = layout
        self.tmp = tmp_path(layout.wal_dir / "pending.wal")
        self.metas: list[dict] = []
        self._offset = 0
        try:
            self._file = open(self.tmp, "wb")
        except OSError as exc:
            raise storage_error(exc, self.tmp) from exc

    def __enter__(self) -> "WalWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.abort()

    def append(self, batch: Batch) -> None:
        """Write ``batch`` as the next record of the file (not yet visible to anyone)."""
        meta, sections = batch_sections(batch)
        try:
            length, _ = write_container_to(self._file, self._offset, WAL_KIND, WAL_VERSION, meta, sections, bulk=("vectors",))
        except OSError as exc:
            raise storage_error(exc, self.tmp) from exc
        self._offset += length
        self.metas.append(meta)

    def publish(self, lock_timeout: float, purpose: str, check: Callable[[Manifest], None] | None = None) -> int:
        """Make the file durable, then give it the next sequence number under the lock.

        Parameters
        ----------
        lock_timeout : float
            Seconds to wait for the writer lock.
        purpose : str
            Shown to writers that wait for the lock.
        check : callable(Manifest) -> None, optional
            Run under the lock before the rename; raising aborts the publication.

        Returns
        -------
        int
            The sequence number of the published file.

        Raises
        ------
        LockTimeoutError, StorageIOError, and whatever ``check`` raises.
        """
        try:
            self._file.flush()
            fault_point()
            os.fsync(self._file.fileno())
            self._file.close()
        except OSError as exc:
            raise storage_error(exc, self.tmp) from exc
        with self.layout.lock(purpose, lock_timeout):
            manifest = read_current(self.layout)
            if check is not None:
                check(manifest)
            last = list_wal(self.layout)
            seq = max(last[-1][0] if last else 0, manifest.wal_applied_through) + 1
            publish_file(self.tmp, self.layout.wal_path(seq))
        self.tmp = None
        return seq

    def abort(self) -> None:
        """Discard the unpublished file (no-op after :meth:`publish`)."""
        if self.tmp is not None:
            self._file.close()
            self.tmp.unlink(missing_ok=True)
            self.tmp = None
