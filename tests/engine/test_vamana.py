"""Vamana build, node layout and disk beam search: recall against exact ground truth,
deletions, filters, determinism, read-only inputs, page accounting."""

import numpy as np
import pytest

from tidepool_cli.engine.distances import normalize_rows, sqnorms
from tidepool_cli.engine.graph import ExactPairs
from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.engine.topk import knn
from tidepool_cli.engine.vamana import VamanaGraph, build_vamana, medoid
from tidepool_cli.engine.vamana_layout import (
    SECTOR_BYTES,
    NodeLayout,
    bfs_order,
    decode_records,
    graph_order,
    pack_blocks,
    record_view,
    sector_locality,
    slots_of,
)
from tidepool_cli.engine.vamana_search import (
    NodeRecords,
    cache_near_medoid,
        search_vamana,
)
from tidepool_cli.errors import InvalidInputError


def records_of(x, G: VamanaGraph, order=None):
    layout = NodeLayout(x.shape[0], x.shape[1], G.r)
    if order is None:
        order = graph_order(G.adjacency, G.medoid, layout.per_block)
    blocks = pack_blocks(x, G.adjacency, order, layout, 0, layout.n_blocks)
    blocks.setflags(write=False)
    return NodeRecords(blocks, slots_of(order), layout, G.medoid)


