"""k-means determinism and quality; recall@k definition."""

import numpy as np

from tidepool_cli.engine.kmeans import assign, kmeans
from tidepool_cli.engine.recall import recall_at_k


def test_kmeans_recovers_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 16)).astype(np.float32) * 20
    x = (centers[rng.integers(0, 8, 4000)] + rng.normal(size=(4000, 16))).astype(np.float32)
    c1 = kmeans(x, 8, seed=3)
    c2 = kmeans(x, 8, seed=3)
    np.testing.assert_array_equal(c1, c2)
    # Every true center has a learned centroid within noise distance.
    d = ((centers[:, None, :] - c1[None]) ** 2).sum(-1).min(1)
    assert (d < 1.0).all()
    labels, dist = assign(x, c1, "l2")
    assert np.bincount(labels, minlength=8).min() > 300
    assert (dist >= 0).all()


def test_kmeans_repairs_empty_clusters_on_duplicate_heavy_data():
    x = np.repeat(np.arange(4, dtype=np.float32)[:, None], 50, axis=0) * np.ones((1, 3), np.float32)
    c = kmeans(x, 6, seed=1)
    labels, _ = assign(x, c, "l2")
    assert len(np.unique(labels)) == 4  # one cluster per distinct point


def test_cosine_kmeans_gives_unit_centroids():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = kmeans(x, 5, metric="cosine", seed=0)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, rtol=1e-5)


def test_recall_counts_ties_as_hits():
    gt = np.array([[0, 1, 2]])
    gt_dist = np.array([[1.0, 2.0, 3.0]])
    assert recall_at_k(np.array([[0, 1, 5]]), gt, 3) == 2 / 3
    # id 5 is at the same distance as the 3rd true neighbour: a tie, so a hit.
    assert recall_at_k(np.array([[0, 1, 5]]), gt, 3, found_dist=np.array([[1.0, 2.0, 3.0]]), gt_dist=gt_dist) == 1.0
    assert recall_at_k(np.array([[0, -1, -1]]), gt, 3) == 1 / 3
