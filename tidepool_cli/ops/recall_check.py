"""``tidepool stats INDEX --recall-queries FILE``: the recall an index delivers on your queries.

The queries run twice on one snapshot: through the paths a plain ``tidepool query``
would take (the planner's defaults, or the given settings) and through exact search.
recall@k is then counted against the exact answers (tie-aware,
:func:`~tidepool_cli.engine.recall.recall_per_query`), with a 95% confidence interval
over queries (normal approximation of the mean of per-query recalls, clipped to
[0, 1]). Nothing is written: the index is only read.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.recall import recall_per_query
from tidepool_cli.ops.inputs import read_input
from tidepool_cli.ops.planner import SearchParams
from tidepool_cli.ops.query import QUERY_BATCH_ROWS, Searcher

CONFIDENCE_Z = 1.96
"""Standard normal quantile of a two-sided 95% interval."""


@dataclass(frozen=True)
class RecallReport:
    """Delivered recall on a set of queries.

    Attributes
    ----------
    queries : int
    k : int
    recall_at_k : float
        Mean recall@k of the default paths against exact search.
    ci_low, ci_high : float
        95% confidence interval of that mean.
    recall_target : float or None
        The target the queries ran with (None: each segment's build target).
    paths : dict of str to list of str
        Per source, the access paths the planner took.
    """

    queries: int
    k: int
    recall_at_k: float
    ci_low: float
    ci_high: float
    recall_target: float | None
    paths: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``stats --json`` key ``recall_queries``)."""
        return asdict(self)


def delivered_recall(index: str | Path, queries: str | Path, *, k: int = 10, input_format: str = "auto",
                     params: SearchParams | None = None) -> RecallReport:
    """recall@k that ``index`` delivers on the query file ``queries``.

    Parameters
    ----------
    index : str or Path
    queries : str or Path
        Query vectors (npy, fvecs, bvecs or JSONL with "vector").
    k : int
    input_format : str
    params : SearchParams, optional
        Settings of the approximate run (default: the planner's defaults).

    Returns
    -------
    RecallReport

    Raises
    ------
    InvalidInputError
        Unreadable queries, wrong dimension, k < 1.
    IndexNotFoundError, CorruptIndexError, UnsupportedFormatError
    """
    searcher = Searcher(index, params=params)
    exact = copy.copy(searcher)
    exact.params = SearchParams(exact=True)
    per_query, paths = [], {}
    for batch in read_input(queries, input_format, QUERY_BATCH_ROWS):
        got = searcher.search(batch.vectors, k)
        truth = exact.search(batch.vectors, k)
        for name, path in got.paths.items():
            paths.setdefault(name, [])
            if path not in paths[name]:
                paths[name].append(path)
        f, g = _codes(got.ids, truth.ids, k)
        width = g.shape[1]
        gd = np.full((len(truth.ids), k), np.inf, np.float32)
        gd[:, :width] = truth.distances[:, :width]
        fd = np.full((len(got.ids), k), np.inf, np.float32)
        fd[:, : got.distances.shape[1]] = got.distances[:, :k]
        per_query.append(recall_per_query(f, g, width, found_dist=fd[:, :width], gt_dist=gd[:, :width]) if width else np.ones(len(f)))
    r = np.concatenate(per_query) if per_query else np.zeros(0)
    mean = float(r.mean()) if r.size else 1.0
    half = CONFIDENCE_Z * float(r.std(ddof=1)) / math.sqrt(r.size) if r.size > 1 else 0.0
    return RecallReport(int(r.size), k, round(mean, 4), round(max(0.0, mean - half), 4), round(min(1.0, mean + half), 4),
                        searcher.params.recall, paths)


def _codes(found: list[list[Any]], truth: list[list[Any]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """External ids (int or str) as int codes, -1 padded: (nq, k) found, (nq, w) truth."""
    width = max((len(t) for t in truth), default=0)
    flat = [i for row in found for i in row] + [i for row in truth for i in row]
    _, inverse = np.unique(np.array(flat), return_inverse=True) if flat else (None, np.zeros(0, np.int64))
    f = np.full((len(found), k), -1, np.int64)
    g = np.full((len(truth), width), -1, np.int64)
    pos = 0
    for arr, rows in ((f, found), (g, truth)):
        lengths = np.array([len(row) for row in rows], np.int64)
        rr = np.repeat(np.arange(len(rows)), lengths)
        cc = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        arr[rr, cc] = inverse[pos : pos + lengths.sum()]
        pos += int(lengths.sum())
    return f, g
