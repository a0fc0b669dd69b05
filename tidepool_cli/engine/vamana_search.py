"""Beam search over a Vamana node file: code distances in RAM, records from disk, exact rerank.

DiskANN's search (Subramanya et al. 2019, section 3.3 and 3.4), batched across queries:

* Every query keeps a search list of the ``L`` nearest nodes seen so far, ranked by an
  *approximate* distance computed in RAM: ``score(query_rows, node_ids)``, a callable
  (PQ/ADC, RaBitQ, an f16 copy, or exact f32 when everything fits).
* A hop (a *round*) takes the ``W`` best unexpanded nodes of every active query (beam
  width W) and reads their records: one block (usually one 4-KiB sector) each, unless
  the node is in the cache of nodes nearest the medoid. A record holds the full vector,
  whose exact distance joins the query's rerank pool, and the neighbour list, whose
  unvisited members are scored with the code distance and merged into the list.
* A query stops when its list holds no unexpanded node. The answer is the ``k`` best
  of the rerank pool (every node read) by exact distance: all nodes are navigated, only
  allowed ones (not deleted, passing the filter) are returned.

All active queries advance in lockstep: one round is a few numpy calls over all of them.
List entries are int64 keys ``sortable(score) << 32 | id << 1 | unexpanded`` (:mod:`~tidepool_cli.engine.graph.keys`) so one integer
sort orders by score, breaks ties by id and carries the expansion flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine.distances import exact_distances
from tidepool_cli.engine.graph.keys import ID_MASK, SENTINEL, encode
from tidepool_cli.engine.graph.search import PairScorer, Visited
from tidepool_cli.engine.vamana_layout import NodeLayout, decode_records, record_view
from tidepool_cli.errors import InvalidInputError

Scorer = PairScorer
"""``score(node_ids (p,) int64, query_rows (p,) int64) -> (p,) float32`` approximate distances
(the walk's pluggable distance, as in :func:`~tidepool_cli.engine.graph.beam_search`)."""

DEFAULT_BEAM_WIDTH = 4
"""Records read per query and round (W)."""

DEFAULT_CACHE_NODES = 0
"""Records held in RAM, nearest the medoid by hops."""

QUERY_BATCH = 256
"""Queries walking in lockstep; bounds the visited tables."""

TIE_RTOL = 1e-6
"""Relative float-error bound under which two exact distances count as tied (ordered by id)."""



@dataclass(frozen=True)
class NodeRecords:
    """The record area of a node file and where each row's record is.

    Attributes
    ----------
    blocks : (n_blocks, block_bytes) uint8
        Record blocks (a read-only memmap of the node file).
    slot_of : (n,) int32
        Slot of each row's record (block = slot // per_block).
    layout : NodeLayout
    medoid : int
        Entry row.
    """

    blocks: np.ndarray
    slot_of: np.ndarray
    layout: NodeLayout
    medoid: int

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectors, neighbour lists and block numbers of the records of ``rows``.

        Parameters
        ----------
        rows : (m,) int64

        Returns
        -------
        vectors : (m, d) float32
        neighbors : (m, R) int32, -1 padded
        block : (m,) int64
        """
        slot = self.slot_of[rows].astype(np.int64)
        pb = self.layout.per_block
        raw = record_view(self.blocks, self.layout)[slot // pb, slot % pb]
        vec, nb = decode_records(raw, self.layout)
        return vec, nb, slot // pb


@dataclass(frozen=True)
class NodeCache:
    """Records held in RAM: the ``count`` nodes nearest the medoid by hops.

    Attributes
    ----------
    rows : (c,) int64
        Sorted cached rows.
    vectors : (c, d) float32
    neighbors : (c, R) int32
    """

    rows: np.ndarray
    vectors: np.ndarray
    neighbors: np.ndarray

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return int(self.rows.nbytes + self.vectors.nbytes + self.neighbors.nbytes)

    def lookup(self, rows: np.ndarray) -> np.ndarray:
        """(m,) int64 position of each row in the cache, -1 if not cached."""
        if not self.rows.size:
            return np.full(rows.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self.rows, rows).clip(0, self.rows.size - 1)
        return np.where(self.rows[pos] == rows, pos, -1)


def cache_near_medoid(records: NodeRecords, count: int) -> NodeCache:
    """Read the records of the ``count`` rows nearest the medoid (breadth-first by hops).

    DiskANN caches a few BFS levels around its entry point: every search starts there,
    so those records are read by almost every query.

    Parameters
    ----------
    records : NodeRecords
    count : int
        Records to cache, >= 0 (capped at n).

    Returns
    -------
    NodeCache
    """
    n = records.slot_of.size
    count = min(max(int(count), 0), n)
    d, r = records.layout.d, records.layout.r
    if count == 0:
        return NodeCache(np.empty(0, np.int64), np.empty((0, d), np.float32), np.empty((0, r), np.int32))
    seen = np.zeros(n, dtype=bool)
    frontier = np.array([records.medoid], dtype=np.int64)
    seen[frontier] = True
    got_r, got_v, got_n = [], [], []
    have = 0
    while frontier.size and have < count:
        frontier = frontier[: count - have]
        vec, nb, _ = records.read(frontier)
        got_r.append(frontier)
        got_v.append(vec)
        got_n.append(nb)
        have += frontier.size
        nxt = nb.ravel().astype(np.int64)
        nxt = nxt[nxt >= 0]
        nxt = nxt[~seen[nxt]]
        _, first = np.unique(nxt, return_index=True)
        frontier = nxt[np.sort(first)]
        seen[frontier] = True
    rows = np.concatenate(got_r)
    order = np.argsort(rows)
    return NodeCache(rows[order], np.concatenate(got_v)[order], np.concatenate(got_n)[order])


@dataclass(frozen=True)
class SearchStats:
    """What each query cost.

    Attributes
    ----------
    hops : (nq,) int32
        Rounds of the beam search (each reads up to W records).
    records_read : (nq,) int32
        Records read from the node file (cached ones excluded).
    pages_read : (nq,) int32
        Distinct 4-KiB pages those reads touched.
    cache_hits : (nq,) int32
        Records served from the cache.
    """

    hops: np.ndarray
    records_read: np.ndarray
    pages_read: np.ndarray
    cache_hits: np.ndarray

    def summary(self) -> dict:
        """Means over the queries: ``{"hops", "records_read", "pages_read", "cache_hits"}``."""
        return {name: float(getattr(self, name).mean()) if getattr(self, name).size else 0.0
                for name in ("hops", "records_read", "pages_read", "cache_hits")}


def search_vamana(
    records: NodeRecords,
    xq: np.ndarray,
    k: int,
    *,
    score: Scorer,
    metric: str,
    l: int,
    beam_width: int = DEFAULT_BEAM_WIDTH,
    cache: NodeCache | None = None,
    allowed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, SearchStats]:
    """k nearest allowed rows of each query by beam search on the node file (see module docs).

    Parameters
    ----------
    records : NodeRecords
    xq : (nq, d) float32
        Prepared queries (unit rows for cosine); ``score`` is called with rows of it.
    k : int
        Results per query, >= 1.
    score : PairScorer
        ``score(node_ids, query_rows) -> (p,) float32``: approximate distance of each
        (node, query) pair, smaller is nearer; ``query_rows`` index ``xq``
        (:class:`~tidepool_cli.engine.graph.ExactPairs` over f32 rows or an f16 copy,
        PQ/ADC, RaBitQ). It only steers the walk: results carry exact distances.
    metric : {"l2", "cosine"}
    l : int
        Search list size L (>= k for a full answer).
    beam_width : int
        W, records read per query and round, >= 1.
    cache : NodeCache, optional
        Records in RAM (:func:`cache_near_medoid`); reading them costs no page.
    allowed : (n,) bool, optional
        Rows that may be returned (not deleted, passing the filter). Every row is
        navigated. With a selective mask the answer holds the allowed rows among those
        the walk read; the caller widens ``l`` or falls back to an exact scan.

    Returns
    -------
    ids : (nq, k) int64
        Rows ordered by exact distance; distances within ``TIE_RTOL`` count as tied and
        are ordered by row. -1 padded.
    dist : (nq, k) float32
        Exact distances (public convention: squared l2, 1 - cos), +inf padded.
    stats : SearchStats

    Raises
    ------
    InvalidInputError
        ``k``, ``l`` or ``beam_width`` below 1, or queries of the wrong dimension.
    """
    if int(k) < 1 or int(l) < 1 or int(beam_width) < 1:
        raise InvalidInputError(f"k, L and the beam width must be at least 1, got {k}, {l}, {beam_width}")
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xq.ndim != 2 or xq.shape[1] != records.layout.d:
        raise InvalidInputError(f"queries must have shape (nq, {records.layout.d}), got {xq.shape}")
    nq = xq.shape[0]
    if cache is None:
        cache = cache_near_medoid(records, 0)
    per = QUERY_BATCH
    ids = np.full((nq, k), -1, dtype=np.int64)
    dist = np.full((nq, k), np.inf, dtype=np.float32)
    hops = np.zeros(nq, np.int32)
    reads = np.zeros(nq, np.int32)
    pages = np.zeros(nq, np.int32)
    hits = np.zeros(nq, np.int32)
    for s in range(0, nq, per):
        e = min(nq, s + per)
        part = _search_batch(records, xq, s, e, k, score, metric, l, beam_width, cache, allowed)
        ids[s:e], dist[s:e], hops[s:e], reads[s:e], pages[s:e], hits[s:e] = part
    return ids, dist, SearchStats(hops, reads, pages, hits)


def _search_batch(records, xq, s, e, k, score, metric, l, w, cache, allowed):
    nq = e - s
    n = records.slot_of.size
    hits = np.zeros(nq, np.int32)
    read_q, read_b = [], []

    def read(qa: np.ndarray, node: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # From the cache where held, else one block read each.
        vec = np.empty((node.size, records.layout.d), dtype=np.float32)
        nb = np.empty((node.size, records.layout.r), dtype=np.int32)
        cpos = cache.lookup(node)
        inc = cpos >= 0
        if inc.any():
            vec[inc], nb[inc] = cache.vectors[cpos[inc]], cache.neighbors[cpos[inc]]
            np.add.at(hits, qa[inc], 1)
        if not inc.all():
            vec[~inc], nb[~inc], blk = records.read(node[~inc])
            read_q.append(qa[~inc])
            read_b.append(blk)
        return vec, nb

    pool_q, pool_id, pool_d, hops = walk(xq[s:e], n, records.medoid, l, w, lambda i, q: score(i, q + s), read, metric)
    ids, dist = _select(pool_q, pool_id, pool_d, nq, k, allowed)
    reads = np.zeros(nq, np.int32)
    pages = np.zeros(nq, np.int32)
    if read_q:
        nb_ = records.blocks.shape[0] + 1
        rq, rb = np.concatenate(read_q), np.concatenate(read_b)
        reads = np.bincount(rq, minlength=nq).astype(np.int32)
        distinct = np.unique(rq * nb_ + rb) // nb_
        pages = (np.bincount(distinct, minlength=nq) * records.layout.block_sectors).astype(np.int32)
    return ids, dist, hops, reads, pages, hits


def _keys(approx: np.ndarray, ids: np.ndarray) -> np.ndarray:
    # Code distances may be negative (estimators are unbiased, not bounded): keep the sign.
    return encode(approx, ids, "dot")


def walk(
    xq: np.ndarray,
    n: int,
    start: int,
    l: int,
    w: int,
    score: Scorer,
    read: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    metric: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The lockstep beam search itself: every node it expands, with its exact distance.

    Parameters
    ----------
    xq : (nq, d) float32
        Queries.
    n : int
        Nodes in the graph.
    start : int
        Entry node (the medoid).
    l : int
        Search list size L.
    w : int
        Beam width W.
    score : PairScorer
        Approximate distances, called as ``score(node_ids, query_rows)``; ``query_rows`` index ``xq``.
    read : callable(query_rows (m,), nodes (m,)) -> (vectors (m, d) float32, neighbors (m, R) int32)
        Records of the nodes expanded by those queries.
    metric : {"l2", "cosine"}

    Returns
    -------
    query : (p,) int64
    node : (p,) int64
        Every (query, node) expansion: the paper's visited set V, each node once per query.
    dist : (p,) float32
        Exact distance of each pair, from the record's vector.
    hops : (nq,) int32
        Rounds per query.
    """
    nq = xq.shape[0]
    hops = np.zeros(nq, np.int32)
    visited = Visited(nq, n)
    pool_q, pool_id, pool_d = [], [], []
    med = np.full(nq, start, dtype=np.int64)
    visited.mark(np.arange(nq), med)
    beam = np.full((nq, l), SENTINEL, dtype=np.int64)
    beam[:, 0] = _keys(score(med, np.arange(nq, dtype=np.int64)), med)
    act = np.arange(nq)
    while act.size:
        unexp = (beam & 1).astype(bool)
        pick = np.argsort(~unexp, axis=1, kind="stable")[:, :w]
        pk = np.take_along_axis(beam, pick, axis=1)
        real = (pk & 1).astype(bool)
        live = real[:, 0]
        if not live.all():
            act, beam, pick, pk, real = act[live], beam[live], pick[live], pk[live], real[live]
            if not act.size:
                break
        np.put_along_axis(beam, pick, pk & ~1, axis=1)
        hops[act] += 1
        qr, qc = np.nonzero(real)
        node = (pk[qr, qc] >> 1) & ID_MASK
        qa = act[qr]
        vec, nb = read(qa, node)
        pool_q.append(qa)
        pool_id.append(node)
        pool_d.append(exact_distances(xq[qa], vec[:, None, :], metric)[:, 0])
        # Neighbours of this round's records, one row per active query, each id once.
        wide = np.full((act.size, w, nb.shape[1]), -1, dtype=np.int64)
        wide[qr, qc] = nb
        wide = np.sort(wide.reshape(act.size, -1), axis=1)
        wide[:, 1:][wide[:, 1:] == wide[:, :-1]] = -1
        valid = visited.filter(visited.base(act), wide, wide >= 0)
        r, c = np.nonzero(valid)
        if not r.size:
            continue
        cand = wide[r, c]
        blk = np.full(wide.shape, SENTINEL, dtype=np.int64)
        blk[r, c] = _keys(score(cand, act[r]), cand)
        beam = np.sort(np.concatenate((beam, blk), axis=1), axis=1)
        if visited.lossy:
            # A node the hashed table forgot comes back with its old score: keep one copy
            # (the expanded one sorts first).
            same = (beam[:, 1:] >> 1) == (beam[:, :-1] >> 1)
            same &= beam[:, 1:] != SENTINEL
            if same.any():
                beam[:, 1:][same] = SENTINEL
                beam.sort(axis=1)
        beam = beam[:, :l]
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.empty(0, dt))
    return cat(pool_q, np.int64), cat(pool_id, np.int64), cat(pool_d, np.float32), hops


