"""Access paths: the ways one source (segment or WAL tail) can answer a query batch.

Each :class:`AccessPath` says whether it can answer on a source, offers a :class:`Plan`
for a batch (its knob, the recall its build measured at that knob, and its estimated
cost), and runs a plan. The planner (:mod:`tidepool_cli.ops.planner`) takes the cheapest
offer whose recall meets the target. A new path (quantized scan, IVF-PQ, Vamana, tiered
scan) is one more subclass appended to :data:`PATHS`.

Cost model
----------
A plan's cost is in seconds, measured when the index was built
(:mod:`tidepool_cli.engine.calibrate`): for each knob of the calibration curve, batches
of the segment's own rows were timed at 1, 300 and 2,048 queries, and so was the exact
scan (``exact_cost``). A batch of ``nq`` queries costs the piecewise-linear
interpolation of those points (extended linearly past 2,048). The work behind it is
counted in distance evaluations and bytes of vectors read:

* exact scan: ``nq * n`` distances, one pass over the ``n * d * 4`` bytes per query block;
* filtered exact scan: the same over the ``a`` allowed rows only, so its time is the
  exact scan's scaled by ``a / n``;
* HNSW at ef_search ``ef``: about ``ef * degree`` distances per query (``degree`` the
  mean layer-0 out-degree), each a gathered row, then ``ef`` candidates reranked;
* IVF at ``nprobe``: ``nlist`` centroid distances plus ``nprobe * n / nlist`` list rows
  per query, then the candidates reranked.
* quantized scan (a segment with codes, ``tidepool quantize``): ``nq * a`` code
  estimates, each counted as ``bytes_per_vector / (4 d)`` of a distance (a scan reads
  that fraction of the f32 bytes), plus ``rerank_per_query`` exact f32 distances per
  query as measured by ``quantize`` on the segment's own rows.

A filter that keeps a fraction ``f = a / n`` thins out what an index visits, so to find
as many allowed neighbours it must visit ``1 / f`` times as much: the graph widens its
beam (``ef / f``, done inside the kernel) and IVF probes ``nprobe / f`` lists (a forced
``--nprobe`` is taken as given). Their
distance counts and times scale by ``1 / f`` while the filtered exact scan's scale by
``f``: under a selective filter exact search wins *by cost*, which is the one place
the "go exact under a selective filter" rule lives.

Recall: the knob is the smallest on the curve whose measured recall reaches the target
(:func:`required_recall` adds the per-path margin between sampled rows and real queries).
Indexes built before curves existed offer their stored default with the target as
their recall, and their costs are compared in distance evaluations only.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tidepool_cli.engine.topk import QUERY_BATCH as EXACT_QUERY_BATCH
from tidepool_cli.engine.topk import candidate_count, knn
from tidepool_cli.errors import CorruptIndexError, UnsupportedFormatError
from tidepool_cli.ops.view import Source

FLOAT_BYTES = 4
"""Bytes per stored vector component (float32)."""

IVF_MISS_RATIO = 0.7
"""Sampled rows miss 0.7 as many IVF neighbours as held-out queries do (0.965 on the sample
for 0.95 delivered, docs/IVF.md): IVF's curve must reach ``1 - 0.7 * (1 - target)``."""

HNSW_MISS_RATIO = 1.0
"""The graph is calibrated leave-one-out, which errs on the safe side: no margin."""

@dataclass(frozen=True)
class Batch:
    """What a plan is made for: one query batch on one source.

    Attributes
    ----------
    nq : int
        Queries in the batch.
    k : int
    rows : int
        Rows of the source (dead ones included).
    allowed : int
        Rows that may be returned (live and passing the filter).
    dim : int
    """

    nq: int
    k: int
    rows: int
    allowed: int
    dim: int

    @property
    def fraction(self) -> float:
        """Allowed rows over all rows (1 without filter or deletes; never 0)."""
        return max(self.allowed, 1) / max(self.rows, 1)


