"""Lockstep beam search of a batch of queries on one graph layer (HNSW SEARCH-LAYER).

Each hop expands the best unexpanded node(s) of every active query, gathers all their
neighbour lists in one fancy index, drops visited ids, scores the new nodes in one call
of the (pluggable) :class:`PairScorer`, and merges them into each query's beam with one
row-wise sort of packed keys (:mod:`~tidepool_cli.engine.graph.keys`). A query leaves the
batch as soon as its beam holds no unexpanded node, which is the stopping rule of HNSW's
SEARCH-LAYER (Malkov & Yashunin, TPAMI 2018, Algorithm 2).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tidepool_cli.engine.graph.keys import ID_MASK, SENTINEL, decode, encode

EXACT_VISITED_MAX = 1 << 17
"""Up to this many nodes the visited table is exact (slot = id); above it, a hashed table."""

HASHED_VISITED_SLOTS = 1 << 13
"""Slots per query of the hashed visited table (lossy: a collision only costs a recomputed distance)."""

HASH_MULTIPLIER = np.uint32(0x9E37_79B1)
"""Fibonacci hashing multiplier (2**32 / golden ratio) of the hashed visited table."""

STRAGGLER_EXPAND = 4
"""Expansion multiplier once fewer than a quarter of a batch's queries are still walking."""

GATHER_CHUNK_BYTES = 1 << 20
"""Gathered rows per distance chunk (kept L2-resident)."""

MIN_GATHER_ROWS = 64
"""Rows per distance chunk at least, however long the vectors."""


class PairScorer(Protocol):
    """Distances of (query, node) pairs during a walk: the pluggable part of :func:`beam_search`.

    Called as ``scorer(ids, qrows)`` with ``ids`` (p,) int64 node ids and ``qrows`` (p,)
    int64 rows of the query batch; returns (p,) float32 distances in the public
    convention of :mod:`~tidepool_cli.engine.distances` (non-negative for l2 and cosine
    up to rounding; the beam keys clamp them at +0.0). Exact float32 today
    (:class:`ExactPairs`); quantized codes next.
    """

    def __call__(self, ids: np.ndarray, qrows: np.ndarray) -> np.ndarray: ...


