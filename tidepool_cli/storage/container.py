"""The binary container shared by every tidepool file: segments, sidecars, WAL records.

A container is a 64-byte header, a table of named sections, a JSON metadata block and
the sections themselves: little-endian NumPy arrays, each at a 64-byte aligned offset so
that it can be memory-mapped and used without a copy. docs/FORMAT.md documents every
byte; in short::

    offset  size  field
    0       8     magic b"TIDEPOOL"
    8       4     kind (4 ASCII bytes: VSEG, DELV, WALR, HNSW, IVFL, ...)
    12      4     u32 version of this kind's layout
    16      8     u64 required-feature flags (a reader refuses bits it does not know)
    24      4     u32 number of sections
    28      4     u32 bytes of metadata JSON
    32      8     u64 offset of the first section (64-aligned)
    40      8     u64 total length of the container in bytes
    48      4     u32 CRC-32 of the header, table and metadata, this field read as 0
    52      12    zero
    64      64*n  section table, one 64-byte entry per section:
                  name[24] dtype[4] u32 flags u64 offset u64 nbytes u64 rows u32 cols u32 crc32
    ...           metadata, UTF-8 JSON
    ...           sections, 64-byte aligned, zero padding between

Section offsets are relative to the container's first byte, so a container can also be
embedded in a larger file (a WAL file is a sequence of them, one per record). The header
CRC covers every section CRC, so it is a checksum of the whole container: the manifest
records it for each file.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tidepool_cli.errors import CorruptIndexError, UnsupportedFormatError
from tidepool_cli.storage.atomic import fault_point, write_file
from tidepool_cli.storage.pages import release_pages

MAGIC = b"TIDEPOOL"
ALIGN = 64
HEADER = struct.Struct("<8s4sIQIIQQI12x")
ENTRY = struct.Struct("<24s4sIQQQII")
assert HEADER.size == 64 and ENTRY.size == 64  # layout constants, not input checks

SECTION_BULK = 1
"""Section flag: verified by ``stats --verify`` and compaction, not on every open."""

CHUNK_BYTES = 1 << 24
"""Bytes written (and checksummed) per write call."""

class Rows:
    """Rows ``idx`` of ``src``, gathered chunk by chunk while writing instead of copied whole.

    Parameters
    ----------
    src : (n, ...) array (a memmap is fine)
    idx : (m,) int array
    """

    def __init__(self, src: np.ndarray, idx: np.ndarray):
        self.src, self.idx = src, np.asarray(idx)
        self.dtype = src.dtype
        self.shape = (self.idx.shape[0], *src.shape[1:])
        self.ndim = len(self.shape)

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self.src[self.idx[rows]])


SectionInput = np.ndarray | Sequence[np.ndarray | Rows]
"""One array, or a list of parts written one after another (rows concatenated)."""


def align(n: int) -> int:
    """Round ``n`` up to a multiple of 64."""
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Section:
    """One section of a container: where it is and what it holds.

    Attributes
    ----------
    name : str
    dtype : numpy.dtype
        Little-endian element type.
    shape : tuple of int
        ``(rows,)`` or ``(rows, cols)``.
    offset : int
        Byte offset from the container start (64-aligned).
    nbytes : int
    crc32 : int
        CRC-32 of the section bytes.
    bulk : bool
        True for bulk data (vectors) that is verified on demand, not on every open.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int
    bulk: bool


def write_container(
    path: Path,
    kind: bytes,
    version: int,
    meta: Mapping[str, Any],
    sections: Mapping[str, SectionInput],
    *,
    bulk: Collection[str] = (),
    flags: int = 0,
) -> tuple[int, int]:
    """Write a container file atomically (temporary file, fsync, rename, fsync dir).

    Parameters
    ----------
    path : Path
        Final file name.
    kind : bytes
        Four ASCII bytes naming the layout (``b"VSEG"``, ...).
    version : int
        Layout version written.
    meta : mapping
        JSON-serialisable metadata.
    sections : mapping of name to array or list of array parts
        1-D or 2-D arrays; parts of one section share dtype and column count.
    bulk : collection of str
        Names of sections flagged :data:`SECTION_BULK`.
    flags : int
        Required-feature bits.

    Returns
    -------
    nbytes : int
        File size in bytes.
    header_crc32 : int
        The container's header CRC (a checksum of the whole file, see module docs).

    Raises
    ------
    StorageIOError
        The write failed; nothing was published.
    """
    result: list[tuple[int, int]] = []
    write_file(path, lambda f: result.append(write_container_to(f, 0, kind, version, meta, sections, bulk=bulk, flags=flags)))
    return result[0]


