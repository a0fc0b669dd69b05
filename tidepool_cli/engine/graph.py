"""Graph machinery shared by the graph indexes: lockstep beam search and α-pruning.

Two algorithms live here because HNSW (Malkov & Yashunin, "Efficient and robust approximate
nearest neighbor search using Hierarchical Navigable Small World graphs", TPAMI 2018) and
Vamana (Subramanya et al., "DiskANN: fast accurate billion-point nearest neighbor search on
a single node", NeurIPS 2019) share them:

* :func:`beam_search` walks a fixed-degree adjacency array for a whole batch of queries
  at once. Each hop expands the best unexpanded node(s) of every active query, gathers
  all their neighbour lists in one fancy index, drops visited ids, gathers the new rows
  and computes their distances in one ``einsum``, and merges them into each query's
  beam with one row-wise sort. A query leaves the batch as soon as its beam holds no
  unexpanded node, which is the stopping rule of HNSW's SEARCH-LAYER.
* :func:`select_neighbors` is RobustPrune: walk a node's candidates nearest first and
  keep a candidate ``e`` unless an already kept ``r`` satisfies ``α·d(r, e) < d(q, e)``.
  With α = 1 this is the neighbour-selection heuristic (Algorithm 4 of the HNSW paper,
  without extendCandidates and keepPrunedConnections, as in hnswlib); α > 1 keeps longer
  edges, as Vamana does.

The construction helpers are shared too: :func:`knn_candidates` (blocked exact or
IVF-partitioned k-NN lists), :func:`prefix_candidates` (what an incremental insertion
sees), :func:`with_reverse_edges` and :func:`connect_unreachable`.

Beam entries are packed into one int64 *key* per entry,
``float_bits(distance) << 32 | id << 1 | unexpanded``, so that a plain integer sort orders
entries by distance, breaks ties by id, and carries the expansion flag along. Distances
are kept non-negative for ``l2`` and ``cosine`` so their IEEE bits sort like the floats;
``dot`` maps its signed bits to an order-preserving integer first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tidepool_cli.engine.distances import exact_distances, sqnorms
from tidepool_cli.engine.kmeans import kmeans
from tidepool_cli.engine.topk import knn

SENTINEL = np.int64(0x7FFF_FFFF_FFFF_FFFE)
"""Key of an empty beam slot: sorts after every real key and has its 'unexpanded' bit clear."""

_ID_MASK = 0x7FFF_FFFF

EXACT_VISITED_MAX = 1 << 17
"""Up to this many nodes the visited table is exact (slot = id); above it, a hashed table."""

HASHED_VISITED_SLOTS = 1 << 13
"""Slots per query of the hashed visited table (lossy: a collision only costs a recomputed distance)."""

_HASH_MUL = np.uint32(0x9E37_79B1)

STRAGGLER_EXPAND = 4
"""Expansion multiplier once fewer than a quarter of a batch's queries are still walking."""

GATHER_CHUNK_BYTES = 1 << 20
"""Gathered rows per distance chunk (kept L2-resident)."""

PRUNE_BLOCK_BYTES = 1 << 23
"""Gathered candidate vectors per pruning block (bounds the (b, K, d) gather to the cache)."""

_PRUNE_RANKS = 16
"""Candidate ranks decided per step of the lazy heuristic."""