def _select(q, ids, d, nq, k, allowed):
    """Per query, the k best allowed (query, id, exact distance) triples; near-ties by id."""
    if allowed is not None:
        ok = allowed[ids]
        q, ids, d = q[ok], ids[ok], d[ok]
    out_i = np.full((nq, k), -1, dtype=np.int64)
    out_d = np.full((nq, k), np.inf, dtype=np.float32)
    if not q.size:
        return out_i, out_d
    o = np.lexsort((ids, d, q))
    q, ids, d = q[o], ids[o], d[o]
    # A node read twice by one query (hashed visited table) counts once.
    _, first = np.unique(q * (int(ids.max()) + 1) + ids, return_index=True)
    if first.size < q.size:
        keep = np.sort(first)
        q, ids, d = q[keep], ids[keep], d[keep]
    # Chain near-equal neighbours into tie groups, then order each group by id.
    new_q = np.empty(q.size, dtype=bool)
    new_q[0] = True
    new_q[1:] = q[1:] != q[:-1]
    gap = np.empty(q.size, dtype=bool)
    gap[0] = True
    gap[1:] = d[1:] - d[:-1] > TIE_RTOL * np.abs(d[1:]) + 1e-30
    group = np.cumsum(new_q | gap)
    o = np.lexsort((ids, group))
    q, ids, d = q[o], ids[o], d[o]
    start = np.searchsorted(q, np.arange(nq))
    rank = np.arange(q.size) - start[q]
    keep = rank < k
    out_i[q[keep], rank[keep]] = ids[keep]
    out_d[q[keep], rank[keep]] = d[keep]
    return out_i, out_d
