"""Ordering float32 scores the same way on every machine: sortable keys, error bounds, cuts.

Different BLAS builds and CPUs sum a dot product in different orders, so one score comes
out a few ulps apart from one machine to the next (and, within one BLAS, from one GEMM
column or block layout to the next). A cut that keeps "the m smallest" of such scores
keeps different rows on different machines whenever scores near the m-th are nearly
equal: duplicate rows, integer-valued data with many equal distances. The rule of every
kernel here is therefore:

1. a *cut* keeps every entry whose computed score is within a float-error bound
   (:class:`Slack`) of the k-th one, so the kept set contains every row that can be in
   the true top k whatever the rounding;
2. the final order is by exact distance, then by id (:func:`~tidepool_cli.engine.topk.rerank`).

Entries beyond the bound are farther than the k-th for certain, so which of them a
machine happens to keep never changes an answer.

The bound follows Higham, "Accuracy and Stability of Numerical Algorithms" (2002),
section 3.1: a float32 dot product of m terms is off by at most ``gamma_m * sum |terms|``
with ``gamma_m = m u / (1 - m u)``, ``u = 2**-24``, whatever the summation order.
"""

from __future__ import annotations

import numpy as np

UNIT_ROUNDOFF = 2.0**-24
"""u of IEEE float32 (round to nearest)."""

SIGN_MASK = 0x7FFF_FFFF
"""The bits below the sign bit of a float32."""

SLACK_TERMS = 4
"""Error terms a cut covers: the computed score of the k-th entry and of a candidate
(each may be off by ``gamma * scale``), and the exact distances recomputed for both."""


