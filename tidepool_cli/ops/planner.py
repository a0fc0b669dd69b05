"""The planner: per source and per query batch, the cheapest access path that meets a recall.

Every path of :data:`tidepool_cli.ops.paths.PATHS` that can answer on a source offers a
plan (its knob for the recall target, the recall its build measured there, its cost as
estimated by the cost model documented in :mod:`tidepool_cli.ops.paths`). The planner
keeps the offers whose recall reaches the target (exact scans always do) and takes the
cheapest: by estimated seconds when every offer has measured costs, else by distance
evaluations (indexes built before costs were measured).

Forcing: ``exact`` allows only the exact scans (the filtered one when a filter makes it
cheaper); ``ef_search`` / ``nprobe`` force the path they name, at that knob, on every
segment that has its index (both set: the cheaper of the two). The WAL tail and
segments without an index are always scanned exactly.

A sidecar that fails its checksums is reported once as a warning and the segment falls
back to exact search, so a damaged index never returns wrong results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.paths import PATHS, AccessPath, Batch, Plan, SourceWork, timed_run
from tidepool_cli.ops.view import Source

DEFAULT_RECALL = 0.95
"""recall@10 a query gets unless it asks (``--recall``) or the build set another target."""

RECALL_SLACK = 1e-9
"""Float tolerance when a plan's recall is compared with the target (0.95 stored as 0.9500...1)."""


@dataclass(frozen=True)
class SearchParams:
    """Query-time settings of the access paths.

    Attributes
    ----------
    exact : bool
        Force exact search on every source.
    ef_search : int or None
        Force the HNSW path at this beam width where a segment has a graph.
    nprobe : int or None
        Force the IVF path probing this many lists where a segment has an IVF index.
    recall : float or None
        recall@10 target in (0, 1]; None: each segment's build target
        (``recall_target`` in its index params), else :data:`DEFAULT_RECALL`.
    """

    exact: bool = False
    ef_search: int | None = None
    nprobe: int | None = None
    recall: float | None = None

    def __post_init__(self) -> None:
        if self.recall is not None:
            check_recall(self.recall)


def check_recall(recall: float) -> None:
    """Refuse a recall target outside (0, 1].

    Raises
    ------
    InvalidInputError
    """
    if not 0.0 < recall <= 1.0:
        raise InvalidInputError(f"--recall must be in (0, 1], got {recall}")


def segment_target(src: Source, params: SearchParams) -> float:
    """The recall@10 target on ``src``: the query's, else the build's, else :data:`DEFAULT_RECALL`.

    Parameters
    ----------
    src : Source
    params : SearchParams

    Returns
    -------
    float
    """
    if params.recall is not None:
        return params.recall
    if src.segment is not None:
        targets = [e.params["recall_target"] for e in src.segment.entry.indexes.values() if "recall_target" in e.params]
        if targets:
            return float(max(targets))
    return DEFAULT_RECALL


def offers(src: Source, batch: Batch, params: SearchParams) -> list[tuple[AccessPath, Plan]]:
    """The plans the eligible paths make for ``batch`` on ``src`` (before the choice).

    Eligible: the forced paths (``ef_search``, ``nprobe``) where the source has their
    index; otherwise every path that can answer (only exact scans with ``exact``).
    """
    target = segment_target(src, params)
    forced = {p.knob: getattr(params, p.knob) for p in PATHS if p.knob and getattr(params, p.knob) is not None}
    usable = [p for p in PATHS if p.can_answer(src, batch)]
    named = [p for p in usable if p.knob in forced]
    if params.exact:
        usable = [p for p in usable if p.sidecar is None]
    elif named:
        usable = named
    return [(p, p.offer(src, batch, target, forced.get(p.knob))) for p in usable]


def choose(src: Source, batch: Batch, params: SearchParams) -> tuple[AccessPath, Plan]:
    """The plan that answers ``batch`` on ``src``.

    Parameters
    ----------
    src : Source
    batch : Batch
    params : SearchParams

    Returns
    -------
    path : AccessPath
    plan : Plan
        The cheapest offer whose recall meets the target (a forced path meets it by
        definition; when none does, the cheapest of all, which is then the exact scan).
    """
    target = segment_target(src, params)
    options = offers(src, batch, params)
    forced = not params.exact and any(p.knob is not None and getattr(params, p.knob) is not None for p, _ in options)
    meeting = [(p, plan) for p, plan in options if forced or plan.recall >= target - RECALL_SLACK] or options
    if all(plan.seconds is not None for _, plan in meeting):
        key = lambda o: o[1].seconds  # noqa: E731
    else:
        key = lambda o: o[1].distances  # noqa: E731
    return min(meeting, key=key)  # min keeps the first of equal costs: PATHS order


def search_source(
    src: Source,
    allowed: np.ndarray,
    xq: np.ndarray,
    k: int,
    metric: str,
    params: SearchParams,
    warn: Callable[[str], None],
    n_allowed: int | None = None,
    plans: dict | None = None,
) -> tuple[np.ndarray, np.ndarray, SourceWork]:
    """Top-k of one source for a batch of prepared queries.

    Parameters
    ----------
    src : Source
    allowed : (n,) bool
        Rows that may be returned (live and passing the filter).
    xq : (nq, d) float32
    k : int
    metric : str
    params : SearchParams
    warn : callable(str)
        Receives the warning about a damaged sidecar.
    n_allowed : int, optional
        ``allowed.sum()`` when the caller knows it.
    plans : dict, optional
        The caller's cache of choices for this source, keyed by batch shape: a stream of
        one-query batches plans once.

    Returns
    -------
    D : (nq, k) float32
    I : (nq, k) int64
        Positions in the source, -1 padded.
    work : SourceWork
        The path used and what it did.
    """
    if n_allowed is None:
        n_allowed = int(np.count_nonzero(allowed))
    batch = Batch(xq.shape[0], k, src.rows, n_allowed, src.vectors.shape[1])
    key = (batch, params)
    if plans is None or key not in plans or not plans[key][0].can_answer(src, batch):
        chosen = choose(src, batch, params)
        if plans is not None:
            plans[key] = chosen
    path, plan = plans[key] if plans is not None else chosen
    mask = None if n_allowed == src.rows else allowed
    out, work = timed_run(path, src, plan, xq, k, mask, metric, warn, n_allowed)
    if out is None:  # damaged sidecar: the exact scan answers
        fallback = PATHS[0]
        out, work = timed_run(fallback, src, fallback.offer(src, batch, 1.0, None), xq, k, mask, metric, warn, n_allowed)
    return out[0], out[1], work