def sq8_scorer(x, xq):
    """An in-test code distance: 8-bit scalar quantisation per dimension, squared l2."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    step = np.where(hi > lo, (hi - lo) / 255, 1).astype(np.float32)
    codes = np.round((x - lo) / step).astype(np.uint8)

    def score(ids, qrows):
        rec = codes[ids].astype(np.float32) * step + lo
        diff = rec - xq[qrows]
        return np.einsum("pd,pd->p", diff, diff)

    return score


@pytest.fixture(scope="module")
def sift(siftsmall):
    xb, xq, gt, gtd = siftsmall
    xb = xb.copy()
    xb.setflags(write=False)
    G = build_vamana(xb, "l2", seed=3)
    return xb, xq, gt, gtd, G, records_of(xb, G)


@pytest.fixture(scope="module")
def fashion(fashion_mnist):
    xb, xq, _, _ = fashion_mnist
    xb, xq = xb[:4000].copy(), xq[:100].copy()
    _, gt = knn(xq, xb, 10, "l2")
    G = build_vamana(xb, "l2", seed=3)
    return xb, xq, gt, G, records_of(xb, G)


def test_graph_invariants(sift):
    xb, _, _, _, G, _ = sift
    n = xb.shape[0]
    assert G.adjacency.shape == (n, 64) and G.adjacency.dtype == np.int32
    adj = G.adjacency
    valid = adj >= 0
    # -1 padding only at the end, no self loops, no repeated neighbour.
    assert (valid[:, 1:] <= valid[:, :-1]).all()
    assert not (adj == np.arange(n)[:, None]).any()
    s = np.sort(np.where(valid, adj, -1 - np.arange(64)), axis=1)
    assert not (s[:, 1:] == s[:, :-1]).any()
    assert G.medoid == medoid(xb, "l2")
    # Every node is reachable from the medoid.
    order = bfs_order(adj, G.medoid)
    assert np.array_equal(np.sort(order), np.arange(n))
    st = G.stats()
    assert st["isolated"] == 0 and 10 < st["avg_degree"] <= 64


@pytest.mark.parametrize("nav", ["f32", "sq8"])
def test_siftsmall_recall(sift, nav):
    xb, xq, gt, gtd, G, rec = sift
    score = ExactPairs(xb, xq, "l2") if nav == "f32" else sq8_scorer(xb, xq)
    ids, dist, st = search_vamana(rec, xq, 10, score=score, metric="l2", l=100, beam_width=4)
    assert recall_at_k(ids, gt, 10, found_dist=dist, gt_dist=gtd) >= 0.95
    # Distances are exact: they match a direct computation from the vectors.
    d = ((xb[ids] - xq[:, None, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(dist, d, rtol=1e-5)
    assert (st.hops > 0).all() and (st.pages_read <= st.records_read).all()


@pytest.mark.parametrize("nav", ["f32", "f16"])
def test_fashion_subset_recall(fashion, nav):
    xb, xq, gt, G, rec = fashion
    codes = xb if nav == "f32" else xb.astype(np.float16)
    # Norms of the f16 copy in f32: squares of 784 pixel values overflow float16.
    score = ExactPairs(codes, xq, "l2", xb_sqnorms=sqnorms(codes.astype(np.float32)))
    ids, _, st = search_vamana(rec, xq, 10, score=score, metric="l2", l=100)
    assert recall_at_k(ids, gt, 10) >= 0.95
    # A 784-d record (3,396 bytes) takes one sector of its own.
    assert rec.layout.per_block == 1 and rec.layout.block_sectors == 1
    assert np.array_equal(st.pages_read, st.records_read)


def test_cosine(glove):
    xb, xq, gt, gtd = glove
    xb = normalize_rows(xb[:5000])
    xq = normalize_rows(xq[:50])
    _, gt = knn(xq, xb, 10, "cosine")
    G = build_vamana(xb, "cosine", r=32, l=64, seed=1)
    ids, _, _ = search_vamana(records_of(xb, G), xq, 10, score=ExactPairs(xb, xq, "cosine"), metric="cosine", l=64)
    assert recall_at_k(ids, gt, 10) >= 0.9


def test_deleted_rows_are_navigated_never_returned(sift):
    xb, xq, gt, _, G, rec = sift
    allowed = np.ones(xb.shape[0], dtype=bool)
    # Delete every query's true nearest half: the walk must pass through them.
    allowed[gt[:, :5].ravel()] = False
    allowed[G.medoid] = False
    ids, _, _ = search_vamana(rec, xq, 10, score=ExactPairs(xb, xq, "l2"), metric="l2", l=100, allowed=allowed)
    assert (ids >= 0).all() and allowed[ids].all()
    _, exact = knn(xq, xb, 10, "l2", allowed=allowed)
    assert recall_at_k(ids, exact, 10) >= 0.95


def test_filter_inside_search(sift):
    xb, xq, _, _, _, rec = sift
    allowed = np.arange(xb.shape[0]) % 3 == 0
    ids, _, _ = search_vamana(rec, xq, 10, score=ExactPairs(xb, xq, "l2"), metric="l2", l=150, allowed=allowed)
    assert allowed[ids[ids >= 0]].all()
    _, exact = knn(xq, xb, 10, "l2", allowed=allowed)
    assert recall_at_k(ids, exact, 10) >= 0.9
    # Nothing allowed: empty answers, not an error.
    ids, dist, _ = search_vamana(rec, xq[:3], 5, score=ExactPairs(xb, xq, "l2"), metric="l2", l=20,
                                 allowed=np.zeros(xb.shape[0], dtype=bool))
    assert (ids == -1).all() and np.isinf(dist).all()


def test_cache_saves_reads_not_results(sift):
    xb, xq, _, _, _, rec = sift
    score = ExactPairs(xb, xq, "l2")
    a, da, sa = search_vamana(rec, xq, 10, score=score, metric="l2", l=40)
    cache = cache_near_medoid(rec, 500)
    assert cache.rows.size == 500 and rec.medoid in cache.rows
    b, db, sb = search_vamana(rec, xq, 10, score=score, metric="l2", l=40, cache=cache)
    assert np.array_equal(a, b) and np.array_equal(da, db)
    assert (sb.cache_hits > 0).all()
    assert sb.records_read.sum() < sa.records_read.sum()
    assert np.array_equal(sa.records_read, sb.records_read + sb.cache_hits)


def test_beam_width_trades_hops_for_reads(sift):
    xb, xq, gt, _, _, rec = sift
    score = ExactPairs(xb, xq, "l2")
    _, _, s1 = search_vamana(rec, xq, 10, score=score, metric="l2", l=40, beam_width=1)
    _, _, s4 = search_vamana(rec, xq, 10, score=score, metric="l2", l=40, beam_width=4)
    assert s4.hops.mean() < s1.hops.mean()
    # W = 1 reads one record per hop.
    assert np.array_equal(s1.hops, s1.records_read)


def test_graph_order_puts_neighbours_in_shared_sectors(sift):
    xb, xq, _, _, G, rec = sift
    layout = rec.layout
    assert layout.record_bytes == 4 * 128 + 4 + 4 * 64 and layout.per_block == 5
    ident = np.arange(xb.shape[0])
    assert sector_locality(G.adjacency, rec.slot_of, 5) > 2 * sector_locality(G.adjacency, slots_of(ident), 5)
    order = graph_order(G.adjacency, G.medoid, 5)
    assert np.array_equal(np.sort(order), ident)
    score = ExactPairs(xb, xq, "l2")
    _, _, sg = search_vamana(rec, xq, 10, score=score, metric="l2", l=40)
    _, _, si = search_vamana(records_of(xb, G, ident), xq, 10, score=score, metric="l2", l=40)
    # Same walk, fewer distinct pages.
    assert np.array_equal(sg.records_read, si.records_read)
    assert sg.pages_read.sum() < si.pages_read.sum()


def test_records_round_trip(sift):
    xb, _, _, _, G, rec = sift
    rows = np.array([0, 17, G.medoid, xb.shape[0] - 1])
    vec, nb, blk = rec.read(rows)
    assert np.array_equal(vec, xb[rows])
    assert np.array_equal(nb, G.adjacency[rows])
    assert np.array_equal(blk, rec.slot_of[rows] // 5)
    assert rec.blocks.shape[1] == SECTOR_BYTES
    raw = record_view(rec.blocks, rec.layout)[0]
    v2, n2 = decode_records(raw, rec.layout)
    assert np.array_equal(v2[0], xb[graph_order(G.adjacency, G.medoid, 5)[0]])


def test_large_records_span_whole_sectors():
    layout = NodeLayout(10, 1500, 16)
    assert layout.block_sectors == 2 and layout.per_block == 1 and layout.block_bytes == 8192
    x = np.random.default_rng(0).standard_normal((10, 1500)).astype(np.float32)
    adj = np.tile(np.arange(1, 17, dtype=np.int32) % 10, (10, 1))
    adj[:, 9:] = -1
    blocks = pack_blocks(x, adj, np.arange(10), layout, 0, 10)
    rec = NodeRecords(blocks, slots_of(np.arange(10)), layout, 0)
    vec, nb, _ = rec.read(np.arange(10))
    assert np.array_equal(vec, x) and np.array_equal(nb, adj)


def test_deterministic_with_seed(siftsmall):
    xb = siftsmall[0][:3000]
    a = build_vamana(xb, "l2", r=24, l=40, seed=5, threads=1)
    b = build_vamana(xb, "l2", r=24, l=40, seed=5, threads=2)
    assert np.array_equal(a.adjacency, b.adjacency) and a.medoid == b.medoid


def test_read_only_memmap_input(tmp_path, siftsmall):
    xb, xq = siftsmall[0][:2000], siftsmall[1][:20]
    np.save(tmp_path / "x.npy", xb)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    G = build_vamana(mm, "l2", r=24, l=40, seed=1)
    assert np.array_equal(G.adjacency, build_vamana(xb, "l2", r=24, l=40, seed=1).adjacency)
    _, gt = knn(xq, xb, 10, "l2")
    ids, _, _ = search_vamana(records_of(mm, G), xq, 10, score=ExactPairs(mm, xq, "l2"), metric="l2", l=40)
    assert recall_at_k(ids, gt, 10) >= 0.95


def test_ties_break_by_id():
    # Duplicated vectors: equal distances, the answer orders them by row.
    base = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32)
    x = np.concatenate([base] * 4)
    G = build_vamana(x, "l2", r=16, l=32, seed=0)
    xq = base[:5] + 0.01
    ids, dist, _ = search_vamana(records_of(x, G), xq, 4, score=ExactPairs(x, xq, "l2"), metric="l2", l=64)
    for i in range(5):
        assert sorted(ids[i]) == list(ids[i]) and set(ids[i]) == {i, i + 50, i + 100, i + 150}


def test_bad_parameters():
    x = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises(InvalidInputError):
        build_vamana(x, "dot")
    with pytest.raises(InvalidInputError):
        build_vamana(x, "l2", r=1)
    with pytest.raises(InvalidInputError):
        build_vamana(x, "l2", alpha=0.9)
    with pytest.raises(InvalidInputError):
        build_vamana(np.zeros((0, 4), dtype=np.float32), "l2")


def test_bad_search_parameters(sift):
    xb, xq, _, _, _, rec = sift
    score = ExactPairs(xb, xq, "l2")
    for kw in ({"l": 0}, {"l": 10, "beam_width": 0}):
        with pytest.raises(InvalidInputError):
            search_vamana(rec, xq, 10, score=score, metric="l2", **kw)
    with pytest.raises(InvalidInputError):
        search_vamana(rec, xq[:, :64], 10, score=score, metric="l2", l=10)


def test_tiny_inputs():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    G = build_vamana(x, "l2", r=4, l=8)
    ids, _, _ = search_vamana(records_of(x, G), x, 3, score=ExactPairs(x, x, "l2"), metric="l2", l=8)
    assert (ids[:, 0] == np.arange(3)).all()
    one = build_vamana(x[:1], "l2")
    assert one.adjacency.shape == (1, 64) and (one.adjacency == -1).all()
