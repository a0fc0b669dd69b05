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
2. *Invert*: the (query, list) pairs are radix-sorted by list, so every probed list is
   decoded once per batch and scored against all of its queries with one matrix product
   of the ranking proxy (``|x|^2 - 2 q.x`` for l2, ``-q.x`` otherwise; see
   :mod:`~tidepool_cli.engine.distances`).
3. *Bound*: each query's two nearest lists are scored first; the ``kk``-th best proxy
   among them bounds the ``kk``-th best over all its probed lists, so every other list
   only needs one comparison per score instead of a partial sort.
4. *Merge and rerank*: the kept (query, proxy, id) entries are grouped by query with a
   radix sort, the ``kk`` best per query (ties to the lower id) become candidates, and
   :func:`~tidepool_cli.engine.topk.rerank` computes their exact distances, so a row gets
   the distance exact search gives it, bit for bit.

``kk = topk.candidate_count(k, n)`` leaves spare candidates for the float32 rounding of
the l2 proxy, as exact search does. A query that finds fewer than ``min(k, allowed
rows)`` results (selective filters, short lists) is answered by exact search instead.

Per-list products stay below OpenBLAS' threading threshold and the lists are shared
between our own threads: on a busy 2-core machine a BLAS thread hand-off per small
product costs far more than the product.

Design notes, defaults and measurements: docs/IVF.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
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
"""Training rows per centroid. On glove-50-angular, recall@10 at the default nprobe is
0.003 below faiss' 256 for a quarter of the k-means work; 32 loses more and leaves the
lists less balanced (docs/IVF.md)."""

NPROBE_FRACTION = 1 / 24
"""Default share of the lists a query probes, see :func:`default_nprobe`."""

MIN_NPROBE = 20
"""Default nprobe never goes below this (small indexes have few lists; probing is cheap)."""

MIN_CALIBRATED_NPROBE = 4
"""The first nprobe a calibration tries (it then grows by a quarter per step up to nlist)."""

CALIBRATION_TARGET = 0.965
"""recall@10 a calibrated nprobe must reach on sampled rows, which track real queries
within -0.02 / +0.01 (:mod:`~tidepool_cli.engine.calibrate`)."""

ASSIGN_ROWS = 65536
"""Rows assigned per call while building: bounds memory and paces ``progress``."""

SCAN_QUERIES = 16384
"""Queries per scan batch: each probed list is decoded once per batch (at most 65,536,
so that query numbers fit the 16-bit keys NumPy radix-sorts)."""

SCAN_PAIRS = 1 << 22
"""At most this many (query, probed list) pairs per scan batch, bounding its index arrays."""

PROBE_QUERIES = 2048
"""Queries per centroid GEMM, bounding the (queries, nlist) proxy block."""

RERANK_FLOATS = 1 << 24
"""Gathered candidate floats per rerank call (64 MiB)."""

OPERAND_CACHE_BYTES = 1 << 28
"""List operands built in the bound pass are reused by the scan pass up to this size."""

BOUND_LISTS = 2
"""Nearest lists per query scanned first to bound its kk-th best proxy. With one, a
query whose nearest list is short keeps every entry of every list; two halve the
entries kept on glove-50-angular, three gain little more."""

EXTRA_BOUND_ROUNDS = 8
"""Further lists scanned one at a time for queries still without a bound (see _scan)."""

PARALLEL_MIN_PAIRS = 1 << 14
"""A batch with fewer (query, probed list) pairs runs on the calling thread alone."""

THREADED_GEMM_MNK = 1 << 26
"""Centroid products of at least this many multiply-adds are left to BLAS threads."""

