"""HNSW build and search: recall against exact ground truth, filters, invariants, edge cases."""

import numpy as np
import pytest

from tidepool_cli.engine import graph as g
from tidepool_cli.engine.distances import normalize_rows, prepare_queries, sqnorms
from tidepool_cli.engine.hnsw import (
    DEFAULT_EF_SEARCH,
    FILTER_EXACT_BELOW,
    HnswGraph,
    build_hnsw,
    search_hnsw,
)
from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.engine.topk import knn
from tidepool_cli.errors import InvalidInputError


@pytest.fixture(scope="module")
def sift_graph(siftsmall):
    xb = siftsmall[0]
    return build_hnsw(xb, "l2", seed=7)


def clustered(n, d, seed, centers=20):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32) * 3
    lab = rng.integers(0, centers, n)
    return c[lab] + rng.standard_normal((n, d)).astype(np.float32)


def check_invariants(G: HnswGraph, n: int):
    assert G.levels.shape == (n,) and G.levels.dtype == np.uint8
    assert G.layer0.shape == (n, 2 * G.m) and G.layer0.dtype == np.int32
    assert G.layer0.flags.c_contiguous
    top = G.max_level
    assert int(G.levels.max()) == top
    assert G.levels[G.entry_point] == top
    layers = [(np.arange(n), G.layer0, 2 * G.m)]
    for lvl, (nodes, nb) in enumerate(zip(G.upper_nodes, G.upper_neighbors), start=1):
        assert nodes.dtype == np.int32 and nb.dtype == np.int32 and nb.flags.c_contiguous
        np.testing.assert_array_equal(nodes, np.flatnonzero(G.levels >= lvl))
        assert nb.shape == (nodes.size, G.m)
        # Upper-layer neighbours are nodes of that layer.
        assert np.isin(nb[nb >= 0], nodes).all()
        layers.append((nodes, nb, G.m))
    for nodes, nb, width in layers:
        assert nb.shape[1] == width
        valid = nb >= 0
        # -1 padding only at the end of a row.
        assert (np.diff(valid.astype(np.int8), axis=1) <= 0).all()
        assert (nb[valid] < n).all()
        assert not (nb == nodes[:, None]).any(), "self loop"
        s = np.sort(np.where(valid, nb, -1 - np.arange(width)), axis=1)
        assert not (s[:, 1:] == s[:, :-1]).any(), "duplicate neighbour"


def test_recall_siftsmall_default_ef(siftsmall, sift_graph):
    xb, xq, gt, gt_dist = siftsmall
    D, I = search_hnsw(sift_graph, xb, xq, 10)
    assert recall_at_k(I, gt, 10, found_dist=D, gt_dist=gt_dist) >= 0.95
    # Larger beams only get better, and sqnorms change nothing but the speed.
    D2, I2 = search_hnsw(sift_graph, xb, xq, 10, ef_search=64, xb_sqnorms=sqnorms(xb))
    assert recall_at_k(I2, gt, 10, found_dist=D2, gt_dist=gt_dist) >= 0.99


def test_distances_match_exact_search(siftsmall, sift_graph):
    xb, xq, _, _ = siftsmall
    D, I = search_hnsw(sift_graph, xb, xq, 10, ef_search=64)
    De, Ie = knn(xq, xb, 10, "l2")
    same = I == Ie
    assert same.mean() > 0.95
    np.testing.assert_array_equal(D[same], De[same])
    assert (np.diff(D, axis=1) >= 0).all()


def test_graph_invariants_siftsmall(siftsmall, sift_graph):
    check_invariants(sift_graph, siftsmall[0].shape[0])
    st = sift_graph.stats()
    assert st["levels"][0]["nodes"] == siftsmall[0].shape[0]
    assert st["bytes"] > 0 and st["max_level"] == sift_graph.max_level
    # Every node is reachable from the entry point on layer 0.
    assert g.reachable(sift_graph.layer0, sift_graph.entry_point).all()


def test_excluded_rows_are_searched_as_if_absent(siftsmall, sift_graph):
    xb = siftsmall[0]
    rows = np.arange(0, len(xb), 37)
    D, I = search_hnsw(sift_graph, xb, xb[rows], 10, ef_search=64, exclude=rows)
    assert not (I == rows[:, None]).any()
    _, truth = knn(xb[rows], xb, 11, "l2")
    truth = [[t for t in ts if t != r][:10] for ts, r in zip(truth.tolist(), rows)]
    hits = [len(set(a) & set(b)) for a, b in zip(I.tolist(), truth)]
    assert np.mean(hits) / 10 >= 0.95


