"""Searching an IVF index: probe, scan, then rerank with exact distances.

Search is batched, because NumPy pays per call and BLAS pays per byte: the probe
(:mod:`.probe`) picks each query's lists, the scan (:mod:`.scan`) scores them and cuts
candidates tie-aware, and :func:`~tidepool_cli.engine.topk.rerank` computes exact
distances of those that can still reach the top k, so a row gets the distance exact
search gives it, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tidepool_cli.engine.ivf.index import IvfIndex, check_int, default_nprobe
from tidepool_cli.engine.ivf.probe import probe
from tidepool_cli.engine.ivf.scan import FlatLists, ListScorer, scan
from tidepool_cli.engine.order import Slack
from tidepool_cli.engine.threads import runner, workers
from tidepool_cli.engine.topk import candidate_count, knn, rerank
from tidepool_cli.errors import InvalidInputError

SCAN_QUERIES = 16384
"""Queries per scan batch: each probed list is decoded once per batch (at most 65,536,
so that query numbers fit the 16-bit keys NumPy radix-sorts)."""

SCAN_PAIRS = 1 << 22
"""At most this many (query, probed list) pairs per scan batch, bounding its index arrays."""

RERANK_FLOATS = 1 << 24
"""Gathered candidate floats per rerank call (64 MiB)."""

EXACT_ROWS_PER_LIST = 8
"""A filter leaving fewer rows than this many per list sends the search to exact search:
on glove-50-angular a 5% filter (7.8 rows per list) took 0.47 s by IVF at recall 0.93
and 0.26 s by exact search for 2,000 queries."""

PARALLEL_MIN_PAIRS = 1 << 14
"""A batch with fewer (query, probed list) pairs runs on the calling thread alone."""


def search_ivf(
    index: IvfIndex,
    x: np.ndarray,
    xq: np.ndarray,
    k: int,
    *,
    nprobe: int | None = None,
    allowed: np.ndarray | None = None,
    xb_sqnorms: np.ndarray | None = None,
    list_scorer: Callable[..., ListScorer] = FlatLists,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest rows by probing the ``nprobe`` nearest posting lists.

    Parameters
    ----------
    index : IvfIndex
    x : (n, d) float32
        The vectors the index was built on (a memmap is fine: only probed lists' rows
        and the final candidates are read).
    xq : (nq, d) float32
        Prepared queries (:func:`~tidepool_cli.engine.distances.prepare_queries`).
    k : int
        Neighbours per query, ``k >= 0``.
    nprobe : int, optional
        Lists probed per query, ``>= 1`` (values above nlist probe every list);
        :func:`default_nprobe` if None.
    allowed : (n,) bool, optional
        Rows that may be returned (deletion vector and filter combined).
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x``; computed for the probed rows if absent (l2, and dot,
        whose error bound needs the largest norm).
    list_scorer : callable(index, x, xq, allowed, xb_sqnorms, workers) -> ListScorer
        How posting lists are scored (:class:`~tidepool_cli.engine.ivf.scan.ListScorer`);
        float32 rows by default.

    Returns
    -------
    D : (nq, k) float32
        Distances in the public convention, ascending, computed as exact search computes
        them; +inf padding.
    I : (nq, k) int64
        Row positions, -1 where D is +inf. Ties break by lower position.

    Raises
    ------
    InvalidInputError
        Shapes that disagree with the index, negative ``k``, ``nprobe < 1``.
    CorruptIndexError
        A probed posting list fails its CRC32 or decodes to an invalid set.

    Notes
    -----
    Every query gets ``min(k, number of allowed rows)`` results: one whose probed lists
    hold fewer allowed rows is answered by :func:`~tidepool_cli.engine.topk.knn`. When a
    filter leaves fewer rows than a query would scan anyway (``n * nprobe / nlist``) or
    fewer than ``EXACT_ROWS_PER_LIST * nlist`` (scoring them costs about what scoring the
    centroids does), the whole batch goes to exact search, which is then as cheap and
    exact.

    Batches of at least ``PARALLEL_MIN_PAIRS`` (query, list) pairs are scored on one
    thread per CPU this process may use, capped by ``OMP_NUM_THREADS``; results do not
    depend on the number of threads.
    """
    xq, k, nprobe, allowed = _check_search(index, x, xq, k, nprobe, allowed)
    nq, n = xq.shape[0], index.universe
    D = np.full((nq, k), np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    n_allowed = n if allowed is None else int(np.count_nonzero(allowed))
    if nq == 0 or k == 0 or n_allowed == 0:
        return D, I
    if allowed is not None and n_allowed == n:
        allowed = None
    if allowed is not None and n_allowed < max(nprobe * n / index.nlist, EXACT_ROWS_PER_LIST * index.nlist):
        return knn(xq, x, k, index.metric, xb_sqnorms=xb_sqnorms, allowed=allowed)
    kk = candidate_count(k, n_allowed)
    # Threads pay off only when there is enough to share; small batches run inline.
    n_threads = workers() if nq * nprobe >= PARALLEL_MIN_PAIRS else 1
    with runner(n_threads) as run:
        batch = max(1, min(SCAN_QUERIES, SCAN_PAIRS // nprobe))
        for s in range(0, nq, batch):
            qb = xq[s : s + batch]
            lids, qids, near = probe(index, qb, nprobe, run)
            slack = Slack(qb, index.metric)
            lists = list_scorer(index, x, qb, allowed, xb_sqnorms, run.workers)
            cand, cval = scan(index, lists, qb, lids, qids, near, k, kk, slack, run)
            D[s : s + qb.shape[0]], I[s : s + qb.shape[0]] = _rerank(index, x, qb, cand, cval, k, slack, run)
    short = np.flatnonzero(I[:, min(k, n_allowed) - 1] < 0)
    if short.size:
        D[short], I[short] = knn(xq[short], x, k, index.metric, xb_sqnorms=xb_sqnorms, allowed=allowed)
    return D, I


def _check_search(index, x, xq, k, nprobe, allowed):
    """Validated (xq, k, nprobe, allowed) for :func:`search_ivf`."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xq.ndim != 2 or xq.shape[1] != index.dim:
        raise InvalidInputError(f"queries must have shape (nq, {index.dim}), got {xq.shape}")
    if x.shape != (index.universe, index.dim):
        raise InvalidInputError(
            f"vectors must have the shape the index was built on, {(index.universe, index.dim)}, got {x.shape}"
        )
    k = check_int(k, "k", 0)
    nprobe = default_nprobe(index.nlist) if nprobe is None else check_int(nprobe, "nprobe", 1)
    if allowed is not None:
        allowed = np.asarray(allowed)
        if allowed.dtype != bool or allowed.shape != (index.universe,):
            raise InvalidInputError(f"allowed must be a ({index.universe},) bool array, got {allowed.dtype} {allowed.shape}")
    return xq, k, min(nprobe, index.nlist), allowed


def _rerank(index, x, xq, cand, cval, k, slack, run) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances and top k of the candidates that can still reach the top k.

    Candidates are sorted by proxy; those past :func:`_reach` cannot beat the k-th one
    whatever the float32 rounding, so rerank never reads their rows. Queries are grouped
    by how many candidates they keep and reranked group by group.
    """
    nq, kk = cand.shape
    order = np.argsort(cval, axis=1, kind="stable")
    cand, cval = np.take_along_axis(cand, order, 1), np.take_along_axis(cval, order, 1)
    width = _reach(cval, k, slack)
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    jobs = []
    for w in np.unique(width).tolist():
        rows = np.flatnonzero(width == w)
        step = max(1, min(RERANK_FLOATS // (w * index.dim), -(-rows.size // run.workers)))
        jobs += [(w, rows[r : r + step]) for r in range(0, rows.size, step)]

    def job(item):
        w, rows = item
        D[rows], I[rows] = rerank(xq[rows], x, cand[rows, :w], k, index.metric)

    run.map(job, jobs)
    return D, I


def _reach(cval: np.ndarray, k: int, slack: Slack) -> np.ndarray:
    """How many of each query's proxy-sorted candidates can end up in its exact top k.

    A candidate whose proxy exceeds the k-th one by more than the float-error bound of
    :class:`~tidepool_cli.engine.order.Slack` is farther for certain; the others are
    reranked.

    Parameters
    ----------
    cval : (nq, kk) float32, ascending per row, +inf padded
    k : int
    slack : Slack
        Error bounds of the batch's queries.

    Returns
    -------
    (nq,) int64 in ``[min(k, kk), kk]``
    """
    nq, kk = cval.shape
    if kk <= k:
        return np.full(nq, kk, dtype=np.int64)
    limit = slack.limit(cval[:, k - 1])[:, None]
    # Strictly beyond: a candidate at exactly the limit could still tie the k-th.
    return np.maximum(np.count_nonzero(~(cval > limit), axis=1), min(k, kk)).astype(np.int64)
