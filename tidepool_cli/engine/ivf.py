"""Inverted-file (IVF) index: a k-means coarse quantizer over compressed posting lists.

Build (Jegou, Douze, Schmid, "Product quantization for nearest neighbor search",
TPAMI 2011, section IV.A; Johnson, Douze, Jegou, "Billion-scale similarity search with
GPUs", 2017, for the training practice): train ``nlist`` centroids with
:func:`~tidepool_cli.engine.kmeans.kmeans` on a sample, assign every row to its nearest
centroid, and store each centroid's rows as a *posting list*, a set of row positions
compressed losslessly by one of the codecs of :mod:`~tidepool_cli.engine.idcodec`.
The vectors themselves stay where they are (the segment's vector file); the index holds
only centroids and IDs.

Search is batched, because NumPy pays per call and BLAS pays per byte:

1. *Probe*: one GEMM between the queries and the centroids, then the ``nprobe`` nearest
   lists of every query (ties to the lower list id).
2. *Invert*: the (nq, nprobe) probe table is sorted by list id, so every probed list is
   decoded once per batch and scored against all of its queries with one matrix product
   of the ranking proxy (``|x|^2 - 2 q.x`` for l2, ``-q.x`` otherwise; see
   :mod:`~tidepool_cli.engine.distances`).
3. *Threshold*: each query first scans its nearest list alone; the ``kk``-th best proxy
   there bounds the ``kk``-th best over all its probed lists, so in every other list only
   entries at or below that bound are kept (one comparison per score instead of a
   per-list partial sort).
4. *Merge and rerank*: the kept (query, proxy, id) triples are sorted once by
   (query, proxy, id), the first ``kk`` per query become candidates, and
   :func:`~tidepool_cli.engine.topk.rerank` computes their exact distances, so a row gets
   the distance exact search would give it, bit for bit.

``kk = topk.candidate_count(k, n)`` leaves spare candidates for the float32 rounding of
the l2 proxy, as in exact search. A query that finds fewer than ``min(k, allowed rows)``
results (very selective filters, tiny lists) is answered by exact search instead.

Design notes, defaults and measurements: docs/IVF.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine import idcodec
from tidepool_cli.engine.distances import check_metric, sqnorms
from tidepool_cli.engine.kmeans import assign, kmeans
from tidepool_cli.engine.topk import candidate_count, knn, rerank
from tidepool_cli.errors import CorruptIndexError, InvalidInputError, UnsupportedFormatError

NITER = 10
"""Lloyd iterations of the coarse quantizer (faiss trains IVF quantizers with 10 as well)."""

MAX_POINTS_PER_CENTROID = 64
"""Training sample per centroid; quality saturates well before faiss' 256 (docs/IVF.md)."""

NPROBE_FRACTION = 1 / 64
"""Default share of the lists a query probes, see :func:`default_nprobe`."""

MIN_NPROBE = 16
"""Default nprobe never goes below this (small indexes have few, large lists)."""

ASSIGN_ROWS = 65536
"""Rows assigned per call while building: bounds memory and paces ``progress``."""

SCAN_QUERIES = 16384
"""Queries per scan batch: each probed list is decoded once per batch."""

PROBE_QUERIES = 2048
"""Queries per centroid GEMM, bounding the (queries, nlist) proxy block."""

RERANK_FLOATS = 1 << 24
"""Gathered candidate floats per rerank call (64 MiB)."""