def write_container_to(
    f: BinaryIO,
    start: int,
    kind: bytes,
    version: int,
    meta: Mapping[str, Any],
    sections: Mapping[str, SectionInput],
    *,
    bulk: Collection[str] = (),
    flags: int = 0,
) -> tuple[int, int]:
    """Write a container into an open file at byte ``start`` (a multiple of 64).

    Returns
    -------
    length : int
        Bytes from ``start`` to the end of the container (64-aligned).
    header_crc32 : int
    """
    parts = {name: _as_parts(value) for name, value in sections.items()}
    meta_bytes = json.dumps(meta, separators=(",", ":"), sort_keys=True).encode()
    table_end = HEADER.size + ENTRY.size * len(parts) + len(meta_bytes)
    offset = data_start = align(table_end)
    layout = []
    for name, arrs in parts.items():
        dtype = arrs[0].dtype
        rows = sum(a.shape[0] for a in arrs)
        cols = arrs[0].shape[1] if arrs[0].ndim == 2 else 0
        nbytes = rows * max(cols, 1) * dtype.itemsize
        layout.append((name, dtype, rows, cols, offset, nbytes))
        offset = align(offset + nbytes)
    length = offset

    entries = []
    written_end = table_end
    for (name, dtype, rows, cols, off, nbytes), arrs in zip(layout, parts.values()):
        f.seek(start + off)
        crc = 0
        for a in arrs:
            crc = _write_array(f, a, crc)
        fault_point()
        if nbytes:  # an empty section writes nothing, so it cannot extend the file
            written_end = off + nbytes
        entries.append(ENTRY.pack(_fixed(name, 24), _fixed(dtype.str, 4), SECTION_BULK if name in bulk else 0, off, nbytes, rows, cols, crc))
    if written_end < length:
        f.seek(start + length - 1)
        f.write(b"\0")  # extend the file to the aligned end: readers check the length

    head = HEADER.pack(MAGIC, kind, version, flags, len(parts), len(meta_bytes), data_start, length, 0)
    body = b"".join(entries) + meta_bytes
    crc = zlib.crc32(body, zlib.crc32(head))
    f.seek(start)
    f.write(HEADER.pack(MAGIC, kind, version, flags, len(parts), len(meta_bytes), data_start, length, crc) + body)
    fault_point()
    return length, crc


class Container:
    """A parsed container over a read-only byte buffer (usually a whole-file memmap).

    Parameters
    ----------
    buf : (nbytes,) uint8 array
        The bytes holding the container (a ``numpy.memmap`` of the file).
    start : int
        Offset of the container in ``buf``.
    where : str
        How errors name this container ("segments/seg-000001.tpvs").
    kind : bytes
        Expected kind.
    max_version : int
        Newest layout version this reader understands.
    known_flags : int
        Feature bits this reader understands.
    verify : {"header", "small", "all"}
        Checksums checked on open: header only, header and non-bulk sections, or all.

    Raises
    ------
    CorruptIndexError
        Bad magic, wrong kind, checksum mismatch, truncation.
    UnsupportedFormatError
        Newer version or unknown feature flags.
    """

    def __init__(self, buf: np.ndarray, start: int, where: str, kind: bytes, max_version: int, *, known_flags: int = 0, verify: str = "small"):
        self.where = where
        if buf.shape[0] < start + HEADER.size:
            raise CorruptIndexError(f"{where}: truncated (no complete header)")
        magic, got_kind, version, flags, n_sections, meta_len, data_start, length, crc = HEADER.unpack(
            bytes(buf[start : start + HEADER.size])
        )
        if magic != MAGIC:
            raise CorruptIndexError(f"{where}: not a tidepool file (bad magic)")
        if got_kind != kind:
            raise CorruptIndexError(f"{where}: holds a {got_kind.decode(errors='replace')!r} container, expected {kind.decode()!r}")
        table_end = HEADER.size + ENTRY.size * n_sections + meta_len
        if buf.shape[0] < start + max(table_end, length):
            raise CorruptIndexError(f"{where}: truncated ({buf.shape[0] - start} of {length} bytes present)")
        head = bytes(buf[start : start + table_end])
        zeroed = head[:48] + b"\0\0\0\0" + head[52:]
        if zlib.crc32(zeroed) != crc:
            raise CorruptIndexError(f"{where}: header checksum mismatch")
        if version > max_version:
            raise UnsupportedFormatError(
                f"{where}: {kind.decode()} version {version} was written by a newer tidepool "
                f"(this one reads up to {max_version}); upgrade tidepool"
            )
        if flags & ~known_flags:
            raise UnsupportedFormatError(f"{where}: uses unknown feature flags {flags & ~known_flags:#x}; upgrade tidepool")
        self.kind, self.version, self.flags, self.length, self.header_crc = kind, version, flags, length, crc
        self.sections: dict[str, Section] = {}
        for i in range(n_sections):
            name, dt, sflags, off, nbytes, rows, cols, scrc = ENTRY.unpack_from(head, HEADER.size + ENTRY.size * i)
            try:
                dtype = np.dtype(dt.rstrip(b"\0").decode("ascii"))
            except (TypeError, ValueError):
                raise CorruptIndexError(f"{where}: section table entry {i} has an invalid dtype") from None
            shape = (rows, cols) if cols else (rows,)
            if off < data_start or off + nbytes > length or rows * max(cols, 1) * dtype.itemsize != nbytes:
                raise CorruptIndexError(f"{where}: section table entry {i} is inconsistent")
            sec = Section(name.rstrip(b"\0").decode("ascii", errors="replace"), dtype, shape, off, nbytes, scrc, bool(sflags & SECTION_BULK))
            self.sections[sec.name] = sec
        try:
            self.meta: dict[str, Any] = json.loads(head[HEADER.size + ENTRY.size * n_sections :])
        except (ValueError, RecursionError):
            raise CorruptIndexError(f"{where}: metadata is not valid JSON") from None
        if not isinstance(self.meta, dict):
            raise CorruptIndexError(f"{where}: metadata is not a JSON object")
        self._buf, self._start = buf, start
        if verify != "header":
            bad = self.damaged_sections(include_bulk=verify == "all")
            if bad:
                raise CorruptIndexError(f"{where}: checksum mismatch in section {bad[0]!r}")

    def __contains__(self, name: str) -> bool:
        return name in self.sections

    def array(self, name: str) -> np.ndarray:
        """The section ``name`` as a read-only array view (no copy).

        Raises
        ------
        CorruptIndexError
            If the container has no such section.
        """
        sec = self.sections.get(name)
        if sec is None:
            raise CorruptIndexError(f"{self.where}: missing section {name!r}")
        lo = self._start + sec.offset
        return self._buf[lo : lo + sec.nbytes].view(sec.dtype).reshape(sec.shape)

    def damaged_sections(self, include_bulk: bool = True) -> list[str]:
        """Names of sections whose bytes no longer match their CRC-32 (bulk ones optional).

        A bulk section's pages are handed back after each chunk is checked, so checking a
        segment of any size keeps the process's resident size constant (they stay in the
        page cache; a later read maps them back).
        """
        bad = []
        for sec in self.sections.values():
            if sec.bulk and not include_bulk:
                continue
            lo = self._start + sec.offset
            crc = 0
            for s in range(lo, lo + sec.nbytes, CHUNK_BYTES):
                chunk = self._buf[s : min(s + CHUNK_BYTES, lo + sec.nbytes)]
                crc = zlib.crc32(chunk, crc)
                if sec.bulk:
                    release_pages(chunk)
            if crc != sec.crc32:
                bad.append(sec.name)
        return bad