def parallel(fn: Callable[[int], None], items, workers: int) -> None:
    """Call ``fn`` on every item, on up to ``workers`` threads.

    The items' numpy work (gathers, GEMMs, sorts) releases the GIL, so blocks overlap
    on the cores; ``fn`` must write disjoint outputs or lock what it shares.

    Parameters
    ----------
    fn : callable(int)
        Work on one item (a block start, a cluster number).
    items : iterable of int
    workers : int
        Threads; 1 runs the items in order on the calling thread.

    Raises
    ------
    Exception
        The first exception raised by ``fn``, re-raised on the calling thread.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fn, items):
            pass


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
        return _decode(out_r if filtered else out_b, metric)

    qsq = np.einsum("ij,ij->i", xq, xq) if metric == "l2" else None
    dist_of = _PairDistances(x, xq, qsq, xb_sqnorms, metric)
    visited = _Visited(nq, n) if ef > 1 else None
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
    blk[er, ec] = dist_of.keys(eid, er)
    bm = _merge(np.full((nq, ef), SENTINEL, dtype=np.int64), blk, lossy)
    res = None
    if filtered:
        blk[er[~allowed[eid]], ec[~allowed[eid]]] = SENTINEL
        res = _merge(np.full((nq, n_results), SENTINEL, dtype=np.int64), blk, lossy)
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
        eid = (pk >> 1) & _ID_MASK
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
        keys = dist_of.keys(nb[r, c].astype(np.int64), act[r])
        blk = np.full(nb.shape, SENTINEL, dtype=np.int64)
        blk[r, c] = keys
        if filtered:
            res = _merge(res, np.where(allowed[nb.clip(0)], blk, SENTINEL), lossy)
        bm = _merge(bm, blk, lossy)
    ids, dist = _decode(out_r if filtered else out_b, metric)
    if lossy:
        ids, dist = _drop_repeats(ids, dist)
    return ids, dist


def _rows_of(ids: np.ndarray, nodes: np.ndarray | None) -> np.ndarray:
    """Adjacency rows of node ids (identity on layer 0, a sorted lookup on upper layers)."""
    return ids if nodes is None else np.searchsorted(nodes, ids)


def _merge(beam: np.ndarray, blk: np.ndarray, dedup: bool) -> np.ndarray:
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


def _decode(keys: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids (-1 for empty) and distances (+inf for empty) of packed keys."""
    empty = keys >= SENTINEL
    ids = np.where(empty, -1, (keys >> 1) & _ID_MASK)
    bits = (keys >> 32).astype(np.int32)
    if metric == "dot":
        bits ^= (bits >> 31) & 0x7FFF_FFFF
    dist = bits.view(np.float32).copy()
    dist[empty] = np.inf
    return ids, dist