@dataclass(frozen=True, eq=False)
class IvfIndex:
    """An IVF index over the rows of one segment.

    Attributes
    ----------
    metric : {"l2", "cosine", "dot"}
    centroids : (nlist, d) float32
        Coarse quantizer; unit rows for cosine.
    list_sizes : (nlist,) uint32
        Rows per posting list; they sum to ``universe``.
    codec : str
        One of :data:`tidepool_cli.engine.idcodec.CODEC_NAMES`.
    blob : (nbytes,) uint8
        Concatenated posting-list payloads (may be a read-only memmap).
    offsets : (nlist + 1,) uint64
        List ``i`` is ``blob[offsets[i]:offsets[i + 1]]``.
    crcs : (nlist,) uint32
        CRC32 of each payload, checked when the list is decoded.
    universe : int
        ``N``, rows in the segment; posting lists hold positions in ``[0, N)``.

    Raises
    ------
    UnsupportedFormatError
        On construction, for an unknown metric or codec name.
    CorruptIndexError
        On construction, if the arrays disagree in shape or the sizes and offsets are
        inconsistent (what a truncated or mismatched sidecar file looks like).
    """

    metric: str
    centroids: np.ndarray
    list_sizes: np.ndarray
    codec: str
    blob: np.ndarray
    offsets: np.ndarray
    crcs: np.ndarray
    universe: int

    def __post_init__(self) -> None:
        if self.metric not in ("l2", "cosine", "dot"):
            raise UnsupportedFormatError(f"IVF index uses unknown metric {self.metric!r}")
        if self.codec not in idcodec.CODEC_NAMES:
            raise UnsupportedFormatError(f"IVF index uses unknown ID codec {self.codec!r}")
        nlist = self.centroids.shape[0] if self.centroids.ndim == 2 else -1
        shapes_ok = (
            nlist >= 1
            and self.list_sizes.shape == (nlist,)
            and self.offsets.shape == (nlist + 1,)
            and self.crcs.shape == (nlist,)
            and self.blob.ndim == 1
        )
        if not shapes_ok:
            raise CorruptIndexError(
                f"IVF arrays disagree: centroids {self.centroids.shape}, list_sizes "
                f"{self.list_sizes.shape}, offsets {self.offsets.shape}, crcs {self.crcs.shape}"
            )
        if int(self.list_sizes.sum(dtype=np.int64)) != self.universe:
            raise CorruptIndexError(
                f"IVF list sizes sum to {int(self.list_sizes.sum(dtype=np.int64))}, expected {self.universe} rows"
            )
        off = self.offsets.astype(np.int64)
        if off[0] != 0 or off[-1] != self.blob.size or np.any(np.diff(off) < 0):
            raise CorruptIndexError(f"IVF list offsets do not cover the {self.blob.size}-byte blob")

    @property
    def nlist(self) -> int:
        """Number of posting lists."""
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        """Vector dimension ``d``."""
        return self.centroids.shape[1]

    def stats(self) -> dict:
        """Sizes and balance of the index, for ``tidepool stats``.

        Returns
        -------
        dict
            ``codec``; ``nlist``; ``n`` (= universe); ``ids_bytes`` (payload bytes);
            ``bits_per_id`` achieved by the codec; ``bound_bits_per_id``, the sum over
            lists of ``log2 C(N, n_i)`` divided by N (the least any codec that stores
            each list on its own can spend); ``partition_bound_bits_per_id``,
            ``log2(N! / prod n_i!) / N`` (the least for the whole partition, which a
            codec coding lists jointly could approach); ``elias_fano_bits_per_id``
            (Elias-Fano size by its formula, ``n_i (2 + floor(log2(N / n_i)))`` bits
            per list up to rounding, without framing) and ``raw_bits_per_id`` (32) for
            comparison; ``list_size_min``/``median``/``max``; ``empty_lists``; and
            ``imbalance_factor``, ``nlist * sum(n_i^2) / N^2`` (faiss' definition: 1
            for equal lists, the expected scan cost relative to that).
        """
        sizes = self.list_sizes.astype(np.int64)
        n = self.universe
        ids_bytes = int(self.offsets[-1])
        nonempty = sizes[(sizes > 0) & (sizes < n)]
        bound = sum(idcodec.set_bound_bits(int(s), n) for s in nonempty)
        partition = (math.lgamma(n + 1) - sum(math.lgamma(int(s) + 1) for s in sizes)) / math.log(2)
        low = np.floor(np.log2(n / nonempty)).astype(np.int64) if nonempty.size else nonempty
        ef_bits = int(np.sum(nonempty * low + nonempty + (n >> low)))
        per = (lambda bits: bits / n) if n else (lambda bits: 0.0)
        return {
            "codec": self.codec,
            "nlist": self.nlist,
            "n": n,
            "ids_bytes": ids_bytes,
            "bits_per_id": per(8 * ids_bytes),
            "bound_bits_per_id": per(bound),
            "partition_bound_bits_per_id": per(max(partition, 0.0)),
            "elias_fano_bits_per_id": per(ef_bits),
            "raw_bits_per_id": 32.0,
            "list_size_min": int(sizes.min()),
            "list_size_median": float(np.median(sizes)),
            "list_size_max": int(sizes.max()),
            "empty_lists": int(np.count_nonzero(sizes == 0)),
            "imbalance_factor": float(self.nlist * np.sum(sizes**2) / n**2) if n else 1.0,
        }


