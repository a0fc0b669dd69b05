"""IVF index: recall on real data, codec independence, masks, determinism, degenerate sizes."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidepool_cli.engine import idcodec
from tidepool_cli.engine.distances import exact_distances, normalize_rows, prepare_queries, sqnorms
from tidepool_cli.engine.ivf import (
    IvfIndex,
    build_ivf,
    default_nlist,
    default_nprobe,
    search_ivf,
)
from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.engine.topk import knn
from tidepool_cli.errors import CorruptIndexError, InvalidInputError

SIFT_2K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "siftsmall-2k"


def clustered(n, d, seed=0, centers=20):
    """Gaussian blobs: the shape of data IVF is meant for."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32) * 4
    return (c[rng.integers(0, centers, n)] + rng.normal(size=(n, d))).astype(np.float32)


def data(metric, n=3000, d=24, nq=60, seed=0):
    x = clustered(n + nq, d, seed)
    xb, xq = x[:n], x[n:]
    if metric == "cosine":
        xb = normalize_rows(xb)
    return xb, prepare_queries(xq, metric)


@pytest.fixture(scope="module")
def small_l2():
    xb, xq = data("l2", n=6000)
    return xb, xq, build_ivf(xb, "l2", nlist=30, seed=0)


def test_recall_on_siftsmall_at_default_settings(siftsmall):
    xb, xq, gt, gt_dist = siftsmall
    index = build_ivf(xb, "l2")
    assert index.nlist == default_nlist(len(xb)) == 400
    D, I = search_ivf(index, xb, xq, 10, xb_sqnorms=sqnorms(xb))
    assert recall_at_k(I, gt, 10, found_dist=D, gt_dist=gt_dist) >= 0.95


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_probing_every_list_is_exact_search_bit_for_bit(metric):
    xb, xq = data(metric, n=2000)
    index = build_ivf(xb, metric, nlist=30, codec="raw")
    D, I = search_ivf(index, xb, xq, 10, nprobe=30)
    De, Ie = knn(xq, xb, 10, metric)
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_array_equal(D, De)


def test_integer_valued_data_with_large_norms_matches_exact_search():
    # SIFT components are integers up to ~180: the float32 proxy |x|^2 - 2 q.x loses
    # several units to cancellation, which the spare candidates and the rerank bound
    # must absorb.
    if not SIFT_2K.exists():
        pytest.skip(f"{SIFT_2K} is not available")
    xb, xq = np.load(SIFT_2K / "base.npy"), np.load(SIFT_2K / "queries.npy")
    index = build_ivf(xb, "l2", nlist=20, codec="raw")
    D, I = search_ivf(index, xb, xq, 10, nprobe=20, xb_sqnorms=sqnorms(xb))
    De, Ie = knn(xq, xb, 10, "l2")
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_array_equal(D, De)


def test_every_codec_gives_identical_indexes_and_results():
    xb, xq = data("l2", n=2000)
    results = {}
    for codec in idcodec.CODEC_NAMES:
        index = build_ivf(xb, "l2", nlist=25, codec=codec, seed=4)
        results[codec] = (index.centroids, index.list_sizes, *search_ivf(index, xb, xq, 10, nprobe=4))
    first = results[idcodec.CODEC_NAMES[0]]
    for codec, res in results.items():
        for a, b in zip(first, res):
            np.testing.assert_array_equal(a, b, err_msg=codec)


@pytest.mark.parametrize("keep, nprobe", [(0.5, 3), (0.05, 1), (0.005, 1)])
def test_allowed_mask_is_honoured_and_every_query_gets_k(small_l2, keep, nprobe):
    xb, xq, index = small_l2
    rng = np.random.default_rng(int(keep * 1000))
    allowed = rng.random(len(xb)) < keep
    allowed[rng.choice(len(xb), 10, replace=False)] = True  # at least k rows allowed
    D, I = search_ivf(index, xb, xq, 10, nprobe=nprobe, allowed=allowed)
    assert (I >= 0).all() and np.isfinite(D).all()
    assert allowed[I].all()
    assert (np.diff(D, axis=1) >= 0).all()
    De, Ie = knn(xq, xb, 10, "l2", allowed=allowed)
    assert recall_at_k(I, Ie, 10, found_dist=D, gt_dist=De) >= (0.9 if keep > 0.01 else 1.0)


def test_fewer_allowed_rows_than_k_returns_all_of_them(small_l2):
    xb, xq, index = small_l2
    allowed = np.zeros(len(xb), dtype=bool)
    allowed[[5, 900, 5999]] = True
    D, I = search_ivf(index, xb, xq, 10, nprobe=2, allowed=allowed)
    assert (np.sort(I[:, :3], axis=1) == [5, 900, 5999]).all()
    assert (I[:, 3:] == -1).all() and np.isinf(D[:, 3:]).all()
    D, I = search_ivf(index, xb, xq, 10, allowed=np.zeros(len(xb), dtype=bool))
    assert (I == -1).all()


