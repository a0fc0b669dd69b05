"""HNSW: hierarchical navigable small-world graphs, built and searched in batches.

The index follows Malkov & Yashunin, "Efficient and robust approximate nearest neighbor
search using Hierarchical Navigable Small World graphs" (TPAMI 2018): every node draws a
level ``floor(-ln(U) · mL)`` with ``mL = 1/ln(M)``; layer 0 holds every node with up to
``2M`` neighbours, layer ``l >= 1`` the nodes of level ``>= l`` with up to ``M``;
neighbours are chosen by the selection heuristic (Algorithm 4); a search descends the
upper layers greedily from the entry point and runs a beam search of width ``ef`` on
layer 0.

Construction differs from the paper's one-node-at-a-time insertion, which is a Python
loop of tiny operations in NumPy. Each layer is built in bulk instead. Every node gets
two candidate lists: its nearest among the nodes inserted before it in a random order
(computed exactly, in rounds that double the graph: what the paper's insertion search
returns, and the source of the long edges that let a search cross clusters), and its
nearest among all nodes (what later insertions offer it as reverse edges). The heuristic
picks the out-edges, every edge is mirrored, lists that overflow are pruned again with the
heuristic (what an insertion does to a full neighbour list), and rows left without a path
from the entry point get an in-edge. docs/HNSW.md has the reasoning and the measurements.

Arrays are fixed-width and C-contiguous (int32 neighbour ids, uint8 levels), so a storage
layer can write them as sections and memmap them back read-only; search never writes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine import graph as g
from tidepool_cli.engine.distances import check_metric, float_rows, sqnorms
from tidepool_cli.engine.threads import parallel, progress_counter, workers as thread_count
from tidepool_cli.engine.topk import knn, rerank
from tidepool_cli.errors import InvalidInputError

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCTION = 200

DEFAULT_EF_SEARCH = 16
"""Beam width at layer 0 when neither the caller nor the index's calibration gives one,
and the first ef_search a calibration tries: recall@10 >= 0.95 with the default M and
ef_construction on siftsmall and fashion-mnist (docs/HNSW.md)."""

MAX_CALIBRATED_EF_SEARCH = 512
"""The largest ef_search a calibration chooses (glove-50-angular needs about 150)."""

CALIBRATION_TARGET = 0.95
"""Leave-one-out recall@10 a calibrated ef_search must reach on sampled rows; real
queries then get 0.01 to 0.15 more (:mod:`~tidepool_cli.engine.calibrate`)."""

MIN_ROWS_FOR_GRAPH = 10_000
"""Below this many rows an exact scan answers a query batch faster than the graph
(crossover measured on 2 cores, docs/HNSW.md); the planner keeps such segments on exact scan."""

FILTER_EXACT_BELOW = 0.25
"""Allowed fraction below which exact search over the allowed rows beats a filtered graph
search (docs/HNSW.md); :func:`search_hnsw` itself switches to it below this fraction."""

CANDIDATES_PER_SLOT = 3
"""Layer-0 candidates of each kind per neighbour slot: ``min(ef_construction, 3 * 2M)``."""

UPPER_CANDIDATES = 200
"""Upper-layer candidates of each kind, capped by ef_construction (those layers are small)."""

PREFIX_EXACT = 2048
"""Rows inserted first, each against all rows before it (exact)."""

QUERY_BATCH = 1024
"""Queries searched in lockstep at most."""

MIN_QUERY_BATCH = 16
"""Queries searched in lockstep at least, however large the visited tables."""

VISITED_BYTES = 1 << 25
"""Budget of one batch's visited table; bounds the batch size for large n."""

SEARCH_EXPAND = 1
"""Beam nodes expanded per query and hop at layer 0."""

UPPER_SCAN_SIZE = 1 << 16
"""Search starts with an exact scan of the lowest layer with at most this many nodes * d."""

LAYER0_SEEDS = 4
"""Nearest layer-1 nodes that seed the layer-0 beam when layer 1 is scanned exactly."""

