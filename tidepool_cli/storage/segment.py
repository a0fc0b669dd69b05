"""Segment files (``.tpvs``) and deletion vectors (``.tpdv``).

A segment is an immutable container of kind ``VSEG``: the vectors, their squared norms,
internal row ids, external ids and attribute columns of a set of rows, in the section
layout of :mod:`~tidepool_cli.storage.records`, plus

=============  ============  ===============================================================
``sqnorms``    <f4 (n,)      squared L2 norm of each vector (the l2 kernels' norm term)
``row_ids``    <u8 (n,)      internal row id: ``seq << 32 | record row`` of the WAL write
=============  ============  ===============================================================

Rows deleted after the segment was written are marked in a deletion vector: a separate
immutable container of kind ``DELV`` holding a zstd-compressed little-endian bitmap of n
bits (a handful of deletes in a million rows compress to a few bytes). Every change
writes a new deletion vector file and a new manifest references it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import zstandard

from tidepool_cli.engine.columns import Column
from tidepool_cli.errors import CorruptIndexError
from tidepool_cli.storage.container import Container, open_container, write_container
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import FileRef, SegmentEntry
from tidepool_cli.storage.records import column_sections, id_sections, read_column, read_ids

SEGMENT_KIND = b"VSEG"
SEGMENT_VERSION = 1
DELETIONS_KIND = b"DELV"
DELETIONS_VERSION = 1
SEGMENT_SUFFIX = "tpvs"
DELETIONS_SUFFIX = "tpdv"


@dataclass(frozen=True)
class SegmentData:
    """Rows to write as a segment.

    Attributes
    ----------
    vectors : list of (n_i, d) float32 arrays
        Parts written one after another (memmap views are streamed, not copied whole).
    sqnorms : (n,) float32
    row_ids : (n,) uint64
    ids : (n,) int64 or str array
    columns : mapping of str to Column
    """

    vectors: list[np.ndarray]
    sqnorms: np.ndarray
    row_ids: np.ndarray
    ids: np.ndarray
    columns: dict[str, Column]

    @property
    def rows(self) -> int:
        """Rows in the segment."""
        return int(self.row_ids.shape[0])


def write_segment(layout: Layout, name: str, data: SegmentData, dim: int) -> SegmentEntry:
    """Write ``segments/<name>.tpvs`` atomically and return its manifest entry.

    Raises
    ------
    StorageIOError
        The write failed; nothing is published.
    """
    path = layout.new_segment_file(name, SEGMENT_SUFFIX)
    names = sorted(data.columns)
    meta = {"name": name, "rows": data.rows, "dim": dim, "schema": {n: data.columns[n].kind for n in names}, "columns": names}
    sections: dict = {"vectors": data.vectors if data.vectors else np.zeros((0, dim), np.float32)}
    sections.update(sqnorms=data.sqnorms.astype(np.float32), row_ids=data.row_ids.astype(np.uint64))
    sections.update(id_sections(data.ids))
    for j, col in enumerate(names):
        sections.update(column_sections(j, data.columns[col]))
    nbytes, crc = write_container(path, SEGMENT_KIND, SEGMENT_VERSION, meta, sections, bulk=("vectors",))
    return SegmentEntry(name, data.rows, 0, FileRef(layout.rel(path), nbytes, crc))


def write_deletions(layout: Layout, entry: SegmentEntry, deleted: np.ndarray) -> SegmentEntry:
    """Write a new deletion vector for ``entry`` and return the updated entry.

    Parameters
    ----------
    deleted : (rows,) bool
        All deleted rows of the segment (earlier deletions included).
    """
    path = layout.new_segment_file(entry.name, DELETIONS_SUFFIX)
    bits = np.packbits(deleted.astype(bool), bitorder="little")
    blob = np.frombuffer(zstandard.ZstdCompressor(level=3).compress(bits.tobytes()), dtype=np.uint8)
    count = int(np.count_nonzero(deleted))
    meta = {"segment": entry.name, "rows": entry.rows, "deleted": count, "codec": "zstd"}
    nbytes, crc = write_container(path, DELETIONS_KIND, DELETIONS_VERSION, meta, {"bitmap.zst": blob})
    ref = FileRef(layout.rel(path), nbytes, crc, {"deleted": count})
    return SegmentEntry(entry.name, entry.rows, count, entry.vectors, ref, entry.indexes)


class Segment:
    """A read-only, memory-mapped view of one segment and its deletion vector.

    Parameters
    ----------
    layout : Layout
    entry : SegmentEntry
    verify : {"header", "small", "all"}
        Checksums checked on open; "small" skips the bulk vector section.

    Raises
    ------
    CorruptIndexError
        A file is missing, truncated, fails a checksum, or is not the one the manifest
        references (header CRC differs).
    UnsupportedFormatError
        A file written by a newer tidepool.
    """

    def __init__(self, layout: Layout, entry: SegmentEntry, verify: str = "small"):
        self.layout, self.entry = layout, entry
        self.container = open_ref(layout, entry.vectors, SEGMENT_KIND, SEGMENT_VERSION, verify)
        if self.container.meta.get("rows") != entry.rows:
            raise CorruptIndexError(f"{entry.vectors.path}: holds {self.container.meta.get('rows')} rows, manifest says {entry.rows}")
        self.deletion_container = (
            open_ref(layout, entry.deletions, DELETIONS_KIND, DELETIONS_VERSION, verify) if entry.deletions else None
        )

    @property
    def name(self) -> str:
        """Segment name."""
        return self.entry.name

    @property
    def rows(self) -> int:
        """Rows, deleted ones included."""
        return self.entry.rows

    @cached_property
    def vectors(self) -> np.ndarray:
        """(n, d) float32 memory-mapped vectors."""
        return self.container.array("vectors")

    @cached_property
    def sqnorms(self) -> np.ndarray:
        """(n,) float32 squared norms."""
        return self.container.array("sqnorms")

    @cached_property
    def row_ids(self) -> np.ndarray:
        """(n,) uint64 internal row ids."""
        return self.container.array("row_ids")

    @cached_property
    def ids(self) -> np.ndarray:
        """(n,) external ids: int64, or a str array."""
        return read_ids(self.container)

    @cached_property
    def deleted(self) -> np.ndarray:
        """(n,) bool: rows marked in the deletion vector."""
        if self.deletion_container is None:
            return np.zeros(self.rows, bool)
        raw = zstandard.ZstdDecompressor().decompress(self.deletion_container.array("bitmap.zst").tobytes())
        bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=self.rows, bitorder="little")
        return bits.astype(bool)

    @property
    def schema(self) -> dict[str, str]:
        """Attribute name to kind."""
        return dict(self.container.meta.get("schema", {}))

    def column(self, name: str) -> Column | None:
        """The attribute column ``name``, or None if no row of this segment has it."""
        names = self.container.meta.get("columns", [])
        if name not in names:
            return None
        return read_column(self.container, names.index(name), self.schema[name])

    def columns(self) -> dict[str, Column]:
        """Every attribute column."""
        return {n: c for n in self.container.meta.get("columns", []) if (c := self.column(n)) is not None}


def open_ref(layout: Layout, ref: FileRef, kind: bytes, version: int, verify: str) -> Container:
    """Open the container file a manifest references and check it is that very file.

    Raises
    ------
    CorruptIndexError
        Missing, damaged, or a different file than the manifest recorded.
    UnsupportedFormatError
        Written by a newer tidepool.
    """
    path: Path = layout.path(ref.path)
    c = open_container(path, ref.path, kind, version, verify=verify, root=layout.root)
    if c.header_crc != ref.crc32 or c.length != ref.bytes:
        raise CorruptIndexError(f"{ref.path}: is not the file the manifest references (checksum or size differs)")
    return c
