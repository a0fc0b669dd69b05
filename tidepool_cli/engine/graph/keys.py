"""Beam entries packed into one sortable int64 key per (distance, node).

``sortable(distance) << 32 | id << 1 | unexpanded``: a plain integer sort orders entries
by distance, breaks ties by id, and carries the expansion flag along. Distances of
``l2`` and ``cosine`` are non-negative (a rounding-negative one is clamped to +0.0);
``dot`` distances keep their sign through :func:`~tidepool_cli.engine.order.sortable`.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.order import sortable, unsortable

SENTINEL = np.int64(0x7FFF_FFFF_FFFF_FFFE)
"""Key of an empty beam slot: sorts after every real key and has its 'unexpanded' bit clear."""

ID_MASK = 0x7FFF_FFFF
"""Node ids are below 2**31 (they fit the key's 31 id bits)."""


def encode(dist: np.ndarray, ids: np.ndarray, metric: str) -> np.ndarray:
    """Keys of (distance, id) pairs with the 'unexpanded' bit set.

    Parameters
    ----------
    dist : array of float32
        Distances in the public convention.
    ids : array of int, same shape
        Node ids, ``0 <= id < 2**31``.
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    int64 array, same shape
    """
    if metric == "dot":
        bits = sortable(dist)
    else:
        # Non-negative floats sort like their bits; a rounding-negative one becomes +0.0.
        bits = np.maximum(np.ascontiguousarray(dist, dtype=np.float32).view(np.int32), 0)
    return (bits.astype(np.int64) << 32) | (np.asarray(ids, dtype=np.int64) << 1) | 1


def decode(keys: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Ids (int64, -1 for empty) and distances (float32, +inf for empty) of packed keys.

    Parameters
    ----------
    keys : int64 array
    metric : {"l2", "cosine", "dot"}
        Unused by the decoding itself (every metric's keys decode alike); kept so that
        callers name the convention of the distances they get back.

    Returns
    -------
    ids : int64 array, same shape
    dist : float32 array, same shape
    """
    empty = keys >= SENTINEL
    ids = np.where(empty, -1, (keys >> 1) & ID_MASK)
    dist = unsortable((keys >> 32).astype(np.int32))
    dist[empty] = np.inf
    return ids, dist