def default_nlist(n: int) -> int:
    """Default number of posting lists for ``n`` rows: ``round(4 * sqrt(n))`` in ``[1, n]``.

    Parameters
    ----------
    n : int
        Rows in the segment.

    Returns
    -------
    int
        400 lists for 10,000 rows, 980 for 60,000, 2,498 for 390,000, 4,000 for 10^6.

    Notes
    -----
    Probing costs ``nlist`` centroid scores plus ``nprobe * n / nlist`` row scores per
    query; ``nlist ~ c sqrt(n)`` balances the two for a fixed probed share. faiss' guide
    recommends ``4 sqrt(n)`` to ``16 sqrt(n)``; the low end keeps lists long (about
    ``sqrt(n) / 4`` rows), which suits the batched per-list matrix products here and
    halves k-means time against ``8 sqrt(n)``.
    """
    if n < 1:
        raise InvalidInputError(f"an IVF index needs at least one row, got n={n}")
    return int(min(max(round(4 * math.sqrt(n)), 1), n))


def default_nprobe(nlist: int) -> int:
    """Default lists probed per query: ``max(MIN_NPROBE, ceil(nlist * NPROBE_FRACTION))``, at most ``nlist``.

    Parameters
    ----------
    nlist : int

    Returns
    -------
    int
        16 for up to 1,024 lists, 40 for 2,498, 63 for 4,000.

    Notes
    -----
    With :func:`default_nlist`, a query then scans about ``n / 64`` rows at large ``n``
    (``nprobe / nlist`` of them), and recall@10 is at least 0.95 on siftsmall,
    fashion-mnist and glove-50-angular (docs/IVF.md has the curves).
    """
    return int(min(nlist, max(MIN_NPROBE, math.ceil(nlist * NPROBE_FRACTION))))


