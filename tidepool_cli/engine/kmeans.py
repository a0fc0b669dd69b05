"""k-means clustering for IVF coarse quantizers and graph-build partitions.

Training follows the practice of faiss (Johnson, Douze, Jegou, "Billion-scale similarity
search with GPUs", 2017): train on a random sample of at most ``max_points_per_centroid``
rows per centroid, run Lloyd iterations with GEMM-based assignment, and repair empty
clusters by splitting a large one. Initialisation is k-means++ (Arthur & Vassilvitskii,
"k-means++: the advantages of careful seeding", SODA 2007) on a sub-sample of
``INIT_POINTS_PER_CENTROID * k`` training rows, which keeps the k sequential seeding steps
inside the CPU cache. For ``cosine`` the centroids are re-normalised after every update
(spherical k-means, Dhillon & Modha 2001); ``dot`` trains with l2 geometry.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.distances import exact_distances, sqnorms
from tidepool_cli.engine.order import Slack
from tidepool_cli.errors import InvalidInputError

INIT_POINTS_PER_CENTROID = 8
"""Training rows per centroid used by the k-means++ seeding."""

ASSIGN_BATCH = 16384
"""Rows assigned per GEMM batch in :func:`assign`."""

SPLIT_NUDGE = 1 / 1024
"""Relative offset that splits a centroid in two for an empty cluster."""


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    metric: str = "l2",
    niter: int = 12,
    seed: int = 0,
    max_points_per_centroid: int = 256,
) -> np.ndarray:
    """Train k centroids on the rows of ``x``.

    Parameters
    ----------
    x : (n, d) float32
        Training vectors (a memmap is fine: only the sample is read). For cosine they
        must already be unit rows.
    k : int
        Number of centroids, ``1 <= k <= n``.
    metric : {"l2", "cosine", "dot"}
    niter : int
        Lloyd iterations after seeding.
    seed : int
        Seed of the sampling and seeding; equal seeds give equal centroids.
    max_points_per_centroid : int
        The training sample holds at most ``k * max_points_per_centroid`` rows.

    Returns
    -------
    (k, d) float32
        Centroids; unit rows for cosine.

    Raises
    ------
    InvalidInputError
        If ``k`` is not in ``[1, n]``.
    """
    n, d = x.shape
    if not 1 <= k <= n:
        raise InvalidInputError(f"k-means needs 1 <= k <= n rows, got k={k}, n={n}")
    rng = np.random.default_rng(seed)
    n_train = min(n, k * max_points_per_centroid)
    # Sorted sample indices keep memmap reads sequential.
    idx = np.sort(rng.choice(n, size=n_train, replace=False)) if n_train < n else np.arange(n)
    xt = np.ascontiguousarray(x[idx], dtype=np.float32)
    centroids = _kmeanspp(xt, k, rng)
    # Column-major copy for the per-dimension sums of _update (one transpose per call).
    xt_cols = np.ascontiguousarray(xt.T) if niter else xt
    for _ in range(niter):
        labels, _ = assign(xt, centroids, "l2" if metric == "dot" else metric)
        centroids = _update(xt_cols, labels, centroids, rng)
        if metric == "cosine":
            centroids = _unit(centroids)
    return centroids


def assign(x: np.ndarray, centroids: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row.

    Parameters
    ----------
    x : (n, d) float32
    centroids : (k, d) float32
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    labels : (n,) int32
        Index of the nearest centroid; ties break by lower index. A row whose GEMM
        scores put several centroids within float error of its best is decided by
        float64 distances, then by index, so labels do not depend on the BLAS.
    distances : (n,) float32
        Distance to it in the public convention of :mod:`~tidepool_cli.engine.distances`.
    """
    n = x.shape[0]
    labels = np.empty(n, dtype=np.int32)
    dist = np.empty(n, dtype=np.float32)
    # Proxy to minimise: |c|^2 - 2 x.c (l2) or -x.c; a plain argmin beats the
    # general top-k kernel for k = 1 since no candidate buffer is needed.
    scale = -2.0 if metric == "l2" else -1.0
    ct = np.ascontiguousarray((centroids * scale).T, dtype=np.float32)
    csq = sqnorms(centroids) if metric == "l2" else None
    cmax = float(np.sqrt(sqnorms(centroids).max())) if metric == "dot" else None
    # A reused output block spares the page faults of a fresh (batch, k) array per batch.
    out = np.empty((min(n, ASSIGN_BATCH), centroids.shape[0]), dtype=np.float32)
    for s in range(0, n, ASSIGN_BATCH):
        xb = np.ascontiguousarray(x[s : s + ASSIGN_BATCH], dtype=np.float32)
        proxy = np.matmul(xb, ct, out=out[: xb.shape[0]])
        if csq is not None:
            proxy += csq
        lab = proxy.argmin(axis=1)
        best = proxy[np.arange(xb.shape[0]), lab]
        _break_ties(xb, centroids, proxy, best, lab, Slack(xb, metric, cmax), metric)
        labels[s : s + xb.shape[0]] = lab
        if metric == "l2":
            best = np.maximum(best + np.einsum("ij,ij->i", xb, xb), 0.0)
        elif metric == "cosine":
            best = best + 1.0
        dist[s : s + xb.shape[0]] = best
    return labels, dist


