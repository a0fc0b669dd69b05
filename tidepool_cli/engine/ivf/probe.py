"""Probing: which posting lists each query of a batch scans.

One GEMM between the queries and the centroids, then the ``nprobe`` nearest lists of
every query, plus every list whose centroid score is within float error of the
``nprobe``-th (:mod:`~tidepool_cli.engine.order`), ties to the lower list id. The
(query, list) pairs come back grouped by list, so every probed list is decoded and
scored once per batch.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.distances import sqnorms
from tidepool_cli.engine.ivf.index import IvfIndex
from tidepool_cli.engine.ivf.products import serial_matmul
from tidepool_cli.engine.order import Slack, stable_order, tie_aware_mask
from tidepool_cli.engine.threads import Runner

PROBE_QUERIES = 2048
"""Queries per centroid GEMM, bounding the (queries, nlist) proxy block."""

BOUND_LISTS = 2
"""Nearest lists per query scanned first to bound its kk-th best proxy. With one, a
query whose nearest list is short keeps every entry of every list; two halve the
entries kept on glove-50-angular, three gain little more."""

THREADED_GEMM_MNK = 1 << 26
"""Centroid products of at least this many multiply-adds are left to BLAS threads."""


def probe(index: IvfIndex, xq: np.ndarray, nprobe: int, run: Runner) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probed (list, query) pairs grouped by list, and every query's nearest lists.

    Parameters
    ----------
    index : IvfIndex
    xq : (nq, d) float32
        Prepared queries.
    nprobe : int
        Lists per query, ``1 <= nprobe <= nlist``.
    run : Runner
        Shares the per-query selections between threads.

    Returns
    -------
    lids, qids : (p,) int64
        Pairs sorted by list id, queries ascending within a list. Each query probes its
        ``nprobe`` nearest lists (ties to the lower list id) and every further list
        whose centroid score is within float error of the ``nprobe``-th, so
        ``p >= nq * nprobe``.
    near : (nq, min(BOUND_LISTS, nprobe)) int64
        Each query's nearest probed lists, distinct.
    """
    c = index.centroids
    nlist = c.shape[0]
    ct = np.ascontiguousarray((c * (-2.0 if index.metric == "l2" else -1.0)).T, dtype=np.float32)
    csq = sqnorms(c) if index.metric == "l2" else None
    nq, nb = xq.shape[0], min(BOUND_LISTS, nprobe)
    near = np.empty((nq, nb), dtype=np.int64)
    cmax = float(np.sqrt(sqnorms(c).max())) if index.metric == "dot" else None
    pairs = []
    for s in range(0, nq, PROBE_QUERIES):
        # One GEMM per chunk on the calling thread, threaded by BLAS when it is large
        # enough to be worth it; the selection runs on our threads.
        qb = xq[s : s + PROBE_QUERIES]
        big = qb.shape[0] * ct.size >= THREADED_GEMM_MNK
        proxy = qb @ ct if big else serial_matmul(qb, ct)
        if csq is not None:
            proxy += csq
        step = -(-proxy.shape[0] // run.workers)
        slack = Slack(qb, index.metric, cmax)

        def select(r, proxy=proxy, s=s, slack=slack):
            block = proxy[r : r + step]
            # Lists whose centroid score is within float error of the nprobe-th are
            # probed too, so the probed set does not depend on the BLAS.
            mask = tie_aware_mask(block, nprobe, nprobe, slack, slice(r, r + block.shape[0]), loose=True)
            # Repeated argmin walks the lists in (proxy, id) order, the order the mask
            # was cut in, so the nb nearest are always probed lists.
            rows = np.arange(block.shape[0])
            out = near[s + r : s + r + block.shape[0]]
            saved = []
            for j in range(nb):
                out[:, j] = block.argmin(axis=1)
                saved.append(block[rows, out[:, j]])
                block[rows, out[:, j]] = np.inf
            for j in range(nb):
                block[rows, out[:, j]] = saved[j]
            return np.flatnonzero(mask) + (s + r) * nlist

        pairs += run.map(select, range(0, proxy.shape[0], step))
    qids, lids = np.divmod(np.concatenate(pairs), nlist)
    order = stable_order(lids, nlist)
    return lids[order], qids[order], near
