"""HNSW and IVF sidecars through the ops layer: planner, filters, compaction, damage, rebuilds."""

import json

import numpy as np
import pytest

from tidepool_cli.engine.distances import normalize_rows
from tidepool_cli.engine.hnsw import DEFAULT_EF_SEARCH
from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.engine.topk import knn
from tidepool_cli.ops.build_hnsw import build_hnsw
from tidepool_cli.ops.build_ivf import build_ivf
from tidepool_cli.ops.compact import MERGE_FACTOR, compact
from tidepool_cli.ops.delete import delete
from tidepool_cli.ops.indexing import build_indexes
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.planner import SearchParams
from tidepool_cli.ops.query import Searcher, query
from tidepool_cli.ops.stats import stats
from tidepool_cli.storage.container import open_container
from tidepool_cli.storage.sidecars import write_hnsw


def compacted_index(tmp_path, xb, metric="l2"):
    """An index holding ``xb`` (ids = positions) as one compacted segment."""
    np.save(tmp_path / "base.npy", xb)
    idx = tmp_path / "idx"
    ingest(idx, tmp_path / "base.npy", metric=metric)
    compact(idx)
    return idx


@pytest.fixture(scope="module")
def sift_index(tmp_path_factory, siftsmall):
    """siftsmall with an attribute ``bucket = row % 200``, compacted, with HNSW and IVF sidecars."""
    xb, xq, gt, _ = siftsmall
    d = tmp_path_factory.mktemp("sift")
    with open(d / "base.jsonl", "w") as f:
        for i, v in enumerate(xb):
            f.write(json.dumps({"id": i, "vector": v.tolist(), "attributes": {"bucket": i % 200}}) + "\n")
    idx = d / "idx"
    ingest(idx, d / "base.jsonl")
    compact(idx)
    res = build_hnsw(idx, min_rows=0)
    assert res.built == ["seg-000001"]
    assert build_hnsw(idx, min_rows=0).built == []  # re-running is a no-op
    assert build_ivf(idx, min_rows=0).built == ["seg-000001"]
    return idx


def test_default_hnsw_and_ivf_meet_recall_on_siftsmall(sift_index, siftsmall):
    xb, xq, gt, _ = siftsmall
    s = Searcher(sift_index)
    out = s.search(xq, 10)
    assert out.paths["seg-000001"] in ("hnsw", "ivf", "exact")
    assert recall_at_k(np.array(out.ids), gt, 10) >= 0.95
    out = Searcher(sift_index, params=SearchParams(ef_search=64)).search(xq, 10)
    assert out.paths == {"seg-000001": "hnsw"} and recall_at_k(np.array(out.ids), gt, 10) >= 0.95
    out = Searcher(sift_index, params=SearchParams(nprobe=64)).search(xq, 10)
    assert out.paths == {"seg-000001": "ivf"} and recall_at_k(np.array(out.ids), gt, 10) >= 0.95
    exact = Searcher(sift_index, params=SearchParams(exact=True)).search(xq, 10)
    assert exact.paths == {"seg-000001": "exact"} and recall_at_k(np.array(exact.ids), gt, 10) == 1.0


@pytest.mark.parametrize("expr, fraction", [("bucket < 100", 0.5), ("bucket < 10", 0.05), ("bucket = 7", 0.005)])
def test_filtered_queries_keep_recall_and_never_return_fewer_than_k(sift_index, siftsmall, expr, fraction):
    xb, xq, _, _ = siftsmall
    mask = {0.5: np.arange(len(xb)) % 200 < 100, 0.05: np.arange(len(xb)) % 200 < 10, 0.005: np.arange(len(xb)) % 200 == 7}[fraction]
    assert abs(mask.mean() - fraction) < 1e-9
    _, truth = knn(xq, xb, 10, "l2", allowed=mask)
    out = Searcher(sift_index, filter=expr).search(xq, 10)
    assert all(len(ids) == 10 for ids in out.ids)
    assert all(mask[i] for ids in out.ids for i in ids)
    assert recall_at_k(np.array(out.ids), truth, 10) >= 0.95
    if fraction < 0.01:  # 50 allowed rows: scanning them beats any index by the cost model
        assert out.paths == {"seg-000001": "exact-filtered"}
    forced = Searcher(sift_index, filter=expr, params=SearchParams(ef_search=32)).search(xq, 10)
    assert forced.paths == {"seg-000001": "hnsw"} and all(len(ids) == 10 for ids in forced.ids)
    assert all(mask[i] for ids in forced.ids for i in ids)
    assert recall_at_k(np.array(forced.ids), truth, 10) >= 0.9


def test_deletes_keep_the_graph_and_are_never_returned(tmp_path, siftsmall):
    xb, xq, gt, _ = siftsmall
    idx = compacted_index(tmp_path, xb)
    build_hnsw(idx, min_rows=0)
    gone = np.unique(gt[:, :3])
    delete(idx, [str(i) for i in gone])
    for phase in ("wal", "deletion vector"):
        out = Searcher(idx, params=SearchParams(ef_search=32)).search(xq, 10)
        assert out.paths["seg-000001"] == "hnsw"
        assert not set(gone) & {i for ids in out.ids for i in ids}, phase
        alive = np.ones(len(xb), bool)
        alive[gone] = False
        _, truth = knn(xq, xb, 10, "l2", allowed=alive)
        assert recall_at_k(np.array(out.ids), truth, 10) >= 0.95
        compact(idx)
    assert "hnsw" in stats(idx).segments[0].indexes  # a deletion vector does not invalidate the graph


