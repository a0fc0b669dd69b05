"""Neighbour selection by α-pruning (RobustPrune), for a batch of nodes at once.

Walk a node's candidates nearest first and keep a candidate ``e`` unless an already
kept ``r`` satisfies ``α·d(r, e) < d(q, e)``. With α = 1 this is the neighbour-selection
heuristic of HNSW (Malkov & Yashunin, TPAMI 2018, Algorithm 4, without extendCandidates
and keepPrunedConnections, as in hnswlib); α > 1 keeps longer edges, as Vamana's
RobustPrune does (Subramanya et al., NeurIPS 2019, Algorithm 2). The pruning scale is a
parameter, so both graph builds share this code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tidepool_cli.engine.threads import parallel

PRUNE_BLOCK_BYTES = 1 << 23
"""Gathered candidate vectors per pruning block (bounds the (b, K, d) gather to the cache)."""

PRUNE_RANKS = 16
"""Candidate ranks decided per step of the lazy heuristic."""

PRUNE_MIN_NODES = 64
"""Nodes per pruning block at least (each block pays a few dozen numpy calls)."""

PRUNE_MAX_NODES = 1024
"""Nodes per pruning block at most (blocks are shared between the threads)."""


def select_neighbors(
    x: np.ndarray,
    cand: np.ndarray,
    cand_dist: np.ndarray,
    degree: int,
    *,
    metric: str,
    alpha: float = 1.0,
    xb_sqnorms: np.ndarray | None = None,
    tick: Callable[[int], None] | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """α-pruned neighbour selection (RobustPrune) for a batch of nodes.

    Candidates are visited nearest first; candidate ``e`` is kept unless a kept ``r``
    satisfies ``α·d(r, e) < d(q, e)``, until ``degree`` are kept. α = 1 is the HNSW
    heuristic (Malkov & Yashunin 2018, Algorithm 4, as hnswlib implements it: a tie keeps
    the candidate, so exact duplicates do not prune everything behind them); α > 1 is
    Vamana's RobustPrune (Subramanya et al. 2019, Algorithm 2).

    Parameters
    ----------
    x : (n, d) float32
        Vectors; candidate rows are gathered block by block.
    cand : (b, K) int
        Candidate ids per node, sorted by ``cand_dist``, -1 padded; no duplicates, and
        the node itself excluded.
    cand_dist : (b, K) float32
        Distance node-candidate in the public convention (+inf for padding).
    degree : int
        Maximum number of neighbours kept.
    metric : {"l2", "cosine", "dot"}
    alpha : float
        Pruning slack, >= 1. For l2, where distances are squared, ``α²`` multiplies
        them (α applies to Euclidean lengths as in the paper); for dot the signed
        distance is scaled as is, which is only meaningful for α = 1.
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2); computed from the gathered rows when absent.
    tick : callable(int), optional
        Called with the number of nodes finished after each block (from worker threads).
    workers : int
        Threads working on node blocks; the result does not depend on it.

    Returns
    -------
    ids : (b, degree) int32
        Kept neighbour ids, nearest first, -1 padded.
    dist : (b, degree) float32
        Their distances (taken from ``cand_dist``), +inf padded.
    """
    cand = np.asarray(cand, dtype=np.int64)
    b, K = cand.shape
    out = np.full((b, degree), -1, dtype=np.int32)
    out_d = np.full((b, degree), np.inf, dtype=np.float32)
    if b == 0 or K == 0:
        return out, out_d
    d = x.shape[1]
    scale = np.float32(alpha * alpha if metric == "l2" else alpha)
    step = min(PRUNE_MAX_NODES, max(PRUNE_MIN_NODES, PRUNE_BLOCK_BYTES // (K * d * 4)))

    def block(s: int) -> None:
        c = cand[s : s + step]
        cd = np.asarray(cand_dist[s : s + step], dtype=np.float32)
        valid = c >= 0
        safe = np.where(valid, c, c[:, :1].clip(0))
        v = np.asarray(x[safe.ravel()], dtype=np.float32).reshape(*c.shape, d)
        sq = None
        if metric == "l2":
            sq = xb_sqnorms[safe] if xb_sqnorms is not None else np.einsum("bkd,bkd->bk", v, v)
        kept = _prune_block(v, sq, cd, valid, degree, scale, metric)
        order = np.argsort(~kept, axis=1, kind="stable")[:, :degree]
        took = np.take_along_axis(kept, order, axis=1)
        e = s + c.shape[0]
        w = order.shape[1]
        out[s:e, :w] = np.where(took, np.take_along_axis(c, order, axis=1), -1)
        out_d[s:e, :w] = np.where(took, np.take_along_axis(cd, order, axis=1), np.inf)
        if tick is not None:
            tick(c.shape[0])

    parallel(block, range(0, b, step), workers)
    return out, out_d


def _scaled_dist(g, sqa, sqb, scale, metric):
    """In place: Gram block g (nb, i, j) -> ``scale`` times the distances it stands for."""
    if metric == "l2":
        g *= -2.0 * scale
        g += (sqa * scale)[:, :, None]
        g += (sqb * scale)[:, None, :]
    elif metric == "cosine":
        np.subtract(scale, g * scale, out=g)
    else:
        g *= -scale
    return g


def _prune_block(v, sq, cd, valid, degree, scale, metric):
    """Kept mask (nb, K) of the sequential heuristic, evaluated lazily in rank blocks.

    Only kept candidates prune, and a node keeps few of its candidates (about a third
    of the slots on real data), so instead of all K² candidate pairs each block of
    ``PRUNE_RANKS`` ranks is compared with the candidates kept so far (copied to a
    small buffer as they are kept) and with itself: the same decisions for several
    times fewer flops and bytes.
    """
    nb, K, d = v.shape
    pruned = ~valid
    kept = np.zeros((nb, K), dtype=bool)
    count = np.zeros(nb, dtype=np.int64)
    kv = np.zeros((nb, degree, d), dtype=np.float32)
    ksq = np.zeros((nb, degree), dtype=np.float32)
    for j0 in range(0, K, PRUNE_RANKS):
        j1 = min(K, j0 + PRUNE_RANKS)
        live = (count < degree) & ~pruned[:, j0:j1].all(axis=1)
        if not live.any():
            if not ((count < degree) & ~pruned[:, j1:].all(axis=1)).any():
                break
            continue
        blk, cdb = v[:, j0:j1], cd[:, None, j0:j1]
        sqb = None if sq is None else sq[:, j0:j1]
        bt = blk.transpose(0, 2, 1)
        nk = int(count.max())
        if nk:
            dk = _scaled_dist(np.matmul(kv[:, :nk], bt), ksq[:, :nk], sqb, scale, metric)
            hit = dk < cdb
            hit &= (np.arange(nk) < count[:, None])[:, :, None]
            pruned[:, j0:j1] |= hit.any(axis=1)
        before = count.copy()
        # Candidates of the block prune each other only where two of them survived the
        # kept ones; most rows have at most one left, so only the others need the Gram.
        pair = np.flatnonzero((~pruned[:, j0:j1]).sum(axis=1) > 1)
        if pair.size:
            sub = blk[pair]
            # prunes[i, a, e]: candidate j0 + a, if kept, prunes candidate j0 + e.
            prunes = _scaled_dist(
                np.matmul(sub, sub.transpose(0, 2, 1)),
                None if sqb is None else sqb[pair],
                None if sqb is None else sqb[pair],
                scale,
                metric,
            ) < cdb[pair]
        for j in range(j0, j1):
            keep = ~pruned[:, j] & (count < degree)
            kept[:, j] = keep
            count += keep
            if pair.size:
                pruned[pair, j0:j1] |= keep[pair, None] & prunes[:, j - j0, :]
        r, c = np.nonzero(kept[:, j0:j1])
        if r.size:
            slot = before[r] + np.arange(r.size) - np.searchsorted(r, r)
            kv[r, slot] = blk[r, c]
            if sqb is not None:
                ksq[r, slot] = sqb[r, c]
    return kept
