"""Per-source access-path choice: which index answers a query batch on one segment.

The planner looks at what a segment offers (sidecar indexes) and at the fraction of its
rows a query may return (live rows that pass the filter), and picks:

* ``exact`` — blocked exact scan (:func:`tidepool_cli.engine.topk.knn`), always correct;
  used for the WAL tail, for segments without an index, with ``--exact``, and when the
  allowed rows are so few that scanning just them is cheaper and safer than a graph
  walk that would have to skip most of what it visits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine.topk import knn
from tidepool_cli.ops.view import Source


@dataclass(frozen=True)
class SearchParams:
    """Query-time settings of the access paths.

    Attributes
    ----------
    exact : bool
        Force exact search on every source.
    ef_search : int or None
        HNSW beam width (None: the index default).
    nprobe : int or None
        IVF lists probed per query (None: the index default).
    """

    exact: bool = False
    ef_search: int | None = None
    nprobe: int | None = None


def search_source(
    src: Source,
    allowed: np.ndarray,
    xq: np.ndarray,
    k: int,
    metric: str,
    params: SearchParams,
    warn: Callable[[str], None],
) -> tuple[np.ndarray, np.ndarray, str]:
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

    Returns
    -------
    D : (nq, k) float32
    I : (nq, k) int64
        Positions in the source, -1 padded.
    path : str
        The access path used.
    """
    D, I = knn(xq, src.vectors, k, metric, xb_sqnorms=src.sqnorms, allowed=allowed)
    return D, I, "exact"
