"""Blocked exact k-NN: one matrix product per block, top-k without a full-width partition.

For a batch of queries and a block of base rows the kernel computes the ranking proxy
(see :mod:`tidepool_cli.engine.distances`) with a single GEMM on *augmented* operands,
``[q, 1] @ [-2x, |x|^2 + bias]^T`` for l2 and ``[q, 1] @ [-x, bias]^T`` for inner
products, where ``bias`` is 0 for an allowed row and +inf for a masked or padding row.
The norm term and the row mask therefore cost nothing beyond the product itself.

Selecting the top-k of a 100,000-wide row with ``np.argpartition`` costs more than the
product. Instead the block's columns are split into ``GROUP`` strided groups and reduced
with one vectorised ``np.minimum`` pass: a group can hold one of the best ``kk`` rows only
if its minimum beats the current ``kk``-th best proxy, and at most ``kk`` groups can.
Only those groups' columns are read back, merged into a per-query buffer of ``kk``
candidates, and the buffer's worst entry becomes the threshold for the next block.
The ``kk - k`` spare candidates absorb the float32 rounding of the proxy; the final k are
re-ranked with exact distances (direct differences for l2) and ties break by position.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.distances import exact_distances, sqnorms
from tidepool_cli.engine.order import Slack, smallest_mask, sortable, tie_aware_mask, unsortable

GROUP = 16
"""Columns per min-reduction group (strided inside a block)."""

BLOCK_ROWS = 8192
"""Base rows per GEMM block; a multiple of :data:`GROUP`."""

QUERY_BATCH = 1024
"""Queries per GEMM batch: bounds the (QUERY_BATCH, BLOCK_ROWS) float32 proxy block to 32 MiB."""

CACHE_BYTES = 1 << 29
"""Augmented base blocks are built once per call and reused across query batches below this size."""

SPARSE_MASK_FRACTION = 0.25
"""A mask that keeps at most this fraction of rows is searched as a gathered copy instead."""

SMALL_BATCH = 32
"""Up to this many queries skip the augmented copy of the base: one GEMM per block straight
on the (memory-mapped) rows, then a per-block partition, costs less than copying the base."""


SMALL_BATCH_FLOATS = 1 << 22
"""Proxies per block of the few-query path (16 MiB): large blocks amortise each BLAS call."""


def candidate_count(k: int, n: int) -> int:
    """Number of candidates kept per query before exact re-ranking.

    Parameters
    ----------
    k : int
        Requested neighbours.
    n : int
        Rows available.

    Returns
    -------
    int
        ``min(n, k + max(8, k // 4))``: the spare candidates cover float32 rounding of the
        l2 proxy (several units on integer-valued data) near the k-th distance.
    """
    return min(n, k + max(8, k // 4))


def knn(
    xq: np.ndarray,
    xb: np.ndarray,
    k: int,
    metric: str,
    *,
    xb_sqnorms: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest rows of ``xb`` for every query.

    Parameters
    ----------
    xq : (nq, d) float32
        Prepared queries (:func:`~tidepool_cli.engine.distances.prepare_queries`).
    xb : (n, d) float32
        Base vectors; a ``numpy.memmap`` is read block by block without a full copy.
    k : int
        Neighbours per query.
    metric : {"l2", "cosine", "dot"}
    xb_sqnorms : (n,) float32, optional
        Precomputed squared norms of ``xb`` (l2 only); computed per block if absent.
    allowed : (n,) bool, optional
        Rows that may be returned (deletion vector and filter already applied).

    Returns
    -------
    D : (nq, k) float32
        Distances in the public convention, ascending; +inf where fewer than k rows
        are allowed.
    I : (nq, k) int64
        Positions in ``xb``; -1 where D is +inf. Ties break by lower position.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    nq = xq.shape[0]
    n = xb.shape[0]
    D = np.full((nq, k), np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or k <= 0 or n == 0:
        return D, I
    if allowed is not None:
        allowed = np.asarray(allowed, dtype=bool)
        n_allowed = int(np.count_nonzero(allowed))
        if n_allowed == 0:
            return D, I
        if n_allowed == n:
            allowed = None
        elif n_allowed <= SPARSE_MASK_FRACTION * n:
            sub = np.flatnonzero(allowed)
            sq = None if xb_sqnorms is None else np.asarray(xb_sqnorms)[sub]
            Ds, Is = knn(xq, np.asarray(xb[sub]), k, metric, xb_sqnorms=sq)
            return Ds, np.where(Is >= 0, sub[np.maximum(Is, 0)], -1)

    kk = candidate_count(k, n if allowed is None else int(np.count_nonzero(allowed)))
    xmax = None
    if metric == "dot":
        # A dot score bounds no norm: the error bound needs the largest one.
        xmax = float(np.sqrt(np.max(xb_sqnorms if xb_sqnorms is not None else sqnorms(xb))))

    def answer(qb, cand, cval):
        cand = _complete_ties(qb, xb, cand, cval, k, metric, xb_sqnorms, allowed, Slack(qb, metric, xmax))
        return rerank(qb, xb, cand, k, metric)

    if nq <= SMALL_BATCH or kk * GROUP * 4 >= min(n, BLOCK_ROWS):
        # Few queries, or so many candidates that groups would hold most rows of a block:
        # a per-block partition of the proxies is cheaper than the group-minimum filter.
        return _batched(xq, lambda qb: answer(qb, *_select_small(qb, xb, kk, metric, xb_sqnorms, allowed)), k)
    blocks = _BaseBlocks(xb, metric, xb_sqnorms, allowed, reused=nq > QUERY_BATCH)
    for qs in range(0, nq, QUERY_BATCH):
        qb = xq[qs : qs + QUERY_BATCH]
        D[qs : qs + QUERY_BATCH], I[qs : qs + QUERY_BATCH] = answer(qb, *_select_candidates(qb, blocks, kk))
    return D, I


def _complete_ties(xq, xb, cand, cval, k, metric, xb_sqnorms, allowed, slack) -> np.ndarray:
    """Candidates (nq, w) of a tie-aware cut, -1 padded: ``cand`` (the kk best proxies
    ``cval``), and for queries whose kk-th proxy lies within float error of their k-th,
    every row within that error (found by a second pass over the base).

    Without it, which of many nearly-equal rows (duplicates, integer data) make the
    candidate list would depend on the last bits of the GEMM, i.e. on the BLAS.
    """
    nq, kk = cand.shape
    if kk <= k:
        return cand
    cval = np.where(cand >= 0, cval, np.float32(np.inf))
    full = np.isfinite(cval).all(axis=1)
    limit = slack.limit(np.partition(cval, k - 1, axis=1)[:, k - 1])
    sat = np.flatnonzero(full & (cval.max(axis=1) <= limit))
    if not sat.size:
        return cand
    # Rows recomputed in another GEMM layout round differently: widen by one more bound.
    wide = slack.limit(limit[sat], sat)
    scale = np.float32(-2.0 if metric == "l2" else -1.0)
    qs = np.ascontiguousarray(xq[sat] * scale)
    hits_r, hits_c, hits_v = [], [], []
    for s in range(0, xb.shape[0], BLOCK_ROWS):
        blk = np.asarray(xb[s : s + BLOCK_ROWS], dtype=np.float32)
        proxy = qs @ blk.T
        if metric == "l2":
            proxy += xb_sqnorms[s : s + blk.shape[0]] if xb_sqnorms is not None else np.einsum("ij,ij->i", blk, blk)
        if allowed is not None:
            proxy[:, ~allowed[s : s + blk.shape[0]]] = np.inf
        r, c = np.nonzero(proxy <= wide[:, None])
        hits_r.append(r), hits_c.append(c + s), hits_v.append(proxy[r, c])
    r, c, v = np.concatenate(hits_r), np.concatenate(hits_c), np.concatenate(hits_v)
    by_query = np.argsort(r, kind="stable")
    r, c, v = r[by_query], c[by_query], v[by_query]
    counts = np.bincount(r, minlength=sat.size)
    width = int(counts.max())
    slot = np.arange(r.size) - (np.cumsum(counts) - counts)[r]
    V = np.full((sat.size, width), np.inf, dtype=np.float32)
    X = np.full((sat.size, width), -1, dtype=np.int64)
    V[r, slot], X[r, slot] = v, c
    keep = tie_aware_mask(V, kk, k, slack, sat)
    w = int(keep.sum(axis=1).max())
    sel = np.argsort(~keep, axis=1, kind="stable")[:, :w]
    out = np.full((nq, max(kk, w)), -1, dtype=np.int64)
    out[:, :kk] = cand
    out[sat] = -1
    out[sat, :w] = np.where(np.take_along_axis(keep, sel, 1), np.take_along_axis(X, sel, 1), -1)
    return out


def _batched(xq: np.ndarray, fn, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Apply ``fn`` to query batches of QUERY_BATCH rows and stack the (D, I) results."""
    parts = [fn(xq[s : s + QUERY_BATCH]) for s in range(0, xq.shape[0], QUERY_BATCH)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def rerank(
    xq: np.ndarray, xb: np.ndarray, cand: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances for candidate positions, then the best k per query.

    Parameters
    ----------
    xq : (nq, d) float32
        Prepared queries.
    xb : (n, d) float32
        Base vectors (memmap is fine: only candidate rows are read).
    cand : (nq, m) int64
        Candidate positions per query, -1 for none; duplicates are not allowed.
    k : int
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    D : (nq, k) float32, ascending, +inf padding
    I : (nq, k) int64, -1 padding; ties break by lower position.
    """
    nq, m = cand.shape
    valid = cand >= 0
    rows = np.asarray(xb[np.where(valid, cand, 0).ravel()]).reshape(nq, m, -1)
    dist = exact_distances(xq, rows, metric)
    dist[~valid] = np.inf
    order = np.lexsort((np.where(valid, cand, np.iinfo(np.int64).max), dist), axis=-1)[:, :k]
    D = np.take_along_axis(dist, order, axis=1)
    I = np.take_along_axis(cand, order, axis=1)
    if m < k:
        D = np.pad(D, ((0, 0), (0, k - m)), constant_values=np.inf)
        I = np.pad(I, ((0, 0), (0, k - m)), constant_values=-1)
    I[~np.isfinite(D)] = -1
    return D.astype(np.float32, copy=False), I


class _BaseBlocks:
    """Augmented base blocks ``[-2x, |x|^2 + bias]`` (l2) or ``[-x, bias]``, built lazily.

    Padding rows complete the last block to a multiple of GROUP with bias +inf.
    Blocks that will be ``reused`` (several query batches) are cached while the whole
    augmented base stays small; otherwise every block is built into one buffer, which
    spares the page faults of fresh memory (a third of the copy's cost).
    """

    def __init__(self, xb, metric, xb_sqnorms, allowed, reused):
        self.xb, self.metric, self.sq, self.allowed = xb, metric, xb_sqnorms, allowed
        n, d = xb.shape
        self.starts = list(range(0, n, BLOCK_ROWS))
        self.cache: dict[int, np.ndarray] | None = {} if reused and n * (d + 1) * 4 <= CACHE_BYTES else None
        self.buffer = None if self.cache is not None else np.empty((min(n + GROUP, BLOCK_ROWS), d + 1), np.float32)

    def __iter__(self):
        for s in self.starts:
            if self.cache is not None and s in self.cache:
                yield s, self.cache[s]
                continue
            blk = self._build(s)
            if self.cache is not None:
                self.cache[s] = blk
            yield s, blk

    def _build(self, s: int) -> np.ndarray:
        x = np.asarray(self.xb[s : s + BLOCK_ROWS], dtype=np.float32)
        b, d = x.shape
        bp = -(-b // GROUP) * GROUP
        out = np.empty((bp, d + 1), dtype=np.float32) if self.buffer is None else self.buffer[:bp]
        if self.metric == "l2":
            np.multiply(x, -2.0, out=out[:b, :d])
            out[:b, d] = self.sq[s : s + b] if self.sq is not None else np.einsum("ij,ij->i", x, x)
        else:
            np.negative(x, out=out[:b, :d])
            out[:b, d] = 0.0
        out[b:] = 0.0
        out[b:, d] = np.inf
        if self.allowed is not None:
            out[:b, d][~self.allowed[s : s + b]] = np.inf
        return out


def _select_candidates(xq: np.ndarray, blocks: _BaseBlocks, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the kk best (proxy, position) per query (unordered), -1 padded, and
    their proxies.

    Parameters
    ----------
    xq : (nq, d) float32
    blocks : _BaseBlocks
    kk : int

    Returns
    -------
    cand : (nq, kk) int64
    cval : (nq, kk) float32, +inf padded
    """
    nq, d = xq.shape
    qa = np.empty((nq, d + 1), dtype=np.float32)
    qa[:, :d] = xq
    qa[:, d] = 1.0
    buf = np.full((nq, kk), _EMPTY, dtype=np.int64)
    thr = np.full(nq, np.inf, dtype=np.float32)
    out = np.empty((nq, BLOCK_ROWS), dtype=np.float32)
    for s, blk in blocks:
        ng = blk.shape[0] // GROUP
        # A reused output buffer spares the page faults of a fresh 32 MiB array per block.
        proxy = np.matmul(qa, blk.T, out=out[:, : blk.shape[0]])
        gmin = np.minimum.reduce(proxy.reshape(nq, GROUP, ng), axis=1)
        bound = thr
        if ng >= kk and not np.isfinite(thr).all():
            # Until kk candidates are buffered, the kk-th smallest group minimum of this
            # block bounds the kk-th best proxy: those kk minima are kk distinct rows.
            bound = np.minimum(thr, np.partition(gmin, kk - 1, axis=1)[:, kk - 1])
            hit = (gmin <= bound[:, None]) & (gmin < np.inf)
        else:
            # Strict: an equal proxy further on has a higher position and loses the tie.
            hit = gmin < bound[:, None]
        r, g = np.nonzero(hit)
        if not r.size:
            continue
        cols = g[:, None] + np.arange(GROUP) * ng
        vals = proxy[r[:, None], cols]
        keep = (vals <= bound[r][:, None]) & (vals < np.inf)
        rows = np.broadcast_to(r[:, None], cols.shape)[keep]
        thr = _merge(buf, thr, rows, _keys(vals[keep], cols[keep] + s))
    empty = buf >= _EMPTY
    cval = np.where(empty, np.float32(np.inf), unsortable(buf >> 32))
    return np.where(empty, -1, buf & _POS_MASK), cval


_POS_MASK = 0xFFFF_FFFF
_EMPTY = np.iinfo(np.int64).max


def _keys(vals: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """int64 keys ordered as (proxy, position): the float32 bits made monotonic, then the position."""
    return (sortable(vals).astype(np.int64) << 32) | pos.astype(np.int64)


def _merge(buf: np.ndarray, thr: np.ndarray, rows: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Merge candidate keys (``rows`` ascending) into the buffers; returns the new thresholds.

    The queries that got candidates are laid out as one dense matrix, their buffer then
    their new keys padded with empty slots, and one row-wise partition keeps the kk best.
    """
    nq, kk = buf.shape
    counts = np.bincount(rows, minlength=nq)
    urows = np.flatnonzero(counts)
    dense = np.full((urows.size, kk + int(counts.max())), _EMPTY, dtype=np.int64)
    dense[:, :kk] = buf[urows]
    first = np.cumsum(counts) - counts
    slot = np.searchsorted(urows, rows)
    dense[slot, kk + np.arange(rows.size) - first[rows]] = keys
    best = np.partition(dense, kk - 1, axis=1)[:, :kk]
    buf[urows] = best
    kth = best[:, kk - 1]
    thr = thr.copy()
    thr[urows] = np.where(kth < _EMPTY, unsortable(kth >> 32), np.inf)
    return thr


def _select_small(xq, xb, kk, metric, xb_sqnorms, allowed) -> tuple[np.ndarray, np.ndarray]:
    """Candidate positions (nq, kk) for a few queries, -1 padded, and their proxies: per
    block, proxies and a partition.

    Blocks are large (about 16 MiB of proxies) because each BLAS call pays a thread
    hand-off that, on a busy machine, costs more than the product itself; a single query
    uses NumPy's own single-threaded loop, as fast as memory for a matrix-vector product.
    """
    nq = xq.shape[0]
    scale = np.float32(-2.0 if metric == "l2" else -1.0)
    qs = np.ascontiguousarray(xq * scale)
    step = max(BLOCK_ROWS, SMALL_BATCH_FLOATS // nq)
    parts_d, parts_i = [], []
    for s in range(0, xb.shape[0], step):
        blk = np.asarray(xb[s : s + step])
        proxy = np.einsum("ij,qj->iq", blk, qs) if nq == 1 else blk @ qs.T  # (b, nq)
        if metric == "l2":
            proxy += (xb_sqnorms[s : s + step] if xb_sqnorms is not None else np.einsum("ij,ij->i", blk, blk))[:, None]
        if allowed is not None:
            proxy[~allowed[s : s + step]] = np.inf
        pt = proxy.T
        if kk < pt.shape[1]:
            idx = np.nonzero(smallest_mask(pt, kk))[1].reshape(nq, kk)
        else:
            idx = np.broadcast_to(np.arange(pt.shape[1]), pt.shape)
        parts_d.append(np.take_along_axis(pt, idx, axis=1))
        parts_i.append(idx + s)
    D = np.concatenate(parts_d, axis=1)
    I = np.concatenate(parts_i, axis=1).astype(np.int64)
    if D.shape[1] > kk:
        # Few candidates per query here, so a full sort by (proxy, position) is cheap.
        sel = np.lexsort((I, D), axis=1)[:, :kk]
        D, I = np.take_along_axis(D, sel, 1), np.take_along_axis(I, sel, 1)
    return np.where(np.isfinite(D), I, -1), D