def test_queries_whose_probed_lists_run_dry_fall_back_to_exact_search(small_l2):
    xb, xq, index = small_l2
    # Rows of the largest lists only: queries probing elsewhere find nothing there.
    allowed = np.zeros(len(xb), dtype=bool)
    for lid in np.argsort(index.list_sizes)[::-1][:3]:
        members = idcodec.decode_list(
            index.codec, index.blob, index.offsets, index.crcs, lid, int(index.list_sizes[lid]), index.universe
        )
        allowed[members] = True
    D, I = search_ivf(index, xb, xq, 10, nprobe=1, allowed=allowed)
    De, Ie = knn(xq, xb, 10, "l2", allowed=allowed)
    assert allowed[I].all() and (I >= 0).all()
    assert recall_at_k(I, Ie, 10, found_dist=D, gt_dist=De) >= 0.9


def test_equal_seeds_give_identical_indexes():
    xb, _ = data("cosine", n=2500)
    a = build_ivf(xb, "cosine", nlist=20, seed=7)
    b = build_ivf(xb, "cosine", nlist=20, seed=7)
    c = build_ivf(xb, "cosine", nlist=20, seed=8)
    for field in ("centroids", "list_sizes", "blob", "offsets", "crcs"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.centroids, c.centroids)


def test_memmap_input_builds_the_same_index(tmp_path):
    xb, xq = data("l2", n=1500)
    np.save(tmp_path / "x.npy", xb)
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    a, b = build_ivf(xb, "l2", nlist=12), build_ivf(xm, "l2", nlist=12)
    np.testing.assert_array_equal(a.blob, b.blob)
    for x, index in ((xb, a), (xm, b)):
        D, I = search_ivf(index, x, xq, 5)
        assert I.shape == (len(xq), 5)


def test_empty_batches_and_k_zero(small_l2):
    xb, xq, index = small_l2
    D, I = search_ivf(index, xb, xq[:0], 10)
    assert D.shape == I.shape == (0, 10)
    D, I = search_ivf(index, xb, xq, 0)
    assert D.shape == I.shape == (len(xq), 0)


def test_dot_metric_reaches_high_recall_with_enough_probes():
    xb, xq = data("dot", n=3000)
    index = build_ivf(xb, "dot", nlist=30)
    D, I = search_ivf(index, xb, xq, 10, nprobe=10)
    De, Ie = knn(xq, xb, 10, "dot")
    assert recall_at_k(I, Ie, 10, found_dist=D, gt_dist=De) >= 0.9


def test_single_row():
    x = np.ones((1, 4), dtype=np.float32)
    index = build_ivf(x, "l2")
    assert index.nlist == 1
    D, I = search_ivf(index, x, np.zeros((2, 4), np.float32), 3)
    assert (I == [[0, -1, -1]] * 2).all()
    assert D[0, 0] == 4.0 and np.isinf(D[:, 1:]).all()


def test_nlist_larger_than_rows_is_refused_and_default_is_clamped():
    x = clustered(7, 3)
    with pytest.raises(InvalidInputError):
        build_ivf(x, "l2", nlist=8)
    assert default_nlist(7) == 7
    index = build_ivf(x, "l2")
    D, I = search_ivf(index, x, x, 7, nprobe=index.nlist)
    assert (np.sort(I, axis=1) == np.arange(7)).all()


def test_duplicate_vectors_tie_break_by_position():
    rng = np.random.default_rng(3)
    distinct = rng.normal(size=(5, 8)).astype(np.float32)
    x = distinct[rng.integers(0, 5, 400)]
    index = build_ivf(x, "l2", nlist=9)  # more lists than distinct points: some stay empty
    assert index.stats()["empty_lists"] > 0
    xq = distinct + 0.01
    D, I = search_ivf(index, x, xq, 30, nprobe=9)
    # float64 brute force, ties to the lower position
    d64 = ((x[None].astype(np.float64) - xq[:, None].astype(np.float64)) ** 2).sum(-1)
    expect = np.lexsort((np.broadcast_to(np.arange(len(x)), d64.shape), d64), axis=1)[:, :30]
    np.testing.assert_array_equal(I, expect)
    np.testing.assert_array_equal(D, exact_distances(xq, x[expect], "l2"))