@dataclass(frozen=True)
class Plan:
    """One path's offer for a batch.

    Attributes
    ----------
    path : str
        Name of the access path.
    knobs : dict of str to int
        Settings it will use (e.g. ``{"ef_search": 40}``); empty for exact scans.
    recall : float
        recall@10 its build measured at these settings (1 for exact scans).
    seconds : float or None
        Estimated time of the batch (None when the index has no measured costs).
    distances : int
        Estimated distance evaluations.
    reranked : int
        Candidates whose exact distance is computed at the end.
    rows_read : int
        Vectors read (a row read twice counts twice).
    """

    path: str
    knobs: dict[str, int]
    recall: float
    seconds: float | None
    distances: int
    reranked: int
    rows_read: int


@dataclass(frozen=True)
class SourceWork:
    """What one source did for one batch (``query --explain``).

    Attributes
    ----------
    source : str
        Segment name or "wal".
    path : str
        Access path that answered.
    knobs : dict of str to int
    expected_recall : float
        recall@10 the path's calibration promises at these knobs (1 for exact).
    estimated_seconds : float or None
        The cost model's estimate.
    distances : int
        Distance evaluations (exact for exact scans; the cost model's count for indexes).
    reranked : int
        Candidates re-ranked with exact distances.
    rows_read : int
        Vectors read.
    bytes_read : int
        ``rows_read * d * 4``.
    allowed : int
        Rows that may be returned.
    seconds : float
        Measured wall time of the search on this source.
    """

    source: str
    path: str
    knobs: dict[str, int]
    expected_recall: float
    estimated_seconds: float | None
    distances: int
    reranked: int
    rows_read: int
    bytes_read: int
    allowed: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form (README, ``--explain``)."""
        return {
            "source": self.source, "path": self.path, **self.knobs, "expected_recall": round(self.expected_recall, 4),
            "estimated_seconds": None if self.estimated_seconds is None else float(f"{self.estimated_seconds:.3g}"),
            "distances": self.distances, "reranked": self.reranked, "rows_read": self.rows_read,
            "bytes_read": self.bytes_read, "allowed": self.allowed, "seconds": float(f"{self.seconds:.3g}"),
        }


def required_recall(target: float, miss_ratio: float) -> float:
    """Calibrated recall a path needs so that real queries get ``target``.

    Parameters
    ----------
    target : float
        recall@10 asked for, in (0, 1].
    miss_ratio : float
        Misses on sampled rows per miss on real queries (:data:`IVF_MISS_RATIO`, ...).
    """
    return 1.0 - miss_ratio * (1.0 - target)


def _linear(cost: dict | None, nq: int, scale: float = 1.0) -> float | None:
    """Seconds of a batch of ``nq`` queries from a measured cost point, times ``scale``.

    Piecewise linear through the measured (batch size, seconds) points, extended past
    the largest batch with the slope of the last segment (threads and list grouping are
    already at full use there).
    """
    if not cost or not cost.get("seconds"):
        return None
    pts = sorted((int(b), float(t)) for b, t in cost["seconds"])
    if len(pts) == 1 or nq <= pts[0][0]:
        return pts[0][1] * max(nq, 1) / pts[0][0] * scale
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if nq <= b1:
            break
    return (t0 + (t1 - t0) * (nq - b0) / (b1 - b0)) * scale


def exact_cost(src: Source) -> dict | None:
    """The segment's timed exact scan, or None if no calibrated index timed it.

    Each build times it; per batch size the fastest measurement is kept (a busy machine
    only ever makes a timing longer).
    """
    if src.segment is None:
        return None
    costs = [c for c in (e.params.get("exact_cost") for e in src.segment.entry.indexes.values()) if c and c.get("seconds")]
    if not costs:
        return None
    best: dict[int, float] = {}
    for c in costs:
        for b, t in c["seconds"]:
            best[int(b)] = min(best.get(int(b), math.inf), float(t))
    return {"seconds": sorted(best.items())}


def _smoothed(curve: list[dict], i: int) -> dict:
    """Curve point ``i`` with each timing replaced by the fastest at this or any larger knob.

    A larger knob never does less work, so a larger time at a smaller knob is noise.
    """
    point = dict(curve[i])
    best: dict[int, float] = {}
    for c in curve[i:]:
        for b, t in c.get("seconds", []):
            best[int(b)] = min(best.get(int(b), math.inf), float(t))
    point["seconds"] = sorted(best.items())
    return point


class AccessPath(ABC):
    """One way to answer a batch on a source; subclasses set the class attributes.

    Attributes
    ----------
    name : str
        Reported in ``paths`` and ``--explain``.
    sidecar : str or None
        Manifest index key the path needs (None: the vectors alone).
    knob : str or None
        Its effort setting (``SearchParams`` field and manifest param of the same name).
    miss_ratio : float
        See :func:`required_recall`.
    """

    name = ""
    sidecar: str | None = None
    knob: str | None = None
    miss_ratio = 1.0

    def can_answer(self, src: Source, batch: Batch) -> bool:
        """Whether the path applies to this source and batch (its sidecar exists and did not fail to load)."""
        if self.sidecar is None:
            return True
        has = src.segment is not None and self.sidecar in src.segment.entry.indexes
        return has and src.indexes.get(self.sidecar, True) is not None

    @abstractmethod
    def offer(self, src: Source, batch: Batch, target: float, forced: int | None) -> Plan:
        """The plan for ``batch`` at recall ``target`` (or at the ``forced`` knob)."""

    @abstractmethod
    def run(self, src: Source, plan: Plan, xq: np.ndarray, k: int, mask: np.ndarray | None, metric: str,
            warn: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray] | None:
        """(D, I) of the batch, or None when the sidecar turned out damaged (warned)."""

    def params(self, src: Source) -> dict:
        """The manifest params of the path's sidecar on ``src``."""
        return src.segment.entry.indexes[self.sidecar].params

    def pick(self, src: Source, target: float, forced: int | None, default: int) -> tuple[int, float, dict | None]:
        """(knob, its calibrated recall, its curve point) for ``target``.

        The smallest knob of the curve whose recall reaches :func:`required_recall`; the
        largest measured when none does (its recall then says it falls short). Without a
        curve: the stored default (or ``default``), promised at the target.
        """
        p = self.params(src)
        curve = p.get("curve") or []
        if forced is not None:
            at = next((i for i, c in enumerate(curve) if c[self.knob] == forced), None)
            point = _smoothed(curve, at) if at is not None else None
            recall = point["recall"] if point else _interpolate(curve, self.knob, forced, target)
            return forced, recall, point
        if not curve:
            return int(p.get(self.knob, default)), target, None
        need = required_recall(target, self.miss_ratio)
        at = next((i for i, c in enumerate(curve) if c["recall"] >= need), len(curve) - 1)
        point = _smoothed(curve, at)
        # Report the recall real queries are expected to get, not the sample's.
        recall = 1.0 - (1.0 - point["recall"]) / self.miss_ratio
        return int(point[self.knob]), max(0.0, recall), point


