"""No kernel writes into an array it did not allocate: read-only inputs through every path.

Queries, vectors, norms, masks and index arrays arrive as read-only memmaps (mode 'r')
in every shape class that changes how a kernel slices its work: one query, exactly the
height of a serial GEMM slice, multiples of it, one more and one less, and a 4096-d index.
"""

import numpy as np
import pytest

from tidepool_cli.engine import ivf
from tidepool_cli.engine.distances import sqnorms
from tidepool_cli.engine.hnsw import HnswGraph, build_hnsw, search_hnsw
from tidepool_cli.engine.topk import knn


def read_only(tmp_path, name, a):
    """``a`` as a read-only memmap (writing to it raises ValueError)."""
    path = tmp_path / f"{name}.npy"
    np.save(path, np.ascontiguousarray(a))
    out = np.load(path, mmap_mode="r")
    assert not out.flags.writeable
    return out


def frozen(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


def slice_height(d, nlist):
    """Rows per serial GEMM slice of the probe product (queries x centroids)."""
    return max(1, ivf.SERIAL_GEMM_MNK // (d * nlist))


@pytest.fixture(scope="module", params=[(16, 2000, 64), (4096, 300, 8)], ids=["16d", "4096d"])
def indexed(request, tmp_path_factory):
    d, n, nlist = request.param
    tmp = tmp_path_factory.mktemp(f"ro{d}")
    rng = np.random.default_rng(d)
    xb = rng.normal(size=(n, d)).astype(np.float32)
    index = ivf.build_ivf(xb, "l2", nlist=nlist, codec="raw")
    graph = build_hnsw(xb, "l2", m=8, ef_construction=40)
    arrays = ("centroids", "list_sizes", "blob", "offsets", "crcs")
    index = ivf.IvfIndex(
        metric=index.metric, codec=index.codec, universe=index.universe,
        **{f: read_only(tmp, f"ivf-{f}", getattr(index, f)) for f in arrays},
    )
    graph = HnswGraph(
        m=graph.m, ef_construction=graph.ef_construction, metric=graph.metric, entry_point=graph.entry_point,
        levels=read_only(tmp, "levels", graph.levels), layer0=read_only(tmp, "layer0", graph.layer0),
        upper_nodes=tuple(frozen(a) for a in graph.upper_nodes),
        upper_neighbors=tuple(frozen(a) for a in graph.upper_neighbors),
    )
    return tmp, xb, index, graph, slice_height(d, nlist)


def test_every_path_accepts_read_only_inputs_of_every_shape(indexed):
    tmp, xb_mem, index, graph, h = indexed
    xb = read_only(tmp, "xb", xb_mem)
    sq = read_only(tmp, "sq", sqnorms(xb_mem))
    allowed = read_only(tmp, "allowed", np.arange(len(xb)) % 4 != 0)
    rng = np.random.default_rng(1)
    sizes = sorted({1, max(1, h - 1), h, h + 1, 2 * h, 3 * h})
    assert h > 1
    for nq in sizes:
        xq = read_only(tmp, f"q{nq}", rng.normal(size=(nq, xb.shape[1])).astype(np.float32))
        D0, I0 = knn(xq, xb, 5, "l2", xb_sqnorms=sq)
        assert I0.shape == (nq, 5) and (I0 >= 0).all()
        Df, If = knn(xq, xb, 5, "l2", xb_sqnorms=sq, allowed=allowed)
        assert np.asarray(allowed)[If].all()
        for kw in ({}, {"allowed": allowed}):
            D, I = ivf.search_ivf(index, xb, xq, 5, nprobe=index.nlist, xb_sqnorms=sq, **kw)
            np.testing.assert_array_equal(I, If if kw else I0)
            D, I = search_hnsw(graph, xb, xq, 5, ef_search=32, xb_sqnorms=sq, filter_exact_below=0.0, **kw)
            assert I.shape == (nq, 5) and (I >= 0).all()
        # The same with writeable=False arrays (not memmaps) and no norms given.
        fq = frozen(xq)
        ivf.search_ivf(index, frozen(xb_mem), fq, 3, nprobe=2)
        search_hnsw(graph, frozen(xb_mem), fq, 3)
        knn(fq, frozen(xb_mem), 3, "l2")