def test_stats_are_consistent():
    xb, _ = data("l2", n=4000)
    sizes = {}
    for codec in idcodec.CODEC_NAMES:
        s = build_ivf(xb, "l2", nlist=50, codec=codec).stats()
        sizes[codec] = s["bits_per_id"]
        assert s["codec"] == codec and s["n"] == 4000 and s["nlist"] == 50
        assert s["bits_per_id"] >= s["bound_bits_per_id"] >= s["partition_bound_bits_per_id"] > 0
        assert s["raw_bits_per_id"] == 32.0
        assert s["list_size_min"] <= s["list_size_median"] <= s["list_size_max"]
        assert s["imbalance_factor"] >= 1.0
        assert s["elias_fano_bits_per_id"] < 32.0
    assert sizes["raw"] == 32.0
    assert sizes["ans"] < sizes["elias-fano"] < sizes["raw"]


def test_imbalance_factor_uses_the_faiss_definition():
    xb, _ = data("l2", n=1000)
    index = build_ivf(xb, "l2", nlist=10)
    s = index.list_sizes.astype(np.float64)
    assert index.stats()["imbalance_factor"] == pytest.approx(10 * (s**2).sum() / s.sum() ** 2)


def test_corrupt_posting_list_is_reported(small_l2):
    xb, xq, index = small_l2
    blob = index.blob.copy()
    blob[len(blob) // 2] ^= 0xFF
    bad = dataclasses.replace(index, blob=blob)
    with pytest.raises(CorruptIndexError):
        search_ivf(bad, xb, xq, 10, nprobe=index.nlist)


def test_inconsistent_arrays_are_refused(small_l2):
    _, _, index = small_l2
    with pytest.raises(CorruptIndexError):
        dataclasses.replace(index, offsets=index.offsets[:-1])
    with pytest.raises(CorruptIndexError):
        dataclasses.replace(index, universe=index.universe + 1)


def test_bad_arguments_raise_invalid_input(small_l2):
    xb, xq, index = small_l2
    with pytest.raises(InvalidInputError):
        search_ivf(index, xb, xq[:, :5], 10)
    with pytest.raises(InvalidInputError):
        search_ivf(index, xb[:10], xq, 10)
    with pytest.raises(InvalidInputError):
        search_ivf(index, xb, xq, 10, nprobe=0)
    with pytest.raises(InvalidInputError):
        search_ivf(index, xb, xq, -1)
    with pytest.raises(InvalidInputError):
        search_ivf(index, xb, xq, 10, allowed=np.ones(5, dtype=bool))
    with pytest.raises(InvalidInputError):
        build_ivf(xb, "hamming")
    with pytest.raises(InvalidInputError):
        build_ivf(xb, "l2", codec="zip")
    with pytest.raises(InvalidInputError):
        build_ivf(xb[:0], "l2")


def test_progress_reaches_total():
    xb, _ = data("l2", n=1000)
    calls = []
    build_ivf(xb, "l2", nlist=10, progress=lambda done, total: calls.append((done, total)))
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[0][0] == 0 and calls[-1][0] == calls[-1][1]


def test_default_nprobe_rule():
    assert default_nprobe(1) == 1
    assert all(1 <= default_nprobe(n) <= n for n in range(1, 5000, 37))
    assert default_nprobe(400) >= 20


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 120),
    k=st.integers(1, 12),
    nprobe=st.integers(1, 8),
    keep=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
    metric=st.sampled_from(["l2", "cosine", "dot"]),
)
def test_results_are_valid_exact_distances_of_allowed_rows(n, k, nprobe, keep, seed, metric):
    rng = np.random.default_rng(seed)
    xb = rng.integers(-3, 4, size=(n, 4)).astype(np.float32)  # small integers: many ties
    xb[np.all(xb == 0, axis=1)] = 1.0
    if metric == "cosine":
        xb = normalize_rows(xb)
    xq = prepare_queries(rng.integers(-3, 4, size=(5, 4)).astype(np.float32) + 0.5, metric)
    index = build_ivf(xb, metric, nlist=min(n, 6), seed=seed)
    allowed = rng.random(n) < keep
    D, I = search_ivf(index, xb, xq, k, nprobe=nprobe, allowed=allowed)
    expect = min(k, int(allowed.sum()))
    assert (I[:, :expect] >= 0).all() and (I[:, expect:] == -1).all()
    assert allowed[I[:, :expect]].all()
    for row in I:
        assert len(set(row[row >= 0].tolist())) == (row >= 0).sum()
    De, _ = knn(xq, xb, k, metric, allowed=allowed)
    # Every result carries its exact distance, so the k-th can only be worse than exact.
    assert (D[:, :expect] >= De[:, :expect]).all()
    assert (np.diff(D[:, :expect], axis=1) >= 0).all()
    full, _ = knn(xq, xb, n, metric)
    assert isinstance(index, IvfIndex)
    assert np.isin(D[:, :expect], full).all()
