"""recall@k, defined once (as in faiss contrib ``evaluation.py``), tie-aware.

recall@k = |I ∩ GT| / (nq · k), where I holds the k ids a method returned per query and
GT the k true nearest ids from exact ground truth. Ground truth lists ties in one
arbitrary order, so a returned id whose true distance equals the k-th true distance is
as correct as the listed one: with distances given, such an id counts as a hit.
"""

from __future__ import annotations

import numpy as np


def recall_at_k(
    found: np.ndarray,
    gt: np.ndarray,
    k: int,
    *,
    found_dist: np.ndarray | None = None,
    gt_dist: np.ndarray | None = None,
    rtol: float = 1e-5,
) -> float:
    """recall@k of returned ids against exact ground truth.

    Parameters
    ----------
    found : (nq, >=k) int
        Returned ids per query, best first; -1 (or any id absent from ``gt``) is a miss.
    gt : (nq, >=k) int
        Exact nearest ids per query, nearest first.
    k : int
    found_dist : (nq, >=k) float, optional
        Exact distances of the returned ids (same convention as ``gt_dist``).
    gt_dist : (nq, >=k) float, optional
        Exact distances of ``gt``. With both distance arrays, a returned id at a distance
        not above the k-th true distance (relative tolerance ``rtol``) counts as a hit.

    Returns
    -------
    float
        In [0, 1].
    """
    f = np.asarray(found)[:, :k]
    return float(recall_per_query(found, gt, k, found_dist=found_dist, gt_dist=gt_dist, rtol=rtol).sum()) / max(f.shape[0], 1)


def recall_per_query(
    found: np.ndarray,
    gt: np.ndarray,
    k: int,
    *,
    found_dist: np.ndarray | None = None,
    gt_dist: np.ndarray | None = None,
    rtol: float = 1e-5,
) -> np.ndarray:
    """recall@k of each query: (nq,) float64 in [0, 1]; arguments as :func:`recall_at_k`."""
    f = np.asarray(found)[:, :k]
    g = np.asarray(gt)[:, :k]
    hit = (f[:, :, None] == g[:, None, :]).any(axis=2) & (f >= 0)
    if found_dist is not None and gt_dist is not None:
        kth = np.asarray(gt_dist, dtype=np.float64)[:, k - 1 : k]
        fd = np.asarray(found_dist, dtype=np.float64)[:, :k]
        hit |= (f >= 0) & (fd <= kth + rtol * np.abs(kth) + 1e-6)
    return hit.sum(axis=1) / k
