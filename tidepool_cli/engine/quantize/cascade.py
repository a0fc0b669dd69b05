"""The cascade: codes -> (optional f16) -> exact f32 distances for the rows the bounds cannot exclude.

For every query the codes of all rows are scored block by block (matrix work, see each
codec) into an estimate ``est`` and an error bound ``err``. While scanning, the k-th
smallest *upper* bound ``est + err`` seen so far is a distance that at least k rows are
known (with the codec's confidence) not to exceed; a row whose *lower* bound
``est - err`` is above it cannot be in the top k. Only the rows that survive the final
cut get an exact distance, and the top k are taken among those by (exact distance, id),
so ties break by id and every returned distance is exact. Every bound already includes
a float32 rounding allowance, so a row within rounding of the cut is kept whatever BLAS
computed its estimate.

With a half-precision copy of the vectors, the survivors first get an f16 distance with
the rigorous bound of :func:`tidepool_cli.engine.quantize.f16.pair_distances`, and the
same cut is applied again before any f32 row is read: the f16 copy is half the bytes to
read, and its bound is tight enough that few rows pass it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine.distances import exact_distances, prepare_queries
from tidepool_cli.engine.quantize._common import Quantizer
from tidepool_cli.engine.quantize.f16 import pair_distances

BLOCK_ROWS = 16384
"""Code rows scored per block."""

QUERY_BATCH = 256
"""Queries per batch: bounds each (QUERY_BATCH, BLOCK_ROWS) float32 score block to 16 MiB."""

PAIR_CHUNK = 32768
"""(query, row) pairs whose f16 or f32 distances are computed at once."""


@dataclass(frozen=True)
class CascadeResult:
    """Top-k of a cascade search and what it cost.

    Attributes
    ----------
    distances : (nq, k) float32
        Exact distances, ascending; +inf padding.
    ids : (nq, k) int64
        Ids of the rows (``ids`` argument, default positions); -1 padding.
    scored : int
        (query, row) code estimates computed.
    f16_pairs : int
        Pairs that got an f16 distance (0 without the f16 stage).
    f32_pairs : int
        Pairs that got an exact f32 distance.
    f32_rows : int
        Distinct rows read from the f32 vectors.
    """

    distances: np.ndarray
    ids: np.ndarray
    scored: int
    f16_pairs: int
    f32_pairs: int
    f32_rows: int

    @property
    def f32_fraction(self) -> float:
        """Fraction of scored (query, row) pairs that needed an exact f32 distance."""
        return self.f32_pairs / self.scored if self.scored else 0.0


def cascade_search(
    xq: np.ndarray,
    k: int,
    quantizer: Quantizer,
    codes: np.ndarray,
    factors: np.ndarray,
    vectors: np.ndarray | Callable[[np.ndarray], np.ndarray],
    *,
    ids: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    vectors16: np.ndarray | None = None,
) -> CascadeResult:
    """k nearest rows per query through codes, an optional f16 stage and exact rerank.

    Parameters
    ----------
    xq : (nq, d) float
        Raw queries; prepared here for ``quantizer.metric`` (unit rows for cosine).
    k : int
    quantizer : Quantizer
        The codec that produced ``codes`` and ``factors``.
    codes : (n, quantizer.code_bytes) uint8
    factors : (n, 3) float32
    vectors : (n, d) float32 array (a read-only memmap is fine) or callable
        The exact vectors (unit rows for cosine). A callable takes sorted unique row
        positions (int64) and returns their (len, d) float32 rows.
    ids : (n,) int64, optional
        Row ids, used to break ties and returned; default the row positions.
    allowed : (n,) bool, optional
        Rows that may be returned (deletion vector, filter).
    vectors16 : (n, d) float16, optional
        Half-precision copy of ``vectors`` for the f16 stage.

    Returns
    -------
    CascadeResult
    """
    xq = prepare_queries(xq, quantizer.metric)
    nq, n = xq.shape[0], codes.shape[0]
    D = np.full((nq, max(k, 0)), np.inf, dtype=np.float32)
    I = np.full((nq, max(k, 0)), -1, dtype=np.int64)
    if nq == 0 or n == 0 or k <= 0:
        return CascadeResult(D, I, 0, 0, 0, 0)
    row_ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    allowed = None if allowed is None else np.asarray(allowed, dtype=bool)
    n_allowed = n if allowed is None else int(np.count_nonzero(allowed))
    totals = np.zeros(3, dtype=np.int64)
    rows_read = []
    for qs in range(0, nq, QUERY_BATCH):
        qb = xq[qs : qs + QUERY_BATCH]
        qi, ri = _code_stage(qb, k, quantizer, codes, factors, allowed)
        if vectors16 is not None:
            totals[0] += qi.size
            qi, ri = _f16_stage(qb, k, quantizer.metric, qi, ri, vectors16)
        totals[1] += qi.size
        rows = _distinct(ri, n)
        rows_read.append(rows)
        dist = _exact_pairs(qb, qi, ri, rows, vectors, quantizer.metric)
        _top_k(qi, dist, row_ids[ri], k, D[qs : qs + QUERY_BATCH], I[qs : qs + QUERY_BATCH])
    f32_rows = int(_distinct(np.concatenate(rows_read), n).size)
    return CascadeResult(D, I, nq * n_allowed, int(totals[0]), int(totals[1]), f32_rows)


def _distinct(ri: np.ndarray, n: int) -> np.ndarray:
    """Sorted distinct row positions of ``ri`` (a mask over n rows: faster than np.unique)."""
    seen = np.zeros(n, dtype=bool)
    seen[ri] = True
    return np.flatnonzero(seen)


def _code_stage(qb, k, quantizer, codes, factors, allowed):
    """Pairs (query, row) whose lower bound is within the k-th best upper bound of their query."""
    nqb = qb.shape[0]
    state = quantizer.prepare(qb)
    best_up = np.full((nqb, k), np.inf, dtype=np.float32)
    parts = []
    for s in range(0, codes.shape[0], BLOCK_ROWS):
        est, err = quantizer.score(state, codes[s : s + BLOCK_ROWS], factors[s : s + BLOCK_ROWS])
        lo = est - err
        up = est + err
        if allowed is not None:
            mask = ~allowed[s : s + BLOCK_ROWS]
            lo[:, mask] = np.inf
            up[:, mask] = np.inf
        best_up = _merge_upper(best_up, up, k)
        tau = best_up[:, k - 1]
        q, r = np.nonzero((lo <= tau[:, None]) & np.isfinite(lo))
        parts.append((q, r + s, lo[q, r]))
    tau = best_up[:, k - 1]
    qi = np.concatenate([p[0] for p in parts])
    ri = np.concatenate([p[1] for p in parts]).astype(np.int64)
    lo = np.concatenate([p[2] for p in parts])
    keep = lo <= tau[qi]
    return qi[keep], ri[keep]


def _merge_upper(best_up: np.ndarray, up: np.ndarray, k: int) -> np.ndarray:
    """The k smallest of ``best_up`` (nq, k) and a block's upper bounds ``up`` (nq, b), per row.

    Once every query has k finite bounds, only values below the current k-th can enter:
    they are few after the first block, so they are gathered and merged instead of
    partitioning every block's full rows (which costs as much as the scoring GEMM).
    """
    tau = best_up[:, k - 1]
    if not np.isfinite(tau).all():
        cand = up if up.shape[1] <= k else np.partition(up, k - 1, axis=1)[:, :k]
        return np.partition(np.concatenate([best_up, cand], axis=1), k - 1, axis=1)[:, :k]
    q, c = np.nonzero(up < tau[:, None])
    if not q.size:
        return best_up
    counts = np.bincount(q, minlength=up.shape[0])
    dense = np.full((up.shape[0], k + int(counts.max())), np.inf, dtype=np.float32)
    dense[:, :k] = best_up
    first = np.cumsum(counts) - counts
    dense[q, k + np.arange(q.size) - first[q]] = up[q, c]
    return np.partition(dense, k - 1, axis=1)[:, :k]


def _f16_stage(qb, k, metric, qi, ri, vectors16):
    """Survivors of the f16 bound: the same cut as the code stage, on f16 distances."""
    est = np.empty(qi.size, dtype=np.float32)
    err = np.empty(qi.size, dtype=np.float32)
    for s in range(0, qi.size, PAIR_CHUNK):
        sl = slice(s, s + PAIR_CHUNK)
        est[sl], err[sl] = pair_distances(qb[qi[sl]], np.asarray(vectors16[ri[sl]]), metric)
    tau = _kth_per_query(qi, est + err, k, qb.shape[0])
    # The f16 bound is rigorous: mixing in the code stage's probabilistic lower bound here
    # could drop a row the f32 stage alone would have kept.
    keep = est - err <= tau[qi]
    return qi[keep], ri[keep]


def _kth_per_query(qi: np.ndarray, vals: np.ndarray, k: int, nq: int) -> np.ndarray:
    """(nq,) k-th smallest of ``vals`` within each query's pairs; +inf if a query has fewer than k.

    The pairs are laid out as one dense (nq, most pairs of a query) matrix padded with
    +inf and partitioned row-wise: linear time, where sorting a million pairs is not.
    """
    counts = np.bincount(qi, minlength=nq)
    out = np.full(nq, np.inf, dtype=np.float32)
    if not qi.size or counts.max() < k:
        return out
    order = np.argsort(qi, kind="stable")
    first = np.cumsum(counts) - counts
    dense = np.full((nq, int(counts.max())), np.inf, dtype=np.float32)
    qs = qi[order]
    dense[qs, np.arange(qi.size) - first[qs]] = vals[order]
    has = counts >= k
    out[has] = np.partition(dense[has], k - 1, axis=1)[:, k - 1]
    return out


def _exact_pairs(qb, qi, ri, rows, vectors, metric) -> np.ndarray:
    """Exact distance of every (query, row) pair; each distinct row is read once."""
    block = vectors(rows) if callable(vectors) else vectors[rows]
    block = np.asarray(block, dtype=np.float32)
    slot = np.empty(int(rows[-1]) + 1 if rows.size else 0, dtype=np.int64)
    slot[rows] = np.arange(rows.size)
    where = slot[ri]
    dist = np.empty(qi.size, dtype=np.float32)
    for s in range(0, qi.size, PAIR_CHUNK):
        sl = slice(s, s + PAIR_CHUNK)
        dist[sl] = exact_distances(qb[qi[sl]], block[where[sl]][:, None, :], metric)[:, 0]
    return dist


def _top_k(qi, dist, rid, k, D_out, I_out) -> None:
    """Write the k best pairs per query, by (distance, id), into the given output rows."""
    # Only pairs within the k-th distance of their query can be chosen: sort those alone.
    keep = dist <= _kth_per_query(qi, dist, k, D_out.shape[0])[qi]
    qi, dist, rid = qi[keep], dist[keep], rid[keep]
    order = np.lexsort((rid, dist, qi))
    qs = qi[order]
    start = np.searchsorted(qs, np.arange(D_out.shape[0]))
    rank = np.arange(qs.size) - start[qs]
    sel = rank < k
    D_out[qs[sel], rank[sel]] = dist[order][sel]
    I_out[qs[sel], rank[sel]] = rid[order][sel]