def _interpolate(curve: list[dict], knob: str, value: int, fallback: float) -> float:
    """Recall at a knob between measured ones (the lower neighbour's: recall grows with the knob)."""
    below = [c for c in curve if c[knob] <= value]
    return below[-1]["recall"] if below else (curve[0]["recall"] if curve else fallback)


class ExactScan(AccessPath):
    """Blocked exact scan of every row (deletes and filters as a mask)."""

    name = "exact"

    def offer(self, src, batch, target, forced):
        blocks = math.ceil(batch.nq / EXACT_QUERY_BATCH)
        seconds = _linear(exact_cost(src), batch.nq)
        return Plan(self.name, {}, 1.0, seconds, batch.nq * batch.rows, batch.nq * min(batch.k, batch.allowed), blocks * batch.rows)

    def run(self, src, plan, xq, k, mask, metric, warn):
        return knn(xq, src.vectors, k, metric, xb_sqnorms=src.sqnorms, allowed=mask)


class FilteredExactScan(ExactScan):
    """Exact scan of the allowed rows only: gathers them, then scans the copy."""

    name = "exact-filtered"

    def can_answer(self, src, batch):
        return batch.allowed < batch.rows

    def offer(self, src, batch, target, forced):
        blocks = math.ceil(batch.nq / EXACT_QUERY_BATCH)
        seconds = _linear(exact_cost(src), batch.nq, batch.fraction)
        return Plan(self.name, {}, 1.0, seconds, batch.nq * batch.allowed, batch.nq * min(batch.k, batch.allowed), batch.allowed + blocks * batch.allowed)

    def run(self, src, plan, xq, k, mask, metric, warn):
        rows = np.flatnonzero(mask)
        sq = None if src.sqnorms is None else np.asarray(src.sqnorms)[rows]
        D, I = knn(xq, np.asarray(src.vectors[rows]), k, metric, xb_sqnorms=sq)
        return D, np.where(I >= 0, rows[np.maximum(I, 0)], -1)


