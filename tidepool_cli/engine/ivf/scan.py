"""Scanning the probed posting lists: scores, bounds, and the tie-aware candidate cut.

The (query, list) pairs of a batch are grouped by list, so every probed list is decoded
once and scored against all of its queries with one matrix product. Each query's two
nearest lists are scored first; the ``kk``-th best score among them, plus its float-error
bound, bounds what any other list can contribute, so those lists need one comparison per
score instead of a partial sort. The kept (query, score, id) entries are then cut per
query (:func:`merge`).

How a list is scored is pluggable (:class:`ListScorer`): :class:`FlatLists` scores the
float32 rows with the ranking proxy of :mod:`~tidepool_cli.engine.distances`; a scorer
over quantized codes (SQ8, PQ) plugs in the same way, the exact rerank following either.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from tidepool_cli.engine import idcodec
from tidepool_cli.engine.distances import sqnorms
from tidepool_cli.engine.ivf.products import SERIAL_GEMM_MNK, product
from tidepool_cli.engine.order import Slack, stable_order, tie_aware_mask
from tidepool_cli.engine.threads import Runner

OPERAND_CACHE_BYTES = 1 << 28
"""List operands built in the bound pass are reused by the scan pass up to this size."""

EXTRA_BOUND_ROUNDS = 8
"""Further lists scanned one at a time for queries still without a bound (see _scan)."""

NORM_ROWS = 1 << 16
"""Rows gathered per step when the largest norm of the probed rows is computed (dot)."""


class ListScorer(Protocol):
    """Scores of the queries of one batch against posting lists.

    An entry is a tuple whose first item is the list's allowed positions, (m,) int64;
    the rest is the scorer's own operand (float32 rows, codes, ...).
    """

    share: int
    """Cache budget in bytes of one worker."""

    def decode_all(self, lids: list[int]) -> None:
        """Decode the lists ``lids`` (at most once per batch)."""

    def get(self, lid: int) -> tuple:
        """The entry of list ``lid``."""

    def score(self, entry: tuple, qs: np.ndarray) -> np.ndarray:
        """(len(qs), m) float32 ranking proxies of the batch's queries ``qs`` against an entry."""

    def keep(self, lid: int, entry: tuple, budget: int) -> int:
        """Cache ``entry`` if it fits ``budget`` bytes; return the budget left."""

    def max_norm(self, lids: list[int]) -> float:
        """Largest norm of the rows of the lists ``lids`` (bounds the error of dot scores)."""


