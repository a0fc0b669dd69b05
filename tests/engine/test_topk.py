"""Exact top-k kernel against a float64 brute force, on ties, masks and every metric."""

import numpy as np
import pytest

from tidepool_cli.engine.distances import normalize_rows, prepare_queries
from tidepool_cli.engine.topk import knn


def brute_force(xq, xb, k, metric, allowed=None):
    q, b = xq.astype(np.float64), xb.astype(np.float64)
    if metric == "l2":
        D = ((q[:, None, :] - b[None]) ** 2).sum(-1)
    elif metric == "cosine":
        D = 1 - q @ b.T
    else:
        D = -(q @ b.T)
    if allowed is not None:
        D[:, ~allowed] = np.inf
    pos = np.broadcast_to(np.arange(len(xb)), D.shape)
    I = np.lexsort((pos, D), axis=1)[:, :k]
    Dk = np.take_along_axis(D, I, 1)
    I = np.where(np.isinf(Dk), -1, I)
    pad = k - Dk.shape[1]
    if pad > 0:
        Dk = np.pad(Dk, ((0, 0), (0, pad)), constant_values=np.inf)
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
    return Dk, I


@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
@pytest.mark.parametrize("n", [1, 17, 9000, 20000])
@pytest.mark.parametrize("mask_fraction", [None, 0.5, 0.1])
def test_knn_matches_brute_force_with_ties(metric, n, mask_fraction):
    rng = np.random.default_rng(n)
    # Small integer coordinates make many exactly tied distances.
    xb = rng.integers(0, 8, (n, 12)).astype(np.float32)
    xq = rng.integers(0, 8, (7, 12)).astype(np.float32)
    if metric == "cosine":
        xb = normalize_rows(xb + 0.5)
        xq += 0.5
    xq = prepare_queries(xq, metric)
    allowed = None if mask_fraction is None else rng.random(n) < mask_fraction
    for k in (1, 10, 40):
        D, I = knn(xq, xb, k, metric, allowed=allowed)
        Db, Ib = brute_force(xq, xb, k, metric, allowed)
        np.testing.assert_allclose(D, Db, rtol=1e-4, atol=1e-3)
        if metric == "l2":  # integer data: exact distances, so ties must break by position
            np.testing.assert_array_equal(I, Ib)
        assert ((I == -1) == np.isinf(D)).all()


def test_knn_returns_padding_when_fewer_rows_than_k():
    xb = np.eye(3, dtype=np.float32)
    D, I = knn(np.zeros((2, 3), np.float32), xb, 5, "l2")
    assert (I[:, :3] >= 0).all() and (I[:, 3:] == -1).all()
    assert np.isinf(D[:, 3:]).all()


def test_knn_with_everything_masked_returns_nothing():
    xb = np.ones((100, 4), np.float32)
    D, I = knn(np.ones((1, 4), np.float32), xb, 3, "l2", allowed=np.zeros(100, bool))
    assert (I == -1).all() and np.isinf(D).all()


def test_knn_exact_on_siftsmall(siftsmall):
    xb, xq, gt, gt_dist = siftsmall
    D, I = knn(xq, xb, 10, "l2")
    np.testing.assert_array_equal(I, gt[:, :10])
    np.testing.assert_allclose(D, gt_dist[:, :10], rtol=1e-6)


@pytest.mark.parametrize("n, k", [(1000, 65), (300, 250), (5000, 100)])
def test_knn_with_k_large_relative_to_n(n, k):
    rng = np.random.default_rng(k)
    xb = rng.integers(0, 50, (n, 6)).astype(np.float32)
    xq = rng.integers(0, 50, (40, 6)).astype(np.float32)
    D, I = knn(xq, xb, k, "l2")
    Db, Ib = brute_force(xq, xb, k, "l2")
    np.testing.assert_array_equal(I, Ib)
    np.testing.assert_allclose(D, Db, rtol=1e-6)


def test_few_queries_over_duplicates_break_ties_by_position():
    xb = np.repeat(np.arange(5, dtype=np.float32)[:, None], 80, axis=0) * np.ones((1, 3), np.float32)
    xb = np.concatenate([xb, xb])  # 800 rows, 5 distinct vectors, 160 copies each
    xq = np.array([[0.2, 0.2, 0.2], [3.9, 4.0, 4.0]], np.float32)
    for k in (1, 10, 100):
        D, I = knn(xq, xb, k, "l2")
        Db, Ib = brute_force(xq, xb, k, "l2")
        np.testing.assert_array_equal(I, Ib)