def map_file(path: Path, where: str, root: Path | None = None) -> np.ndarray:
    """Memory-map a whole file read-only as uint8.

    Parameters
    ----------
    root : Path, optional
        The index directory: the file must resolve to a regular file inside it.

    Raises
    ------
    CorruptIndexError
        The file is missing, empty (a published file never is), not a regular file, or
        outside ``root``.
    StorageIOError
        The operating system refused the read.
    """
    from tidepool_cli.storage.safe import read_error, regular_file

    if regular_file(root if root is not None else path.parent, path, where).st_size == 0:
        raise CorruptIndexError(f"{where}: empty file")
    try:
        return np.memmap(path, dtype=np.uint8, mode="r")
    except FileNotFoundError:
        raise CorruptIndexError(f"{where}: file is missing") from None
    except OSError as exc:
        raise read_error(exc, where) from None


def open_container(
    path: Path, where: str, kind: bytes, max_version: int, *, known_flags: int = 0, verify: str = "small", root: Path | None = None
) -> Container:
    """Open and check the container file at ``path`` (see :class:`Container` and :func:`map_file`)."""
    return Container(map_file(path, where, root), 0, where, kind, max_version, known_flags=known_flags, verify=verify)


def _as_parts(value: SectionInput) -> list[np.ndarray | Rows]:
    arrs = [value] if isinstance(value, np.ndarray) else list(value)
    if not arrs:
        raise ValueError("a section needs at least one part")  # programming error, not user input
    dtype = arrs[0].dtype.newbyteorder("<") if arrs[0].dtype.byteorder == ">" else arrs[0].dtype
    return [a if isinstance(a, Rows) else np.asarray(a, dtype=dtype) for a in arrs]


def _write_array(f: BinaryIO, a: np.ndarray | Rows, crc: int) -> int:
    """Write the rows of ``a`` in chunks, returning the running CRC-32."""
    row_bytes = max(1, a.dtype.itemsize * (a.shape[1] if a.ndim == 2 else 1))
    step = max(1, CHUNK_BYTES // row_bytes)
    for s in range(0, a.shape[0], step):
        chunk = np.ascontiguousarray(a[s : s + step], dtype=a.dtype.newbyteorder("<"))
        mv = memoryview(chunk).cast("B")
        crc = zlib.crc32(mv, crc)
        f.write(mv)
    return crc


def _fixed(text: str, width: int) -> bytes:
    raw = text.encode("ascii")
    if len(raw) > width:
        raise ValueError(f"section name or dtype {text!r} exceeds {width} bytes")  # programming error
    return raw.ljust(width, b"\0")