class FlatLists:
    """Posting lists of one scan batch and their proxy scores.

    A list's entry is its decoded IDs (restricted to allowed rows) and the right operand
    of the proxy product: ``[x, |x|^2]^T`` against queries ``[-2q, 1]`` for l2, ``x^T``
    against ``-q`` otherwise. For long vectors the operand is a transposed view of the
    gathered rows, which OpenBLAS multiplies up to 1.7x faster in the thin slices of
    :func:`product`, and the l2 norms are added to the scores instead of appended to
    every row. Entries built in the bound pass are kept for the scan pass while they fit
    ``OPERAND_CACHE_BYTES``, split evenly between the workers; decoded IDs always are.
    """

    def __init__(self, index, x, xq, allowed, xb_sqnorms, workers):
        self.index, self.x, self.allowed, self.sq = index, x, allowed, xb_sqnorms
        self.share = OPERAND_CACHE_BYTES // workers
        self.cache: dict[int, tuple] = {}
        # Decoded IDs are always kept (8 bytes per row at most), so no list is decoded twice.
        self.ids: dict[int, np.ndarray] = {}
        nq, d = xq.shape
        if index.metric == "l2":
            # Both contiguous: np.take from a strided view is an order of magnitude slower.
            self.q2 = np.multiply(xq, np.float32(-2.0))
            self.qa = np.empty((nq, d + 1), dtype=np.float32)
            self.qa[:, :d] = self.q2
            self.qa[:, d] = 1.0
        else:
            self.qa = self.q2 = -xq

    def get(self, lid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(ids (m,) int64, operand (e, m) float32, norms to add (m,) or None) of list ``lid``."""
        hit = self.cache.get(lid)
        if hit is not None:
            return hit
        idx = self.index
        ids = self.decode(lid)
        rows = np.asarray(self.x[ids], dtype=np.float32)
        thin = SERIAL_GEMM_MNK // max(1, rows.size) < 8
        if idx.metric != "l2":
            return ids, (rows.T if thin else np.ascontiguousarray(rows.T)), None
        sq = self.sq[ids] if self.sq is not None else np.einsum("ij,ij->i", rows, rows)
        if thin:
            return ids, rows.T, np.asarray(sq, dtype=np.float32)
        op = np.empty((rows.shape[1] + 1, ids.size), dtype=np.float32)
        op[:-1] = rows.T
        op[-1] = sq
        return ids, op, None

    def max_norm(self, lids: list[int]) -> float:
        """Largest norm of the allowed rows of the (decoded) lists ``lids``; 0 if none."""
        ids = [self.ids[lid] for lid in lids if self.ids[lid].size]
        if not ids:
            return 0.0
        ids = np.concatenate(ids)
        if self.sq is not None:
            return float(np.sqrt(np.max(self.sq[ids])))
        step = max(1, NORM_ROWS)
        return float(np.sqrt(max(sqnorms(np.asarray(self.x[ids[s : s + step]])).max() for s in range(0, ids.size, step))))

    def decode(self, lid: int) -> np.ndarray:
        """Positions (m,) int64 of the allowed rows of list ``lid``, decoded once per batch."""
        if lid not in self.ids:
            self.decode_all([lid])
        return self.ids[lid]

    def decode_all(self, lids: list[int]) -> None:
        """Decode the lists ``lids`` not decoded yet, in one :func:`idcodec.decode_lists` call."""
        idx = self.index
        todo = [lid for lid in lids if lid not in self.ids]
        sizes = idx.list_sizes[todo].tolist()
        for lid, ids in zip(todo, idcodec.decode_lists(idx.codec, idx.blob, idx.offsets, idx.crcs, todo, sizes, idx.universe)):
            ids = ids.astype(np.int64)
            self.ids[lid] = ids if self.allowed is None else ids[self.allowed[ids]]

    def score(self, entry: tuple, qs: np.ndarray) -> np.ndarray:
        """(len(qs), m) proxies of the queries ``qs`` against a list entry."""
        _, op, sq = entry
        if sq is None:
            return product(self.qa, qs, op)
        block = product(self.q2, qs, op)
        block += sq
        return block

    def keep(self, lid: int, entry: tuple, budget: int) -> int:
        """Cache ``entry`` if it fits ``budget`` bytes; return the budget left."""
        size = sum(a.nbytes for a in entry if a is not None)
        if size <= budget:
            self.cache[lid] = entry
            return budget - size
        return budget


def scan(index, lists: ListScorer, xq, lids, qids, near, k, kk, slack: Slack, run: Runner) -> tuple[np.ndarray, np.ndarray]:
    """The candidates of a tie-aware cut over the probed lists.

    Parameters
    ----------
    index : IvfIndex
    lists : ListScorer
        Scores the batch's queries against a list.
    xq : (nq, d) float32
        The batch's queries.
    lids, qids : (p,) int64
        Probed (list, query) pairs grouped by list (:func:`~tidepool_cli.engine.ivf.probe.probe`).
    near : (nq, b) int64
        Each query's nearest probed lists, scored first to bound the others.
    k, kk : int
        Results asked for, and candidates kept at least (``kk >= k``).
    slack : Slack
        Float-error bounds of the batch's queries.
    run : Runner

    Returns
    -------
    cand : (nq, w) int64
        Positions, -1 padded, ``w >= kk`` (see :func:`merge`).
    cval : (nq, w) float32
        Their proxies, +inf padded.
    """
    nq = xq.shape[0]
    # Decoding holds the GIL (9-20 us per ans list, in one call for all); done up front, it
    # costs its own time, done inside the workers it stalls the other thread as well.
    probed = np.flatnonzero(np.bincount(lids, minlength=index.nlist)).tolist()
    lists.decode_all(probed)
    if index.metric == "dot":
        slack.xmax = lists.max_norm(probed)
    nb = near.shape[1]
    tops = np.full((nq, nb, kk), np.inf, dtype=np.float32)

    def bound_pass(groups):
        # Each query's nearest lists: the kk best proxies seen there bound the kk-th
        # best over all of its probed lists, since those rows are candidates too.
        kept, budget = [], lists.share
        for lid, qs, js in groups:
            entry = lists.get(lid)
            ids = entry[0]
            if ids.size:
                block = lists.score(entry, qs)
                if ids.size > kk:
                    top = np.partition(block, kk - 1, axis=1)[:, :kk]
                    kept.append(_keep(block, qs, ids, slack.loose_limit(top.max(axis=1), qs)))
                else:
                    top = block
                    kept.append(_keep(block, qs, ids, None))
                tops[qs, js, : top.shape[1]] = top
            budget = lists.keep(lid, entry, budget)
        return kept

    def extra_pass(groups):
        # Same bound, one further list per query, folded into best as it goes.
        kept = []
        for lid, qs in groups:
            entry = lists.get(lid)
            ids = entry[0]
            if ids.size:
                block = lists.score(entry, qs)
                kept.append(_keep(block, qs, ids, slack.loose_limit(best[qs].max(axis=1), qs)))
                both = np.concatenate([best[qs], block], axis=1)
                best[qs] = np.partition(both, kk - 1, axis=1)[:, :kk]
        return kept

    def scan_pass(groups):
        # Every other probed list: only entries within the bound can be candidates.
        kept = []
        for lid, qs in groups:
            entry = lists.get(lid)
            if entry[0].size:
                kept.append(_keep(lists.score(entry, qs), qs, entry[0], bound[qs]))
        return kept

    # Every (query, near list) pair once, grouped by list: one product per list.
    bl, bq, bj = near.T.ravel(), np.tile(np.arange(nq), nb), np.repeat(np.arange(nb), nq)
    order = stable_order(bl, index.nlist)
    kept = run.map(bound_pass, run.split(list(_groups(bl[order], bq[order], bj[order]))))
    best = np.partition(tops.reshape(nq, nb * kk), kk - 1, axis=1)[:, :kk] if nb > 1 else tops[:, 0]
    rest = (lids[:, None] != near[qids]).all(axis=1)
    for _ in range(EXTRA_BOUND_ROUNDS):
        # Queries whose nearest lists hold fewer than kk (allowed) rows have no bound
        # yet and would keep everything: one more of their lists each, per round (one
        # list per query per round, so that no two threads update the same query).
        need = np.flatnonzero(rest & np.isinf(best.max(axis=1))[qids])
        if need.size == 0:
            break
        _, first = np.unique(qids[need], return_index=True)
        pick = need[first]  # the lowest-id remaining list of each such query
        rest[pick] = False
        kept += run.map(extra_pass, run.split(list(_groups(lids[pick], qids[pick]))))
    # Entries within float error of the bound stay: one of them may tie the k-th.
    bound = slack.loose_limit(best.max(axis=1))
    kept += run.map(scan_pass, run.split(list(_groups(lids[rest], qids[rest]))))
    return merge([e for part in kept for e in part], nq, k, kk, slack, run)


def _keep(block, qs, ids, bound):
    """(query, proxy, id) of the entries of a (queries, rows) proxy block within ``bound``
    (one per query; None keeps all)."""
    if bound is None:
        r, c = np.divmod(np.arange(block.size), block.shape[1])
        return qs[r], block.ravel(), ids[c]
    flat = np.flatnonzero(block <= bound[:, None])
    r, c = np.divmod(flat, block.shape[1])
    return qs[r], block.ravel()[flat], ids[c]


def _groups(lids: np.ndarray, *cols: np.ndarray):
    """Yield (list id, *column slices) for each run of equal ids in the sorted ``lids``."""
    cuts = np.flatnonzero(lids[1:] != lids[:-1]) + 1
    bounds = np.concatenate([[0], cuts, [lids.size]]).tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            yield (int(lids[a]), *(c[a:b] for c in cols))


def merge(kept, nq: int, k: int, kk: int, slack: Slack, run: Runner) -> tuple[np.ndarray, np.ndarray]:
    """The candidates of every query among its kept (query, proxy, id) entries: its kk
    best (proxy, then id) and every entry within float error of its k-th best proxy
    (:func:`~tidepool_cli.engine.order.tie_aware_mask`), so that which rows reach the
    rerank does not depend on the last bits of the proxies. Returns (nq, w) positions,
    -1 padded, and their proxies, +inf padded, ``w >= kk``.

    Queries are ranked by the size class of their entry count (the next power of two),
    entries are radix-sorted by that rank, and each class is laid out as a padded
    (queries, 2**class) matrix in which one ``np.partition`` finds the cut. That is
    linear in the entries, where a sort on (query, proxy, id) costs several times more.
    """
    if not kept:
        return np.full((nq, kk), -1, dtype=np.int64), np.full((nq, kk), np.inf, dtype=np.float32)
    q, v, ids = (np.concatenate(a) for a in zip(*kept))
    counts = np.bincount(q, minlength=nq)
    cls = np.zeros(nq, dtype=np.int64)
    big = counts > kk
    cls[big] = np.ceil(np.log2(counts[big]))
    qorder = np.argsort(cls, kind="stable")
    rank = np.empty(nq, dtype=np.int64)
    rank[qorder] = np.arange(nq)
    r = rank[q]
    order = stable_order(r, nq)
    r, v, ids = r[order], v[order], ids[order]
    csorted = counts[qorder]
    qstart = np.cumsum(csorted) - csorted
    pos = np.arange(r.size) - qstart[r]
    # Row ranges of equal class, cut further so that every worker gets a share.
    cuts = set((np.flatnonzero(np.diff(cls[qorder])) + 1).tolist())
    cuts.update(range(0, nq, -(-nq // run.workers)))
    bounds = sorted(cuts | {0, nq})

    def select(ab):
        a, b = ab
        e0, e1 = qstart[a], qstart[b - 1] + csorted[b - 1]
        rows, er, ep = qorder[a:b], r[e0:e1] - a, pos[e0:e1]
        c = int(cls[rows[0]])
        w = kk if c == 0 else 1 << c
        V = np.full((b - a, w), np.inf, dtype=np.float32)
        X = np.full((b - a, w), -1, dtype=np.int64)
        V[er, ep] = v[e0:e1]
        X[er, ep] = ids[e0:e1]
        if c == 0:
            return rows, X, V
        mask = tie_aware_mask(V, kk, k, slack, rows)
        width = int(mask.sum(axis=1).max())
        sel = np.argsort(~mask, axis=1, kind="stable")[:, :width]
        took = np.take_along_axis(mask, sel, 1)
        X = np.where(took, np.take_along_axis(X, sel, 1), -1)
        V = np.where(took, np.take_along_axis(V, sel, 1), np.float32(np.inf))
        return rows, X, V

    parts = run.map(select, [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a])
    width = max(kk, max(p[1].shape[1] for p in parts))
    cand = np.full((nq, width), -1, dtype=np.int64)
    cval = np.full((nq, width), np.inf, dtype=np.float32)
    for rows, X, V in parts:
        cand[rows, : X.shape[1]] = X
        cval[rows, : V.shape[1]] = V
    return cand, cval