FILTER_EF_MAX = 2048
"""Cap of the navigation beam of a filtered search (it widens as ef / allowed fraction)."""


@dataclass(frozen=True)
class HnswGraph:
    """An HNSW graph over the rows of one vector array.

    Attributes
    ----------
    m : int
        M: neighbours per node on the upper layers; layer 0 allows 2M.
    ef_construction : int
        Candidate-list bound used by the build.
    metric : {"l2", "cosine", "dot"}
    entry_point : int
        Position of a node of the top level, where every search starts.
    levels : (n,) uint8
        Level of each node.
    layer0 : (n, 2M) int32
        Neighbour positions per node, nearest first, -1 padded at the end.
    upper_nodes : tuple of (n_l,) int32
        For levels l = 1..L, the sorted positions of the nodes with level >= l.
    upper_neighbors : tuple of (n_l, M) int32
        For levels l = 1..L, the neighbour positions (global, not row numbers) of each
        row of ``upper_nodes[l - 1]``, nearest first, -1 padded.
    """

    m: int
    ef_construction: int
    metric: str
    entry_point: int
    levels: np.ndarray
    layer0: np.ndarray
    upper_nodes: tuple[np.ndarray, ...]
    upper_neighbors: tuple[np.ndarray, ...]

    @property
    def max_level(self) -> int:
        """Top level L (0 when the graph has only layer 0)."""
        return len(self.upper_nodes)

    def stats(self) -> dict:
        """Sizes and degrees per level.

        Returns
        -------
        dict
            ``max_level``, ``entry_point``, ``levels``: a list with, per level, ``level``,
            ``nodes`` and ``avg_out_degree``, and ``bytes``: the total size of the arrays.
        """
        per = [_level_stats(0, self.layer0)]
        for lvl, nb in enumerate(self.upper_neighbors, start=1):
            per.append(_level_stats(lvl, nb))
        arrays = (self.levels, self.layer0, *self.upper_nodes, *self.upper_neighbors)
        return {
            "max_level": self.max_level,
            "entry_point": int(self.entry_point),
            "levels": per,
            "bytes": int(sum(a.nbytes for a in arrays)),
        }


def _level_stats(level: int, nb: np.ndarray) -> dict:
    n = nb.shape[0]
    deg = float(np.count_nonzero(nb >= 0)) / n if n else 0.0
    return {"level": level, "nodes": int(n), "avg_out_degree": round(deg, 3)}


