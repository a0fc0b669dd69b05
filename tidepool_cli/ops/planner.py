"""Per-source access-path choice: which index answers a query batch on one segment.

For each source (a segment, or the WAL tail) the planner picks:

* ``hnsw`` — the segment's HNSW graph (batched beam search), when it has one;
* ``ivf`` — the segment's IVF index (batched probing), when it has one and no graph,
  or when the query sets ``nprobe``;
* ``exact`` — the blocked exact scan: the WAL tail, segments without an index (those
  below the build's minimum size stay so on purpose: a scan is faster there), ``--exact``,
  and *selective filters*. When the rows a query may return are fewer than
  :data:`tidepool_cli.engine.hnsw.FILTER_EXACT_BELOW` (25%) of a segment, counted exactly
  from the filter mask, an index would visit mostly rejected rows, so the planner scans
  just the allowed rows instead (``exact-filtered``): as fast there as the graph, exact,
  and never short of k results. The same threshold serves IVF, whose probed lists thin
  out the same way.

Without ``--ef-search`` / ``--nprobe`` each segment is searched at the effort its build
calibrated on its own rows (recall@10 of 0.965 on a sample; older indexes without a
calibrated value use the engine defaults).

A sidecar that fails its checksums is reported once as a warning and the segment falls
back to exact search, so a damaged index never returns wrong results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine.topk import knn
from tidepool_cli.errors import CorruptIndexError, UnsupportedFormatError
from tidepool_cli.ops.view import Source

# The graph and IVF modules (and the ID codecs behind them) are imported only when a
# segment has such an index: a plain exact query should not pay for their import.


@dataclass(frozen=True)
class SearchParams:
    """Query-time settings of the access paths.

    Attributes
    ----------
    exact : bool
        Force exact search on every source.
    ef_search : int or None
        HNSW beam width (None: each segment's calibrated value, see ``build-hnsw``).
    nprobe : int or None
        IVF lists probed per query (None: each segment's calibrated value, see
        ``build-ivf``); setting it prefers IVF.
    """

    exact: bool = False
    ef_search: int | None = None
    nprobe: int | None = None


def choose_path(src: Source, allowed_fraction: float, params: SearchParams) -> str:
    """The access path for one source: "hnsw", "ivf", "exact" or "exact-filtered"."""
    available = src.segment.entry.indexes if src.segment is not None else {}
    if params.exact or not available:
        return "exact"
    from tidepool_cli.engine.hnsw import FILTER_EXACT_BELOW

    if allowed_fraction < FILTER_EXACT_BELOW:
        return "exact-filtered"
    if "ivf" in available and (params.nprobe is not None or "hnsw" not in available):
        return "ivf"
    return "hnsw" if "hnsw" in available else "exact"


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
        Receives the warning about a damaged sidecar.

    Returns
    -------
    D : (nq, k) float32
    I : (nq, k) int64
        Positions in the source, -1 padded.
    path : str
        The access path used.
    """
    n_allowed = int(np.count_nonzero(allowed))
    path = choose_path(src, n_allowed / max(src.rows, 1), params)
    mask = None if n_allowed == src.rows else allowed
    if path in ("hnsw", "ivf"):
        index = _load(src, path, warn)
        calibrated = src.segment.entry.indexes[path].params
        if index is not None and path == "hnsw":
            from tidepool_cli.engine.hnsw import search_hnsw

            ef = params.ef_search if params.ef_search is not None else calibrated.get("ef_search")
            D, I = search_hnsw(index, src.vectors, xq, k, ef_search=ef, allowed=mask, xb_sqnorms=src.sqnorms)
            return D, I, path
        if index is not None:
            from tidepool_cli.engine.ivf import search_ivf

            nprobe = params.nprobe if params.nprobe is not None else calibrated.get("nprobe")
            D, I = search_ivf(index, src.vectors, xq, k, nprobe=nprobe, allowed=mask, xb_sqnorms=src.sqnorms)
            return D, I, path
        path = "exact"
    D, I = knn(xq, src.vectors, k, metric, xb_sqnorms=src.sqnorms, allowed=mask)
    return D, I, path


def _load(src: Source, key: str, warn: Callable[[str], None]):
    """The segment's sidecar ``key``, loaded once; None (with a warning) if it is damaged."""
    if key not in src.indexes:
        from tidepool_cli.storage.sidecars import open_sidecar

        try:
            src.indexes[key] = open_sidecar(src.segment.layout, src.segment.entry, key)
        except (CorruptIndexError, UnsupportedFormatError) as exc:
            warn(f"{exc}; using exact search on {src.name} instead")
            src.indexes[key] = None
    return src.indexes[key]
