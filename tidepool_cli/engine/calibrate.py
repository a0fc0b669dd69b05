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

Besides the one default, a build keeps the whole *curve*: every setting of the ladder up
to the first whose recall reaches :data:`CURVE_TOP`, each with its measured recall@10 and
its measured search time, for one query and per query of the sample batch. Queries
then ask for a recall (``query --recall``) and get the smallest setting whose calibrated
recall reaches it; the planner compares the paths' times (:mod:`tidepool_cli.ops.paths`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.engine.topk import knn

CALIBRATION_QUERIES = 300
"""Rows searched as queries; recall over 3,000 neighbours resolves about ±0.01."""

LADDER_RATIO = 1.25
"""Each step of a ladder costs about a quarter more search effort than the one before."""

CURVE_TOP = 0.998
"""The curve climbs the ladder until recall@10 on the sample reaches this (or the ladder
ends): high enough that ``query --recall 0.99`` finds a setting on every index type."""

SINGLE_QUERY_REPEATS = 5
"""One-query timings per setting; the fastest is kept (noise on a busy machine only adds)."""

TIMING_QUERIES = 2048
"""Rows of the large timed batch: batches this size already use every thread and group
queries per posting list as large batches do, so costs extrapolate linearly from here."""


@dataclass(frozen=True)
class CurvePoint:
    """One measured setting of an index.

    Attributes
    ----------
    setting : int
        The knob (ef_search, nprobe).
    recall : float
        recall@10 on the sampled rows (tie-aware, against exact search).
    seconds : list of (int, float)
        Measured (batch size, seconds for the whole batch), increasing batch sizes: one
        query alone, the recall sample, and :data:`TIMING_QUERIES` rows.
    """

    setting: int
    recall: float
    seconds: list[tuple[int, float]]

    def to_dict(self, knob: str) -> dict:
        """Manifest form: ``{knob: setting, "recall": r, "seconds": [[nq, s], ...]}``."""
        return {knob: self.setting, "recall": round(self.recall, 4), "seconds": [[int(b), float(f"{t:.3g}")] for b, t in self.seconds]}


@dataclass(frozen=True)
class Calibration:
    """What :func:`calibrate` measured.

    Attributes
    ----------
    setting : int
        Smallest setting whose recall reaches the target (the last measured if none does).
    recall : float
        Its recall@k on the sample.
    curve : list of CurvePoint
        Every measured setting, increasing.
    exact : CurvePoint
        The exact scan, timed the same way (setting 0, recall 1).
    """

    setting: int
    recall: float
    curve: list[CurvePoint]
    exact: CurvePoint


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
    top: float = CURVE_TOP,
) -> Calibration:
    """Measure recall@k and search time along ``ladder``; pick the default for ``target``.

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
        recall@k on the sample the default setting must reach.
    k : int
    sample : int
        Rows used as queries.
    seed : int
    xb_sqnorms : (n,) float32, optional
    top : float
        The curve stops at the first setting whose recall reaches ``max(top, target)``.

    Returns
    -------
    Calibration
    """
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    xq = np.ascontiguousarray(x[rows], dtype=np.float32)
    big = np.sort(rng.choice(n, size=min(TIMING_QUERIES, n), replace=False))
    xbig = np.ascontiguousarray(x[big], dtype=np.float32)
    kk = min(k + 1, n)

    def exact_search(q, r):
        return knn(q, x, kk, metric, xb_sqnorms=xb_sqnorms)

    t0 = time.perf_counter()
    td, ti = exact_search(xq, rows)
    t_sample = time.perf_counter() - t0
    exact = CurvePoint(0, 1.0, _timings(exact_search, xq, rows, xbig, big, t_sample))
    td, ti = _without_self(td, ti, rows, kk - 1)
    curve: list[CurvePoint] = []
    chosen = None
    for setting in ladder:
        def run(q, r, s=setting):
            return search(q, kk, s, r)

        t0 = time.perf_counter()
        fd, fi = run(xq, rows)
        t_sample = time.perf_counter() - t0
        fd, fi = _without_self(fd, fi, rows, kk - 1)
        recall = recall_at_k(fi, ti, kk - 1, found_dist=fd, gt_dist=td) if kk > 1 else 1.0
        curve.append(CurvePoint(int(setting), float(recall), _timings(run, xq, rows, xbig, big, t_sample)))
        if chosen is None and recall >= target:
            chosen = curve[-1]
        if recall >= max(top, target):
            break
    chosen = chosen or curve[-1]
    return Calibration(chosen.setting, chosen.recall, curve, exact)


def _timings(search, xq, rows, xbig, big, t_sample: float) -> list[tuple[int, float]]:
    """(batch size, seconds) for one query, the sample (already timed) and the large batch."""
    out = [(1, _one_query_seconds(search, xq, rows))]
    if len(rows) > 1:
        out.append((len(rows), t_sample))
    if len(big) > len(rows):
        t0 = time.perf_counter()
        search(xbig, big)
        out.append((len(big), time.perf_counter() - t0))
    return out


def _one_query_seconds(search: Callable[[np.ndarray, np.ndarray], object], xq: np.ndarray, rows: np.ndarray) -> float:
    """Fastest of :data:`SINGLE_QUERY_REPEATS` one-query searches, in seconds."""
    times = []
    for i in range(min(SINGLE_QUERY_REPEATS, len(rows))):
        t0 = time.perf_counter()
        search(xq[i : i + 1], rows[i : i + 1])
        times.append(time.perf_counter() - t0)
    return float(min(times))


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
