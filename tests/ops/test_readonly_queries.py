"""Queries read from a .npy file arrive as read-only memmaps: every access path takes them."""

import numpy as np

from tidepool_cli.engine import ivf
from tidepool_cli.engine.topk import knn
from tidepool_cli.ops.build_hnsw import build_hnsw
from tidepool_cli.ops.build_ivf import build_ivf
from tidepool_cli.ops.compact import compact
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.planner import SearchParams
from tidepool_cli.ops.query import query_file


def test_query_file_of_slice_multiples_through_hnsw_ivf_and_exact(tmp_path):
    rng = np.random.default_rng(0)
    xb = rng.normal(size=(3000, 16)).astype(np.float32)
    np.save(tmp_path / "base.npy", xb)
    idx = tmp_path / "idx"
    ingest(idx, tmp_path / "base.npy")
    compact(idx)
    build_hnsw(idx, min_rows=0)
    build_ivf(idx, min_rows=0, nlist=64)
    height = ivf.SERIAL_GEMM_MNK // (16 * 64)  # rows per serial slice of the probe GEMM
    for nq in (1, height, 2 * height, height + 1):
        xq = rng.normal(size=(nq, 16)).astype(np.float32)
        np.save(tmp_path / "q.npy", xq)
        _, truth = knn(xq, xb, 10, "l2")
        for params, path in ((SearchParams(), "hnsw"), (SearchParams(nprobe=64), "ivf"), (SearchParams(exact=True), "exact")):
            out = list(query_file(idx, tmp_path / "q.npy", 10, params=params))
            assert [r.paths for r in out] == [{"seg-000001": path}] * len(out)
            ids = np.concatenate([np.array(r.ids) for r in out])
            assert ids.shape == (nq, 10)
            if path != "hnsw":
                np.testing.assert_array_equal(ids, truth)
