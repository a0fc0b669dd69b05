"""Results must not depend on the last bits of a score: tie cases through every cut.

Another BLAS or CPU rounds a dot product a few ulps differently. These tests make that
happen here: other block sizes, batch sizes and thread layouts (other GEMM shapes),
permuted copies of the data (other GEMM columns), and scores perturbed by a few ulps at
random. Every run must give the float64 brute-force answer, ties to the lower position.
"""

import numpy as np
import pytest

from tidepool_cli.engine import ivf, kmeans, topk
from tidepool_cli.engine.ivf import scan as ivf_scan
from tidepool_cli.engine.ivf import search as ivf_search
from tidepool_cli.engine.distances import exact_distances, normalize_rows, prepare_queries
from tidepool_cli.engine.hnsw import build_hnsw, search_hnsw
from tidepool_cli.engine.order import Slack, smallest_mask, sortable, tie_aware_mask, unsortable
from tidepool_cli.engine.topk import knn


def duplicates(seed=3, distinct=5, n=400, d=8):
    """Few distinct vectors, many copies each: every query has long runs of equal distances."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(distinct, d)).astype(np.float32)
    x = base[rng.integers(0, distinct, n)]
    return x, (base + 0.01).astype(np.float32)


def integers(seed=0, n=600, d=6, nq=20):
    """Small integer vectors: many rows at exactly equal distances."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, (n, d)).astype(np.float32), rng.integers(0, 3, (nq, d)).astype(np.float32)


def brute_force(xq, xb, k, metric, allowed=None):
    """float64 exact answer, ties to the lower position."""
    q, b = xq.astype(np.float64), xb.astype(np.float64)
    if metric == "l2":
        d = ((q[:, None] - b[None]) ** 2).sum(-1)
    else:
        ip = q @ b.T
        d = 1 - ip if metric == "cosine" else -ip
    if allowed is not None:
        d[:, ~allowed] = np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(xb)), d.shape), d), axis=1)[:, :k]
    return np.where(np.isfinite(np.take_along_axis(d, order, 1)), order, -1)


def cases():
    x, q = duplicates()
    yield "dup-l2", x, q, "l2"
    yield "dup-dot", x, q, "dot"
    yield "dup-cos", normalize_rows(x), prepare_queries(q, "cosine"), "cosine"
    x, q = integers()
    yield "int-l2", x, q, "l2"
    yield "int-dot", x, q, "dot"


CASES = {name: (x, q, metric) for name, x, q, metric in cases()}
ORIGINAL_PRODUCT = ivf_scan.product


def noisy(fn, seed, ulps=4):
    """``fn`` with every float32 result moved by up to ``ulps`` ulps at random."""
    rng = np.random.default_rng(seed)

    def wrapped(*args, **kw):
        out = fn(*args, **kw)
        step = rng.integers(-ulps, ulps + 1, size=out.shape).astype(np.int32)
        bits = sortable(out) + step
        return unsortable(bits).astype(np.float32)

    return wrapped


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("k", [1, 10, 30])
@pytest.mark.parametrize("layout", [(8192, 1024, 32), (64, 16, 0), (48, 7, 4)])
def test_exact_search_over_layouts_and_permutations(monkeypatch, name, k, layout):
    xb, xq, metric = CASES[name]
    monkeypatch.setattr(topk, "BLOCK_ROWS", layout[0])
    monkeypatch.setattr(topk, "QUERY_BATCH", layout[1])
    monkeypatch.setattr(topk, "SMALL_BATCH", layout[2])
    np.testing.assert_array_equal(knn(xq, xb, k, metric)[1], brute_force(xq, xb, k, metric))
    perm = np.random.default_rng(k).permutation(len(xb))
    xp = xb[perm]
    np.testing.assert_array_equal(knn(xq, xp, k, metric)[1], brute_force(xq, xp, k, metric))
    allowed = np.arange(len(xb)) % 3 != 0
    D, I = knn(xq, xb, k, metric, allowed=allowed)
    np.testing.assert_array_equal(I, brute_force(xq, xb, k, metric, allowed))
    np.testing.assert_array_equal(D, exact_distances(xq, xb[I], metric))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("k", [1, 10, 30])
def test_ivf_under_perturbed_scores_and_thread_layouts(monkeypatch, name, k):
    xb, xq, metric = CASES[name]
    index = ivf.build_ivf(xb, metric, nlist=9, seed=1)
    want = brute_force(xq, xb, k, metric)
    runs = []
    for workers, seed in [("1", None), ("2", 1), ("2", 2), ("1", 3)]:
        monkeypatch.setenv("OMP_NUM_THREADS", workers)
        monkeypatch.setattr(ivf_search, "PARALLEL_MIN_PAIRS", 0)
        if seed is not None:
            monkeypatch.setattr(ivf_scan, "product", noisy(ORIGINAL_PRODUCT, seed))
        D, I = ivf.search_ivf(index, xb, xq, k, nprobe=9)
        runs.append(I)
        np.testing.assert_array_equal(I, want)
        np.testing.assert_array_equal(D, exact_distances(xq, xb[I], metric))
    monkeypatch.setattr(ivf_search, "SCAN_QUERIES", 3)
    np.testing.assert_array_equal(ivf.search_ivf(index, xb, xq, k, nprobe=9)[1], want)


def test_ivf_duplicates_in_one_list_whatever_their_column():
    """The reported failure: copies of one row one ulp apart by GEMM column."""
    x, q = duplicates()
    index = ivf.build_ivf(x, "l2", nlist=9)
    for seed in range(5):
        ivf_product = noisy(ORIGINAL_PRODUCT, seed, ulps=2)
        mp = pytest.MonkeyPatch()
        mp.setattr(ivf_scan, "product", ivf_product)
        try:
            I = ivf.search_ivf(index, x, q, 30, nprobe=9)[1]
        finally:
            mp.undo()
        np.testing.assert_array_equal(I, brute_force(q, x, 30, "l2"))