def test_deleted_rows_are_walked_but_never_returned(siftsmall, sift_graph):
    xb, xq, _, _ = siftsmall
    rng = np.random.default_rng(1)
    allowed = rng.random(xb.shape[0]) >= 0.2
    # Delete every query's true nearest neighbours too: the search must route around them.
    _, I0 = knn(xq, xb, 3, "l2")
    allowed[I0.ravel()] = False
    D, I = search_hnsw(sift_graph, xb, xq, 10, allowed=allowed)
    assert (I >= 0).all() and allowed[I].all()
    De, Ie = knn(xq, xb, 10, "l2", allowed=allowed)
    assert recall_at_k(I, Ie, 10, found_dist=D, gt_dist=De) >= 0.95


@pytest.mark.parametrize("fraction", [0.5, 0.05, 0.005])
@pytest.mark.parametrize("force_graph", [False, True])
def test_filtered_recall(siftsmall, sift_graph, fraction, force_graph):
    xb, xq, _, _ = siftsmall
    rng = np.random.default_rng(int(fraction * 1000))
    allowed = rng.random(xb.shape[0]) < fraction
    De, Ie = knn(xq, xb, 10, "l2", allowed=allowed)
    below = 0.0 if force_graph else FILTER_EXACT_BELOW
    D, I = search_hnsw(sift_graph, xb, xq, 10, allowed=allowed, filter_exact_below=below)
    assert (I >= 0).all(), "fewer than k results although k rows are allowed"
    assert allowed[I].all()
    assert recall_at_k(I, Ie, 10, found_dist=D, gt_dist=De) >= 0.95


def test_fewer_allowed_rows_than_k(siftsmall, sift_graph):
    xb, xq, _, _ = siftsmall
    allowed = np.zeros(xb.shape[0], dtype=bool)
    allowed[[5, 500, 5000]] = True
    D, I = search_hnsw(sift_graph, xb, xq[:4], 10, allowed=allowed, filter_exact_below=0.0)
    assert (np.sort(I[:, :3], axis=1) == [5, 500, 5000]).all()
    assert (I[:, 3:] == -1).all() and np.isinf(D[:, 3:]).all()
    D, I = search_hnsw(sift_graph, xb, xq[:4], 10, allowed=np.zeros(xb.shape[0], dtype=bool))
    assert (I == -1).all() and np.isinf(D).all()


def test_same_seed_same_graph_other_seed_other_graph():
    x = clustered(3000, 24, seed=3)
    a = build_hnsw(x, "l2", m=8, seed=11, threads=1)
    b = build_hnsw(x, "l2", m=8, seed=11, threads=2)
    c = build_hnsw(x, "l2", m=8, seed=12)
    for name in ("levels", "layer0"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.entry_point == b.entry_point
    for u, v in zip(a.upper_neighbors, b.upper_neighbors):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.levels, c.levels)
    q = prepare_queries(x[:50] + 0.1, "l2")
    np.testing.assert_array_equal(search_hnsw(a, x, q, 5)[1], search_hnsw(b, x, q, 5)[1])
    # Searching with several threads changes nothing.
    np.testing.assert_array_equal(
        search_hnsw(a, x, q, 5, threads=1)[1], search_hnsw(a, x, q, 5, threads=2)[1]
    )