def build_hnsw(
    x: np.ndarray,
    metric: str,
    *,
    m: int = DEFAULT_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    threads: int | None = None,
) -> HnswGraph:
    """Build an HNSW graph over the rows of ``x``.

    Levels are drawn as in the paper. Each layer is built in bulk from k-NN candidate
    lists (exact blocked GEMM for small layers, partitioned by k-means for large ones)
    with the neighbour-selection heuristic, mirrored edges re-pruned by the heuristic,
    and a reachability repair; see the module docstring and docs/HNSW.md.

    Parameters
    ----------
    x : (n, d) float32
        Vectors, stored form (unit rows for cosine). A read-only ``numpy.memmap`` is read
        without a whole copy; layers above 0 copy their own rows (n/M of them). For dot,
        the build works on an augmented copy (see :func:`_mips_to_l2`).
    metric : {"l2", "cosine", "dot"}
    m : int
        M, >= 2: neighbours per node on upper layers, 2M on layer 0.
    ef_construction : int
        >= 1. Bounds the candidate list offered to the heuristic per node, at
        ``min(ef_construction, CANDIDATES_PER_SLOT * degree)``.
    seed : int
        Seed of the level draw and of the partitioning k-means; equal seeds and inputs
        give equal graphs.
    progress : callable(done, total), optional
        Called now and then with work units done and total (under a lock, possibly
        from a worker thread).
    threads : int, optional
        Threads working on blocks of rows; default: the CPUs this process may use,
        capped by ``OMP_NUM_THREADS`` (:func:`~tidepool_cli.engine.threads.workers`).
        The graph does not depend on it.

    Returns
    -------
    HnswGraph

    Raises
    ------
    InvalidInputError
        Unknown metric, ``x`` not 2-D or empty, non-float data, ``m < 2`` or
        ``ef_construction < 1``.
    """
    check_metric(metric)
    x = float_rows(x, "HNSW")
    if int(m) < 2:
        raise InvalidInputError(f"M must be at least 2, got {m}")
    if int(ef_construction) < 1:
        raise InvalidInputError(f"ef_construction must be at least 1, got {ef_construction}")
    m, ef_construction = int(m), int(ef_construction)
    n = x.shape[0]

    rng = np.random.default_rng(seed)
    draw = -np.log1p(-rng.random(n)) / math.log(m)
    levels = np.minimum(np.floor(draw), 255).astype(np.uint8)
    # The order in which the paper's incremental build would insert the rows.
    inserted_at = rng.permutation(n)
    top = int(levels.max())
    members = [np.flatnonzero(levels >= lvl).astype(np.int32) for lvl in range(1, top + 1)]
    # Lowest position among the top-level nodes: deterministic, and any one will do.
    entry_point = int(members[-1][0]) if top else 0

    build_metric = metric
    if metric == "dot":
        # The heuristic on inner products keeps a few large-norm hubs per node and cuts
        # the rest of the graph off. Build on the l2 geometry of x' = [x, sqrt(R² - |x|²)]
        # instead (Bachrach et al., RecSys 2014): |[q, 0] - x'|² = |q|² + R² - 2 q.x, so
        # the l2 neighbours of x' are the inner-product neighbours of x, and searching
        # the graph by -q.x walks it exactly as l2 on x' would.
        x, build_metric = _mips_to_l2(x), "l2"
    sq = sqnorms(x) if build_metric == "l2" else None
    total = 3 * (n + sum(int(a.size) for a in members))
    tick = progress_counter(total, progress)

    k0 = min(ef_construction, CANDIDATES_PER_SLOT * 2 * m)
    workers = thread_count(threads)
    layer0 = _build_layer(
        x, sq, 2 * m, k0, build_metric, entry_point, np.argsort(inserted_at), seed, tick, workers
    )
    upper_neighbors = []
    for lvl, ids in enumerate(members, start=1):
        local = _build_layer(
            np.ascontiguousarray(x[ids], dtype=np.float32),
            None if sq is None else sq[ids],
            m,
            min(ef_construction, UPPER_CANDIDATES),
            build_metric,
            int(np.searchsorted(ids, entry_point)),
            np.argsort(inserted_at[ids]),
            seed + lvl,
            tick,
            workers,
        )
        upper_neighbors.append(np.where(local >= 0, ids[local.clip(0)], -1).astype(np.int32))
    if progress is not None:
        progress(total, total)
    return HnswGraph(
        m=m,
        ef_construction=ef_construction,
        metric=metric,
        entry_point=entry_point,
        levels=levels,
        layer0=layer0,
        upper_nodes=tuple(members),
        upper_neighbors=tuple(upper_neighbors),
    )


def _mips_to_l2(x: np.ndarray) -> np.ndarray:
    """(n, d + 1) float32 rows ``[x, sqrt(R² - |x|²)]`` with R the largest norm: all of norm R."""
    sq = sqnorms(x).astype(np.float64)
    out = np.empty((x.shape[0], x.shape[1] + 1), dtype=np.float32)
    out[:, :-1] = x
    out[:, -1] = np.sqrt(np.maximum(sq.max() - sq, 0.0))
    return out


