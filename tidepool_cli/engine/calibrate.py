"""Pick an index's default search effort from its own data.

A fixed default (ef_search, nprobe) is right for one data set and poor for another: on
glove-50-angular the ef that gives recall@10 0.97 on SIFT gives 0.72. So each index is
calibrated when it is built: a sample of its own rows is searched, as queries, at
increasing effort, and the smallest setting whose recall@10 against exact search reaches
the target becomes that index's default. A row is its own nearest neighbour, so it is
left out of both the found and the true lists (recall is over the next k).

How a sampled row compares with a real query depends on the index, so each index type
sets its own target (measured on the reference sets, docs/HNSW.md and docs/IVF.md):

* HNSW. A row searched in a graph that holds it is an easy query: the walk reaches the
  row itself, whose neighbour list is nearly its answer (on a 30,000-row slice of
  glove-50-angular, recall@10 0.992 for rows against 0.954 for held-out queries at ef
  16). So the search treats each sampled row as absent (``exclude``). That errs the
  other way: the row was a hub its neighbours were pruned in favour of, and without it
  they are harder to reach. Leave-one-out recall is 0.01 to 0.15 *below* that of real
  queries, a safe side: the graph target is the promised 0.95 itself.
* IVF. A row in its own posting list shortens nothing, and sampled rows track held-out
  queries within -0.02 / +0.01; the target is 0.965 to cover that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.engine.topk import knn

CALIBRATION_QUERIES = 300
"""Rows searched as queries; recall over 3,000 neighbours resolves about ±0.01."""

LADDER_RATIO = 1.25
"""Each step of a ladder costs about a quarter more search effort than the one before."""


def calibrate(
    search: Callable[[np.ndarray, int, int, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x: np.ndarray,
    metric: str,
    ladder: Sequence[int],
    *,
    target: float,
    k: int = 10,
    sample: int = CALIBRATION_QUERIES,
    seed: int = 0,
    xb_sqnorms: np.ndarray | None = None,
) -> tuple[int, float]:
    """The smallest setting of ``ladder`` whose recall@k on sampled rows reaches ``target``.

    Parameters
    ----------
    search : callable(xq, k, setting, rows) -> (D, I)
        The index search at one effort setting; ``xq`` (m, d) float32 are the rows
        ``rows`` (m,) int64 of ``x``, which the search may leave out; returns (m, k)
        distances and positions.
    x : (n, d) float32
        The indexed rows (unit rows for cosine).
    metric : {"l2", "cosine", "dot"}
    ladder : sequence of int
        Increasing settings to try.
    target : float
        recall@k on the sample the chosen setting must reach.
    k : int
    sample : int
        Rows used as queries.
    seed : int

    Returns
    -------
    setting : int
        The chosen setting (the last of ``ladder`` if none reaches the target).
    recall : float
        Its recall@k on the sample.
    """
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    xq = np.ascontiguousarray(x[rows], dtype=np.float32)
    kk = min(k + 1, n)
    td, ti = knn(xq, x, kk, metric, xb_sqnorms=xb_sqnorms)
    td, ti = _without_self(td, ti, rows, kk - 1)
    recall = 0.0
    for setting in ladder:
        fd, fi = search(xq, kk, setting, rows)
        fd, fi = _without_self(fd, fi, rows, kk - 1)
        recall = recall_at_k(fi, ti, kk - 1, found_dist=fd, gt_dist=td) if kk > 1 else 1.0
        if recall >= target:
            return setting, recall
    return ladder[-1], recall


def geometric_ladder(start: int, stop: int, ratio: float = LADDER_RATIO) -> list[int]:
    """Increasing integer settings from ``start`` to ``stop`` (both included), ``ratio`` apart.

    Parameters
    ----------
    start, stop : int
        First and last setting, 1 <= start <= stop.
    ratio : float
        Growth per step, > 1.

    Returns
    -------
    list of int
        e.g. ``geometric_ladder(16, 64)`` is ``[16, 20, 25, 31, 39, 49, 61, 64]``.
    """
    steps = [start]
    while steps[-1] < stop:
        steps.append(min(stop, max(steps[-1] + 1, round(steps[-1] * ratio))))
    return steps


def _without_self(D: np.ndarray, I: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop each query's own row from its result list (or its last entry if absent)."""
    keep = I != rows[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