def sortable(values: np.ndarray) -> np.ndarray:
    """Order-preserving int32 image of float32 values.

    Parameters
    ----------
    values : array of float32 (or convertible), any shape

    Returns
    -------
    int32 array, same shape
        ``a < b`` as floats iff ``sortable(a) < sortable(b)`` as integers (``-0.0`` sorts
        just below ``+0.0``; NaN above +inf). Its own inverse: :func:`unsortable`.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.int32)
    return bits ^ ((bits >> 31) & SIGN_MASK)


def unsortable(keys: np.ndarray) -> np.ndarray:
    """float32 values of :func:`sortable` keys.

    Parameters
    ----------
    keys : array of int32 (or of integers that fit int32)

    Returns
    -------
    float32 array, same shape
    """
    bits = np.asarray(keys).astype(np.int32)
    return (bits ^ ((bits >> 31) & SIGN_MASK)).view(np.float32)


def gamma(terms: int) -> float:
    """Relative error bound ``m u / (1 - m u)`` of a float32 sum of ``terms`` products."""
    mu = terms * UNIT_ROUNDOFF
    return mu / (1.0 - mu)


class Slack:
    """How far above a computed score an entry must be kept so no true top-k row is lost.

    Scores are the ranking proxies of :mod:`~tidepool_cli.engine.distances`:
    ``|x|^2 - 2 q.x`` for l2, ``-q.x`` for cosine and dot. For a proxy level ``v``,
    ``slack(v)`` is :data:`SLACK_TERMS` times ``gamma_{d+2}`` times a bound on the sum of
    the absolute terms of a score near ``v``:

    * l2: ``|x|^2 + 2 |q| |x|`` for the proxy and ``(|q| + |x|)^2`` for the direct
      difference, with ``|x| <= |q| + sqrt(v + |q|^2)`` (the score itself bounds the norm);
    * cosine: ``2 max(|q|, 1)`` (stored rows are unit vectors);
    * dot: ``2 |q| |x|max`` with ``|x|max`` the largest norm among the scored rows (a
      dot score says nothing about the norm); without it, +inf (keep everything).

    Parameters
    ----------
    xq : (nq, d) float32
        The queries the scores belong to.
    metric : {"l2", "cosine", "dot"}
    xmax : float, optional
        Largest norm of a scored row (dot only).
    """

    def __init__(self, xq: np.ndarray, metric: str, xmax: float | None = None):
        self.metric = metric
        self.g = gamma(xq.shape[1] + 2)
        self.qn = np.sqrt(np.einsum("ij,ij->i", xq, xq, dtype=np.float64))
        self.xmax = xmax
        self._linear: tuple[float, np.ndarray] | None = None

    def __call__(self, level: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Slack (len(level),) float64 for proxy levels ``level`` of the queries ``rows``.

        Parameters
        ----------
        level : (r,) float
            A computed score per query (the k-th kept one); +inf gives +inf.
        rows : (r,) int or slice
            Which queries of ``xq`` the levels belong to.

        Returns
        -------
        (r,) float64, non-negative (+inf where ``level`` is +inf)
        """
        v = np.asarray(level, dtype=np.float64)
        qn = self.qn[rows]
        if self.metric == "l2":
            with np.errstate(invalid="ignore"):
                xn = qn + np.sqrt(np.maximum(v + qn**2, 0.0))
            scale = (xn**2 + 2 * qn * xn) + (qn + xn) ** 2
        elif self.metric == "cosine":
            scale = 2.0 * np.maximum(qn, 1.0)
        elif self.xmax is None:
            scale = np.full(v.shape, np.inf)
        else:
            scale = 2.0 * qn * self.xmax
        out = SLACK_TERMS * self.g * scale
        return np.where(np.isfinite(v), out, np.inf)

    def loose_limit(self, level: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """An upper bound of :meth:`limit` that costs one multiply-add per level.

        For the bounds a scan applies list by list, where :meth:`limit`'s dozen small
        numpy calls would cost more than the comparison they serve. With
        ``u = v + |q|^2 >= 0`` the l2 scale ``7|q|^2 + 2u + 8|q| sqrt(u)`` is at most
        ``11|q|^2 + 6u`` (as ``8ab <= 4a^2 + 4b^2``), a line in ``v``; the loose limit is
        the fixed point of ``L = v + slack_line(L)``. Cosine and dot slacks do not
        depend on ``v`` at all.

        Returns
        -------
        (r,) float64, never below :meth:`limit` of the same levels.
        """
        if self._linear is None:
            c = SLACK_TERMS * self.g
            if self.metric == "l2":
                # The fixed point L = v + c (17 |q|^2 + 6 L): L bounds the slack of a
                # score anywhere up to L itself, which limit() relies on.
                grow = 1.0 / (1.0 - 6.0 * c)
                self._linear = (grow, 17.0 * c * grow * self.qn**2)
            else:
                self._linear = (1.0, self(np.zeros(self.qn.shape)))
        slope, offset = self._linear
        return np.asarray(level, dtype=np.float64) * slope + offset[rows]

    def limit(self, level: np.ndarray, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """``level + slack(level)`` as (r,) float64: the largest score a cut must keep."""
        v = np.asarray(level, dtype=np.float64)
        # The bound of a score up to the limit, not at the level (l2 norms grow with it).
        return v + self(self.loose_limit(v, rows), rows)


def smallest_mask(vals: np.ndarray, m: int, tie: np.ndarray | None = None) -> np.ndarray:
    """Mask of the m smallest values of every row, ties to the smaller ``tie`` key.

    The one row-wise smallest-m selection of the engine: a partition finds the m-th
    value, and only rows where values equal to it push the count past m are sorted.

    Parameters
    ----------
    vals : (r, c) float32
    m : int, ``1 <= m``
    tie : (r, c) int, optional
        Tie-break keys (ids); the column index if None.

    Returns
    -------
    (r, c) bool with ``min(m, c)`` True per row.
    """
    r, c = vals.shape
    if m >= c:
        return np.ones((r, c), dtype=bool)
    kth = np.partition(vals, m - 1, axis=1)[:, m - 1 : m]
    mask = vals <= kth
    over = np.flatnonzero(np.count_nonzero(mask, axis=1) > m)
    if over.size:
        key = np.broadcast_to(np.arange(c), (over.size, c)) if tie is None else tie[over]
        keep = np.lexsort((key, vals[over]), axis=1)[:, :m]
        mask[over] = False
        mask[over[:, None], keep] = True
    return mask


def smallest_k(vals: np.ndarray, k: int, tie: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Columns and values of the k smallest entries of every row (unordered), ties to the
    smaller ``tie`` key (the column if None): :func:`smallest_mask` as indices.

    Parameters
    ----------
    vals : (r, c) float32
    k : int, >= 1
    tie : (r, c) int, optional

    Returns
    -------
    cols : (r, min(k, c)) int64
    values : (r, min(k, c)) float32
    """
    r, c = vals.shape
    if k >= c:
        return np.broadcast_to(np.arange(c), (r, c)), vals
    cols = np.nonzero(smallest_mask(vals, k, tie))[1].reshape(r, k)
    return cols, np.take_along_axis(vals, cols, axis=1)


def tie_aware_mask(
    vals: np.ndarray, m: int, k: int, slack: Slack, rows: np.ndarray | slice = slice(None), loose: bool = False
) -> np.ndarray:
    """Mask of a tie-aware cut: the m smallest finite entries of each row (all of those
    equal to the m-th), and every entry within the error bound of the row's k-th smallest.

    Parameters
    ----------
    vals : (r, c) float32
        Computed scores, +inf for none.
    m : int
        Entries kept at least (spare candidates), ``m >= 1``.
    k : int
        Rank whose score sets the bound (the number of results asked for), ``k <= m``.
    slack : Slack
    rows : (r,) int or slice
        The queries of ``slack`` the rows belong to.
    loose : bool
        Use :meth:`Slack.loose_limit` (cheaper, keeps a superset).

    Returns
    -------
    (r, c) bool
    """
    r, c = vals.shape
    k = min(k, m)
    if k > c:
        return vals < np.inf
    kths = sorted({k - 1, min(m, c) - 1})
    part = np.partition(vals, kths, axis=1)
    level = part[:, k - 1]
    lim = slack.loose_limit(level, rows) if loose else slack.limit(level, rows)
    lim = np.maximum(lim, part[:, min(m, c) - 1])
    return (vals <= lim[:, None]) & (vals < np.inf)


def stable_order(keys: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of non-negative integer keys below ``bound``.

    NumPy radix-sorts 16-bit keys, which is several times faster than its merge sort.

    Parameters
    ----------
    keys : (n,) int
    bound : int
        All keys are below it.

    Returns
    -------
    (n,) int64 permutation
    """
    return np.argsort(keys.astype(np.uint16) if bound <= 1 << 16 else keys, kind="stable")
