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

Version 2 makes every WAL file accountable. Its last record is an *end record*
(``op: "end"``) written under the lock with the file's own sequence number, its data
record count, byte length and the CRC-32 of its records' header CRCs; and the *WAL
ledger* ``wal/LEDGER.json`` (checksummed JSON, replaced atomically after each
publication) records the last sequence number published and that file's facts. A
reader therefore detects a file truncated (even at a record boundary), removed (a gap
in the sequence, or the ledger's last file missing), renamed or copied out of sequence,
and refuses it (exit 5) instead of silently skipping acknowledged writes. Version 1
files (no end record) are still read.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tidepool_cli.errors import CorruptIndexError
from tidepool_cli.storage import sealed
from tidepool_cli.storage.atomic import discard, fault_point, fsync_dir, publish_file, storage_error, tmp_path, write_file
from tidepool_cli.storage.container import Container, map_file, write_container_to
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import Manifest, read_current
from tidepool_cli.storage.records import Batch, batch_sections, read_columns, read_ids
from tidepool_cli.storage.safe import read_small

WAL_KIND = b"WALR"
WAL_VERSION = 2
"""Record layout written by this release (1: files without an end record; still read)."""
LEDGER_NAME = "LEDGER.json"
LEDGER_FORMAT = "tidepool-wal-ledger"
_WAL_NAME = re.compile(r"^(\d{12})\.wal$")


@dataclass(frozen=True)
class WalFileFacts:
    """What the end record (and the ledger) know about one published WAL file.

    Attributes
    ----------
    seq : int
    records : int
        Data records (the end record excluded).
    bytes : int
        Bytes of the data records (the end record starts here).
    crc32 : int
        CRC-32 of the data records' header CRCs, as little-endian u32s, in order.
    """

    seq: int
    records: int
    bytes: int
    crc32: int

    def to_dict(self) -> dict:
        """JSON form (the end record's metadata and the ledger's entry)."""
        return {"seq": self.seq, "records": self.records, "bytes": self.bytes, "crc32": self.crc32}


def _chain(crcs: list[int]) -> int:
    return zlib.crc32(struct.pack(f"<{len(crcs)}I", *crcs))


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


def read_ledger(layout: Layout) -> WalFileFacts | None:
    """The WAL ledger: facts of the last WAL file published, or None if none was (or version 1).

    Raises
    ------
    CorruptIndexError
        The ledger fails its checksum or is malformed.
    """
    path = layout.wal_dir / LEDGER_NAME
    where = layout.rel(path)
    raw = read_small(layout.root, path, where)
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        if sealed.check(raw) is not True or d.get("format") != LEDGER_FORMAT:
            raise ValueError
        return WalFileFacts(int(d["seq"]), int(d["records"]), int(d["bytes"]), int(d["crc32"]))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise CorruptIndexError(f"{where}: damaged (checksum mismatch or malformed)") from None


def read_wal_file(layout: Layout, seq: int, path: Path, verify: str = "all", expect: WalFileFacts | None = None) -> list[WalRecord]:
    """Data records of one published WAL file, checked against its end record.

    Parameters
    ----------
    verify : {"header", "small", "all"}
        Checksums to check (see :class:`~tidepool_cli.storage.container.Container`).
    expect : WalFileFacts, optional
        What the ledger recorded for this file.

    Raises
    ------
    CorruptIndexError
        A record fails its checks, the file is truncated (also at a record boundary),
        or it is not the file its name and the ledger say.
    """
    where = layout.rel(path)
    buf = map_file(path, where, layout.root)
    records, offset, end = [], 0, None
    while offset < buf.shape[0]:
        if end is not None:
            raise CorruptIndexError(f"{where}: data after the end record")
        c = Container(buf, offset, f"{where} record {len(records)}", WAL_KIND, WAL_VERSION, verify=verify)
        if c.meta.get("op") == "end":
            end = (c, offset)
        else:
            records.append(WalRecord(seq, len(records), c))
        offset += c.length
    versioned = records[0].container.version if records else (end[0].version if end else 1)
    if versioned >= 2:
        facts = WalFileFacts(seq, len(records), end[1] if end else offset, _chain([r.container.header_crc for r in records]))
        if end is None:
            raise CorruptIndexError(f"{where}: truncated (its end record is missing; {len(records)} records remain)")
        if end[0].meta.get("facts") != facts.to_dict():
            raise CorruptIndexError(f"{where}: does not match its end record (truncated, or out of sequence: records {end[0].meta.get('facts')}, found {facts.to_dict()})")
        if expect is not None and expect != facts:
            raise CorruptIndexError(f"{where}: is not the file the WAL ledger records")
    elif not records:
        raise CorruptIndexError(f"{where}: holds no records")
    return records


def check_sequence(layout: Layout, manifest: Manifest) -> tuple[list[tuple[int, Path]], WalFileFacts | None]:
    """The pending WAL files, after checking that none is missing.

    Returns
    -------
    files : list of (int, Path)
        WAL files after ``manifest.wal_applied_through``, in order.
    ledger : WalFileFacts or None

    Raises
    ------
    CorruptIndexError
        A gap in the sequence, or the ledger's last file is missing.
    """
    ledger = read_ledger(layout)  # before listing: every file it names is listed then
    files = [(seq, p) for seq, p in list_wal(layout) if seq > manifest.wal_applied_through]
    present = {seq for seq, _ in files}
    top = max([manifest.wal_applied_through, *present, ledger.seq if ledger else 0])
    missing = [seq for seq in range(manifest.wal_applied_through + 1, top + 1) if seq not in present]
    if missing:
        raise CorruptIndexError(f"{layout.rel(layout.wal_path(missing[0]))}: WAL file is missing (acknowledged writes would be lost)")
    return files, ledger


def pending_records(layout: Layout, manifest: Manifest, verify: str = "all") -> list[WalRecord]:
    """Records not yet applied by the manifest's generation, in write order.

    Raises
    ------
    CorruptIndexError
        A pending WAL file is missing, damaged, truncated or out of sequence.
    """
    files, ledger = check_sequence(layout, manifest)
    out: list[WalRecord] = []
    for seq, path in files:
        out.extend(read_wal_file(layout, seq, path, verify, ledger if ledger and ledger.seq == seq else None))
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
        self._crcs: list[int] = []
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
            length, crc = write_container_to(self._file, self._offset, WAL_KIND, WAL_VERSION, meta, sections, bulk=("vectors",))
        except OSError as exc:
            raise storage_error(exc, self.tmp) from exc
        self._offset += length
        self._crcs.append(crc)
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
            ledger = read_ledger(self.layout)
            seq = max(last[-1][0] if last else 0, manifest.wal_applied_through, ledger.seq if ledger else 0) + 1
            facts = WalFileFacts(seq, len(self.metas), self._offset, _chain(self._crcs))
            final = self.layout.wal_path(seq)
            try:
                with open(self.tmp, "r+b") as f:
                    write_container_to(f, self._offset, WAL_KIND, WAL_VERSION, {"op": "end", "facts": facts.to_dict()}, {})
                    f.flush()
                    os.fsync(f.fileno())
                publish_file(self.tmp, final)
            except OSError as exc:
                raise storage_error(exc, final) from exc
            try:
                write_file(self.layout.wal_dir / LEDGER_NAME, sealed.seal({"format": LEDGER_FORMAT, **facts.to_dict()}))
            except BaseException:
                # Not acknowledged: take the file back so the ledger and the WAL agree.
                discard(final)
                try:
                    fsync_dir(self.layout.wal_dir)
                except OSError:
                    pass
                raise
        self.tmp = None
        return seq

    def abort(self) -> None:
        """Discard the unpublished file (no-op after :meth:`publish`)."""
        if self.tmp is not None:
            try:
                self._file.close()
            except OSError:
                pass
            discard(self.tmp)
            self.tmp = None
