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
    distance. Rows still lost after ``REPAIR_ROUNDS`` rounds (many duplicates sharing one
    nearest reached row) are chained to each other (:func:`_attach`) for as many more.

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
    added = 0
    for chain in (False, True):
        for _ in range(REPAIR_ROUNDS):
            seen = reachable(adjacency, start)
            lost = np.flatnonzero(~seen)
            if not lost.size:
                return added
            src, dst = _attach(x, adjacency, seen, lost, cand, metric, chain)
            adjacency[src, _slots(adjacency, src)] = dst
            _sort_rows(x, adjacency, np.unique(src), metric)
            added += src.size
    return added


def _attach(x, adjacency, seen, lost, cand, metric, chain):
    """(sources, targets) of the edges one repair round adds for the ``lost`` rows; no
    source repeats.

    Each lost row's nearest reached candidate takes an edge to it, one lost row per
    reached row and round, into a free slot or over its farthest neighbour. With
    ``chain``, the lost rows that chose the same reached row ``w`` hang off each other
    instead of waiting: ``w -> u1 -> u2 -> ... -> um``, and the neighbour ``w`` gives up
    for ``u1`` (if any) hangs off ``um``, so it stays reachable. That is the way out when
    many rows share one nearest reached row at equal distance (duplicates), where each
    round's edge would evict the previous round's.
    """
    c = cand[lost]
    ok = (c >= 0) & seen[c.clip(0)]
    has = ok.any(axis=1)
    if not has.any():
        # A whole component without a reached candidate: attach one of its rows to
        # its nearest reached row by exact search.
        u = lost[:1]
        reached = np.flatnonzero(seen)
        _, I = knn(np.asarray(x[u], dtype=np.float32), np.asarray(x[reached]), 1, metric)
        return reached[I[:, 0]], u
    u = lost[has]
    w = c[has, ok[has].argmax(axis=1)]
    if not chain:
        w, first = np.unique(w, return_index=True)
        return w, u[first]
    order = np.lexsort((u, w))
    w, u = w[order], u[order]
    first = np.r_[True, w[1:] != w[:-1]]
    last = np.r_[w[1:] != w[:-1], True]
    heads = w[first]
    row = adjacency[heads]
    evicted = row[np.arange(heads.size), _slots(adjacency, heads)]
    tails = u[last]
    moved = evicted >= 0
    src = np.concatenate((heads, u[~last], tails[moved]))
    dst = np.concatenate((u[first], u[1:][~last[:-1]], evicted[moved]))
    return src, dst


def _slots(adjacency, rows):
    """Slot of each row a new edge goes to: its first free one, else its last (farthest)."""
    free = adjacency[rows] < 0
    return np.where(free.any(axis=1), free.argmax(axis=1), adjacency.shape[1] - 1)


def _sort_rows(x, adjacency, rows, metric):
    """Re-order the given adjacency rows nearest first (ties by id, -1 last)."""
    nb = adjacency[rows].astype(np.int64)
    valid = nb >= 0
    pts = np.asarray(x[nb.clip(0).ravel()], dtype=np.float32).reshape(*nb.shape, -1)
    dist = exact_distances(np.asarray(x[rows], dtype=np.float32), pts, metric)
    ids, _ = best_unique(np.where(valid, nb, -1), dist, nb.shape[1])
    adjacency[rows] = ids.astype(np.int32)
