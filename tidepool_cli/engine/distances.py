"""Metrics, distance conventions and the exact distance of gathered rows.

Every index in tidepool answers with *distances*, smaller is nearer, in one convention
per metric (documented in README.md):

========  ===========================================================
metric    distance returned for query q and stored vector x
========  ===========================================================
l2        squared Euclidean distance ``sum((q - x) ** 2)``
cosine    ``1 - cos(q, x)``, in [0, 2]
dot       ``-(q . x)``, the negated inner product
========  ===========================================================

For ``cosine`` the vectors are L2-normalised when they enter the index (and queries
when they are prepared), so cosine is an inner product on unit vectors everywhere below
this module; a zero vector has no direction and is refused.

Kernels rank by a cheap *proxy* that differs from the distance by a per-query constant:
``|x|^2 - 2 q.x`` for l2 (add ``|q|^2``), ``-q.x`` for cosine (add 1) and dot. Final
distances are always recomputed by :func:`exact_distances` so that one row gets the same
distance whichever access path found it.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.errors import InvalidInputError

METRICS: tuple[str, ...] = ("l2", "cosine", "dot")
UNIT_NORM_TOLERANCE = np.float32(2.0**-21)
"""|norm - 1| below which a row counts as unit already: a few float32 ulps of 1, more than
the rounding of dividing a row by its norm leaves."""

SQNORM_ROWS = 65536
"""Rows converted to float64 per step of :func:`sqnorms` (bounds the copy to 64 MiB at d = 128)."""


def check_metric(metric: str) -> str:
    """Return ``metric`` if it is one of :data:`METRICS`.

    Raises
    ------
    InvalidInputError
        For any other name.
    """
    if metric not in METRICS:
        raise InvalidInputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def float_rows(x: np.ndarray, what: str) -> np.ndarray:
    """The vectors an index build takes: a non-empty (n, d) float32 array.

    Parameters
    ----------
    x : (n, d) array of any real dtype
        Converted to float32 only when it is not float32 already (a float32 memmap is
        returned as is, never copied).
    what : str
        Name of the build, for the error message ("HNSW", "Vamana").

    Raises
    ------
    InvalidInputError
        ``x`` not 2-D, empty, or not numeric.
    """
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InvalidInputError(f"{what} needs a non-empty 2-D array of vectors, got shape {x.shape}")
    if x.dtype != np.float32:
        if not np.issubdtype(x.dtype, np.number):
            raise InvalidInputError(f"vectors must be numeric, got dtype {x.dtype}")
        x = x.astype(np.float32)
    return x


def sqnorms(x: np.ndarray) -> np.ndarray:
    """Squared L2 norms of the rows of ``x``.

    Parameters
    ----------
    x : (n, d) float32

    Returns
    -------
    (n,) float32
        Accumulated in float64 so that large integer-valued data (SIFT, MNIST) keeps
        exact norms; stored as float32.
    """
    x = np.asarray(x)
    out = np.empty(x.shape[0], dtype=np.float32)
    step = SQNORM_ROWS
    for s in range(0, x.shape[0], step):
        blk = np.asarray(x[s : s + step], dtype=np.float64)
        out[s : s + step] = np.einsum("ij,ij->i", blk, blk)
    return out


def normalize_rows(x: np.ndarray, what: str = "vector") -> np.ndarray:
    """L2-normalise the rows of ``x`` for the cosine metric.

    Parameters
    ----------
    x : (n, d) float32
    what : str
        Word used in the error message ("vector", "query").

    Returns
    -------
    (n, d) float32, C-contiguous, unit rows; a row within :data:`UNIT_NORM_TOLERANCE`
    of unit length is returned unchanged (normalising twice changes no bit).

    Raises
    ------
    InvalidInputError
        If a row has zero norm (cosine is undefined for it).
    """
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(sqnorms(x))
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise InvalidInputError(
            f"{what} {int(zero[0])} has zero norm; the cosine metric needs a direction"
        )
    # A row already of unit length (to float32 rounding) is kept bit for bit, so that
    # normalising is idempotent: rows exported from a cosine index re-ingest unchanged.
    norms = np.where(np.abs(norms - 1) <= UNIT_NORM_TOLERANCE, np.float32(1), norms)
    return np.ascontiguousarray(x / norms[:, None], dtype=np.float32)


def prepare_queries(xq: np.ndarray, metric: str) -> np.ndarray:
    """Queries as the kernels expect them: float32, C-contiguous, unit rows for cosine.

    Parameters
    ----------
    xq : (nq, d) array of any real dtype
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    (nq, d) float32

    Raises
    ------
    InvalidInputError
        Zero query under cosine, or non-finite values.
    """
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xq.ndim != 2:
        raise InvalidInputError(f"queries must be a 2-D array, got shape {xq.shape}")
    if not np.isfinite(xq).all():
        raise InvalidInputError("queries contain NaN or Inf values")
    if metric == "cosine":
        xq = normalize_rows(xq, "query")
    return xq


def exact_distances(xq: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Distances between each query and its own gathered rows, in the public convention.

    Parameters
    ----------
    xq : (nq, d) float32
        Prepared queries (see :func:`prepare_queries`).
    rows : (nq, m, d) float32
        ``rows[i]`` are the m candidate vectors of query i.
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    (nq, m) float32
        For l2 the squared distance is computed from direct differences, which has no
        cancellation error (``|q|^2 - 2 q.x + |x|^2`` can lose several units on
        integer-valued data such as SIFT).
    """
    if metric == "l2":
        diff = rows - xq[:, None, :]
        return np.einsum("qmd,qmd->qm", diff, diff)
    ip = np.einsum("qmd,qd->qm", rows, xq)
    # Rounding can push 1 - cos a few ulps outside [0, 2] for (anti)parallel unit vectors.
    return np.clip(1.0 - ip, 0.0, 2.0) if metric == "cosine" else -ip