class _IndexPath(AccessPath):
    """Shared part of paths backed by a sidecar index, loaded once per source."""

    verify = "small"
    """Checksums checked when the sidecar is loaded (see :func:`~tidepool_cli.storage.sidecars.open_sidecar`)."""

    def load(self, src: Source, warn: Callable[[str], None]):
        """The sidecar, or None (warned once) when it fails its checksums."""
        if self.sidecar not in src.indexes:
            from tidepool_cli.storage.sidecars import open_sidecar

            try:
                src.indexes[self.sidecar] = open_sidecar(src.segment.layout, src.segment.entry, self.sidecar, verify=self.verify)
            except (CorruptIndexError, UnsupportedFormatError) as exc:
                warn(f"{exc}; using exact search on {src.name} instead")
                src.indexes[self.sidecar] = None
        return src.indexes[self.sidecar]

    def _seconds(self, point: dict | None, nq: int, work_ratio: float) -> float | None:
        return _linear(point, nq, work_ratio) if point else None


class HnswPath(_IndexPath):
    """Beam search in the segment's HNSW graph (Malkov & Yashunin 2018)."""

    name = "hnsw"
    sidecar = "hnsw"
    knob = "ef_search"
    miss_ratio = HNSW_MISS_RATIO

    def offer(self, src, batch, target, forced):
        from tidepool_cli.engine.hnsw import DEFAULT_EF_SEARCH, DEFAULT_M

        ef, recall, point = self.pick(src, target, forced, DEFAULT_EF_SEARCH)
        p = self.params(src)
        # Layer 0 holds up to 2M neighbours; the build records the mean.
        degree = (p.get("avg_out_degree") or [2 * p.get("m", DEFAULT_M)])[0]
        ef_run = max(ef, batch.k)
        # The kernel widens the beam to ef / f under a filter (see the module docstring).
        width = ef_run / batch.fraction
        per_query = int(width * degree)
        ratio = width / ef_run if point is None else width / max(int(point[self.knob]), batch.k)
        seconds = self._seconds(point, batch.nq, ratio)
        return Plan(self.name, {self.knob: ef}, recall, seconds, batch.nq * per_query, batch.nq * ef_run, batch.nq * (per_query + ef_run))

    def run(self, src, plan, xq, k, mask, metric, warn):
        graph = self.load(src, warn)
        if graph is None:
            return None
        from tidepool_cli.engine.hnsw import search_hnsw

        # The planner already weighed the filter: the kernel must not switch paths itself.
        return search_hnsw(graph, src.vectors, xq, k, ef_search=plan.knobs[self.knob], allowed=mask,
                           xb_sqnorms=src.sqnorms, filter_exact_below=0.0)