SERIAL_GEMM_MNK = 65536 * 4
"""OpenBLAS runs a GEMM of at most this many multiply-adds on the calling thread
(``SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD``). Per-list products are split to
stay below it: waking BLAS threads for thousands of small products costs more than the
products, and the woken threads then spin on the other core."""


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
            lists of ``log2 C(N, n_i)`` divided by N (what a codec storing each list on
            its own needs on average over sets; data whose row order correlates with
            the clusters can come in below it); ``partition_bound_bits_per_id``,
            ``log2(N! / prod n_i!) / N`` (the same for the partition as a whole, which
            a codec coding lists jointly could approach); ``elias_fano_bits_per_id``
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
    ``sqrt(n) / 4`` rows), which suits the batched per-list matrix products here, and
    costs a quarter of the k-means work of ``8 sqrt(n)`` (sample and centroids both
    scale with nlist).

    Raises
    ------
    InvalidInputError
        If ``n < 1``.
    """
    if n < 1:
        raise InvalidInputError(f"an IVF index needs at least one row, got n={n}")
    return int(min(max(round(4 * math.sqrt(n)), 1), n))


def default_nprobe(nlist: int) -> int:
    """Lists probed per query when neither the caller nor the index's calibration gives a number.

    ``max(MIN_NPROBE, ceil(nlist * NPROBE_FRACTION))``, at most ``nlist``. ``build-ivf``
    calibrates every index it builds (:mod:`tidepool_cli.engine.calibrate`), so this rule
    serves indexes built through the engine API alone.

    Parameters
    ----------
    nlist : int

    Returns
    -------
    int
        20 for up to 480 lists (siftsmall: 400), 41 for 980 (fashion-mnist), 105 for
        2,498 (glove-50-angular), 167 for 4,000 (10^6 rows).

    Notes
    -----
    A query probes 1/24 of the lists once there are more than 480. The share is set by
    the hardest of the three
    reference sets, glove-50-angular, which needs 90 of its 2,498 lists for recall@10 of
    0.95 (siftsmall needs 17 of 400, fashion-mnist 8 of 980); 1/24 gives it 0.962 and
    the minimum of 20 gives siftsmall 0.965. Curves per data set: docs/IVF.md.
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
    if n > idcodec.MAX_UNIVERSE:
        raise InvalidInputError(f"an IVF index addresses at most {idcodec.MAX_UNIVERSE} rows, got {n}")
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
    hold fewer allowed rows is answered by :func:`~tidepool_cli.engine.topk.knn`. Whether
    a filter is better served by exact search is the query planner's choice
    (:mod:`tidepool_cli.ops.paths`), not this kernel's.

    Batches of at least ``PARALLEL_MIN_PAIRS`` (query, list) pairs are scored on one
    thread per CPU this process may use, capped by ``OMP_NUM_THREADS``; results do not
    depend on the number of threads.
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
    kk = candidate_count(k, n_allowed)
    # Threads pay off only when there is enough to share; small batches run inline.
    workers = _workers() if nq * nprobe >= PARALLEL_MIN_PAIRS else 1
    with ThreadPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        run = _Runner(pool, workers)
        batch = max(1, min(SCAN_QUERIES, SCAN_PAIRS // nprobe))
        for s in range(0, nq, batch):
            qb = xq[s : s + batch]
            lids, qids, near = _probe(index, qb, nprobe, run)
            cand, cval = _scan(index, x, qb, lids, qids, near, kk, allowed, xb_sqnorms, run)
            D[s : s + qb.shape[0]], I[s : s + qb.shape[0]] = _rerank(index, x, qb, cand, cval, k, run)
    short = np.flatnonzero(I[:, min(k, n_allowed) - 1] < 0)
    if short.size:
        D[short], I[short] = knn(xq[short], x, k, index.metric, xb_sqnorms=xb_sqnorms, allowed=allowed)
    return D, I


def _workers() -> int:
    """Threads for one search: the CPUs this process may use, capped by OMP_NUM_THREADS
    when set, the variable BLAS and faiss obey too."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(n, int(env))) if env.isdigit() and int(env) > 0 else max(1, n)


class _Runner:
    """Maps a function over work items on a thread pool, or inline without one.

    NumPy releases the GIL inside its loops and BLAS calls, so threads share the
    per-list products, selections and gathers; results come back in item order,
    which keeps searches deterministic.
    """

    def __init__(self, pool: ThreadPoolExecutor | None, workers: int):
        self.pool, self.workers = pool, workers

    def map(self, fn, items) -> list:
        items = list(items)
        if self.pool is None or len(items) < 2:
            return [fn(item) for item in items]
        return list(self.pool.map(fn, items))

    def split(self, items: list) -> list[list]:
        """``items`` dealt round-robin into one share per worker (balanced by position)."""
        return [items[w :: self.workers] for w in range(min(self.workers, len(items)))]


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


def _probe(index: IvfIndex, xq: np.ndarray, nprobe: int, run: _Runner) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probed (list, query) pairs grouped by list, and every query's nearest lists.

    Returns
    -------
    lids, qids : (nq * nprobe,) int64
        Pairs sorted by list id, queries ascending within a list; ties between
        centroids at the cut go to the lower list id.
    near : (nq, min(BOUND_LISTS, nprobe)) int64
        Each query's nearest probed lists, distinct.
    """
    c = index.centroids
    nlist = c.shape[0]
    ct = np.ascontiguousarray((c * (-2.0 if index.metric == "l2" else -1.0)).T, dtype=np.float32)
    csq = sqnorms(c) if index.metric == "l2" else None
    nq, nb = xq.shape[0], min(BOUND_LISTS, nprobe)
    near = np.empty((nq, nb), dtype=np.int64)
    pairs = []
    for s in range(0, nq, PROBE_QUERIES):
        # One GEMM per chunk on the calling thread, threaded by BLAS when it is large
        # enough to be worth it; the selection runs on our threads.
        qb = xq[s : s + PROBE_QUERIES]
        big = qb.shape[0] * ct.size >= THREADED_GEMM_MNK
        proxy = qb @ ct if big else _serial_matmul(qb, ct)
        if csq is not None:
            proxy += csq
        step = -(-proxy.shape[0] // run.workers)

        def select(r, proxy=proxy, s=s):
            block = proxy[r : r + step]
            mask = _smallest(block, nprobe)
            # Repeated argmin walks the lists in (proxy, id) order, the order the mask
            # was cut in, so the nb nearest are always probed lists.
            rows = np.arange(block.shape[0])
            out = near[s + r : s + r + block.shape[0]]
            saved = []
            for j in range(nb):
                out[:, j] = block.argmin(axis=1)
                saved.append(block[rows, out[:, j]])
                block[rows, out[:, j]] = np.inf
            for j in range(nb):
                block[rows, out[:, j]] = saved[j]
            return np.flatnonzero(mask) + (s + r) * nlist

        pairs += run.map(select, range(0, proxy.shape[0], step))
    qids, lids = np.divmod(np.concatenate(pairs), nlist)
    order = _stable_order(lids, nlist)
    return lids[order], qids[order], near


def _smallest(vals: np.ndarray, m: int, tie: np.ndarray | None = None) -> np.ndarray:
    """Mask of the m smallest values of every row, ties to the smaller ``tie`` key.

    Parameters
    ----------
    vals : (r, c) float32
    m : int, ``1 <= m``
    tie : (r, c) int, optional
        Tie-break keys; the column index if None.

    Returns
    -------
    (r, c) bool with ``min(m, c)`` True per row (fewer where a row has +inf padding).
    """
    r, c = vals.shape
    if m >= c:
        return np.ones((r, c), dtype=bool)
    kth = np.partition(vals, m - 1, axis=1)[:, m - 1 : m]
    mask = vals <= kth
    # Values equal to the m-th can push a row past m; only such rows need a full sort.
    over = np.flatnonzero(np.count_nonzero(mask, axis=1) > m)
    if over.size:
        key = np.broadcast_to(np.arange(c), (over.size, c)) if tie is None else tie[over]
        keep = np.lexsort((key, vals[over]), axis=1)[:, :m]
        mask[over] = False
        mask[over[:, None], keep] = True
    return mask


def _stable_order(keys: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of non-negative integer keys below ``bound``.

    NumPy radix-sorts 16-bit keys, which is several times faster than its merge sort.
    """
    return np.argsort(keys.astype(np.uint16) if bound <= 1 << 16 else keys, kind="stable")


class _Lists:
    """Posting lists of one scan batch and their proxy scores.

    A list's entry is its decoded IDs (restricted to allowed rows) and the right operand
    of the proxy product: ``[x, |x|^2]^T`` against queries ``[-2q, 1]`` for l2, ``x^T``
    against ``-q`` otherwise. For long vectors the operand is a transposed view of the
    gathered rows, which OpenBLAS multiplies up to 1.7x faster in the thin slices of
    :func:`_product`, and the l2 norms are added to the scores instead of appended to
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
            return _product(self.qa, qs, op)
        block = _product(self.q2, qs, op)
        block += sq
        return block

    def keep(self, lid: int, entry: tuple, budget: int) -> int:
        """Cache ``entry`` if it fits ``budget`` bytes; return the budget left."""
        size = sum(a.nbytes for a in entry if a is not None)
        if size <= budget:
            self.cache[lid] = entry
            return budget - size
        return budget


def _scan(index, x, xq, lids, qids, near, kk, allowed, xb_sqnorms, run) -> tuple[np.ndarray, np.ndarray]:
    """The kk best proxies over the probed lists: positions (nq, kk) int64, -1 padded, and
    the proxies, +inf padded."""
    nq = xq.shape[0]
    lists = _Lists(index, x, xq, allowed, xb_sqnorms, run.workers)
    # Decoding holds the GIL (9-20 us per ans list, in one call for all); done up front, it
    # costs its own time, done inside the workers it stalls the other thread as well.
    lists.decode_all(np.flatnonzero(np.bincount(lids, minlength=index.nlist)).tolist())
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
                    kept.append(_keep(block, qs, ids, top.max(axis=1)))
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
                kept.append(_keep(block, qs, ids, best[qs].max(axis=1)))
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
    order = _stable_order(bl, index.nlist)
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
    bound = best.max(axis=1)
    kept += run.map(scan_pass, run.split(list(_groups(lids[rest], qids[rest]))))
    return _merge([e for part in kept for e in part], nq, kk, run)


def _rerank(index, x, xq, cand, cval, k, run) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances and top k of the candidates that can still reach the top k.

    Candidates are sorted by proxy; those past :func:`_reach` cannot beat the k-th one
    whatever the float32 rounding, so rerank never reads their rows. Queries are grouped
    by how many candidates they keep and reranked group by group.
    """
    nq, kk = cand.shape
    order = np.argsort(cval, axis=1, kind="stable")
    cand, cval = np.take_along_axis(cand, order, 1), np.take_along_axis(cval, order, 1)
    width = _reach(cval, xq, k, index.metric)
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    jobs = []
    for w in np.unique(width).tolist():
        rows = np.flatnonzero(width == w)
        step = max(1, min(RERANK_FLOATS // (w * index.dim), -(-rows.size // run.workers)))
        jobs += [(w, rows[r : r + step]) for r in range(0, rows.size, step)]

    def job(item):
        w, rows = item
        D[rows], I[rows] = rerank(xq[rows], x, cand[rows, :w], k, index.metric)

    run.map(job, jobs)
    return D, I


def _reach(cval: np.ndarray, xq: np.ndarray, k: int, metric: str) -> np.ndarray:
    """How many of each query's proxy-sorted candidates can end up in its exact top k.

    A float32 dot product of m terms is off by at most ``gamma * sum |terms|`` with
    ``gamma = m u / (1 - m u)``, ``u = 2**-24`` (Higham, "Accuracy and Stability of
    Numerical Algorithms", 2002, section 3.1), whatever the summation order. For l2 the
    terms of ``|x|^2 - 2 q.x`` sum to at most ``|x|^2 + 2 |q| |x|``, and a candidate's
    own proxy bounds its norm, ``|x| <= |q| + sqrt(proxy + |q|^2)``; the exact distances
    of the rerank carry the same kind of error. A candidate whose proxy exceeds the k-th
    one by more than twice the sum of these bounds is farther for certain. For cosine
    the terms are bounded by ``|q| |x| = |q|``; ``dot`` has no norm bound and keeps
    every candidate.

    Parameters
    ----------
    cval : (nq, kk) float32, ascending per row, +inf padded
    xq : (nq, d) float32
    k : int
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    (nq,) int64 in ``[min(k, kk), kk]``
    """
    nq, kk = cval.shape
    if metric == "dot" or kk <= k:
        return np.full(nq, kk, dtype=np.int64)
    m = xq.shape[1] + 2
    gamma = m * 2.0**-24 / (1 - m * 2.0**-24)
    v = cval.astype(np.float64)
    qn = np.sqrt(np.einsum("ij,ij->i", xq, xq, dtype=np.float64))[:, None]
    if metric == "l2":
        finite = np.where(np.isfinite(v), v, -np.inf).max(axis=1, keepdims=True)
        xn = qn + np.sqrt(np.maximum(finite + qn**2, 0.0))
        scale = (xn**2 + 2 * qn * xn) + (qn + xn) ** 2
    else:
        # Stored rows are unit vectors; the query's own norm covers one not prepared.
        scale = 2.0 * np.maximum(qn, 1.0)
    limit = v[:, k - 1 : k] + 4 * gamma * scale
    # Strictly beyond: a candidate at exactly the limit could still tie the k-th.
    return np.maximum(np.count_nonzero(~(v > limit), axis=1), min(k, kk)).astype(np.int64)


def _product(qa: np.ndarray, qs: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``qa[qs] @ b`` for (nq, e) queries and an (e, n) list operand, as serial BLAS calls."""
    step = max(1, SERIAL_GEMM_MNK // max(1, b.size))
    if qs.size <= step:
        return qa[qs] @ b
    mp = -(-qs.size // step) * step
    a = np.empty((mp, qa.shape[1]), dtype=np.float32)
    np.take(qa, qs, axis=0, out=a[: qs.size])
    return _serial_matmul(a, b, filled=qs.size)


def _serial_matmul(a: np.ndarray, b: np.ndarray, filled: int | None = None) -> np.ndarray:
    """``a[:filled] @ b`` as BLAS calls below SERIAL_GEMM_MNK, so none wakes BLAS threads.

    The rows are cut into slices of equal height and multiplied as one stacked
    ``np.matmul``, which loops over the slices in C instead of Python. Rows of ``a``
    past ``filled`` are scratch space that completes the last slice.
    """
    m = a.shape[0] if filled is None else filled
    step = max(1, SERIAL_GEMM_MNK // max(1, b.size))
    if m <= step:
        return a[:m] @ b
    mp = -(-m // step) * step
    if a.shape[0] < mp or filled is None:  # without ``filled`` the rows are the caller's: never write them
        a = np.concatenate([a[:m], np.zeros((mp - m, a.shape[1]), dtype=np.float32)])
    else:
        a = a[:mp]
        a[m:] = 0.0
    return np.matmul(a.reshape(mp // step, step, -1), b).reshape(mp, b.shape[1])[:m]


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


def _merge(kept, nq: int, kk: int, run: _Runner) -> tuple[np.ndarray, np.ndarray]:
    """The kk best (proxy, then id) kept entries per query: (nq, kk) positions, -1 padded,
    and their proxies, +inf padded.

    Queries are ranked by the size class of their entry count (the next power of two),
    entries are radix-sorted by that rank, and each class is laid out as a padded
    (queries, 2**class) matrix in which one ``np.partition`` finds the kk best. That is
    linear in the entries, where a sort on (query, proxy, id) costs several times more.
    """
    cand = np.full((nq, kk), -1, dtype=np.int64)
    cval = np.full((nq, kk), np.inf, dtype=np.float32)
    if not kept:
        return cand, cval
    q, v, ids = (np.concatenate(a) for a in zip(*kept))
    counts = np.bincount(q, minlength=nq)
    cls = np.zeros(nq, dtype=np.int64)
    big = counts > kk
    cls[big] = np.ceil(np.log2(counts[big]))
    qorder = np.argsort(cls, kind="stable")
    rank = np.empty(nq, dtype=np.int64)
    rank[qorder] = np.arange(nq)
    r = rank[q]
    order = _stable_order(r, nq)
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
        if c == 0:
            cand[rows[er], ep] = ids[e0:e1]
            cval[rows[er], ep] = v[e0:e1]
            return
        V = np.full((b - a, 1 << c), np.inf, dtype=np.float32)
        X = np.full((b - a, 1 << c), np.iinfo(np.int64).max, dtype=np.int64)
        V[er, ep] = v[e0:e1]
        X[er, ep] = ids[e0:e1]
        sel = _smallest(V, kk, X)
        cand[rows] = X[sel].reshape(b - a, kk)
        cval[rows] = V[sel].reshape(b - a, kk)

    run.map(select, [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a])
    return cand, cval
