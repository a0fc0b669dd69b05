"""Graph machinery shared by the graph indexes (HNSW now, Vamana next), split by job.

HNSW (Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search
using Hierarchical Navigable Small World graphs", TPAMI 2018) and Vamana (Subramanya et
al., "DiskANN: fast accurate billion-point nearest neighbor search on a single node",
NeurIPS 2019) share:

* :mod:`.search`: lockstep beam search of a query batch on one layer, with the distance
  used during the walk pluggable (:class:`~.search.PairScorer`; exact float32 rows by
  :class:`~.search.ExactPairs`);
* :mod:`.prune`: neighbour selection by α-pruning (α = 1 is the HNSW heuristic);
* :mod:`.candidates`: build-time candidate lists (blocked or partitioned k-NN, insertion
  prefixes, reverse edges);
* :mod:`.repair`: connectivity repair, so every row is reachable from the entry point;
* :mod:`.keys`: beam entries packed into sortable int64 keys (distance, then id).

Every name used outside the package is importable from ``tidepool_cli.engine.graph``.
"""

from tidepool_cli.engine.graph.candidates import (
    EXACT_KNN_FLOPS,
    IVF_CLUSTER_ROWS,
    IVF_KMEANS_ITERS,
    IVF_PROBES,
    best_unique,
    knn_candidates,
    prefix_candidates,
    with_reverse_edges,
)
from tidepool_cli.engine.graph.keys import SENTINEL, decode, encode
from tidepool_cli.engine.graph.prune import PRUNE_BLOCK_BYTES, select_neighbors
from tidepool_cli.engine.graph.repair import REPAIR_ROUNDS, connect_unreachable, reachable
from tidepool_cli.engine.graph.search import (
    EXACT_VISITED_MAX,
    GATHER_CHUNK_BYTES,
    HASHED_VISITED_SLOTS,
    STRAGGLER_EXPAND,
    ExactPairs,
    PairScorer,
    beam_search,
)
from tidepool_cli.engine.threads import parallel

__all__ = [
    "EXACT_KNN_FLOPS", "EXACT_VISITED_MAX", "GATHER_CHUNK_BYTES", "HASHED_VISITED_SLOTS",
    "IVF_CLUSTER_ROWS", "IVF_KMEANS_ITERS", "IVF_PROBES", "PRUNE_BLOCK_BYTES", "REPAIR_ROUNDS",
    "SENTINEL", "STRAGGLER_EXPAND", "ExactPairs", "PairScorer", "beam_search", "best_unique",
    "connect_unreachable", "decode", "encode", "knn_candidates", "parallel", "prefix_candidates",
    "reachable", "select_neighbors", "with_reverse_edges",
]