def build_ivf(
    x: np.ndarray,
    metric: str,
    *,
    nlist: int | None = None,
    codec: str = "ans",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> IvfIndex:
    """Train the coarse quantizer, assign every row and compress the posting lists.

    Parameters
    ----------
    x : (n, d) float32
        The segment's vectors (a read-only ``numpy.memmap`` is fine: it is read in
        sequential blocks). For cosine they must already be unit rows.
    metric : {"l2", "cosine", "dot"}
    nlist : int, optional
        Number of posting lists, ``1 <= nlist <= n``; :func:`default_nlist` if None.
    codec : str
        ID codec of the posting lists, one of :data:`~tidepool_cli.engine.idcodec.CODEC_NAMES`.
    seed : int
        Seed of k-means; equal seeds and data give identical indexes.
    progress : callable(done: int, total: int), optional
        Called with non-decreasing ``done`` ending at ``done == total``; the units are
        estimated row passes (k-means iterations, then assignment, then encoding).

    Returns
    -------
    IvfIndex

    Raises
    ------
    InvalidInputError
        Unknown metric or codec, ``x`` not 2-D or empty, ``nlist`` out of range, or more
        rows than a codec can address (2**31 - 1).

    Notes
    -----
    Rows go to their nearest centroid by the metric's own distance, except for ``dot``,
    where both training and assignment use l2 geometry: every centroid is then the mean
    of its list, so ``q . c`` used when probing is the mean score of the list, and the
    lists stay balanced (inner-product assignment drains rows into long centroids).
    """
    check_metric(metric)
    idcodec.get_codec(codec)
    if x.ndim != 2 or x.shape[0] < 1:
        raise InvalidInputError(f"build_ivf needs a non-empty 2-D array, got shape {x.shape}")
    n = x.shape[0]
    nlist = default_nlist(n) if nlist is None else _check_int(nlist, "nlist", 1, n)
    n_train = min(n, nlist * MAX_POINTS_PER_CENTROID)
    total = NITER * n_train + 2 * n
    report = progress or (lambda done, tot: None)
    report(0, total)
    centroids = kmeans(
        x, nlist, metric=metric, niter=NITER, seed=seed, max_points_per_centroid=MAX_POINTS_PER_CENTROID
    )
    done = NITER * n_train
    report(done, total)
    labels = np.empty(n, dtype=np.int32)
    geometry = "l2" if metric == "dot" else metric
    for s in range(0, n, ASSIGN_ROWS):
        labels[s : s + ASSIGN_ROWS] = assign(x[s : s + ASSIGN_ROWS], centroids, geometry)[0]
        report(done + min(s + ASSIGN_ROWS, n), total)
    sizes = np.bincount(labels, minlength=nlist)
    # A stable sort keeps each list's positions ascending, the order codecs and
    # tie-breaking expect.
    order = np.argsort(labels, kind="stable")
    lists = np.split(order, np.cumsum(sizes)[:-1])
    blob, offsets, crcs = idcodec.encode_lists(codec, lists, n)
    report(total, total)
    return IvfIndex(
        metric=metric,
        centroids=np.ascontiguousarray(centroids, dtype=np.float32),
        list_sizes=sizes.astype(np.uint32),
        codec=codec,
        blob=np.frombuffer(blob, dtype=np.uint8),
        offsets=np.asarray(offsets, dtype=np.uint64),
        crcs=np.asarray(crcs, dtype=np.uint32),
        universe=n,
    )


def search_ivf(
    index: IvfIndex,
    x: np.ndarray,
    xq: np.ndarray,
    k: int,
    *,
    nprobe: int | None = None,
    allowed: np.ndarray | None = None,
    xb_sqnorms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest rows by probing the ``nprobe`` nearest posting lists.

    Parameters
    ----------
    index : IvfIndex
    x : (n, d) float32
        The vectors the index was built on (a memmap is fine: only probed lists' rows
        and the final candidates are read).
    xq : (nq, d) float32
        Prepared queries (:func:`~tidepool_cli.engine.distances.prepare_queries`).
    k : int
        Neighbours per query, ``k >= 0``.
    nprobe : int, optional
        Lists probed per query, ``>= 1`` (values above nlist probe every list);
        :func:`default_nprobe` if None.
    allowed : (n,) bool, optional
        Rows that may be returned (deletion vector and filter combined).
    xb_sqnorms : (n,) float32, optional
        Squared norms of ``x`` (l2 only); computed for the probed rows if absent.

    Returns
    -------
    D : (nq, k) float32
        Distances in the public convention, ascending, computed as exact search computes
        them; +inf padding.
    I : (nq, k) int64
        Row positions, -1 where D is +inf. Ties break by lower position.

    Raises
    ------
    InvalidInputError
        Shapes that disagree with the index, negative ``k``, ``nprobe < 1``.
    CorruptIndexError
        A probed posting list fails its CRC32 or decodes to an invalid set.

    Notes
    -----
    Every query gets ``min(k, number of allowed rows)`` results: one whose probed lists
    hold fewer allowed rows is answered by :func:`~tidepool_cli.engine.topk.knn`. When the
    allowed rows are fewer than a query would scan anyway (``n * nprobe / nlist``), the
    whole batch goes to exact search, which is then both cheaper and exact.
    """
    xq, k, nprobe, allowed = _check_search(index, x, xq, k, nprobe, allowed)
    nq, n = xq.shape[0], index.universe
    D = np.full((nq, k), np.inf, dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    n_allowed = n if allowed is None else int(np.count_nonzero(allowed))
    if nq == 0 or k == 0 or n_allowed == 0:
        return D, I
    if allowed is not None and n_allowed == n:
        allowed = None
    if n_allowed * index.nlist <= nprobe * n:
        return knn(xq, x, k, index.metric, xb_sqnorms=xb_sqnorms, allowed=allowed)
    kk = candidate_count(k, n_allowed)
    rerank_rows = max(1, RERANK_FLOATS // (kk * index.dim))
    for s in range(0, nq, SCAN_QUERIES):
        qb = xq[s : s + SCAN_QUERIES]
        probes, nearest = _probe(index, qb, nprobe)
        cand = _scan(index, x, qb, probes, nearest, kk, allowed, xb_sqnorms)
        for r in range(0, qb.shape[0], rerank_rows):
            sl = slice(s + r, s + r + rerank_rows)
            D[sl], I[sl] = rerank(qb[r : r + rerank_rows], x, cand[r : r + rerank_rows], k, index.metric)
    short = np.flatnonzero(I[:, min(k, n_allowed) - 1] < 0)
    if short.size:
        D[short], I[short] = knn(xq[short], x, k, index.metric, xb_sqnorms=xb_sqnorms, allowed=allowed)
    return D, I


def _check_int(value, what: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidInputError(f"{what} must be {bound}, got {value}")
    return int(value)


def _check_search(index, x, xq, k, nprobe, allowed):
    """Validated (xq, k, nprobe, allowed) for :func:`search_ivf`."""
    xq = np.ascontiguousarray(xq, dtype=np.float32)
    if xq.ndim != 2 or xq.shape[1] != index.dim:
        raise InvalidInputError(f"queries must have shape (nq, {index.dim}), got {xq.shape}")
    if x.shape != (index.universe, index.dim):
        raise InvalidInputError(
            f"vectors must have the shape the index was built on, {(index.universe, index.dim)}, got {x.shape}"
        )
    k = _check_int(k, "k", 0)
    nprobe = default_nprobe(index.nlist) if nprobe is None else _check_int(nprobe, "nprobe", 1)
    if allowed is not None:
        allowed = np.asarray(allowed)
        if allowed.dtype != bool or allowed.shape != (index.universe,):
            raise InvalidInputError(f"allowed must be a ({index.universe},) bool array, got {allowed.dtype} {allowed.shape}")
    return xq, k, min(nprobe, index.nlist), allowed


def _probe(index: IvfIndex, xq: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """The nprobe nearest lists of every query and the nearest one.

    Returns
    -------
    probes : (nq, nprobe) int64, unordered within a row; ties to the lower list id.
    nearest : (nq,) int64
    """
    c = index.centroids
    ct = np.ascontiguousarray((c * (-2.0 if index.metric == "l2" else -1.0)).T, dtype=np.float32)
    csq = sqnorms(c) if index.metric == "l2" else None
    nq = xq.shape[0]
    probes = np.empty((nq, nprobe), dtype=np.int64)
    nearest = np.empty(nq, dtype=np.int64)
    for s in range(0, nq, PROBE_QUERIES):
        proxy = xq[s : s + PROBE_QUERIES] @ ct
        if csq is not None:
            proxy += csq
        nearest[s : s + PROBE_QUERIES] = proxy.argmin(axis=1)
        probes[s : s + PROBE_QUERIES] = _smallest(proxy, nprobe)
    return probes, nearest


def _smallest(vals: np.ndarray, m: int) -> np.ndarray:
    """Column indices of the m smallest values of every row, ties to the lower column.

    Parameters
    ----------
    vals : (r, c) float32
    m : int, ``1 <= m <= c``

    Returns
    -------
    (r, m) int64, unordered within a row.
    """
    r, c = vals.shape
    if m >= c:
        return np.broadcast_to(np.arange(c, dtype=np.int64), (r, c)).copy()
    idx = np.argpartition(vals, m - 1, axis=1)[:, :m]
    kth = np.take_along_axis(vals, idx, axis=1).max(axis=1)
    # argpartition picks arbitrarily among values equal to the m-th; only rows where
    # such a tie straddles the cut need the (slower) stable sort.
    tied = np.flatnonzero(np.count_nonzero(vals <= kth[:, None], axis=1) > m)
    if tied.size:
        idx[tied] = np.argsort(vals[tied], axis=1, kind="stable")[:, :m]
    return idx


class _Lists:
    """Decoded posting lists of one scan batch, restricted to allowed rows, with the
    operands of the proxy product: rows ``[x, |x|^2]`` (l2) or ``x``, built on demand.
    """

    def __init__(self, index, x, allowed, xb_sqnorms):
        self.index, self.x, self.allowed, self.sq = index, x, allowed, xb_sqnorms
        self.ids: dict[int, np.ndarray] = {}

    def get(self, lid: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (m,) int64, operand (m, d or d + 1) float32) of list ``lid``."""
        ids = self.ids.get(lid)
        if ids is None:
            idx = self.index
            ids = idcodec.decode_list(
                idx.codec, idx.blob, idx.offsets, idx.crcs, lid, int(idx.list_sizes[lid]), idx.universe
            ).astype(np.int64)
            if self.allowed is not None:
                ids = ids[self.allowed[ids]]
            self.ids[lid] = ids
        rows = np.asarray(self.x[ids], dtype=np.float32)
        if self.index.metric != "l2":
            return ids, rows
        op = np.empty((ids.size, rows.shape[1] + 1), dtype=np.float32)
        op[:, :-1] = rows
        op[:, -1] = self.sq[ids] if self.sq is not None else np.einsum("ij,ij->i", rows, rows)
        return ids, op


def _scan(index, x, xq, probes, nearest, kk, allowed, xb_sqnorms) -> np.ndarray:
    """Candidate positions (nq, kk) int64, -1 padded: the kk best proxies over the probed lists."""
    nq, d = xq.shape
    # Query operand: [-2q, 1] against [x, |x|^2] gives |x|^2 - 2 q.x in one product.
    if index.metric == "l2":
        qa = np.empty((nq, d + 1), dtype=np.float32)
        np.multiply(xq, -2.0, out=qa[:, :d])
        qa[:, d] = 1.0
    else:
        qa = -xq
    lists = _Lists(index, x, allowed, xb_sqnorms)
    thr = np.full(nq, np.inf, dtype=np.float32)
    kept: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def score(lid, qs, bound):
        ids, op = lists.get(lid)
        if ids.size == 0:
            return None
        block = qa[qs] @ op.T
        if bound is None:
            # The nearest list: its kk-th best bounds the kk-th best overall.
            if ids.size >= kk:
                thr[qs] = np.partition(block, kk - 1, axis=1)[:, kk - 1]
            bound = thr[qs]
        r, c = np.nonzero(block <= bound[:, None])
        kept.append((qs[r], block[r, c], ids[c]))

    for lid, qs in _groups(nearest, np.arange(nq)):
        score(lid, qs, None)
    others = probes != nearest[:, None]
    for lid, qs in _groups(probes[others], np.nonzero(others)[0]):
        score(lid, qs, thr[qs])
    return _merge(kept, nq, kk)


def _groups(lids: np.ndarray, qids: np.ndarray):
    """Yield (list id, ascending query ids) for every distinct list id in ``lids``."""
    order = np.argsort(lids, kind="stable")
    lids, qids = lids[order], qids[order]
    cuts = np.flatnonzero(lids[1:] != lids[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [lids.size]])
    for a, b in zip(starts.tolist(), stops.tolist()):
        yield int(lids[a]), qids[a:b]


def _merge(kept, nq: int, kk: int) -> np.ndarray:
    """The kk best (proxy, then id) kept entries per query, as (nq, kk) positions, -1 padded."""
    cand = np.full((nq, kk), -1, dtype=np.int64)
    if not kept:
        return cand
    q, v, ids = (np.concatenate(a) for a in zip(*kept))
    # One sort on a packed key (query, order-preserving bits of the float) is several
    # times faster than a lexsort on three keys.
    bits = (v + np.float32(0.0)).view(np.uint32)  # + 0 turns -0.0 into +0.0
    bits = np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))
    key = (q.astype(np.uint64) << np.uint64(32)) | bits.astype(np.uint64)
    order = np.argsort(key)
    ks = key[order]
    tie = np.flatnonzero(ks[1:] == ks[:-1])
    if tie.size:
        pos = np.unique(np.concatenate([tie, tie + 1]))
        sub = order[pos]
        order[pos] = sub[np.lexsort((ids[sub], key[sub]))]
    qs = q[order]
    first = np.searchsorted(qs, qs, side="left")
    rank = np.arange(qs.size) - first
    sel = rank < kk
    cand[qs[sel], rank[sel]] = ids[order][sel]
    return cand
