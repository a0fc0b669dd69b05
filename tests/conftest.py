"""Shared fixtures: the real benchmark sets in ../shared/data, loaded once per session."""

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def load_dataset(name: str):
    """(base float32, queries float32, gt int32, gt_dist float32) of a shared data set."""
    d = DATA / name
    if not d.exists():
        pytest.skip(f"{d} is not available")
    return (
        np.load(d / "base.npy").astype(np.float32),
        np.load(d / "queries.npy").astype(np.float32),
        np.load(d / "gt.npy"),
        np.load(d / "gt_dist.npy"),
    )


@pytest.fixture(scope="session")
def siftsmall():
    return load_dataset("siftsmall")


@pytest.fixture(scope="session")
def fashion_mnist():
    return load_dataset("fashion-mnist")


@pytest.fixture(scope="session")
def glove():
    return load_dataset("glove-50-angular")