@pytest.mark.parametrize("n", [1, 2, 3, 7, 15])
def test_tiny_graphs_find_everything(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    G = build_hnsw(x, "l2", m=8)
    check_invariants(G, n)
    q = prepare_queries(rng.standard_normal((5, 6)), "l2")
    D, I = search_hnsw(G, x, q, min(n, 4))
    De, Ie = knn(q, x, min(n, 4), "l2")
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_array_equal(D, De)
    # k above n pads with -1 / +inf.
    D, I = search_hnsw(G, x, q, n + 2)
    assert (I[:, n:] == -1).all() and np.isinf(D[:, n:]).all()


@pytest.mark.parametrize("metric, ef", [("cosine", 48), ("dot", 128)])
def test_inner_product_metrics(metric, ef):
    # Maximum inner product search is harder (hnswlib's "ip" space: 0.85 at ef 100 here).
    rng = np.random.default_rng(5)
    x = clustered(4000, 16, seed=5)
    if metric == "cosine":
        x = normalize_rows(x)
    q = prepare_queries(clustered(100, 16, seed=6) + rng.standard_normal((100, 16)), metric)
    G = build_hnsw(x, metric, m=12)
    check_invariants(G, x.shape[0])
    D, I = search_hnsw(G, x, q, 10, ef_search=ef)
    De, Ie = knn(q, x, 10, metric)
    assert recall_at_k(I, Ie, 10, found_dist=D, gt_dist=De) >= 0.95
    same = I == Ie
    np.testing.assert_array_equal(D[same], De[same])


def test_layer0_crosses_clusters():
    # Tight, far-apart clusters larger than the candidate lists: k-NN lists never leave
    # their cluster, so a layer-0 walk from the entry point reaches other clusters only
    # through the long edges that the insertion-order candidates add.
    rng = np.random.default_rng(9)
    c = rng.standard_normal((40, 32)).astype(np.float32) * 10
    lab = np.repeat(np.arange(40), 250)
    x = c[lab] + rng.standard_normal((lab.size, 32)).astype(np.float32)
    q = prepare_queries(c[rng.integers(0, 40, 200)] + rng.standard_normal((200, 32)), "l2")
    G = build_hnsw(x, "l2")
    start = np.full((200, 1), G.entry_point, dtype=np.int64)
    ids, _ = g.beam_search(x, G.layer0, q, start, 32, metric="l2", expand=2)
    _, Ie = knn(q, x, 10, "l2")
    assert recall_at_k(ids, Ie, 10) >= 0.95


def test_read_only_memmaps(tmp_path):
    x = clustered(2000, 16, seed=2)
    G = build_hnsw(x, "l2", m=8)
    path = tmp_path / "x.npy"
    np.save(path, x)
    xm = np.load(path, mmap_mode="r")
    ro = {}
    for name in ("levels", "layer0"):
        np.save(tmp_path / f"{name}.npy", getattr(G, name))
        ro[name] = np.load(tmp_path / f"{name}.npy", mmap_mode="r")
    ups = []
    for i, arr in enumerate(G.upper_neighbors):
        np.save(tmp_path / f"u{i}.npy", arr)
        ups.append(np.load(tmp_path / f"u{i}.npy", mmap_mode="r"))
    G2 = HnswGraph(G.m, G.ef_construction, G.metric, G.entry_point, ro["levels"], ro["layer0"],
                   G.upper_nodes, tuple(ups))
    q = prepare_queries(x[:20] + 0.05, "l2")
    np.testing.assert_array_equal(search_hnsw(G2, xm, q, 5)[1], search_hnsw(G, x, q, 5)[1])
    # The build reads a read-only memmap without writing to it.
    G3 = build_hnsw(xm, "l2", m=8)
    np.testing.assert_array_equal(G3.layer0, G.layer0)


def test_progress_reaches_total():
    calls = []
    build_hnsw(clustered(1500, 8, seed=4), "l2", m=6, progress=lambda d, t: calls.append((d, t)))
    assert calls and calls[-1][0] == calls[-1][1]
    assert all(0 <= d <= t for d, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_select_neighbors_matches_sequential_heuristic():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((400, 5)).astype(np.float32)
    nodes = np.arange(30)
    for alpha in (1.0, 1.3):
        ids, dist = g.knn_candidates(x, 60, metric="l2")
        got, _ = g.select_neighbors(x, ids[nodes], dist[nodes], 7, metric="l2", alpha=alpha)
        for q in nodes:
            kept = []
            for e, de in zip(ids[q], dist[q]):
                if len(kept) == 7:
                    break
                if all(alpha**2 * ((x[r] - x[e]) ** 2).sum() >= de * (1 - 1e-5) for r in kept):
                    kept.append(e)
            assert list(got[q][got[q] >= 0]) == kept


def test_beam_search_with_full_width_is_exact():
    x = clustered(300, 8, seed=10)
    G = build_hnsw(x, "l2", m=6)
    q = prepare_queries(x[:10] + 0.3, "l2")
    ids, _ = g.beam_search(x, G.layer0, q, np.zeros((10, 1), dtype=np.int64), 300, metric="l2")
    _, Ie = knn(q, x, 300, "l2")
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(Ie, axis=1))


def test_invalid_inputs_raise():
    x = clustered(100, 4, seed=0)
    with pytest.raises(InvalidInputError):
        build_hnsw(x, "euclid")
    with pytest.raises(InvalidInputError):
        build_hnsw(x[:0], "l2")
    with pytest.raises(InvalidInputError):
        build_hnsw(x, "l2", m=1)
    G = build_hnsw(x, "l2", m=4)
    with pytest.raises(InvalidInputError):
        search_hnsw(G, x, x[:3, :2], 3)
    with pytest.raises(InvalidInputError):
        search_hnsw(G, x, x[:3], 0)
    with pytest.raises(InvalidInputError):
        search_hnsw(G, x[:50], x[:3], 3)
    with pytest.raises(InvalidInputError):
        search_hnsw(G, x, x[:3], 3, allowed=np.ones(5, dtype=bool))
    assert DEFAULT_EF_SEARCH >= 10
