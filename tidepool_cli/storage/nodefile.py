"""The Vamana node file: sector-aligned node records in a checksummed container.

A container (see :mod:`~tidepool_cli.storage.container`) of kind ``VAMN``, version 1.
Metadata ``{"layout": {"n", "d", "r"}, "medoid", "r", "l", "alpha", "metric", "order",
"block_crc": "crc32", ...}`` plus whatever the caller adds (segment name, row count).
Sections, in file order:

``pad`` (``|u1``)
    Zero bytes that put the next section on a 4096-byte boundary of the file.
``records`` (``|u1`` n_blocks × block_bytes, bulk)
    The record blocks of :mod:`~tidepool_cli.engine.vamana_layout`, starting on a file
    page, so one block is exactly one (or, for records over 4 KiB, a few) 4-KiB pages.
``block_crc`` (``<u4`` n_blocks)
    CRC-32 of each block, so a reader can check the one block it read without reading
    the rest (the section CRC of ``records`` still covers the whole area).
``slot_of`` (``<i4`` n)
    Slot of each row's record.

Every section but ``records`` is checked on open; ``records`` is checked block by block
(:meth:`NodeFile.check_blocks`) or whole (:meth:`NodeFile.verify`).
"""

from __future__ import annotations

import json
import mmap
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.vamana import VamanaGraph
from tidepool_cli.engine.vamana_layout import (
    SECTOR_BYTES,
    NodeLayout,
    graph_order,
    pack_blocks,
    slots_of,
)
from tidepool_cli.engine.vamana_search import NodeRecords
from tidepool_cli.errors import CorruptIndexError, StorageIOError
from tidepool_cli.storage.container import CHUNK_BYTES, ENTRY, HEADER, Container, Rows, align, write_container

KIND = b"VAMN"
VERSION = 1
_SECTIONS = ("pad", "records", "block_crc", "slot_of")


class _PackedBlocks(Rows):
    """The record area, packed chunk by chunk while the container is written."""

    def __init__(self, x, adjacency, order, layout: NodeLayout):
        self.x, self.adjacency, self.order, self.layout = x, adjacency, order, layout
        self.dtype = np.dtype(np.uint8)
        self.shape = (layout.n_blocks, layout.block_bytes)
        self.ndim = 2

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        return pack_blocks(self.x, self.adjacency, self.order, self.layout, start, stop)