class _PairDistances:
    """Distances of (query, node) pairs packed into sortable keys."""

    def __init__(self, x, xq, qsq, xb_sqnorms, metric):
        self.x, self.xq, self.qsq, self.metric = x, xq, qsq, metric
        self.sq = None if xb_sqnorms is None else np.asarray(xb_sqnorms, dtype=np.float32)
        # Gathered rows are consumed in chunks that stay in the L2 cache: one pass over
        # a large gathered block costs several times more (it spills to DRAM twice).
        self.chunk = max(64, GATHER_CHUNK_BYTES // (4 * x.shape[1]))

    def keys(self, ids: np.ndarray, qrows: np.ndarray) -> np.ndarray:
        ip = np.empty(ids.size, dtype=np.float32)
        sq = np.empty(ids.size, dtype=np.float32) if self.metric == "l2" and self.sq is None else None
        for s in range(0, ids.size, self.chunk):
            rows = np.take(self.x, ids[s : s + self.chunk], axis=0)
            ip[s : s + self.chunk] = np.einsum("pd,pd->p", rows, self.xq[qrows[s : s + self.chunk]])
            if sq is not None:
                sq[s : s + self.chunk] = np.einsum("pd,pd->p", rows, rows)
        if self.metric == "l2":
            if sq is None:
                sq = self.sq[ids]
            # The true squared distance, not the |x|^2 - 2q.x proxy: non-negative floats
            # sort like their bit patterns.
            ip *= -2.0
            ip += sq
            ip += self.qsq[qrows]
            bits = np.maximum(ip, 0.0, out=ip).view(np.int32)
        elif self.metric == "cosine":
            bits = np.maximum(np.subtract(1.0, ip, out=ip), 0.0, out=ip).view(np.int32)
        else:
            bits = np.negative(ip, out=ip).view(np.int32)
            bits ^= (bits >> 31) & 0x7FFF_FFFF
        return (bits.astype(np.int64) << 32) | (ids << 1) | 1


class _Visited:
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
            return base + ((ids.astype(np.uint32) * _HASH_MUL) >> self.shift)
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


def select_neighbors(
    x: np.ndarray,
    cand: np.ndarray,
    cand_dist: np.ndarray,
    degree: int,
    *,
    metric: str,
    alpha: float = 1.0,
    xb_sqnorms: np.ndarray | None = None,
    tick: Callable[[int], None] | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """α-pruned neighbour selection (RobustPrune) for a batch of nodes.

    Candidates are visited nearest first; candidate ``e`` is kept unless a kept ``r``
    satisfies ``α·d(r, e) < d(q, e)``, until ``degree`` are kept. α = 1 is the HNSW
    heuristic (Malkov & Yashunin 2018, Algorithm 4, as hnswlib implements it: a tie keeps
    the candidate, so exact duplicates do not prune everything behind them); α > 1 is
    Vamana's RobustPrune (Subramanya et al. 2019, Algorithm 2).

    Parameters
    ----------
    x : (n, d) float32
        Vectors; candidate rows are gathered block by block.
    cand : (b, K) int
        Candidate ids per node, sorted by ``cand_dist``, -1 padded; no duplicates, and
        the node itself excluded.
    cand_dist : (b, K) float32
        Distance node-candidate in the public convention (+inf for padding).
    degree : int
        Maximum number of neighbours kept.
    metric : {"l2", "cosine", "dot"}
    alpha : float
        Pruning slack, >= 1. For l2, where distances are squared, ``α²`` multiplies
        them (α applies to Euclidean lengths as in the paper); for dot the signed
        distance is scaled as is, which is only meaningful for α = 1.
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2); computed from the gathered rows when absent.
    tick : callable(int), optional
        Called with the number of nodes finished after each block (from worker threads).
    workers : int
        Threads working on node blocks; the result does not depend on it.

    Returns
    -------
    ids : (b, degree) int32
        Kept neighbour ids, nearest first, -1 padded.
    dist : (b, degree) float32
        Their distances (taken from ``cand_dist``), +inf padded.
    """
    cand = np.asarray(cand, dtype=np.int64)
    b, K = cand.shape
    out = np.full((b, degree), -1, dtype=np.int32)
    out_d = np.full((b, degree), np.inf, dtype=np.float32)
    if b == 0 or K == 0:
        return out, out_d
    d = x.shape[1]
    scale = np.float32(alpha * alpha if metric == "l2" else alpha)
    step = min(1024, max(64, PRUNE_BLOCK_BYTES // (K * d * 4)))

    def block(s: int) -> None:
        c = cand[s : s + step]
        cd = np.asarray(cand_dist[s : s + step], dtype=np.float32)
        valid = c >= 0
        safe = np.where(valid, c, c[:, :1].clip(0))
        v = np.asarray(x[safe.ravel()], dtype=np.float32).reshape(*c.shape, d)
        sq = None
        if metric == "l2":
            sq = xb_sqnorms[safe] if xb_sqnorms is not None else np.einsum("bkd,bkd->bk", v, v)
        kept = _prune_block(v, sq, cd, valid, degree, scale, metric)
        order = np.argsort(~kept, axis=1, kind="stable")[:, :degree]
        took = np.take_along_axis(kept, order, axis=1)
        e = s + c.shape[0]
        w = order.shape[1]
        out[s:e, :w] = np.where(took, np.take_along_axis(c, order, axis=1), -1)
        out_d[s:e, :w] = np.where(took, np.take_along_axis(cd, order, axis=1), np.inf)
        if tick is not None:
            tick(c.shape[0])

    parallel(block, range(0, b, step), workers)
    return out, out_d


def _scaled_dist(g, sqa, sqb, scale, metric):
    """In place: Gram block g (nb, i, j) -> ``scale`` times the distances it stands for."""
    if metric == "l2":
        g *= -2.0 * scale
        g += (sqa * scale)[:, :, None]
        g += (sqb * scale)[:, None, :]
    elif metric == "cosine":
        np.subtract(scale, g * scale, out=g)
    else:
        g *= -scale
    return g


def _prune_block(v, sq, cd, valid, degree, scale, metric):
    """Kept mask (nb, K) of the sequential heuristic, evaluated lazily in rank blocks.

    Only kept candidates prune, and a node keeps few of its candidates (about a third
    of the slots on real data), so instead of all K² candidate pairs each block of
    ``_PRUNE_RANKS`` ranks is compared with the candidates kept so far (copied to a
    small buffer as they are kept) and with itself: the same decisions for several
    times fewer flops and bytes.
    """
    nb, K, d = v.shape
    pruned = ~valid
    kept = np.zeros((nb, K), dtype=bool)
    count = np.zeros(nb, dtype=np.int64)
    kv = np.zeros((nb, degree, d), dtype=np.float32)
    ksq = np.zeros((nb, degree), dtype=np.float32)
    for j0 in range(0, K, _PRUNE_RANKS):
        j1 = min(K, j0 + _PRUNE_RANKS)
        live = (count < degree) & ~pruned[:, j0:j1].all(axis=1)
        if not live.any():
            if not ((count < degree) & ~pruned[:, j1:].all(axis=1)).any():
                break
            continue
        blk, cdb = v[:, j0:j1], cd[:, None, j0:j1]
        sqb = None if sq is None else sq[:, j0:j1]
        bt = blk.transpose(0, 2, 1)
        nk = int(count.max())
        if nk:
            dk = _scaled_dist(np.matmul(kv[:, :nk], bt), ksq[:, :nk], sqb, scale, metric)
            hit = dk < cdb
            hit &= (np.arange(nk) < count[:, None])[:, :, None]
            pruned[:, j0:j1] |= hit.any(axis=1)
        before = count.copy()
        # Candidates of the block prune each other only where two of them survived the
        # kept ones; most rows have at most one left, so only the others need the Gram.
        pair = np.flatnonzero((~pruned[:, j0:j1]).sum(axis=1) > 1)
        if pair.size:
            sub = blk[pair]
            # prunes[i, a, e]: candidate j0 + a, if kept, prunes candidate j0 + e.
            prunes = _scaled_dist(
                np.matmul(sub, sub.transpose(0, 2, 1)),
                None if sqb is None else sqb[pair],
                None if sqb is None else sqb[pair],
                scale,
                metric,
            ) < cdb[pair]
        for j in range(j0, j1):
            keep = ~pruned[:, j] & (count < degree)
            kept[:, j] = keep
            count += keep
            if pair.size:
                pruned[pair, j0:j1] |= keep[pair, None] & prunes[:, j - j0, :]
        r, c = np.nonzero(kept[:, j0:j1])
        if r.size:
            slot = before[r] + np.arange(r.size) - np.searchsorted(r, r)
            kv[r, slot] = blk[r, c]
            if sqb is not None:
                ksq[r, slot] = sqb[r, c]
    return kept


EXACT_KNN_FLOPS = 2.0e10
"""Up to ``n * n * d`` of this size, candidate lists come from an exact blocked k-NN."""

IVF_CLUSTER_ROWS = 512
"""Mean member count of a cluster in the partitioned k-NN."""

IVF_PROBES = 4
"""Clusters whose members each row is compared with in the partitioned k-NN (its nearest centroids)."""

IVF_KMEANS_ITERS = 6
"""Lloyd iterations of the partitioning k-means: partitions need not be optimal, only local."""

_TOPK_COLS = 2048
"""Columns per top-k selection; their index fits in the low mantissa bits of the keys."""


def knn_candidates(
    x: np.ndarray,
    k: int,
    *,
    metric: str,
    xb_sqnorms: np.ndarray | None = None,
    members: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    seed: int = 0,
    tick: Callable[[int], None] | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest member rows of each query row: the candidate lists of a graph build.

    Rows are compared by GEMM blocks. Small inputs (``queries · members · d <=
    EXACT_KNN_FLOPS``) compare every pair. Larger ones are partitioned as an IVF index
    would be: k-means gives ``members / IVF_CLUSTER_ROWS`` centroids (a cluster over twice
    that size is split by its own k-means, since its cost grows with the square of its
    size), every member belongs to its nearest centroid's cluster, and every query row is
    compared with the members of its ``IVF_PROBES`` nearest clusters. That finds most true
    neighbours across cluster borders at ``O(n · IVF_PROBES · IVF_CLUSTER_ROWS · d)``
    cost, plus ``O(n · nlist · d)`` for the assignment, instead of ``O(n² d)``. Each row's
    best candidates per block are selected with a partition of int32 keys whose low
    mantissa bits hold the column, which orders distances to about 1e-4 relative
    precision (plenty for candidates) and runs several times faster than
    ``argpartition``.

    Parameters
    ----------
    x : (n, d) float32
        Vectors (a memmap is read block by block). For cosine, unit rows.
    k : int
        Candidates per row.
    metric : {"l2", "cosine", "dot"}
        For dot, clusters are trained with l2 geometry and rows join the centroids of
        largest inner product, the usual IVF-IP practice.
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2).
    members : (m,) int, optional
        Sorted rows the candidates are drawn from; all rows when None.
    queries : (q,) int, optional
        Rows to find candidates for; all rows when None.
    seed : int
        Seed of the k-means; equal seeds give equal candidates.
    tick : callable(int), optional
        Called with the number of member rows finished now and then (from worker threads).
    workers : int
        Threads working on clusters; the result does not depend on it.

    Returns
    -------
    ids : (q, k) int64
        Candidate ids sorted by distance then id, never the row itself, -1 padded.
    dist : (q, k) float32
        Their distances in the public convention (from norms and dot products), +inf padded.
    """
    n, d = x.shape
    rows = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    mem = np.arange(n) if members is None else np.asarray(members, dtype=np.int64)
    keys = np.full((rows.size, max(k, 0)), SENTINEL, dtype=np.int64)
    if mem.size and rows.size and k > 0:
        sq = None
        if metric == "l2":
            sq = np.asarray(xb_sqnorms, dtype=np.float32) if xb_sqnorms is not None else sqnorms(x)
        if float(rows.size) * mem.size * d <= EXACT_KNN_FLOPS or mem.size <= 2 * IVF_CLUSTER_ROWS:
            home = np.zeros(mem.size, dtype=np.int64)
            near = np.zeros((rows.size, 1), dtype=np.int64)
        else:
            xm = x if members is None else np.asarray(x[mem], dtype=np.float32)
            cent = _balanced_centroids(xm, metric, seed)
            home = _nearest_centroids(xm, cent, 1, metric)[:, 0]
            xr = x if queries is None else np.asarray(x[rows], dtype=np.float32)
            near = _nearest_centroids(xr, cent, min(IVF_PROBES, cent.shape[0]), metric)
        _cluster_knn(x, sq, metric, rows, mem, home, near, keys, tick, workers)
    ids, dist = _decode(keys, metric)
    return ids, dist


def _cluster_knn(x, sq, metric, rows, mem_ids, home, near, keys, tick, workers):
    """Fill ``keys``: for each query row, its best candidates among the members of its probed clusters.

    Query slot i is row ``rows[i]`` and probes clusters ``near[i]``; member ``mem_ids[j]``
    belongs to cluster ``home[j]``.
    """
    probes = near.shape[1]
    k = keys.shape[1]
    nlist = int(max(home.max(), near.max())) + 1
    by_home = np.argsort(home, kind="stable")
    home_bounds = np.searchsorted(home[by_home], np.arange(nlist + 1))
    flat = near.ravel()
    by_probe = np.argsort(flat, kind="stable")
    probe_bounds = np.searchsorted(flat[by_probe], np.arange(nlist + 1))
    scale = np.float32(-2.0 if metric == "l2" else -1.0)
    lock = threading.Lock()

    def cluster(c: int) -> None:
        members = mem_ids[by_home[home_bounds[c] : home_bounds[c + 1]]]
        slots = by_probe[probe_bounds[c] : probe_bounds[c + 1]] // probes
        for m0 in range(0, members.size, _TOPK_COLS):
            mem = members[m0 : m0 + _TOPK_COLS]
            # Rank by the proxy |m|^2 - 2 q.m (l2) or -q.m: one GEMM and one add per block.
            xm = np.asarray(x[mem], dtype=np.float32) * scale
            bias = sq[mem] if sq is not None else None
            kk = min(k, mem.size)
            step = max(1, (1 << 22) // mem.size)
            for r0 in range(0, slots.size, step):
                sb = slots[r0 : r0 + step]
                qb = rows[sb]
                proxy = np.asarray(x[qb], dtype=np.float32) @ xm.T
                _to_distance(proxy, bias, None if sq is None else sq[qb], metric)
                # A row never is its own candidate.
                pos = np.searchsorted(mem, qb).clip(0, mem.size - 1)
                me = np.flatnonzero(mem[pos] == qb)
                proxy[me, pos[me]] = np.inf
                cols, vals = _row_smallest(proxy, kk, signed=metric == "dot")
                new = _encode(vals, mem[cols], metric)
                new[~np.isfinite(vals)] = SENTINEL
                # Other clusters update the same rows; keys are distinct, so the kept
                # best k do not depend on the order of the merges.
                with lock:
                    merged = np.sort(np.concatenate((keys[sb], new), axis=1), axis=1)
                    keys[sb] = merged[:, :k]
        if tick is not None:
            tick(members.size)

    parallel(cluster, range(nlist), workers)


def prefix_candidates(
    x: np.ndarray,
    order: np.ndarray,
    k: int,
    *,
    metric: str,
    xb_sqnorms: np.ndarray | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """For the i-th row of ``order``, its k nearest among ``order[:i]`` (exact, blocked GEMM).

    This is what the i-th insertion of an incremental build sees: early rows, meeting a
    sparse set, get distant candidates. Cost ``O(len(order)² d)``, so ``order`` is short.

    Parameters
    ----------
    x : (n, d) float32
    order : (t,) int
        Distinct rows in insertion order.
    k : int
    metric : {"l2", "cosine", "dot"}
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2).
    workers : int
        Threads working on row blocks; the result does not depend on it.

    Returns
    -------
    ids : (t, k) int64
        Rows of ``x``, sorted by distance then id, -1 padded (row ``order[0]`` has none).
    dist : (t, k) float32
        Their distances, +inf padded.
    """
    order = np.asarray(order, dtype=np.int64)
    t = order.size
    xo = np.asarray(x[order], dtype=np.float32)
    scale = np.float32(-2.0 if metric == "l2" else -1.0)
    xs = xo * scale
    sq = None
    if metric == "l2":
        sq = np.asarray(xb_sqnorms, dtype=np.float32)[order] if xb_sqnorms is not None else sqnorms(xo)
    keys = np.full((t, k), SENTINEL, dtype=np.int64)
    step = max(1, (1 << 22) // max(t, 1))

    def block(r0: int) -> None:
        r1 = min(t, r0 + step)
        proxy = xo[r0:r1] @ xs[:r1].T
        _to_distance(proxy, None if sq is None else sq[:r1], None if sq is None else sq[r0:r1], metric)
        # Row i sees only the rows inserted before it.
        proxy[np.arange(r1 - r0)[:, None] + r0 <= np.arange(r1)[None, :]] = np.inf
        cols, vals = _row_smallest(proxy, min(k, r1), signed=metric == "dot")
        new = _encode(vals, order[cols], metric)
        new[~np.isfinite(vals)] = SENTINEL
        new.sort(axis=1)
        keys[r0:r1, : new.shape[1]] = new[:, :k]

    parallel(block, range(1, t, step), workers)
    return _decode(keys, metric)


def _balanced_centroids(x: np.ndarray, metric: str, seed: int) -> np.ndarray:
    """k-means centroids, with every cluster over twice the mean size split by its own k-means.

    The cost of the partitioned k-NN grows with the square of a cluster's size, and plain
    k-means on data of uneven density leaves a few clusters many times the mean size.
    """
    n = x.shape[0]
    cent = kmeans(
        x, max(2, n // IVF_CLUSTER_ROWS), metric=metric, niter=IVF_KMEANS_ITERS, seed=seed,
        max_points_per_centroid=64,
    )
    home = _nearest_centroids(x, cent, 1, metric)[:, 0]
    sizes = np.bincount(home, minlength=cent.shape[0])
    parts = [cent[sizes <= 2 * IVF_CLUSTER_ROWS]]
    for c in np.flatnonzero(sizes > 2 * IVF_CLUSTER_ROWS):
        members = np.flatnonzero(home == c)
        parts.append(
            kmeans(
                np.asarray(x[members], dtype=np.float32), -(-members.size // IVF_CLUSTER_ROWS),
                metric=metric, niter=IVF_KMEANS_ITERS, seed=seed + 1 + int(c),
                max_points_per_centroid=64,
            )
        )
    return np.concatenate(parts)


def _to_distance(proxy, col_sq, row_sq, metric):
    """In place: ``-2 q.m`` (l2) or ``-q.m`` blocks -> distances in the public convention."""
    if metric == "l2":
        proxy += col_sq
        proxy += row_sq[:, None]
    elif metric == "cosine":
        proxy += 1.0


def _row_smallest(proxy: np.ndarray, kk: int, signed: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Columns and values of the kk smallest entries of each row (unordered).

    With ``signed=False`` the values are distances, non-negative up to rounding, whose
    IEEE bits already sort like the floats (a rounding-negative value sorts first, as
    the near-zero distance it is).
    """
    r, m = proxy.shape
    if kk >= m:
        return np.broadcast_to(np.arange(m), (r, m)), proxy
    nb = max(1, (m - 1).bit_length())
    bits = np.ascontiguousarray(proxy, dtype=np.float32).view(np.int32)
    mono = bits ^ ((bits >> 31) & 0x7FFF_FFFF) if signed else bits.copy()
    mono &= ~np.int32((1 << nb) - 1)
    mono |= np.arange(m, dtype=np.int32)
    cols = np.partition(mono, kk - 1, axis=1)[:, :kk] & np.int32((1 << nb) - 1)
    return cols, np.take_along_axis(proxy, cols, axis=1)


def _encode(dist: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """Sortable keys of (distance, id) pairs, unexpanded bit set (see the module docstring)."""
    bits = np.ascontiguousarray(dist, dtype=np.float32).view(np.int32)
    if metric == "dot":
        bits = bits ^ ((bits >> 31) & 0x7FFF_FFFF)
    else:
        bits = np.maximum(bits, 0)
    return (bits.astype(np.int64) << 32) | (np.asarray(ids, dtype=np.int64) << 1) | 1


def _nearest_centroids(x, cent, s, metric):
    """(n, s) indices of each row's s nearest centroids, nearest first (largest inner product for dot)."""
    n = x.shape[0]
    out = np.empty((n, s), dtype=np.int64)
    if metric == "l2":
        ct, bias = -2.0 * cent.T, sqnorms(cent)
    else:
        ct, bias = -cent.T, np.zeros(cent.shape[0], dtype=np.float32)
    ct = np.ascontiguousarray(ct, dtype=np.float32)
    for r0 in range(0, n, 16384):
        p = np.asarray(x[r0 : r0 + 16384], dtype=np.float32) @ ct
        p += bias
        part, vals = _row_smallest(p, s)
        order = np.argsort(vals, axis=1, kind="stable")
        out[r0 : r0 + p.shape[0]] = np.take_along_axis(part, order, axis=1)
    return out


def best_unique(ids: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k nearest distinct ids of an unordered candidate list.

    Parameters
    ----------
    ids : (b, c) int
        Candidate ids, -1 for none; an id may repeat, with any of its distances.
    dist : (b, c) float32
        Their distances, any sign.
    k : int

    Returns
    -------
    ids : (b, k) int64, sorted by distance then id, -1 padded
    dist : (b, k) float32, +inf padded
    """
    ids = np.asarray(ids, dtype=np.int64)
    bits = np.ascontiguousarray(dist, dtype=np.float32).view(np.int32)
    # Order-preserving unsigned 32-bit image of the distance.
    mono = (bits ^ ((bits >> 31) & 0x7FFF_FFFF)).astype(np.int64) + (1 << 31)
    # Sorting (id, distance) pairs puts the copies of an id side by side, nearest first.
    by_id = (np.where(ids < 0, _ID_MASK, ids) << 32) | mono
    by_id.sort(axis=1)
    sid = by_id >> 32
    drop = sid == _ID_MASK
    drop[:, 1:] |= sid[:, 1:] == sid[:, :-1]
    keys = (((by_id & 0xFFFF_FFFF) - (1 << 31)) << 32) | sid
    keys[drop] = np.iinfo(np.int64).max
    keys.sort(axis=1)
    keys = keys[:, :k]
    empty = keys == np.iinfo(np.int64).max
    out_i = np.where(empty, -1, keys & 0xFFFF_FFFF)
    m = (keys >> 32).astype(np.int32)
    out_d = np.where(empty, np.float32(np.inf), (m ^ ((m >> 31) & 0x7FFF_FFFF)).view(np.float32))
    if out_i.shape[1] < k:
        pad = k - out_i.shape[1]
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
        out_d = np.pad(out_d, ((0, 0), (0, pad)), constant_values=np.inf)
    return out_i, out_d


def with_reverse_edges(
    ids: np.ndarray, dist: np.ndarray, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Union of every node's out-neighbours and in-neighbours, nearest ``width`` kept.

    Parameters
    ----------
    ids : (n, R) int
        Out-neighbours per node (row positions), -1 padded.
    dist : (n, R) float32
        Their distances (symmetric metric assumed, so ``d(v, u) = d(u, v)``).
    width : int
        Length of the returned lists.

    Returns
    -------
    ids : (n, width) int64, sorted by distance then id, -1 padded
    dist : (n, width) float32, +inf padded
    """
    n = ids.shape[0]
    valid = ids >= 0
    src = np.broadcast_to(np.arange(n)[:, None], ids.shape)[valid]
    dst = ids[valid].astype(np.int64)
    dd = dist[valid]
    a = np.concatenate((src, dst))
    b = np.concatenate((dst, src))
    dab = np.concatenate((dd, dd))
    # Rank each node's incoming and outgoing edges by (distance, id), then keep `width`.
    bits = dab.view(np.int32)
    mono = (bits ^ ((bits >> 31) & 0x7FFF_FFFF)).astype(np.int64)
    order = np.lexsort((b, mono, a))
    a, b, dab = a[order], b[order], dab[order]
    counts = np.bincount(a, minlength=n)
    start = np.cumsum(counts) - counts
    rank = np.arange(a.size) - start[a]
    cap = rank < 2 * width
    a, b, dab, rank = a[cap], b[cap], dab[cap], rank[cap]
    wide_i = np.full((n, 2 * width), -1, dtype=np.int64)
    wide_d = np.full((n, 2 * width), np.inf, dtype=np.float32)
    wide_i[a, rank] = b
    wide_d[a, rank] = dab
    # An edge present in both directions appears twice; best_unique keeps one copy.
    return best_unique(wide_i, wide_d, width)


def reachable(adjacency: np.ndarray, start: int, nodes: np.ndarray | None = None) -> np.ndarray:
    """Rows reachable from ``start`` by following out-edges (breadth-first, one hop per step).

    Parameters
    ----------
    adjacency : (m, R) int32
        Neighbour ids, -1 padded.
    start : int
        Row to start from.
    nodes : (m,) int32, optional
        Sorted node id of each row when ids are not row numbers.

    Returns
    -------
    (m,) bool
    """
    m = adjacency.shape[0]
    seen = np.zeros(m, dtype=bool)
    seen[start] = True
    frontier = np.array([start], dtype=np.int64)
    while frontier.size:
        nb = adjacency[frontier].ravel()
        nb = nb[nb >= 0]
        rows = nb if nodes is None else np.searchsorted(nodes, nb)
        rows = np.unique(rows[~seen[rows]])
        seen[rows] = True
        frontier = rows
    return seen


REPAIR_ROUNDS = 16
"""Rounds of :func:`connect_unreachable`; each round re-attaches every lost component it can."""


def connect_unreachable(
    x: np.ndarray,
    adjacency: np.ndarray,
    start: int,
    cand: np.ndarray,
    *,
    metric: str,
) -> int:
    """Make every row reachable from ``start`` by adding in-edges to lost rows, in place.

    Pruning keeps each node's out-edges diverse but can leave a node with no in-edge
    (every node that chose it pruned it again when its own list overflowed). Such a node
    is found by no search. Each round walks the graph from ``start``; every lost row takes
    an edge from its nearest reached candidate, into a free slot or else in place of that
    node's farthest neighbour (which the next round re-checks). Rows are kept sorted by
    distance.

    Parameters
    ----------
    x : (m, d) float32
        Vectors of the rows.
    adjacency : (m, R) int32
        Neighbour rows, -1 padded, nearest first; modified in place.
    start : int
        Row the searches enter by.
    cand : (m, K) int
        Candidate rows per row (the k-NN lists of the build), nearest first, -1 padded.
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    int
        Number of edges added.
    """
    R = adjacency.shape[1]
    added = 0
    for _ in range(REPAIR_ROUNDS):
        seen = reachable(adjacency, start)
        lost = np.flatnonzero(~seen)
        if not lost.size:
            break
        c = cand[lost]
        ok = (c >= 0) & seen[c.clip(0)]
        has = ok.any(axis=1)
        if has.any():
            u = lost[has]
            w = c[has, ok[has].argmax(axis=1)]
            w, first = np.unique(w, return_index=True)
            u = u[first]
        else:
            # A whole component without a reached candidate: attach one of its rows to
            # its nearest reached row by exact search.
            u = lost[:1]
            reached = np.flatnonzero(seen)
            _, I = knn(np.asarray(x[u], dtype=np.float32), np.asarray(x[reached]), 1, metric)
            w = reached[I[:, 0]]
        free = adjacency[w] < 0
        slot = np.where(free.any(axis=1), free.argmax(axis=1), R - 1)
        adjacency[w, slot] = u
        _sort_rows(x, adjacency, w, metric)
        added += w.size
    return added


def _sort_rows(x, adjacency, rows, metric):
    """Re-order the given adjacency rows nearest first (ties by id, -1 last)."""
    nb = adjacency[rows].astype(np.int64)
    valid = nb >= 0
    pts = np.asarray(x[nb.clip(0).ravel()], dtype=np.float32).reshape(*nb.shape, -1)
    dist = exact_distances(np.asarray(x[rows], dtype=np.float32), pts, metric)
    ids, _ = best_unique(np.where(valid, nb, -1), dist, nb.shape[1])
    adjacency[rows] = ids.astype(np.int32)
