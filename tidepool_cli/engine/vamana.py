"""Vamana graph construction (Subramanya et al., "DiskANN: fast accurate billion-point
nearest neighbor search on a single node", NeurIPS 2019), vectorized.

The graph is one flat layer of fixed out-degree ``R`` entered at the medoid. The paper
builds it in two passes over the nodes in random order: each node runs a greedy search
from the medoid on the current graph, its visited nodes go through RobustPrune, and
every new edge is mirrored (a list that overflows is pruned again). The first pass uses
α = 1 (the sparse relative-neighbourhood rule), the second α > 1, which keeps longer
edges so that a search moves towards the query by a factor of α per hop.

Here the two passes run on blocks of nodes rather than one node at a time:

* Pass 1 (α = 1) starts from each node's exact or partitioned k-NN list
  (:func:`~tidepool_cli.engine.graph.knn_candidates`) instead of a random graph: pruned by
  the heuristic, mirrored, overflowing lists pruned again. That is the graph the paper's
  first pass converges to, without the random-graph searches that only serve to reach it.
* Pass 2 (α) visits the nodes in a seeded random order, ``BUILD_BLOCK`` at a time. The
  block's nodes walk the current graph from the medoid together (the lockstep beam
  search of :func:`~tidepool_cli.engine.vamana_search.walk`, search list ``L``, beam
  width ``SEARCH_WIDTH``); each node runs RobustPrune(p, V ∪ N_out(p), α, R) on the set
  V of nodes its walk expanded, which holds the path from the medoid and so the long
  edges; every new edge p -> u is mirrored into u's list, and a list that would pass
  ``SLACK · R`` entries is pruned back to R with α (DiskANN's slack). Later blocks walk
  the graph the earlier blocks updated, as the paper's sequential pass does; the walks
  of one block see the graph as it was before the block.

A final reachability repair (:func:`~tidepool_cli.engine.graph.connect_unreachable`)
gives an in-edge to any node that pruning left without a path from the medoid.

The pruning itself is :func:`~tidepool_cli.engine.graph.select_neighbors`, the same
kernel HNSW uses, with its pruning scale ``α``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine import graph as g
from tidepool_cli.engine.distances import check_metric, float_rows, sqnorms
from tidepool_cli.engine.threads import progress_counter, workers as threads_workers
from tidepool_cli.engine.vamana_search import walk
from tidepool_cli.errors import InvalidInputError

DEFAULT_R = 64
"""Out-degree R of every node (the paper's R; DiskANN's usual 64)."""

DEFAULT_L = 32
"""Search list size L of the build-time searches. Pass 1 already links every node to its
pruned k-NN, so the walks only need to supply the path from the medoid (the long edges):
on siftsmall and a 10,000-row Fashion-MNIST subset L = 32 gives the same recall and pages
per query as L = 100 in about half the build time (docs/VAMANA.md)."""

DEFAULT_ALPHA = 1.2
"""Pruning slack α of the second pass (applies to Euclidean lengths)."""

BUILD_BLOCK = 1024
"""Nodes whose searches run in lockstep and whose lists are updated together in pass 2."""

SEARCH_WIDTH = 4
"""Beam width of the build searches: nodes expanded per hop (fewer, larger numpy steps)."""

SLACK = 1.3
"""Lists grow to ``SLACK · R`` mirrored edges before they are pruned back to R (DiskANN's
slack factor): most targets take a few in-edges per block, and pruning each time would
cost more than the search itself."""

KNN_CANDIDATES = 64
"""Length of the k-NN list each node starts pass 1 with and offers again to pass 2."""


@dataclass(frozen=True)
class VamanaGraph:
    """A built Vamana graph: plain arrays, no file.

    Attributes
    ----------
    adjacency : (n, R) int32
        Out-neighbours of each row, nearest first, -1 padded at the end.
    medoid : int
        Row every search enters by: the row nearest the mean of the data.
    r : int
        Out-degree bound R.
    l : int
        Search list size L used by the build.
    alpha : float
        Pruning slack α of the second pass.
    metric : {"l2", "cosine"}
    """

    adjacency: np.ndarray
    medoid: int
    r: int
    l: int
    alpha: float
    metric: str

    def stats(self) -> dict:
        """Degree statistics: ``{"r", "l", "alpha", "medoid", "avg_degree", "max_degree", "isolated"}``."""
        deg = (self.adjacency >= 0).sum(axis=1)
        return {
            "r": self.r,
            "l": self.l,
            "alpha": self.alpha,
            "medoid": self.medoid,
            "avg_degree": float(deg.mean()) if deg.size else 0.0,
            "max_degree": int(deg.max()) if deg.size else 0,
            "isolated": int((deg == 0).sum()),
        }


def medoid(x: np.ndarray, metric: str) -> int:
    """Row nearest the mean of ``x`` (DiskANN's entry point), ties by lower row.

    Parameters
    ----------
    x : (n, d) float32
        Vectors (unit rows for cosine); a memmap is read in blocks.
    metric : {"l2", "cosine"}

    Returns
    -------
    int
    """
    n = x.shape[0]
    step = 65536
    mean = np.zeros(x.shape[1], dtype=np.float64)
    for s in range(0, n, step):
        mean += np.asarray(x[s : s + step], dtype=np.float64).sum(axis=0)
    mean = (mean / n).astype(np.float32)
    if metric == "cosine":
        mean /= max(float(np.linalg.norm(mean)), 1e-30)
    best, best_d = 0, np.inf
    for s in range(0, n, step):
        blk = np.asarray(x[s : s + step], dtype=np.float32)
        diff = blk - mean
        dist = np.einsum("ij,ij->i", diff, diff)
        i = int(np.argmin(dist))
        if dist[i] < best_d:
            best, best_d = s + i, float(dist[i])
    return best


def build_vamana(
    x: np.ndarray,
    metric: str,
    *,
    r: int = DEFAULT_R,
    l: int = DEFAULT_L,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> VamanaGraph:
    """Build a Vamana graph over the rows of ``x`` (see the module docstring).

    Parameters
    ----------
    x : (n, d) float32
        Vectors, stored form (unit rows for cosine). A read-only memmap is fine; it is
        gathered block by block.
    metric : {"l2", "cosine"}
        Inner product (dot) is not supported: α-pruning needs a metric space.
    r : int
        Out-degree R, >= 2.
    l : int
        Search list size L of the pass-2 searches, >= 1.
    alpha : float
        Pruning slack of pass 2, >= 1.
    seed : int
        Seed of the pass-2 visiting order and of the partitioning k-means; equal
        seeds and inputs give equal graphs, whatever ``threads``.
    progress : callable(done, total), optional
        Called now and then with nodes done and total (under a lock).
    threads : int, optional
        Threads for candidate lists and pruning; default: the CPUs available.

    Returns
    -------
    VamanaGraph

    Raises
    ------
    InvalidInputError
        Unknown or unsupported metric, ``x`` not 2-D or empty, ``r < 2``, ``l < 1`` or
        ``alpha < 1``.
    """
    check_metric(metric)
    if metric not in ("l2", "cosine"):
        raise InvalidInputError(f"Vamana supports the l2 and cosine metrics, not {metric!r}")
    x = float_rows(x, "Vamana")
    if int(r) < 2:
        raise InvalidInputError(f"R must be at least 2, got {r}")
    if int(l) < 1:
        raise InvalidInputError(f"L must be at least 1, got {l}")
    if not float(alpha) >= 1.0:
        raise InvalidInputError(f"alpha must be at least 1, got {alpha}")
    r, l, alpha = int(r), int(l), float(alpha)
    n = x.shape[0]
    workers = threads_workers(threads)
    sq = sqnorms(x) if metric == "l2" else None
    total = 3 * n
    tick = progress_counter(total, progress)

    start = medoid(x, metric)
    knn_i, knn_d = g.knn_candidates(
        x, min(KNN_CANDIDATES, n - 1), metric=metric, xb_sqnorms=sq, seed=seed, workers=workers
    )
    tick(n)
    # Pass 1 (α = 1): the relative-neighbourhood graph of the k-NN lists, mirrored.
    adj, adj_d = g.select_neighbors(x, knn_i, knn_d, r, metric=metric, xb_sqnorms=sq, workers=workers)
    adj, adj_d = _mirror_all(x, sq, adj, adj_d, r, 1.0, metric, workers)
    g.connect_unreachable(x, adj, start, knn_i, metric=metric)
    adj_d = _row_distances(x, adj, metric)
    tick(n)
    # Pass 2 (α): blocks of nodes search the current graph, prune, mirror. Lists may
    # grow to the slack width before a mirrored edge forces a re-prune.
    width = max(r, int(np.ceil(SLACK * r)))
    adj = np.pad(adj, ((0, 0), (0, width - r)), constant_values=-1)
    adj_d = np.pad(adj_d, ((0, 0), (0, width - r)), constant_values=np.inf)
    order = np.random.default_rng(seed).permutation(n)
    for s in range(0, n, BUILD_BLOCK):
        rows = np.sort(order[s : s + BUILD_BLOCK])
        _update_block(x, sq, adj, adj_d, rows, start, r, l, alpha, metric, workers)
        tick(rows.size)
    over = np.flatnonzero(adj[:, r] >= 0) if width > r else np.empty(0, np.int64)
    if over.size:
        srt = np.argsort(adj_d[over], axis=1, kind="stable")
        adj[over, :r], adj_d[over, :r] = g.select_neighbors(
            x,
            np.take_along_axis(adj[over], srt, axis=1),
            np.take_along_axis(adj_d[over], srt, axis=1),
            r,
            metric=metric,
            alpha=alpha,
            xb_sqnorms=sq,
            workers=workers,
        )
    adj = _sorted_rows(np.ascontiguousarray(adj[:, :r]), adj_d[:, :r])
    g.connect_unreachable(x, adj, start, knn_i, metric=metric)
    if progress is not None:
        progress(total, total)
    return VamanaGraph(
        adjacency=np.ascontiguousarray(adj, dtype=np.int32),
        medoid=start,
        r=r,
        l=l,
        alpha=alpha,
        metric=metric,
    )


def _update_block(x, sq, adj, adj_d, rows, start, r, l, alpha, metric, workers):
    """Pass 2 on ``rows``: search, RobustPrune with α, write their lists, mirror the new edges (in place)."""
    xr = np.asarray(x[rows], dtype=np.float32)
    parts: list = [None] * workers
    step = -(-rows.size // workers)

    def read(qa: np.ndarray, node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(x[node], dtype=np.float32), adj[node]

    def search(i: int) -> None:
        lo = i * step
        xs = xr[lo : lo + step]
        q, node, dist, _ = walk(xs, x.shape[0], start, l, SEARCH_WIDTH, g.ExactPairs(x, xs, metric, xb_sqnorms=sq), read, metric)
        parts[i] = (q + lo, node, dist)

    # The walks of a block read the graph as it was before the block: splitting the
    # block across threads changes nothing in the result.
    g.parallel(search, range(workers), workers)
    q = np.concatenate([p[0] for p in parts if p is not None])
    node = np.concatenate([p[1] for p in parts if p is not None])
    dist = np.concatenate([p[2] for p in parts if p is not None])
    own = node != rows[q]
    q, node, dist = q[own], node[own], dist[own]
    # The visited set of each node's walk, one row per node.
    counts = np.bincount(q, minlength=rows.size)
    width = max(1, int(counts.max()) if counts.size else 1)
    o = np.argsort(q, kind="stable")
    rank = np.arange(o.size) - np.repeat(np.cumsum(counts) - counts, counts)
    vis_i = np.full((rows.size, width), -1, dtype=np.int64)
    vis_d = np.full((rows.size, width), np.inf, dtype=np.float32)
    vis_i[q[o], rank] = node[o]
    vis_d[q[o], rank] = dist[o]
    # RobustPrune(p, V ∪ N_out(p), α, R), as in the paper.
    cand_i = np.concatenate((vis_i, adj[rows].astype(np.int64)), axis=1)
    cand_d = np.concatenate((vis_d, adj_d[rows]), axis=1)
    cand_i, cand_d = g.best_unique(cand_i, cand_d, cand_i.shape[1])
    new_i, new_d = g.select_neighbors(
        x, cand_i, cand_d, r, metric=metric, alpha=alpha, xb_sqnorms=sq, workers=workers
    )
    width = adj.shape[1]
    adj[rows, :r], adj[rows, r:] = new_i, -1
    adj_d[rows, :r], adj_d[rows, r:] = new_d, np.inf
    _mirror_block(x, sq, adj, adj_d, rows, new_i, new_d, r, alpha, metric, workers)


def _mirror_block(x, sq, adj, adj_d, rows, new_i, new_d, r, alpha, metric, workers):
    """Offer every target u of a new edge v -> u the edge u -> v (in place).

    Lists are unordered sets between blocks (every consumer sorts its candidates), so an
    edge that fits is appended; a list that would pass the slack width is pruned back to
    R with α from its members and its nearest incoming edges.
    """
    width = adj.shape[1]
    valid = new_i >= 0
    src = np.broadcast_to(rows[:, None], new_i.shape)[valid].astype(np.int64)
    dst = new_i[valid].astype(np.int64)
    dd = new_d[valid]
    fresh = ~(adj[dst] == src[:, None]).any(axis=1)
    src, dst, dd = src[fresh], dst[fresh], dd[fresh]
    if not src.size:
        return
    # Incoming edges grouped by target, nearest first; at most `width` per target.
    o = np.lexsort((src, dd, dst))
    src, dst, dd = src[o], dst[o], dd[o]
    targets, first, counts = np.unique(dst, return_index=True, return_counts=True)
    rank = np.arange(dst.size) - np.repeat(first, counts)
    keep = rank < width
    src, dst, dd, rank = src[keep], dst[keep], dd[keep], rank[keep]
    counts = np.minimum(counts, width)
    deg = (adj[targets] >= 0).sum(axis=1)
    fits = deg + counts <= width
    tpos = np.searchsorted(targets, dst)
    app = fits[tpos]
    col = deg[tpos[app]] + rank[app]
    adj[dst[app], col] = src[app]
    adj_d[dst[app], col] = dd[app]
    over = np.flatnonzero(~fits)
    if not over.size:
        return
    t = targets[over]
    inc_i = np.full((over.size, width), -1, dtype=np.int64)
    inc_d = np.full((over.size, width), np.inf, dtype=np.float32)
    sel = ~app
    opos = np.searchsorted(t, dst[sel])
    inc_i[opos, rank[sel]] = src[sel]
    inc_d[opos, rank[sel]] = dd[sel]
    cand_i = np.concatenate((adj[t].astype(np.int64), inc_i), axis=1)
    cand_d = np.concatenate((adj_d[t], inc_d), axis=1)
    srt = np.argsort(cand_d, axis=1, kind="stable")
    cand_i = np.take_along_axis(cand_i, srt, axis=1)
    cand_d = np.take_along_axis(cand_d, srt, axis=1)
    p_i, p_d = g.select_neighbors(x, cand_i, cand_d, r, metric=metric, alpha=alpha, xb_sqnorms=sq, workers=workers)
    adj[t, :r], adj[t, r:] = p_i, -1
    adj_d[t, :r], adj_d[t, r:] = p_d, np.inf


def _sorted_rows(adj, adj_d):
    """Rows of ``adj`` nearest first by ``adj_d`` (ties by id), -1 padding last."""
    key = np.where(adj >= 0, adj_d, np.inf)
    o = np.lexsort((np.where(adj >= 0, adj, np.iinfo(np.int32).max), key), axis=-1)
    return np.ascontiguousarray(np.take_along_axis(adj, o, axis=1))


def _mirror_all(x, sq, adj, adj_d, r, alpha, metric, workers):
    """Every edge mirrored; lists over ``r`` pruned again with ``alpha``."""
    both, both_d = g.with_reverse_edges(adj, adj_d, 2 * r)
    out = np.ascontiguousarray(both[:, :r], dtype=np.int32)
    out_d = np.ascontiguousarray(both_d[:, :r])
    over = np.flatnonzero(both[:, r] >= 0)
    if over.size:
        out[over], out_d[over] = g.select_neighbors(
            x, both[over], both_d[over], r, metric=metric, alpha=alpha, xb_sqnorms=sq, workers=workers
        )
    return out, out_d


def _row_distances(x, adj, metric):
    """(n, R) float32 distances of each row to its listed neighbours, +inf for padding."""
    n, r = adj.shape
    out = np.full((n, r), np.inf, dtype=np.float32)
    step = max(1, (1 << 22) // max(1, r * x.shape[1]))
    for s in range(0, n, step):
        nb = adj[s : s + step].astype(np.int64)
        valid = nb >= 0
        pts = np.asarray(x[nb.clip(0).ravel()], dtype=np.float32).reshape(*nb.shape, -1)
        xs = np.asarray(x[s : s + step], dtype=np.float32)
        if metric == "l2":
            diff = pts - xs[:, None, :]
            dist = np.einsum("bkd,bkd->bk", diff, diff)
        else:
            dist = 1.0 - np.einsum("bkd,bd->bk", pts, xs)
        out[s : s + step] = np.where(valid, dist, np.inf)
    return out
