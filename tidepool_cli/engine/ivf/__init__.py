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

The package is split by job: :mod:`.index` (the index as data, defaults, stats),
:mod:`.build`, :mod:`.probe` (which lists a query scans), :mod:`.scan` (scoring the
lists, pluggable: :class:`~.scan.ListScorer`, and the tie-aware candidate cut),
:mod:`.search` (the batched search and the rerank) and :mod:`.products` (GEMMs kept off
BLAS threads).

Design notes, defaults and measurements: docs/IVF.md.
"""

from tidepool_cli.engine.ivf.build import ASSIGN_ROWS, MAX_POINTS_PER_CENTROID, NITER, build_ivf
from tidepool_cli.engine.ivf.index import (
    CALIBRATION_TARGET,
    MIN_CALIBRATED_NPROBE,
    MIN_NPROBE,
    NPROBE_FRACTION,
    IvfIndex,
    default_nlist,
    default_nprobe,
)
from tidepool_cli.engine.ivf.probe import BOUND_LISTS, PROBE_QUERIES, THREADED_GEMM_MNK
from tidepool_cli.engine.ivf.products import SERIAL_GEMM_MNK
from tidepool_cli.engine.ivf.scan import EXTRA_BOUND_ROUNDS, OPERAND_CACHE_BYTES, FlatLists, ListScorer
from tidepool_cli.engine.ivf.search import (
    EXACT_ROWS_PER_LIST,
    PARALLEL_MIN_PAIRS,
    RERANK_FLOATS,
    SCAN_PAIRS,
    SCAN_QUERIES,
    search_ivf,
)

__all__ = [
    "ASSIGN_ROWS", "BOUND_LISTS", "CALIBRATION_TARGET", "EXACT_ROWS_PER_LIST", "EXTRA_BOUND_ROUNDS",
    "MAX_POINTS_PER_CENTROID", "MIN_CALIBRATED_NPROBE", "MIN_NPROBE", "NITER", "NPROBE_FRACTION",
    "OPERAND_CACHE_BYTES", "PARALLEL_MIN_PAIRS", "PROBE_QUERIES", "RERANK_FLOATS", "SCAN_PAIRS",
    "SCAN_QUERIES", "SERIAL_GEMM_MNK", "THREADED_GEMM_MNK", "FlatLists", "IvfIndex", "ListScorer",
    "build_ivf", "default_nlist", "default_nprobe", "search_ivf",
]
