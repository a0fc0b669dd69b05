"""Build-time candidate lists of the graph indexes: k-NN lists, insertion prefixes, edge unions.

:func:`knn_candidates` gives each row its (approximately) nearest rows, by exact blocked
GEMMs for small inputs and inside k-means partitions for large ones;
:func:`prefix_candidates` gives the i-th row of an insertion order its nearest among the
rows before it (what an incremental insertion sees); :func:`best_unique` and
:func:`with_reverse_edges` merge candidate lists and mirror edges.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from tidepool_cli.engine.distances import sqnorms
from tidepool_cli.engine.graph.keys import ID_MASK, SENTINEL, decode, encode
from tidepool_cli.engine.kmeans import kmeans
from tidepool_cli.engine.order import smallest_k, sortable, unsortable
from tidepool_cli.engine.threads import parallel

EXACT_KNN_FLOPS = 2.0e10
"""Up to ``n * n * d`` of this size, candidate lists come from an exact blocked k-NN."""

IVF_CLUSTER_ROWS = 512
"""Mean member count of a cluster in the partitioned k-NN."""

IVF_PROBES = 4
"""Clusters whose members each row is compared with in the partitioned k-NN (its nearest centroids)."""

IVF_KMEANS_ITERS = 6
"""Lloyd iterations of the partitioning k-means: partitions need not be optimal, only local."""

TOPK_COLS = 2048
"""Member columns per proxy block and top-k selection of the partitioned k-NN."""

PROXY_BLOCK_FLOATS = 1 << 22
"""Proxy scores per GEMM block of the candidate search (16 MiB)."""

PARTITION_POINTS_PER_CENTROID = 64
"""Training rows per centroid of the partitioning k-means."""

CENTROID_ROWS = 16384
"""Rows scored against the centroids per GEMM when rows join their partitions."""


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
    best candidates per block come from the engine's one row-wise selection,
    :func:`~tidepool_cli.engine.order.smallest_k` (a partition, ties to the lower column).

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
    ids, dist = decode(keys, metric)
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
        for m0 in range(0, members.size, TOPK_COLS):
            mem = members[m0 : m0 + TOPK_COLS]
            # Rank by the proxy |m|^2 - 2 q.m (l2) or -q.m: one GEMM and one add per block.
            xm = np.asarray(x[mem], dtype=np.float32) * scale
            bias = sq[mem] if sq is not None else None
            kk = min(k, mem.size)
            step = max(1, PROXY_BLOCK_FLOATS // mem.size)
            for r0 in range(0, slots.size, step):
                sb = slots[r0 : r0 + step]
                qb = rows[sb]
                proxy = np.asarray(x[qb], dtype=np.float32) @ xm.T
                _to_distance(proxy, bias, None if sq is None else sq[qb], metric)
                # A row never is its own candidate.
                pos = np.searchsorted(mem, qb).clip(0, mem.size - 1)
                me = np.flatnonzero(mem[pos] == qb)
                proxy[me, pos[me]] = np.inf
                cols, vals = smallest_k(proxy, kk)
                new = encode(vals, mem[cols], metric)
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
    step = max(1, PROXY_BLOCK_FLOATS // max(t, 1))

    def block(r0: int) -> None:
        r1 = min(t, r0 + step)
        proxy = xo[r0:r1] @ xs[:r1].T
        _to_distance(proxy, None if sq is None else sq[:r1], None if sq is None else sq[r0:r1], metric)
        # Row i sees only the rows inserted before it.
        proxy[np.arange(r1 - r0)[:, None] + r0 <= np.arange(r1)[None, :]] = np.inf
        cols, vals = smallest_k(proxy, min(k, r1))
        new = encode(vals, order[cols], metric)
        new[~np.isfinite(vals)] = SENTINEL
        new.sort(axis=1)
        keys[r0:r1, : new.shape[1]] = new[:, :k]

    parallel(block, range(1, t, step), workers)
    return decode(keys, metric)


def _balanced_centroids(x: np.ndarray, metric: str, seed: int) -> np.ndarray:
    """k-means centroids, with every cluster over twice the mean size split by its own k-means.

    The cost of the partitioned k-NN grows with the square of a cluster's size, and plain
    k-means on data of uneven density leaves a few clusters many times the mean size.
    """
    n = x.shape[0]
    cent = kmeans(
        x, max(2, n // IVF_CLUSTER_ROWS), metric=metric, niter=IVF_KMEANS_ITERS, seed=seed,
        max_points_per_centroid=PARTITION_POINTS_PER_CENTROID,
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
                max_points_per_centroid=PARTITION_POINTS_PER_CENTROID,
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


def _nearest_centroids(x, cent, s, metric):
    """(n, s) indices of each row's s nearest centroids, nearest first (largest inner product for dot)."""
    n = x.shape[0]
    out = np.empty((n, s), dtype=np.int64)
    if metric == "l2":
        ct, bias = -2.0 * cent.T, sqnorms(cent)
    else:
        ct, bias = -cent.T, np.zeros(cent.shape[0], dtype=np.float32)
    ct = np.ascontiguousarray(ct, dtype=np.float32)
    for r0 in range(0, n, CENTROID_ROWS):
        p = np.asarray(x[r0 : r0 + CENTROID_ROWS], dtype=np.float32) @ ct
        p += bias
        part, vals = smallest_k(p, s)
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
    # Order-preserving unsigned 32-bit image of the distance.
    mono = sortable(dist).astype(np.int64) + (1 << 31)
    # Sorting (id, distance) pairs puts the copies of an id side by side, nearest first.
    by_id = (np.where(ids < 0, ID_MASK, ids) << 32) | mono
    by_id.sort(axis=1)
    sid = by_id >> 32
    drop = sid == ID_MASK
    drop[:, 1:] |= sid[:, 1:] == sid[:, :-1]
    keys = (((by_id & 0xFFFF_FFFF) - (1 << 31)) << 32) | sid
    keys[drop] = np.iinfo(np.int64).max
    keys.sort(axis=1)
    keys = keys[:, :k]
    empty = keys == np.iinfo(np.int64).max
    out_i = np.where(empty, -1, keys & 0xFFFF_FFFF)
    out_d = np.where(empty, np.float32(np.inf), unsortable(keys >> 32))
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
    order = np.lexsort((b, sortable(dab), a))
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
