"""The on-disk layout of a Vamana graph as pure arrays: records, sectors, node order.

As in DiskANN, every node is one fixed-size *record* holding its full-precision vector
and its neighbour list together, so that one read brings both::

    offset      size      field
    0           4·d       f32 vector (little-endian)
    4·d         4         i32 number of neighbours
    4·d + 4     4·R       i32 neighbour row ids, -1 padded

Records are packed into *blocks* of ``SECTOR_BYTES`` (4 KiB) sectors: a record no larger
than a sector never straddles one (``4096 // record_bytes`` records per sector, the tail
zero), and a larger record takes ``ceil(record_bytes / 4096)`` whole sectors of its own.
One hop of a search therefore reads one block.

Records are placed in *graph order* so that neighbours tend to share a sector: sectors are
filled one at a time, each with the first unplaced node of a breadth-first walk from the
medoid and then that node's unplaced out-neighbours, nearest first. A search that expands
a node and then one of its near neighbours finds the second record in the sector it has
already read. :func:`sector_locality` measures the fraction of graph edges whose two
ends share a sector, for any order.

This module computes; :mod:`tidepool_cli.storage.nodefile` writes and maps the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SECTOR_BYTES = 4096
"""Bytes per sector: the unit a search reads and the unit pages are counted in."""


@dataclass(frozen=True)
class NodeLayout:
    """Geometry of a node file's record area.

    Attributes
    ----------
    n : int
        Nodes.
    d : int
        Vector dimension.
    r : int
        Neighbour slots per record (R).
    """

    n: int
    d: int
    r: int

    @property
    def record_bytes(self) -> int:
        """Bytes per record: ``4·d + 4 + 4·R``."""
        return 4 * self.d + 4 + 4 * self.r

    @property
    def block_sectors(self) -> int:
        """Sectors per block: 1, or as many as one record needs when it exceeds a sector."""
        return max(1, -(-self.record_bytes // SECTOR_BYTES))

    @property
    def block_bytes(self) -> int:
        """Bytes per block (a multiple of 4 KiB)."""
        return self.block_sectors * SECTOR_BYTES

    @property
    def per_block(self) -> int:
        """Records per block."""
        return self.block_bytes // self.record_bytes

    @property
    def n_blocks(self) -> int:
        """Blocks holding all ``n`` records."""
        return -(-self.n // self.per_block)

    def to_dict(self) -> dict:
        """``{"n", "d", "r"}``: what a reader needs to rebuild the layout."""
        return {"n": self.n, "d": self.d, "r": self.r}


def graph_order(adjacency: np.ndarray, start: int, per_block: int) -> np.ndarray:
    """Slot order of the records: sectors filled with a node and its nearest unplaced neighbours.

    Parameters
    ----------
    adjacency : (n, R) int
        Out-neighbours per row, nearest first, -1 padded.
    start : int
        Row the walk starts from (the medoid).
    per_block : int
        Records per block.

    Returns
    -------
    (n,) int64
        ``order[slot]`` is the row stored in that slot; a permutation of ``range(n)``.
    """
    n = adjacency.shape[0]
    bfs = bfs_order(adjacency, start)
    if per_block <= 1:
        return bfs
    placed = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    fill = 0
    ptr = 0
    # One iteration per block: a seed and up to per_block - 1 of its neighbours.
    while fill < n:
        while placed[bfs[ptr]]:
            ptr += 1
        seed = bfs[ptr]
        placed[seed] = True
        order[fill] = seed
        nb = adjacency[seed]
        nb = nb[nb >= 0]
        nb = nb[~placed[nb]][: per_block - 1]
        placed[nb] = True
        order[fill + 1 : fill + 1 + nb.size] = nb
        fill += 1 + nb.size
        # A block the seed's neighbours do not fill takes the next seeds of the walk.
        room = -fill % per_block
        while room and fill < n:
            while placed[bfs[ptr]]:
                ptr += 1
            more = bfs[ptr : ptr + room]
            more = more[~placed[more]][:room]
            placed[more] = True
            order[fill : fill + more.size] = more
            fill += more.size
            room -= more.size
    return order


def bfs_order(adjacency: np.ndarray, start: int) -> np.ndarray:
    """Rows in breadth-first order from ``start``; unreachable rows follow by row number.

    Within a level, children follow their parents' order and each parent's list order.

    Parameters
    ----------
    adjacency : (n, R) int
    start : int

    Returns
    -------
    (n,) int64 permutation of ``range(n)``.
    """
    n = adjacency.shape[0]
    seen = np.zeros(n, dtype=bool)
    seen[start] = True
    parts = [np.array([start], dtype=np.int64)]
    frontier = parts[0]
    while frontier.size:
        nb = adjacency[frontier].ravel().astype(np.int64)
        nb = nb[nb >= 0]
        nb = nb[~seen[nb]]
        # First occurrence of each id, in walk order.
        _, first = np.unique(nb, return_index=True)
        frontier = nb[np.sort(first)]
        seen[frontier] = True
        parts.append(frontier)
    parts.append(np.flatnonzero(~seen))
    return np.concatenate(parts)


def slots_of(order: np.ndarray) -> np.ndarray:
    """(n,) int32 inverse of ``order``: the slot of each row."""
    out = np.empty(order.size, dtype=np.int32)
    out[order] = np.arange(order.size, dtype=np.int32)
    return out


def sector_locality(adjacency: np.ndarray, slot_of: np.ndarray, per_block: int) -> float:
    """Fraction of graph edges whose two ends are stored in the same block.

    Parameters
    ----------
    adjacency : (n, R) int
    slot_of : (n,) int
        Slot of each row.
    per_block : int

    Returns
    -------
    float in [0, 1]
    """
    valid = adjacency >= 0
    if not valid.any():
        return 0.0
    src = np.broadcast_to(np.arange(adjacency.shape[0])[:, None], adjacency.shape)[valid]
    dst = adjacency[valid]
    return float(np.mean(slot_of[src] // per_block == slot_of[dst] // per_block))


def pack_blocks(
    x: np.ndarray, adjacency: np.ndarray, order: np.ndarray, layout: NodeLayout, start: int, stop: int
) -> np.ndarray:
    """Bytes of blocks ``start .. stop - 1`` of the record area.

    Parameters
    ----------
    x : (n, d) float32
        Vectors by row (a memmap is fine: only the blocks' rows are gathered).
    adjacency : (n, R) int
        Neighbour rows, -1 padded at the end.
    order : (n,) int
        Row of each slot (:func:`graph_order`).
    layout : NodeLayout
    start, stop : int
        Block range.

    Returns
    -------
    (stop - start, block_bytes) uint8
        Records in slot order, zero between the last record of a block and its end.
    """
    pb, rb = layout.per_block, layout.record_bytes
    out = np.zeros((stop - start, layout.block_bytes), dtype=np.uint8)
    s0, s1 = start * pb, min(stop * pb, layout.n)
    rows = np.asarray(order[s0:s1], dtype=np.int64)
    rec = np.zeros(((stop - start) * pb, rb), dtype=np.uint8)
    d = layout.d
    m = rows.size
    rec[:m, : 4 * d] = np.ascontiguousarray(x[rows], dtype="<f4").view(np.uint8).reshape(m, 4 * d)
    nb = np.ascontiguousarray(adjacency[rows], dtype="<i4")
    rec[:m, 4 * d : 4 * d + 4] = (nb >= 0).sum(axis=1).astype("<i4").view(np.uint8).reshape(m, 4)
    rec[:m, 4 * d + 4 :] = nb.view(np.uint8).reshape(m, -1)
    out[:, : pb * rb] = rec.reshape(stop - start, pb * rb)
    return out


def record_view(blocks: np.ndarray, layout: NodeLayout) -> np.ndarray:
    """(n_blocks, per_block, record_bytes) uint8 view of a block array (no copy).

    Parameters
    ----------
    blocks : (n_blocks, block_bytes) uint8
        The record area, usually a read-only memmap.
    layout : NodeLayout
    """
    pb, rb = layout.per_block, layout.record_bytes
    return blocks[:, : pb * rb].reshape(blocks.shape[0], pb, rb)


def decode_records(raw: np.ndarray, layout: NodeLayout) -> tuple[np.ndarray, np.ndarray]:
    """Vectors and neighbour lists of gathered records.

    Parameters
    ----------
    raw : (m, record_bytes) uint8
        Records (a copy, contiguous).
    layout : NodeLayout

    Returns
    -------
    vectors : (m, d) float32
    neighbors : (m, R) int32
        Neighbour rows, -1 beyond each record's count.
    """
    d = layout.d
    raw = np.ascontiguousarray(raw)
    vec = raw[:, : 4 * d].view("<f4").astype(np.float32, copy=False)
    count = raw[:, 4 * d : 4 * d + 4].view("<i4")[:, 0]
    nb = raw[:, 4 * d + 4 :].view("<i4").astype(np.int32, copy=False)
    nb = np.where(np.arange(layout.r) < count[:, None], nb, -1)
    return vec, nb
