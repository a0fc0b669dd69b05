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

Beam entries are packed into one int64 *key* per entry,
``float_bits(distance) << 32 | id << 1 | unexpanded``, so that a plain integer sort orders
entries by distance, breaks ties by id, and carries the expansion flag along. Distances
are kept non-negative for ``l2`` and ``cosine`` so their IEEE bits sort like the floats;
``dot`` maps its signed bits to an order-preserving integer first.
"""

from __future__ import annotations

from collections.abc import Callable

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

GATHER_CHUNK_BYTES = 1 << 20
"""Gathered rows per distance chunk (kept L2-resident)."""

PRUNE_BLOCK_BYTES = 1 << 23
"""Gathered candidate vectors per pruning block (bounds the (b, K, d) gather to the cache)."""


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

    Returns
    -------
    ids : (nq, L) int64
        Node ids ordered by distance then id, -1 padded; ``L = ef``, or ``n_results``
        with ``allowed``. Ids are unique per row.
    dist : (nq, L) float32
        Their distances as computed during the walk (``l2``: squared, from norms and dot
        products, so a few ulps off the exact value), +inf padded.
    """
    x = np.asarray(x)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nq = xq.shape[0]
    n = x.shape[0]
    filtered = allowed is not None
    width = n_results if filtered else ef
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

    while act.size:
        unexp = (bm & 1).astype(bool)
        if expand == 1:
            pick = unexp.argmax(axis=1)[:, None]
        else:
            pick = np.argsort(~unexp, axis=1, kind="stable")[:, :expand]
        pk = np.take_along_axis(bm, pick, axis=1)
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
        # Clearing bit 0 marks a node expanded without moving it in the sort order.
        np.put_along_axis(bm, pick, pk & ~1, axis=1)
        eid = (pk >> 1) & _ID_MASK
        if expand > 1:
            # A row with fewer unexpanded nodes than `expand` also picked expanded or
            # empty slots: look up node 0 in their place and drop its neighbours.
            eid[~real] = 0
            nb = adjacency[_rows_of(eid, nodes)]
            nb[~real] = -1
            # Expanded nodes share neighbours; one copy of each is enough.
            nb = np.sort(nb.reshape(act.size, -1), axis=1)
            nb[:, 1:][nb[:, 1:] == nb[:, :-1]] = -1
        else:
            nb = adjacency[_rows_of(eid[:, 0], nodes)]
        new = nb >= 0
        if visited is not None:
            new = visited.filter(act, nb, new)
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

    def _flat(self, qrows: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.lossy:
            slot = (ids.astype(np.uint32) * _HASH_MUL) >> self.shift
            return qrows * self.slots + slot.astype(np.int64)
        return qrows * self.slots + ids.astype(np.int64)

    def mark(self, qrows: np.ndarray, ids: np.ndarray) -> None:
        self.table[self._flat(qrows, ids)] = ids if self.lossy else True

    def filter(self, act: np.ndarray, nb: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Mask of the ids in ``nb`` (row i belongs to query ``act[i]``) not visited yet; marks them.

        ``nb`` must not repeat an id within a row.
        """
        flat = self._flat(act[:, None], nb)
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
) -> np.ndarray:
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
        Called with the number of nodes finished after each block.

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
    step = max(1, PRUNE_BLOCK_BYTES // (K * d * 4))
    for s in range(0, b, step):
        c = cand[s : s + step]
        cd = np.asarray(cand_dist[s : s + step], dtype=np.float32)
        valid = c >= 0
        safe = np.where(valid, c, c[:, :1].clip(0))
        v = np.asarray(x[safe.ravel()], dtype=np.float32).reshape(*c.shape, d)
        gram = np.matmul(v, v.transpose(0, 2, 1))
        if metric == "l2":
            sq = xb_sqnorms[safe] if xb_sqnorms is not None else np.einsum("bkd,bkd->bk", v, v)
            pair = np.maximum(sq[:, :, None] + sq[:, None, :] - 2 * gram, 0.0)
        elif metric == "cosine":
            pair = np.maximum(1.0 - gram, 0.0)
        else:
            pair = -gram
        # prunes[i, j, e]: kept candidate j would prune candidate e.
        prunes = scale * pair < cd[:, None, :]
        out[s : s + step], out_d[s : s + step] = _greedy_keep(c, cd, valid, prunes, degree)
        if tick is not None:
            tick(c.shape[0])
    return out, out_d


def _greedy_keep(cand, cd, valid, prunes, degree):
    """Sequential keep/prune over candidate ranks, vectorised across nodes."""
    nb, K = cand.shape
    pruned = ~valid
    kept = np.zeros((nb, K), dtype=bool)
    count = np.zeros(nb, dtype=np.int64)
    for j in range(K):
        keep = ~pruned[:, j] & (count < degree)
        kept[:, j] = keep
        count += keep
        pruned |= keep[:, None] & prunes[:, j, :]
        if j % 8 == 7 and ((count >= degree) | pruned[:, j + 1 :].all(axis=1)).all():
            break
    order = np.argsort(~kept, axis=1, kind="stable")[:, :degree]
    ids = np.take_along_axis(cand, order, axis=1)
    dist = np.take_along_axis(cd, order, axis=1)
    took = np.take_along_axis(kept, order, axis=1)
    if ids.shape[1] < degree:
        pad = degree - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        took = np.pad(took, ((0, 0), (0, pad)))
    return np.where(took, ids, -1).astype(np.int32), np.where(took, dist, np.inf).astype(np.float32)


EXACT_KNN_FLOPS = 2.0e10
"""Up to ``n * n * d`` of this size, candidate lists come from one exact blocked k-NN."""

IVF_CLUSTER_ROWS = 1024
"""Target member count of an overlapping cluster in the partitioned k-NN."""

IVF_SOFT = 3
"""Clusters each row joins in the partitioned k-NN (its nearest centroids)."""

IVF_KMEANS_ITERS = 6
"""Lloyd iterations of the partitioning k-means: partitions need not be optimal, only local."""


def knn_candidates(
    x: np.ndarray,
    k: int,
    *,
    metric: str,
    xb_sqnorms: np.ndarray | None = None,
    seed: int = 0,
    tick: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest other rows of every row: the candidate lists of a graph build.

    Small inputs (``n² d <= EXACT_KNN_FLOPS``) use the exact blocked k-NN of
    :func:`~tidepool_cli.engine.topk.knn`. Larger ones are partitioned: k-means gives
    ``ceil(IVF_SOFT * n / IVF_CLUSTER_ROWS)`` centroids, every row joins the clusters of
    its ``IVF_SOFT`` nearest centroids, and one GEMM per cluster compares all its members.
    A row thus meets the members of three overlapping clusters, which finds most true
    neighbours across cluster borders at ``O(n · IVF_SOFT · IVF_CLUSTER_ROWS · d)`` cost
    plus ``O(n · nlist · d)`` for the assignment, instead of ``O(n² d)``.

    Parameters
    ----------
    x : (n, d) float32
        Vectors (a memmap is read cluster by cluster). For cosine, unit rows.
    k : int
        Candidates per row.
    metric : {"l2", "cosine", "dot"}
        For dot, clusters are trained with l2 geometry and rows join the centroids of
        largest inner product, the usual IVF-IP practice.
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2).
    seed : int
        Seed of the k-means; equal seeds give equal candidates.
    tick : callable(int), optional
        Called with the number of rows finished now and then.

    Returns
    -------
    ids : (n, k) int64
        Candidate ids sorted by distance then id, never the row itself, -1 padded.
    dist : (n, k) float32
        Their distances in the public convention, +inf padded.
    """
    n, d = x.shape
    if n < 2 or k <= 0:
        return np.full((n, k), -1, dtype=np.int64), np.full((n, k), np.inf, dtype=np.float32)
    if float(n) * n * d <= EXACT_KNN_FLOPS or n <= 2 * IVF_CLUSTER_ROWS:
        D, I = knn(x, x, min(k + 1, n), metric, xb_sqnorms=xb_sqnorms)
        ids, dist = _drop_self(I, D, k)
    else:
        ids, dist = _partitioned_knn(x, k, metric, xb_sqnorms, seed)
    if tick is not None:
        tick(n)
    return ids, dist


def _drop_self(I: np.ndarray, D: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id (or, when duplicates crowd it out, the last column); pad to k."""
    n, kp = I.shape
    me = I == np.arange(n)[:, None]
    me[~me.any(axis=1), kp - 1] = True
    I = I[~me].reshape(n, kp - 1)
    D = D[~me].reshape(n, kp - 1)
    if kp - 1 < k:
        I = np.pad(I, ((0, 0), (0, k - kp + 1)), constant_values=-1)
        D = np.pad(D, ((0, 0), (0, k - kp + 1)), constant_values=np.inf)
    return I[:, :k], D[:, :k]


def _partitioned_knn(x, k, metric, xb_sqnorms, seed):
    n, d = x.shape
    s = IVF_SOFT
    nlist = max(s + 1, -(-s * n // IVF_CLUSTER_ROWS))
    cent = kmeans(x, nlist, metric=metric, niter=IVF_KMEANS_ITERS, seed=seed, max_points_per_centroid=64)
    labels = _nearest_centroids(x, cent, s, metric)
    sq = None
    if metric == "l2":
        sq = np.asarray(xb_sqnorms, dtype=np.float32) if xb_sqnorms is not None else sqnorms(x)
    flat = labels.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(nlist + 1))
    buf_i = np.full((n, s, k), -1, dtype=np.int32)
    buf_d = np.full((n, s, k), np.inf, dtype=np.float32)
    for c in range(nlist):
        sel = order[bounds[c] : bounds[c + 1]]
        mem, slot = sel // s, sel % s
        m = mem.size
        if m < 2:
            continue
        xc = np.asarray(x[mem], dtype=np.float32)
        kk = min(k, m - 1)
        step = max(1, (1 << 22) // m)
        for r0 in range(0, m, step):
            g = xc[r0 : r0 + step] @ xc.T
            if metric == "l2":
                dist = np.maximum(sq[mem[r0 : r0 + step], None] + sq[mem][None, :] - 2 * g, 0.0)
            elif metric == "cosine":
                dist = np.maximum(1.0 - g, 0.0)
            else:
                dist = np.negative(g)
            nr = dist.shape[0]
            dist[np.arange(nr), r0 + np.arange(nr)] = np.inf
            part = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
            rows = mem[r0 : r0 + nr]
            buf_i[rows, slot[r0 : r0 + nr], :kk] = mem[part]
            buf_d[rows, slot[r0 : r0 + nr], :kk] = np.take_along_axis(dist, part, axis=1)
    ids = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k), dtype=np.float32)
    for r0 in range(0, n, 1 << 16):
        bi = buf_i[r0 : r0 + (1 << 16)].reshape(-1, s * k)
        bd = buf_d[r0 : r0 + (1 << 16)].reshape(-1, s * k)
        ids[r0 : r0 + bi.shape[0]], dist[r0 : r0 + bi.shape[0]] = best_unique(bi, bd, k)
    return ids, dist


def _nearest_centroids(x, cent, s, metric):
    """(n, s) indices of each row's s nearest centroids (largest inner product for dot)."""
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
        out[r0 : r0 + p.shape[0]] = np.argpartition(p, s - 1, axis=1)[:, :s]
    return out


def best_unique(ids: np.ndarray, dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k nearest distinct ids of an unordered candidate list.

    Parameters
    ----------
    ids : (b, c) int
        Candidate ids, -1 for none; an id may repeat (its copies keep the first distance).
    dist : (b, c) float32
        Their distances, any sign.
    k : int

    Returns
    -------
    ids : (b, k) int64, sorted by distance then id, -1 padded
    dist : (b, k) float32, +inf padded
    """
    ids = np.asarray(ids, dtype=np.int64)
    by_id = np.argsort(np.where(ids < 0, np.iinfo(np.int64).max, ids), axis=1, kind="stable")
    sid = np.take_along_axis(ids, by_id, axis=1)
    sd = np.take_along_axis(np.asarray(dist, dtype=np.float32), by_id, axis=1)
    drop = sid < 0
    drop[:, 1:] |= sid[:, 1:] == sid[:, :-1]
    bits = sd.view(np.int32)
    mono = bits ^ ((bits >> 31) & 0x7FFF_FFFF)
    keys = (mono.astype(np.int64) << 32) | np.maximum(sid, 0)
    keys[drop] = np.iinfo(np.int64).max
    keys.sort(axis=1)
    keys = keys[:, :k]
    empty = keys == np.iinfo(np.int64).max
    out_i = np.where(empty, -1, keys & 0xFFFF_FFFF)
    mono = (keys >> 32).astype(np.int32)
    out_d = (mono ^ ((mono >> 31) & 0x7FFF_FFFF)).view(np.float32)
    out_d = np.where(empty, np.float32(np.inf), out_d)
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
    n, R = ids.shape
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
    m, R = adjacency.shape
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
