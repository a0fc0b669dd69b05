"""Connectivity repair: every row of a graph layer reachable from its entry point.

Pruning keeps each node's out-edges diverse but can leave a node with no in-edge; such a
node is found by no search. :func:`connect_unreachable` gives lost rows in-edges until
a breadth-first walk (:func:`reachable`) from the entry point reaches every row.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.distances import exact_distances
from tidepool_cli.engine.graph.candidates import best_unique
from tidepool_cli.engine.topk import knn

def reachable(adjacency: np.ndarray, start: int, nodes: np.ndarray | None = None) -> np.ndarray:
    """Rows reachable from ``start`` by following out-edges (breadth-first, one hop per step).

    Parameters
    ----------
    adjacency : (m, R) int32
        Neighbour ids, -1 padded.
    start : int
        Row to start from.
    nodes : (m,) int32, optional
        Sorted node id of each row when ids are not row numbers.

    Returns
    -------
    (m,) bool
    """
    m = adjacency.shape[0]
    seen = np.zeros(m, dtype=bool)
    seen[start] = True
    frontier = np.array([start], dtype=np.int64)
    while frontier.size:
        nb = adjacency[frontier].ravel()
        nb = nb[nb >= 0]
        rows = nb if nodes is None else np.searchsorted(nodes, nb)
        rows = np.unique(rows[~seen[rows]])
        seen[rows] = True
        frontier = rows
    return seen


REPAIR_ROUNDS = 16
"""Rounds of :func:`connect_unreachable`; each round re-attaches every lost component it can."""


def connect_unreachable(
    x: np.ndarray,
    adjacency: np.ndarray,
    start: int,
    cand: np.ndarray,
    *,
    metric: str,
) -> int:
    """Make every row reachable from ``start`` by adding in-edges to lost rows, in place.

    Pruning keeps each node's out-edges diverse but can leave a node with no in-edge
    (every node that chose it pruned it again when its own list overflowed). Such a node
    is found by no search. Each round walks the graph from ``start``; every lost row takes
    an edge from its nearest reached candidate, into a free slot or else in place of that
    node's farthest neighbour (which the next round re-checks). Rows are kept sorted by
    distance.

    Parameters
    ----------
    x : (m, d) float32
        Vectors of the rows.
    adjacency : (m, R) int32
        Neighbour rows, -1 padded, nearest first; modified in place.
    start : int
        Row the searches enter by.
    cand : (m, K) int
        Candidate rows per row (the k-NN lists of the build), nearest first, -1 padded.
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    int
        Number of edges added.
    """
    R = adjacency.shape[1]
    added = 0
    for _ in range(REPAIR_ROUNDS):
        seen = reachable(adjacency, start)
        lost = np.flatnonzero(~seen)
        if not lost.size:
            break
        c = cand[lost]
        ok = (c >= 0) & seen[c.clip(0)]
        has = ok.any(axis=1)
        if has.any():
            u = lost[has]
            w = c[has, ok[has].argmax(axis=1)]
            w, first = np.unique(w, return_index=True)
            u = u[first]
        else:
            # A whole component without a reached candidate: attach one of its rows to
            # its nearest reached row by exact search.
            u = lost[:1]
            reached = np.flatnonzero(seen)
            _, I = knn(np.asarray(x[u], dtype=np.float32), np.asarray(x[reached]), 1, metric)
            w = reached[I[:, 0]]
        free = adjacency[w] < 0
        slot = np.where(free.any(axis=1), free.argmax(axis=1), R - 1)
        adjacency[w, slot] = u
        _sort_rows(x, adjacency, w, metric)
        added += w.size
    return added


def _sort_rows(x, adjacency, rows, metric):
    """Re-order the given adjacency rows nearest first (ties by id, -1 last)."""
    nb = adjacency[rows].astype(np.int64)
    valid = nb >= 0
    pts = np.asarray(x[nb.clip(0).ravel()], dtype=np.float32).reshape(*nb.shape, -1)
    dist = exact_distances(np.asarray(x[rows], dtype=np.float32), pts, metric)
    ids, _ = best_unique(np.where(valid, nb, -1), dist, nb.shape[1])
    adjacency[rows] = ids.astype(np.int32)
