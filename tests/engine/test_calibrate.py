"""Calibration of an index's default search effort, and the leave-one-out search it uses."""

import numpy as np
import pytest

from tidepool_cli.engine.calibrate import calibrate, geometric_ladder
from tidepool_cli.engine.topk import knn


@pytest.mark.parametrize("start, stop", [(1, 1), (4, 5), (16, 512), (4, 2498)])
def test_geometric_ladder_covers_the_range_in_small_steps(start, stop):
    lad = geometric_ladder(start, stop)
    assert lad[0] == start and lad[-1] == stop
    assert all(b > a for a, b in zip(lad, lad[1:]))
    assert all(b <= max(a + 1, round(a * 1.25)) for a, b in zip(lad, lad[1:]))


def _degraded_search(x, good_from):
    """Exact search for settings >= good_from; below it, each query misses its nearest other row."""

    def search(xq, k, setting, rows):
        D, I = knn(xq, x, k + 1, "l2")
        keep = np.arange(k + 1) != (1 if setting < good_from else k)
        return D[:, keep], I[:, keep]

    return search


def test_calibrate_picks_the_smallest_setting_that_reaches_the_target():
    x = np.random.default_rng(0).standard_normal((2000, 8)).astype(np.float32)
    cal = calibrate(_degraded_search(x, 24), x, "l2", [8, 16, 24, 32], target=0.95, sample=100)
    assert (cal.setting, cal.recall) == (24, 1.0)
    # The curve keeps every setting measured, up to the first that reaches the top recall.
    assert [p.setting for p in cal.curve] == [8, 16, 24]
    assert np.allclose([p.recall for p in cal.curve], [0.9, 0.9, 1.0])
    assert all([b for b, _ in p.seconds] == [1, 100, 2000] and all(t > 0 for _, t in p.seconds) for p in cal.curve + [cal.exact])


def test_calibrate_curve_continues_past_the_target_up_to_the_top():
    x = np.random.default_rng(2).standard_normal((2000, 8)).astype(np.float32)
    cal = calibrate(_degraded_search(x, 24), x, "l2", [8, 16, 24, 32], target=0.85, sample=100)
    assert cal.setting == 8 and [p.setting for p in cal.curve] == [8, 16, 24]


def test_calibrate_falls_back_to_the_largest_setting():
    x = np.random.default_rng(1).standard_normal((2000, 8)).astype(np.float32)
    cal = calibrate(_degraded_search(x, 99), x, "l2", [8, 16], target=0.95, sample=100)
    assert cal.setting == 16 and cal.recall < 0.95 and len(cal.curve) == 2