def _break_ties(xb, centroids, proxy, best, lab, slack, metric) -> None:
    """In place: where centroids other than ``lab`` score within float error of ``best``,
    pick among them by float64 distance, then by lower index (updates ``lab`` and ``best``)."""
    lim = slack.limit(best)
    near = proxy <= lim[:, None]
    rows = np.flatnonzero(np.count_nonzero(near, axis=1) > 1)
    if not rows.size:
        return
    r, c = np.nonzero(near[rows])
    xr = xb[rows[r]].astype(np.float64)
    cr = centroids[c].astype(np.float64)
    if metric == "l2":
        d64 = np.einsum("ij,ij->i", cr, cr) - 2 * np.einsum("ij,ij->i", xr, cr)
    else:
        d64 = -np.einsum("ij,ij->i", xr, cr)
    order = np.lexsort((c, d64, r))
    first = order[np.r_[True, r[order][1:] != r[order][:-1]]]
    lab[rows[r[first]]] = c[first]
    best[rows[r[first]]] = proxy[rows[r[first]], c[first]]


def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on a sub-sample; D^2 sampling over squared l2 distances."""
    m = min(x.shape[0], max(k * INIT_POINTS_PER_CENTROID, k))
    pool = x[rng.choice(x.shape[0], size=m, replace=False)] if m < x.shape[0] else x
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(m)
    psq = sqnorms(pool).astype(np.float64)
    d2 = exact_distances(pool[chosen[0]][None], pool[None], "l2")[0].astype(np.float64)
    u = rng.random(k)
    for j in range(1, k):
        total = d2.sum()
        if total <= 0:
            # Fewer distinct points than k: the remaining seeds repeat, and the empty
            # clusters they leave are split apart by the Lloyd iterations.
            chosen[j:] = rng.integers(m, size=k - j)
            break
        c = int(np.searchsorted(np.cumsum(d2), u[j] * total, side="right"))
        chosen[j] = min(c, m - 1)
        c = pool[chosen[j]]
        # einsum, not a BLAS GEMV: OpenBLAS splits a GEMV of this size over its threads,
        # and k tiny thread hand-offs cost 5-50x the product on a busy 2-core machine.
        # Rounding only perturbs sampling weights.
        ip = np.einsum("ij,j->i", pool, c)
        np.minimum(d2, np.maximum(psq - 2.0 * ip + psq[chosen[j]], 0.0), out=d2)
    return pool[chosen].copy()


def _update(x_cols: np.ndarray, labels: np.ndarray, old: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Centroid means; an empty cluster takes half of the largest one (faiss-style split).

    ``x_cols`` is the (d, n) transpose of the training rows. Each dimension is summed with
    one float64 ``bincount`` in row order, the same order and precision as a segmented
    sum over rows sorted by label, without the (n, d) float64 copy that costs.
    """
    k, d = old.shape
    counts = np.bincount(labels, minlength=k)
    sums = np.empty((k, d), dtype=np.float64)
    for j in range(d):
        sums[:, j] = np.bincount(labels, weights=x_cols[j], minlength=k)
    nonempty = counts > 0
    centroids = old.copy()
    centroids[nonempty] = (sums[nonempty] / counts[nonempty, None]).astype(np.float32)
    counts = counts.astype(np.float64)
    # Opposite nudges per dimension, so the two halves separate in direction too
    # (a purely radial nudge would vanish under cosine re-normalisation).
    nudge = np.where(np.arange(d) % 2 == 0, 1.0, -1.0).astype(np.float32) * SPLIT_NUDGE
    for j in np.flatnonzero(~nonempty):
        # Split the cluster most likely to be oversized: pick proportionally to size.
        big = int(rng.choice(k, p=counts / counts.sum()))
        centroids[j] = centroids[big] * (1 + nudge)
        centroids[big] = centroids[big] * (1 - nudge)
        counts[j] = counts[big] = counts[big] / 2
    return centroids


def _unit(c: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.maximum(sqnorms(c), 1e-30))
    return (c / norms[:, None]).astype(np.float32)