def _build_layer(x, sq, degree, k, metric, start, order, seed, tick, workers):
    """(n, degree) int32 neighbour rows of one layer over the rows of ``x``.

    Each row is offered two candidate lists of length ``k``: its nearest among the rows
    inserted before it (what the paper's insertion finds, :func:`_insertion_candidates`)
    and its nearest among all rows (what later insertions would add as reverse edges).
    The heuristic picks at most ``degree`` out-edges, every edge is mirrored, lists that
    overflow are pruned again by the heuristic, and rows without a path from ``start``
    get an in-edge.
    """
    n = x.shape[0]
    early_i, early_d = _insertion_candidates(x, sq, k, metric, order, seed, workers)
    near_i, near_d = g.knn_candidates(x, k, metric=metric, xb_sqnorms=sq, seed=seed, workers=workers)
    cand, cdist = g.best_unique(
        np.concatenate((near_i, early_i), axis=1), np.concatenate((near_d, early_d), axis=1), 2 * k
    )
    tick(n)
    fwd, fwd_d = g.select_neighbors(
        x, cand, cdist, degree, metric=metric, xb_sqnorms=sq, tick=tick, workers=workers
    )
    both, both_d = g.with_reverse_edges(fwd, fwd_d, 2 * degree)
    adj = np.ascontiguousarray(both[:, :degree], dtype=np.int32)
    over = np.flatnonzero(both[:, degree] >= 0)
    if over.size:
        adj[over], _ = g.select_neighbors(
            x, both[over], both_d[over], degree, metric=metric, xb_sqnorms=sq, workers=workers
        )
    tick(n)
    g.connect_unreachable(x, adj, start, cand, metric=metric)
    return adj


def _insertion_candidates(x, sq, k, metric, order, seed, workers):
    """Per row, its k nearest among the rows inserted before it (``order``: insertion order).

    The first ``PREFIX_EXACT`` rows are inserted one by one (exactly); the rest in rounds
    that double the graph, a round's rows searching the rows of earlier rounds only. This
    is the candidate list an insertion of the paper gets from its ef_construction search,
    with the search replaced by a (partitioned) exact k-NN: early rows meet a sparse graph
    and get the long edges that make a layer navigable across clusters.
    """
    n = x.shape[0]
    ids = np.full((n, k), -1, dtype=np.int64)
    dist = np.full((n, k), np.inf, dtype=np.float32)
    head = order[: min(n, PREFIX_EXACT)]
    ids[head], dist[head] = g.prefix_candidates(x, head, k, metric=metric, xb_sqnorms=sq, workers=workers)
    lo = head.size
    while lo < n:
        hi = min(n, 2 * lo)
        rows = order[lo:hi]
        ids[rows], dist[rows] = g.knn_candidates(
            x, k, metric=metric, xb_sqnorms=sq, members=np.sort(order[:lo]), queries=rows,
            seed=seed + lo, workers=workers,
        )
        lo = hi
    return ids, dist