class ExactPairs:
    """Exact float32 distances of (query, node) pairs from the rows of ``x``.

    Parameters
    ----------
    x : (n, d) float32
        Node vectors (a read-only memmap is fine: rows are gathered).
    xq : (nq, d) float32
        The query batch.
    metric : {"l2", "cosine", "dot"}
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2); computed from the gathered rows when absent.
    """

    def __init__(self, x, xq, metric, xb_sqnorms=None):
        self.x, self.xq, self.metric = x, xq, metric
        self.qsq = np.einsum("ij,ij->i", xq, xq) if metric == "l2" else None
        self.sq = None if xb_sqnorms is None else np.asarray(xb_sqnorms, dtype=np.float32)
        # Gathered rows are consumed in chunks that stay in the L2 cache: one pass over
        # a large gathered block costs several times more (it spills to DRAM twice).
        self.chunk = max(MIN_GATHER_ROWS, GATHER_CHUNK_BYTES // (4 * x.shape[1]))

    def __call__(self, ids: np.ndarray, qrows: np.ndarray) -> np.ndarray:
        """(p,) float32 distances of nodes ``ids`` to queries ``qrows``."""
        ip = np.empty(ids.size, dtype=np.float32)
        sq = np.empty(ids.size, dtype=np.float32) if self.metric == "l2" and self.sq is None else None
        for s in range(0, ids.size, self.chunk):
            rows = np.take(self.x, ids[s : s + self.chunk], axis=0)
            ip[s : s + self.chunk] = np.einsum("pd,pd->p", rows, self.xq[qrows[s : s + self.chunk]])
            if sq is not None:
                sq[s : s + self.chunk] = np.einsum("pd,pd->p", rows, rows)
        if self.metric == "l2":
            # The true squared distance, not the |x|^2 - 2q.x proxy.
            ip *= -2.0
            ip += self.sq[ids] if sq is None else sq
            ip += self.qsq[qrows]
            return ip
        if self.metric == "cosine":
            return np.subtract(1.0, ip, out=ip)
        return np.negative(ip, out=ip)


def beam_search(
    x: np.ndarray,
    adjacency: np.ndarray,
    xq: np.ndarray,
    entry: np.ndarray,
    ef: int,
    *,
    metric: str,
    xb_sqnorms: np.ndarray | None = None,
    nodes: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    n_results: int = 0,
    expand: int = 1,
    exclude: np.ndarray | None = None,
    scorer: PairScorer | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Lockstep beam search of a batch of queries on one graph layer.

    Every query keeps a beam of the ``ef`` nearest nodes seen so far. A hop expands the
    ``expand`` nearest unexpanded beam nodes of every active query; a query stops when
    its beam holds no unexpanded node (HNSW SEARCH-LAYER, Algorithm 2 of Malkov &
    Yashunin 2018; with ``ef = 1`` it is the greedy search used on the upper layers).

    Parameters
    ----------
    x : (n, d) float32
        Vectors addressed by the node ids; a read-only memmap is fine (rows are gathered).
    adjacency : (m, R) int32
        Neighbour ids (positions in ``x``) of each graph row, -1 padded at the end.
    xq : (nq, d) float32
        Prepared queries (unit rows for cosine).
    entry : (nq, e) int
        Start nodes per query (positions in ``x``), -1 for none; duplicates not allowed.
    ef : int
        Beam width, >= 1.
    metric : {"l2", "cosine", "dot"}
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2 only); computed from the gathered rows when absent.
    nodes : (m,) int32, optional
        Sorted id of each adjacency row, for a layer that holds a subset of the nodes;
        ``None`` means row ``i`` is node ``i``.
    allowed : (n,) bool, optional
        Nodes that may be returned. All nodes are navigated; the result list collects
        the ``n_results`` nearest allowed nodes seen during the walk.
    n_results : int
        Length of that result list (used only with ``allowed``).
    expand : int
        Beam nodes expanded per query and hop. More than one cuts the number of hops
        (numpy calls) at the price of some speculative distance computations.
    exclude : (nq,) int64, optional
        One node per query that the walk treats as absent: never entered, expanded or
        returned (leave-one-out search of indexed rows, for calibration).
    scorer : PairScorer, optional
        Distances the walk ranks nodes by; :class:`ExactPairs` (float32 rows of ``x``)
        when None. A scorer over quantized codes plugs in here.

    Returns
    -------
    ids : (nq, L) int64
        Node ids ordered by distance then id, -1 padded; ``L = ef``, or ``n_results``
        with ``allowed``. Ids are unique per row.
    dist : (nq, L) float32
        Their distances as computed during the walk (``l2``: squared, from norms and dot
        products, so a few ulps off the exact value), +inf padded.

    Notes
    -----
    The visited sets take ``nq · n`` bytes while ``n <= EXACT_VISITED_MAX`` (zero pages,
    materialised only where touched) and ``nq · 32 KiB`` above: callers bound ``nq``.
    """
    x = np.asarray(x)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nq = xq.shape[0]
    n = x.shape[0]
    filtered = allowed is not None
    out_b = np.full((nq, ef), SENTINEL, dtype=np.int64)
    out_r = np.full((nq, n_results), SENTINEL, dtype=np.int64) if filtered else None
    if nq == 0 or n == 0:
        return decode(out_r if filtered else out_b, metric)

    if scorer is None:
        scorer = ExactPairs(x, xq, metric, xb_sqnorms)
    visited = Visited(nq, n) if ef > 1 else None
    lossy = visited is not None and visited.lossy

    # Seed the beams with the entry nodes.
    entry = np.asarray(entry, dtype=np.int64).reshape(nq, -1)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=np.int64).reshape(nq, 1)
        entry = np.where(entry == exclude, -1, entry)
    valid = entry >= 0
    er, ec = np.nonzero(valid)
    eid = entry[er, ec]
    if visited is not None:
        visited.mark(er, eid)
    blk = np.full(entry.shape, SENTINEL, dtype=np.int64)
    blk[er, ec] = encode(scorer(eid, er), eid, metric)
    bm = merge_keys(np.full((nq, ef), SENTINEL, dtype=np.int64), blk, lossy)
    res = None
    if filtered:
        blk[er[~allowed[eid]], ec[~allowed[eid]]] = SENTINEL
        res = merge_keys(np.full((nq, n_results), SENTINEL, dtype=np.int64), blk, lossy)
    act = np.arange(nq)
    rix = act[:, None]
    base = None if visited is None else visited.base(act)

    while act.size:
        unexp = (bm & 1).astype(bool)
        # Few queries left: the hop's numpy calls cost the same, so expand more per hop
        # and finish the stragglers in fewer hops.
        e = expand if 4 * act.size >= nq else min(ef, STRAGGLER_EXPAND * expand)
        if e == 1:
            pick = unexp.argmax(axis=1)[:, None]
        else:
            pick = np.argsort(~unexp, axis=1, kind="stable")[:, :e]
        pk = bm[rix, pick]
        real = (pk & 1).astype(bool)
        live = real[:, 0]
        if not live.all():
            done = ~live
            out_b[act[done]] = bm[done]
            if filtered:
                out_r[act[done]] = res[done]
                res = res[live]
            act, bm, pick, pk, real = act[live], bm[live], pick[live], pk[live], real[live]
            if not act.size:
                break
            rix = rix[: act.size]
            base = None if visited is None else visited.base(act)
        # Clearing bit 0 marks a node expanded without moving it in the sort order.
        bm[rix, pick] = pk & ~1
        eid = (pk >> 1) & ID_MASK
        if e > 1:
            # A row with fewer unexpanded nodes than `e` also picked expanded or empty
            # slots: look up node 0 in their place and drop its neighbours.
            eid[~real] = 0
            nb = adjacency[_rows_of(eid, nodes)]
            nb[~real] = -1
            # Expanded nodes share neighbours; one copy of each is enough.
            nb = np.sort(nb.reshape(act.size, -1), axis=1)
            nb[:, 1:][nb[:, 1:] == nb[:, :-1]] = -1
        else:
            nb = adjacency[_rows_of(eid[:, 0], nodes)]
        new = nb >= 0
        if exclude is not None:
            new &= nb != exclude[act]
        if visited is not None:
            new = visited.filter(base, nb, new)
        r, c = np.nonzero(new)
        if not r.size:
            continue
        ids = nb[r, c].astype(np.int64)
        keys = encode(scorer(ids, act[r]), ids, metric)
        blk = np.full(nb.shape, SENTINEL, dtype=np.int64)
        blk[r, c] = keys
        if filtered:
            res = merge_keys(res, np.where(allowed[nb.clip(0)], blk, SENTINEL), lossy)
        bm = merge_keys(bm, blk, lossy)
    ids, dist = decode(out_r if filtered else out_b, metric)
    if lossy:
        ids, dist = _drop_repeats(ids, dist)
    return ids, dist


def _rows_of(ids: np.ndarray, nodes: np.ndarray | None) -> np.ndarray:
    """Adjacency rows of node ids (identity on layer 0, a sorted lookup on upper layers)."""
    return ids if nodes is None else np.searchsorted(nodes, ids)


def merge_keys(beam: np.ndarray, blk: np.ndarray, dedup: bool) -> np.ndarray:
    """Merge a block of new keys (SENTINEL where none) into sorted beams; keep the beam width."""
    width = beam.shape[1]
    merged = np.sort(np.concatenate((beam, blk), axis=1), axis=1)
    if dedup:
        # A node the hashed visited table forgot comes back with the same key: drop the
        # copy (an expanded copy sorts first and is kept).
        same = (merged[:, 1:] >> 1) == (merged[:, :-1] >> 1)
        same &= merged[:, 1:] != SENTINEL
        if same.any():
            merged[:, 1:][same] = SENTINEL
            merged.sort(axis=1)
    return merged[:, :width]


def _drop_repeats(ids: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove later copies of an id within a row (rows stay ordered by distance)."""
    order = np.argsort(ids, axis=1, kind="stable")
    sid = np.take_along_axis(ids, order, axis=1)
    rep = np.zeros(ids.shape, dtype=bool)
    np.put_along_axis(rep, order[:, 1:], (sid[:, 1:] == sid[:, :-1]) & (sid[:, 1:] >= 0), axis=1)
    if not rep.any():
        return ids, dist
    dist = np.where(rep, np.inf, dist)
    ids = np.where(rep, -1, ids)
    keep = np.argsort(rep, axis=1, kind="stable")
    return np.take_along_axis(ids, keep, axis=1), np.take_along_axis(dist, keep, axis=1)


class Visited:
    """Per-query visited sets of one query batch.

    Exact while ``n <= EXACT_VISITED_MAX``: an (nq, n) bool table, zero-filled lazily by
    the OS, so only the pages a query touches cost anything. Beyond that, a multiplicative
    hash of the id into ``HASHED_VISITED_SLOTS`` int32 slots per query bounds the memory
    to nq * 32 KiB. A hashed slot can be overwritten by a colliding id, after which the
    first id is recomputed if met again: a few wasted distances, never a wrong result
    (the beam merge and the final pass drop the copy).
    """

    def __init__(self, nq: int, n: int):
        self.lossy = n > EXACT_VISITED_MAX
        if self.lossy:
            self.slots = HASHED_VISITED_SLOTS
            self.shift = np.uint32(32 - (self.slots.bit_length() - 1))
            self.table = np.full(nq * self.slots, -1, dtype=np.int32)
        else:
            self.slots = n
            self.table = np.zeros(nq * n, dtype=bool)

    def _flat_from(self, base: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.lossy:
            return base + ((ids.astype(np.uint32) * HASH_MULTIPLIER) >> self.shift)
        return base + ids

    def mark(self, qrows: np.ndarray, ids: np.ndarray) -> None:
        self.table[self._flat_from(qrows * self.slots, ids)] = ids if self.lossy else True

    def base(self, act: np.ndarray) -> np.ndarray:
        """(len(act), 1) offsets of the tables of queries ``act``."""
        return (act * self.slots)[:, None]

    def filter(self, base: np.ndarray, nb: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Mask of the ids in ``nb`` (row i belongs to the query at ``base[i]``) not visited yet; marks them.

        ``nb`` must not repeat an id within a row.
        """
        flat = self._flat_from(base, nb)
        if self.lossy:
            new = valid & (self.table[flat] != nb)
            self.table[flat[new]] = nb[new]
        else:
            # -1 padding indexes some other slot; the read is harmless and masked out.
            new = valid & ~self.table[flat]
            self.table[flat[new]] = True
        return new