def write_nodefile(
    path: Path, x: np.ndarray, graph: VamanaGraph, *, meta: dict[str, Any] | None = None
) -> tuple[int, int]:
    """Write the node file of ``graph`` over vectors ``x`` atomically.

    Records are placed in graph order (:func:`~tidepool_cli.engine.vamana_layout.graph_order`).

    Parameters
    ----------
    path : Path
    x : (n, d) float32
        Vectors by row (a memmap is fine: gathered block by block).
    graph : VamanaGraph
    meta : dict, optional
        Extra JSON metadata (segment name, row count).

    Returns
    -------
    nbytes : int
    header_crc32 : int

    Raises
    ------
    StorageIOError
        The write failed; nothing was published.
    """
    n, d = x.shape
    layout = NodeLayout(n, d, graph.r)
    order = graph_order(graph.adjacency, graph.medoid, layout.per_block)
    packed = _PackedBlocks(x, graph.adjacency, order, layout)
    crcs = np.empty(layout.n_blocks, dtype="<u4")
    step = max(1, CHUNK_BYTES // layout.block_bytes)
    for s in range(0, layout.n_blocks, step):
        chunk = packed[s : s + step]
        for i in range(chunk.shape[0]):
            crcs[s + i] = zlib.crc32(chunk[i])
    info = dict(meta or {})
    info.update(
        layout=layout.to_dict(),
        medoid=int(graph.medoid),
        r=graph.r,
        l=graph.l,
        alpha=graph.alpha,
        metric=graph.metric,
        order="graph",
        block_crc="crc32",
    )
    # The container places sections right after its header, table and metadata; the pad
    # section moves the records to the next file page.
    meta_len = len(json.dumps(info, separators=(",", ":"), sort_keys=True).encode())
    data_start = align(HEADER.size + ENTRY.size * len(_SECTIONS) + meta_len)
    pad = np.zeros(-data_start % SECTOR_BYTES, dtype=np.uint8)
    sections = {
        "pad": pad,
        "records": [packed],
        "block_crc": crcs,
        "slot_of": slots_of(order).astype("<i4"),
    }
    return write_container(path, KIND, VERSION, info, sections, bulk=("records",))


class NodeFile:
    """An open node file: its records memory-mapped, its small sections checked.

    Parameters
    ----------
    path : Path
    where : str
        How errors name the file.

    Attributes
    ----------
    records : NodeRecords
        What :func:`~tidepool_cli.engine.vamana_search.search_vamana` reads.
    meta : dict
    records_offset : int
        Byte offset of the record area in the file (a multiple of 4096).

    Raises
    ------
    CorruptIndexError
        Bad header or section checksum, truncation, records not page-aligned, or
        metadata that does not match the sections.
    UnsupportedFormatError
        Written by a newer version.
    """

    def __init__(self, path: Path, where: str):
        self.path, self.where = Path(path), where
        c = Container(_map_random(self.path, where), 0, where, KIND, VERSION, verify="small")
        self.meta = c.meta
        try:
            lay = c.meta["layout"]
            layout = NodeLayout(int(lay["n"]), int(lay["d"]), int(lay["r"]))
            medoid = int(c.meta["medoid"])
        except (KeyError, TypeError, ValueError):
            raise CorruptIndexError(f"{where}: node file metadata is incomplete") from None
        blocks = c.array("records")
        crcs = c.array("block_crc")
        slot_of = c.array("slot_of")
        self.records_offset = c.sections["records"].offset
        if self.records_offset % SECTOR_BYTES:
            raise CorruptIndexError(f"{where}: node records are not page-aligned")
        if (
            blocks.shape != (layout.n_blocks, layout.block_bytes)
            or crcs.shape != (layout.n_blocks,)
            or slot_of.shape != (layout.n,)
            or not 0 <= medoid < layout.n
        ):
            raise CorruptIndexError(f"{where}: node file sections do not match its layout")
        self._crcs = crcs
        self.layout = layout
        self.records = NodeRecords(blocks, slot_of, layout, medoid)

    @property
    def nbytes(self) -> int:
        """Size of the file in bytes."""
        return self.path.stat().st_size

    def check_blocks(self, blocks: np.ndarray) -> None:
        """Check the CRC-32 of the given record blocks (reads only those blocks).

        Parameters
        ----------
        blocks : (m,) int
            Block numbers (``slot // per_block``).

        Raises
        ------
        CorruptIndexError
            Naming the first block whose bytes do not match its CRC.
        """
        area = self.records.blocks
        for b in np.unique(np.asarray(blocks, dtype=np.int64)):
            if zlib.crc32(area[b]) != int(self._crcs[b]):
                raise CorruptIndexError(f"{self.where}: checksum mismatch in node block {int(b)}")

    def verify(self) -> None:
        """Check every record block.

        Raises
        ------
        CorruptIndexError
        """
        self.check_blocks(np.arange(self.layout.n_blocks))


def _map_random(path: Path, where: str) -> np.ndarray:
    """Map the file read-only with read-ahead off (``MADV_RANDOM``) before touching a byte.

    A search reads scattered 4-KiB blocks; with the kernel's default read-around every
    fault would pull in up to ``read_ahead_kb`` of neighbouring records (8 MiB on some
    virtual disks), which costs I/O and page cache that the search never uses.
    """
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise CorruptIndexError(f"{where}: empty file")
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise CorruptIndexError(f"{where}: file is missing") from None
    except OSError as e:
        raise StorageIOError(f"{where}: cannot map the node file: {e.strerror or e}") from None
    if hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mm, dtype=np.uint8)


def open_nodefile(path: Path, where: str) -> NodeFile:
    """Open and check a node file (see :class:`NodeFile`)."""
    return NodeFile(path, where)