def search_hnsw(
    graph: HnswGraph,
    x: np.ndarray,
    xq: np.ndarray,
    k: int,
    *,
    ef_search: int | None = None,
    allowed: np.ndarray | None = None,
    xb_sqnorms: np.ndarray | None = None,
    filter_exact_below: float = 0.0,
    threads: int | None = None,
    exclude: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """k approximate nearest rows per query.

    Queries are searched in lockstep batches: greedy descent through the upper layers,
    then a beam search of width ``max(ef_search, k)`` on layer 0, then exact distances of
    the beam through :func:`~tidepool_cli.engine.topk.rerank`, so a row gets the same
    distance as from the exact scan.

    Parameters
    ----------
    graph : HnswGraph
        Built on ``x`` (its arrays may be read-only memmaps).
    x : (n, d) float32
        The vectors the graph was built on (a read-only memmap is fine).
    xq : (nq, d) float32
        Prepared queries (:func:`~tidepool_cli.engine.distances.prepare_queries`).
    k : int
        Neighbours per query, >= 1.
    ef_search : int, optional
        Beam width at layer 0; :data:`DEFAULT_EF_SEARCH` when None.
    allowed : (n,) bool, optional
        Rows that may be returned (deletion vector and filter combined). Disallowed rows
        are still walked through. The navigation beam widens to ``ef / fraction``
        (at most :data:`FILTER_EF_MAX`); below ``filter_exact_below`` the search is an
        exact scan of the allowed rows.
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2): saves computing them for every visited row.
    filter_exact_below : float
        Allowed fraction under which the exact scan is used; 0 (default) always walks
        the graph: choosing between paths is the query planner's job
        (:mod:`tidepool_cli.ops.paths`).
    threads : int, optional
        Query batches searched concurrently; default: the CPUs this process may use,
        capped by ``OMP_NUM_THREADS``. Results do not depend on it.
    exclude : (nq,) int64, optional
        One row per query that the search treats as absent from the graph (not entered,
        expanded or returned): searching indexed rows as if they were new queries, which
        is how :mod:`~tidepool_cli.engine.calibrate` measures recall. A query left with
        fewer than k results is completed by the exact scan, which ignores ``exclude``.

    Returns
    -------
    D : (nq, k) float32
        Distances in the public convention, ascending, +inf padded.
    I : (nq, k) int64
        Row positions, -1 padded. Every query gets ``min(k, allowed rows)`` results: a
        query whose beam found fewer falls back to an exact scan.

    Raises
    ------
    InvalidInputError
        Shapes that do not match the graph, ``k < 1``, ``ef_search < 1``.
    """
    x = np.asarray(x)
    n = graph.levels.shape[0]
    xq = np.asarray(xq)
    if x.ndim != 2 or x.shape[0] != n:
        raise InvalidInputError(f"the graph has {n} nodes but the vectors have shape {x.shape}")
    if xq.ndim != 2 or xq.shape[1] != x.shape[1]:
        raise InvalidInputError(f"queries of shape {xq.shape} do not match dimension {x.shape[1]}")
    if int(k) < 1:
        raise InvalidInputError(f"k must be at least 1, got {k}")
    ef = DEFAULT_EF_SEARCH if ef_search is None else int(ef_search)
    if ef < 1:
        raise InvalidInputError(f"ef_search must be at least 1, got {ef_search}")
    k = int(k)
    ef = max(ef, k)
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    metric = graph.metric
    nq = xq.shape[0]

    n_allowed = n
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        if allowed.shape != (n,):
            raise InvalidInputError(f"allowed mask has shape {allowed.shape}, expected ({n},)")
        n_allowed = int(np.count_nonzero(allowed))
        if n_allowed == n:
            allowed = None
        elif n_allowed == 0 or n_allowed < filter_exact_below * n:
            return knn(xq, x, k, metric, xb_sqnorms=xb_sqnorms, allowed=allowed)
    width, expand = ef, SEARCH_EXPAND
    if allowed is not None:
        width = min(max(ef, math.ceil(ef * n / n_allowed)), max(ef, FILTER_EF_MAX))
        # A beam this wide would take width/ef times more hops, each sorting the whole
        # beam: expand proportionally more nodes per hop instead.
        expand = max(SEARCH_EXPAND, width // ef)

    D = np.full((nq, k), np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    per_query = n if n <= g.EXACT_VISITED_MAX else 4 * g.HASHED_VISITED_SLOTS
    batch = int(min(QUERY_BATCH, max(MIN_QUERY_BATCH, VISITED_BYTES // per_query)))
    # Threads only share out whole batches: splitting a small query set makes two
    # threads trade the GIL after every one of many small numpy calls, which on a
    # loaded machine costs more than the second core gives.
    starts = range(0, nq, batch)

    def run(s: int) -> None:
        qb = xq[s : s + batch]
        ex = None if exclude is None else exclude[s : s + batch]
        entry = _descend(graph, x, qb, xb_sqnorms, ex)
        cand, _ = g.beam_search(
            x,
            graph.layer0,
            qb,
            entry,
            width,
            metric=metric,
            xb_sqnorms=xb_sqnorms,
            allowed=allowed,
            n_results=ef,
            expand=expand,
            exclude=ex,
        )
        # Re-rank in query chunks whose gathered rows stay cache-resident.
        step = max(1, g.GATHER_CHUNK_BYTES // (4 * x.shape[1] * cand.shape[1]))
        for r0 in range(0, qb.shape[0], step):
            r1 = min(r0 + step, qb.shape[0])
            D[s + r0 : s + r1], I[s + r0 : s + r1] = rerank(qb[r0:r1], x, cand[r0:r1], k, metric)

    # Batches are independent and write disjoint rows; the heavy numpy calls
    # (gathers, einsum, sorts) release the GIL, so batches overlap on cores.
    parallel(run, starts, thread_count(threads))

    # The beam can miss allowed rows a filter leaves scattered: complete those queries exactly.
    short = np.flatnonzero(I[:, min(k, n_allowed) - 1] < 0)
    if short.size:
        D[short], I[short] = knn(xq[short], x, k, metric, xb_sqnorms=xb_sqnorms, allowed=allowed)
    return D, I


def _descend(graph: HnswGraph, x, xq, xb_sqnorms, exclude=None) -> np.ndarray:
    """Layer-0 entry nodes per query: (nq, e) int64, -1 padded.

    The paper descends greedily (ef = 1) from the entry point through every upper layer.
    The top layers hold few nodes: comparing each query with all nodes of the lowest
    layer with at most ``UPPER_SCAN_SIZE / d`` nodes finds the exact nearest of them,
    which is what the greedy walk approximates, in one step instead of several hops.
    The greedy walk continues below that layer. When the scanned layer is layer 1, its
    ``LAYER0_SEEDS`` nearest nodes all seed the layer-0 beam.

    The scan is an ``einsum``, not a BLAS GEMM: these products are small, and a
    multi-threaded BLAS call waits for a scheduler slice on every core, which on a
    loaded machine costs milliseconds per call.

    ``exclude`` (nq,) names a node per query that the descent never lands on.
    """
    nq, d = xq.shape
    if graph.max_level == 0:
        return np.full((nq, 1), graph.entry_point, dtype=np.int64)
    lvl = next(
        (i for i in range(1, graph.max_level + 1) if graph.upper_nodes[i - 1].size * d <= UPPER_SCAN_SIZE),
        graph.max_level,
    )
    nodes = graph.upper_nodes[lvl - 1]
    xs = np.asarray(x[nodes], dtype=np.float32)
    proxy = np.einsum("qd,nd->qn", xq, xs)
    if graph.metric == "l2":
        proxy *= -2.0
        proxy += xb_sqnorms[nodes] if xb_sqnorms is not None else sqnorms(xs)
    else:
        np.negative(proxy, out=proxy)
    if exclude is not None:
        pos = np.searchsorted(nodes, exclude).clip(max=nodes.size - 1)
        hit = np.flatnonzero(nodes[pos] == exclude)
        proxy[hit, pos[hit]] = np.inf
    if lvl == 1:
        # A few argmin passes beat a row-wise argpartition on these short rows.
        seeds = np.empty((nq, min(LAYER0_SEEDS, nodes.size)), dtype=np.int64)
        rows = np.arange(nq)
        for j in range(seeds.shape[1]):
            seeds[:, j] = best = proxy.argmin(axis=1)
            proxy[rows, best] = np.inf
        return nodes[seeds].astype(np.int64)
    cur = nodes[proxy.argmin(axis=1)].astype(np.int64)
    for lvl in range(lvl - 1, 0, -1):
        ids, _ = g.beam_search(
            x,
            graph.upper_neighbors[lvl - 1],
            xq,
            cur[:, None],
            1,
            metric=graph.metric,
            xb_sqnorms=xb_sqnorms,
            nodes=graph.upper_nodes[lvl - 1],
            exclude=exclude,
        )
        cur = ids[:, 0]
    return cur[:, None]