def test_merged_segments_lose_their_graphs_and_stay_correct(tmp_path):
    rng = np.random.default_rng(3)
    idx = tmp_path / "idx"
    parts = []
    for i in range(MERGE_FACTOR):
        x = rng.normal(size=(300, 8)).astype(np.float32)
        parts.append(x)
        np.save(tmp_path / f"{i}.npy", x)
        ingest(idx, tmp_path / f"{i}.npy")
        if i < MERGE_FACTOR - 1:
            compact(idx)
            build_hnsw(idx, min_rows=0)
    assert sum("hnsw" in s.indexes for s in stats(idx).segments) == MERGE_FACTOR - 1
    compact(idx)  # the fourth small segment completes a tier: all merge into one
    segs = stats(idx).segments
    assert len(segs) == 1 and segs[0].indexes == {}
    q = rng.normal(size=(20, 8)).astype(np.float32)
    _, truth = knn(q, np.concatenate(parts), 10, "l2")
    assert np.array(query(idx, q, 10).ids).tolist() == truth.tolist()


def test_damaged_graph_falls_back_to_exact_with_a_warning(tmp_path, siftsmall):
    xb, xq, gt, _ = siftsmall
    idx = compacted_index(tmp_path, xb)
    build_hnsw(idx, min_rows=0)
    hnsw_file = next((idx / "segments").glob("*.hnsw"))
    layer0 = open_container(hnsw_file, "g", b"HNSW", 1).sections["layer0"]
    raw = bytearray(hnsw_file.read_bytes())
    raw[layer0.offset + layer0.nbytes // 2] ^= 0xFF  # inside the layer-0 neighbour array
    hnsw_file.write_bytes(bytes(raw))
    warnings = []
    out = query(idx, xq, 10, params=SearchParams(ef_search=32), warn=warnings.append)  # the graph is asked for
    assert out.paths == {"seg-000001": "exact"} and recall_at_k(np.array(out.ids), gt, 10) == 1.0
    assert len(warnings) == 1 and hnsw_file.name in warnings[0] and "exact search" in warnings[0]
    assert any("hnsw" in p for p in stats(idx, verify=True).problems)


def test_a_build_racing_a_merge_drops_its_index(tmp_path):
    rng = np.random.default_rng(4)
    idx = tmp_path / "idx"
    for i in range(MERGE_FACTOR - 1):
        np.save(tmp_path / f"{i}.npy", rng.normal(size=(100, 4)).astype(np.float32))
        ingest(idx, tmp_path / f"{i}.npy")
        compact(idx)
    np.save(tmp_path / "last.npy", rng.normal(size=(100, 4)).astype(np.float32))
    ingest(idx, tmp_path / "last.npy")

    def build_then_merge(seg, metric, progress):
        from tidepool_cli.engine.hnsw import build_hnsw as build_graph

        ref = write_hnsw(seg.layout, seg.entry, build_graph(seg.vectors, metric), {})
        if seg.name == "seg-000001":
            compact(idx)  # meanwhile, a compaction merges every segment away
        return ref

    res = build_indexes(idx, "hnsw", build_then_merge, force=False, min_rows=0, lock_timeout=5)
    assert res.built == [] and len(res.dropped) == MERGE_FACTOR - 1
    assert not list((idx / "segments").glob("*.hnsw"))  # the orphaned sidecars were removed
    assert [s.indexes for s in stats(idx).segments] == [{}]


def test_calibrated_defaults_meet_recall_on_a_set_where_fixed_defaults_miss(tmp_path, glove):
    """On glove the engine's fixed ef_search gives poor recall; each index's calibrated default must not."""
    xb, xq, _, _ = glove
    xb, xq = xb[:30_000], xq[:500]
    _, truth = knn(normalize_rows(xq), normalize_rows(xb), 10, "cosine")
    idx = compacted_index(tmp_path, xb, metric="cosine")

    build_ivf(idx, min_rows=0)
    nprobe = stats(idx).segments[0].indexes["ivf"]["nprobe"]
    out = Searcher(idx, params=SearchParams(nprobe=nprobe)).search(xq, 10)  # the stored default
    assert out.paths == {"seg-000001": "ivf"} and recall_at_k(np.array(out.ids), truth, 10) >= 0.95
    assert recall_at_k(np.array(Searcher(idx).search(xq, 10).ids), truth, 10) >= 0.95

    build_hnsw(idx, min_rows=0)
    hnsw = stats(idx).segments[0].indexes["hnsw"]
    assert hnsw["ef_search"] > DEFAULT_EF_SEARCH and hnsw["calibrated_recall"] >= 0.95
    fixed = Searcher(idx, params=SearchParams(ef_search=DEFAULT_EF_SEARCH)).search(xq, 10)
    out = Searcher(idx, params=SearchParams(ef_search=hnsw["ef_search"])).search(xq, 10)
    assert out.paths == {"seg-000001": "hnsw"}
    assert recall_at_k(np.array(out.ids), truth, 10) >= 0.95
    assert recall_at_k(np.array(Searcher(idx).search(xq, 10).ids), truth, 10) >= 0.95
    assert recall_at_k(np.array(out.ids), truth, 10) > recall_at_k(np.array(fixed.ids), truth, 10)