def test_ivf_probes_every_list_tied_with_the_last_probed_one():
    # Two identical centroids: whichever the GEMM puts first, both lists are probed.
    x = np.repeat(np.eye(4, dtype=np.float32), 50, axis=0)
    index = ivf.build_ivf(x, "l2", nlist=4, codec="raw")
    c = np.concatenate([index.centroids[:1], index.centroids])
    twin = ivf.IvfIndex(
        metric="l2", centroids=c, list_sizes=np.concatenate([[0], index.list_sizes]).astype(np.uint32),
        codec="raw", blob=index.blob, offsets=np.concatenate([[0], index.offsets]).astype(np.uint64),
        crcs=np.concatenate([[0], index.crcs]).astype(np.uint32), universe=index.universe,
    )
    q = index.centroids[:1] + 0.0
    I = ivf.search_ivf(twin, x, q, 5, nprobe=1)[1]
    np.testing.assert_array_equal(I, brute_force(q, x, 5, "l2"))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("m", [4, 8, 16])
def test_hnsw_reaches_every_row_of_duplicate_heavy_data(name, m):
    from tidepool_cli.engine.graph import reachable

    xb, _, metric = CASES[name]
    graph = build_hnsw(xb, metric, m=m, ef_construction=64)
    assert reachable(graph.layer0, graph.entry_point).all()
    for nodes, nb in zip(graph.upper_nodes, graph.upper_neighbors):
        start = int(np.searchsorted(nodes, graph.entry_point))
        assert reachable(nb, start, nodes).all()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("threads", [1, 2])
def test_hnsw_full_beam_is_exact_with_ties_by_position(name, threads):
    xb, xq, metric = CASES[name]
    graph = build_hnsw(xb, metric, m=4, ef_construction=32, threads=threads)
    # A beam as wide as the data set sees every row: the answer is exact, ties by position.
    np.testing.assert_array_equal(
        search_hnsw(graph, xb, xq, 10, ef_search=len(xb), threads=threads)[1], brute_force(xq, xb, 10, metric)
    )


@pytest.mark.parametrize("name", ["dup-l2", "int-l2", "dup-cos"])
@pytest.mark.parametrize("threads", [1, 2])
def test_hnsw_results_do_not_depend_on_batches_or_threads(monkeypatch, name, threads):
    from tidepool_cli.engine import hnsw

    xb, xq, metric = CASES[name]
    graph = build_hnsw(xb, metric, m=4, ef_construction=32, threads=threads)
    base = search_hnsw(graph, xb, xq, 10, ef_search=32, threads=1)
    monkeypatch.setattr(hnsw, "QUERY_BATCH", 3)
    other = search_hnsw(graph, xb, xq, 10, ef_search=32, threads=threads)
    np.testing.assert_array_equal(base[1], other[1])
    np.testing.assert_array_equal(base[0], other[0])


def test_kmeans_assignment_of_tied_centroids_goes_to_the_lower_index(monkeypatch):
    rng = np.random.default_rng(0)
    c = rng.normal(size=(6, 5)).astype(np.float32)
    cent = np.concatenate([c, c[::-1]])  # every centroid twice, at indexes j and 11 - j
    x = (c[rng.integers(0, 6, 300)] + rng.normal(size=(300, 5)).astype(np.float32) * 0.1).astype(np.float32)
    want, _ = kmeans.assign(x, cent, "l2")
    assert want.max() < 6
    monkeypatch.setattr(kmeans.np, "matmul", noisy(np.matmul, 0, ulps=3), raising=True)
    try:
        got, _ = kmeans.assign(x, cent, "l2")
    finally:
        monkeypatch.undo()
    np.testing.assert_array_equal(got, want)


def test_tie_aware_mask_keeps_everything_within_the_bound():
    xq = np.ones((2, 4), np.float32)
    vals = np.array([[1.0, 1.0, 1.0, 1.0000001, 2.0], [0.0, 5.0, 5.0, 5.0, 5.0]], np.float32)
    mask = tie_aware_mask(vals, 2, 1, Slack(xq, "cosine"))
    # Row 0: within the bound of the first; row 1: every value tied with the 2nd is kept.
    np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(tie_aware_mask(vals, 1, 1, Slack(xq, "cosine"))[1], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(smallest_mask(vals, 2), [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    v = np.array([-np.inf, -2.5, -0.0, 0.0, 1e-40, 3.0, np.inf], np.float32)
    assert (np.diff(sortable(v)) > 0).all()
    np.testing.assert_array_equal(unsortable(sortable(v)), v)


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("d", [4, 128, 784])
def test_loose_limit_never_cuts_below_the_precise_one(metric, d):
    rng = np.random.default_rng(d)
    xq = (rng.normal(size=(400, d)) * rng.uniform(0.01, 100, (400, 1))).astype(np.float32)
    slack = Slack(xq, metric, xmax=3.0)
    qn2 = slack.qn**2
    near = rng.uniform(-1, -0.99, 400) * qn2  # l2 proxies of close rows: v = dist - |q|^2
    far = rng.uniform(-1, 3, 400) * qn2
    for v in (near, far, rng.normal(size=400) * 10):
        v = np.maximum(v, -qn2) if metric == "l2" else v
        assert (slack.loose_limit(v) >= slack.limit(v)).all()
        assert (slack.limit(v) > v).all()
