"""Helpers shared by the bench scripts: where the reference data lives, timing, loading.

Each script pins OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before NumPy loads, then imports
this module.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.distances import normalize_rows

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The reference data sets with exact ground truth (../shared/data beside the clone)."""


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """(median seconds over ``repeats`` calls of ``fn``, the last call's result)."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """(base (n, d) float32, queries (nq, d) float32, gt ids, gt distances, metric) of a set.

    Angular sets come back as unit rows with the cosine metric (1 - cos, as in gt_dist).
    """
    d = DATA / name
    xb = np.load(d / "base.npy").astype(np.float32)
    xq = np.load(d / "queries.npy").astype(np.float32)
    gt, gt_dist = np.load(d / "gt.npy"), np.load(d / "gt_dist.npy")
    if json.loads((d / "meta.json").read_text())["metric"] == "angular":
        return normalize_rows(xb), normalize_rows(xq), gt, gt_dist, "cosine"
    return np.ascontiguousarray(xb), np.ascontiguousarray(xq), gt, gt_dist, "l2"