class IvfPath(_IndexPath):
    """Probing the nearest posting lists of the segment's IVF index."""

    name = "ivf"
    sidecar = "ivf"
    knob = "nprobe"
    miss_ratio = IVF_MISS_RATIO

    def offer(self, src, batch, target, forced):
        from tidepool_cli.engine.ivf import default_nprobe

        p = self.params(src)
        nlist = int(p.get("nlist", 1))
        nprobe, recall, point = self.pick(src, target, forced, default_nprobe(nlist))
        # Under a filter, probe 1/f as many lists to see as many allowed rows (unless forced).
        run_probe = nprobe if forced is not None else min(nlist, math.ceil(nprobe / batch.fraction))
        per_query_rows = run_probe * batch.rows / max(nlist, 1)
        kk = candidate_count(batch.k, batch.allowed)
        seconds = self._seconds(point, batch.nq, run_probe / max(nprobe, 1))
        distances = int(batch.nq * (nlist + per_query_rows))
        knobs = {self.knob: run_probe}
        return Plan(self.name, knobs, recall, seconds, distances, batch.nq * kk, int(batch.nq * (per_query_rows + kk)))

    def run(self, src, plan, xq, k, mask, metric, warn):
        index = self.load(src, warn)
        if index is None:
            return None
        from tidepool_cli.engine.ivf import search_ivf

        return search_ivf(index, src.vectors, xq, k, nprobe=plan.knobs[self.knob], allowed=mask, xb_sqnorms=src.sqnorms)


class QuantizedScan(_IndexPath):
    """Scan of the segment's codes, exact f32 rerank of the rows whose bound could make the top k.

    :func:`~tidepool_cli.engine.quantize.cascade.cascade_search`: every returned distance
    is exact; a row is missed only when its code's error bound fails (the codec's
    calibrated quantile, or RaBitQ's probabilistic bound), so the plan promises the
    recall ``quantize`` measured on the segment's rows. The codes are checked in full
    when loaded (the scan reads them all anyway): a damaged codes sidecar is reported and
    the segment is searched exactly.
    """

    name = "quantized"
    sidecar = "codes"
    verify = "all"

    def offer(self, src, batch, target, forced):
        p = self.params(src)
        code_share = float(p.get("bytes_per_vector", FLOAT_BYTES * batch.dim)) / (FLOAT_BYTES * batch.dim)
        rerank = int(batch.nq * min(batch.allowed, max(batch.k, float(p.get("rerank_per_query", batch.allowed)))))
        distances = int(batch.nq * batch.allowed * code_share) + rerank
        return Plan(self.name, {}, float(p.get("calibrated_recall", 0.0)), None, distances, rerank, rerank)

    def run(self, src, plan, xq, k, mask, metric, warn):
        qc = self.load(src, warn)
        if qc is None:
            return None
        from tidepool_cli.engine.quantize.cascade import cascade_search

        res = cascade_search(xq, k, qc.quantizer, qc.codes, qc.factors, src.vectors, allowed=mask)
        return res.distances, res.ids, {"distances": res.scored, "reranked": res.f32_pairs, "rows_read": res.f32_rows}


PATHS: list[AccessPath] = [ExactScan(), FilteredExactScan(), HnswPath(), IvfPath(), QuantizedScan()]
"""Every access path, in order of preference among equal costs. Register a new one here."""


def timed_run(path: AccessPath, src: Source, plan: Plan, xq, k, mask, metric, warn, allowed: int):
    """Run ``plan`` and report what it did: ((D, I) or None, SourceWork)."""
    t0 = time.perf_counter()
    out = path.run(src, plan, xq, k, mask, metric, warn)
    # A path that counts its own work returns (D, I, {"distances", "reranked", "rows_read"}).
    done = out[2] if out is not None and len(out) > 2 else {}
    out = out[:2] if out is not None else None
    rows_read = int(done.get("rows_read", plan.rows_read))
    work = SourceWork(src.name, plan.path, dict(plan.knobs), plan.recall, plan.seconds, int(done.get("distances", plan.distances)),
                      int(done.get("reranked", plan.reranked)), rows_read, rows_read * src.vectors.shape[1] * FLOAT_BYTES, allowed,
                      time.perf_counter() - t0)
    return out, work


__all__ = ["PATHS", "AccessPath", "Batch", "Plan", "SourceWork", "ExactScan", "FilteredExactScan", "HnswPath", "IvfPath", "QuantizedScan",
           "required_recall", "exact_cost", "timed_run"]
