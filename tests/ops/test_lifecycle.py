"""Ingest, upsert, delete, compact and query through the Python API, checked against brute force."""

import json

import numpy as np
import pytest

from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.engine.topk import knn
from tidepool_cli.errors import FilterSyntaxError, InvalidInputError
from tidepool_cli.ops.compact import MERGE_FACTOR, compact, plan_merges
from tidepool_cli.ops.delete import delete
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.query import query
from tidepool_cli.ops.stats import stats


def _npy(tmp_path, name, arr):
    p = tmp_path / name
    np.save(p, arr)
    return p


def _jsonl(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_siftsmall_exact_recall_is_one_before_and_after_compaction(tmp_path, siftsmall):
    xb, xq, gt, gt_dist = siftsmall
    idx = tmp_path / "idx"
    res = ingest(idx, _npy(tmp_path, "base.npy", xb))
    assert (res.rows, res.first_id, res.last_id, res.created) == (10000, 0, 9999, True)
    for phase in ("wal", "segment"):
        out = query(idx, xq, 10)
        ids = np.array(out.ids)
        assert recall_at_k(ids, gt, 10) == 1.0, phase
        np.testing.assert_allclose(out.distances, gt_dist[:, :10], rtol=1e-6)
        compact(idx)


def test_fashion_mnist_exact_recall(tmp_path, fashion_mnist):
    xb, xq, gt, gt_dist = fashion_mnist
    idx = tmp_path / "idx"
    ingest(idx, _npy(tmp_path, "base.npy", xb.astype(np.uint8)))  # integer input is converted
    compact(idx)
    out = query(idx, xq[:300], 10)
    assert recall_at_k(np.array(out.ids), gt[:300], 10, found_dist=out.distances, gt_dist=gt_dist[:300]) == 1.0


@pytest.mark.parametrize("fmt", ["fvecs", "bvecs"])
def test_vecs_formats_and_auto_ids_continue(tmp_path, fmt):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (50, 16)).astype(np.uint8 if fmt == "bvecs" else np.float32)
    path = tmp_path / f"x.{fmt}"
    dims = np.full((50, 1), 16, np.int32)
    if fmt == "bvecs":
        path.write_bytes(np.hstack([dims.view(np.uint8), x]).tobytes())
    else:
        path.write_bytes(np.hstack([dims.view(np.float32), x]).tobytes())
    idx = tmp_path / "idx"
    assert ingest(idx, path).last_id == 49
    again = ingest(idx, path)
    assert (again.first_id, again.last_id) == (50, 99)
    out = query(idx, x[:3].astype(np.float32), 2)
    # Both copies of each row are at distance 0; ties break by the lower id.
    assert [r[:2] for r in out.ids] == [[0, 50], [1, 51], [2, 52]]


def test_upsert_delete_read_your_writes_and_compaction(tmp_path):
    idx = tmp_path / "idx"
    rows = [{"id": i, "vector": [float(i), 0.0], "attributes": {"tag": "a" if i % 2 else "b", "n": i}} for i in range(10)]
    ingest(idx, _jsonl(tmp_path, "a.jsonl", rows))
    compact(idx)
    # Upsert id 3 far away and give it a new attribute; delete 4 and 5 (one of them twice).
    ingest(idx, _jsonl(tmp_path, "b.jsonl", [{"id": 3, "vector": [100.0, 0.0], "attributes": {"tag": "z"}}]))
    assert delete(idx, ["4", "5", "5"]).found == 2
    expect = [0, 1, 2, 6, 7, 8, 9, 3]
    for phase in ("wal", "compacted", "compacted-again"):
        out = query(idx, np.array([[0.0, 0.0]]), 20)
        assert out.ids[0] == expect, phase
        assert out.attributes[0][-1] == {"tag": "z"}  # the replaced row's attributes are gone
        assert query(idx, np.array([[0.0, 0.0]]), 20, filter="tag = 'a'").ids[0] == [1, 7, 9]
        if phase == "compacted":
            assert compact(idx).changed is False  # a second run in a row changes nothing
        else:
            compact(idx)
    s = stats(idx)
    assert (s.live_rows, s.wal["files"]) == (8, 0)


def test_string_ids_and_filters(tmp_path):
    idx = tmp_path / "idx"
    rows = [
        {"id": f"doc-{i}", "vector": [1.0, float(i)], "attributes": {"color": ["red", "green", "blue"][i % 3], "price": i * 1.5, "stock": i % 4 == 0}}
        for i in range(30)
    ]
    ingest(idx, _jsonl(tmp_path, "a.jsonl", rows), metric="cosine")
    q = np.array([[1.0, 0.0]])
    cases = {
        "color = 'red'": {f"doc-{i}" for i in range(0, 30, 3)},
        "color in ['red', 'blue'] and price < 10": {f"doc-{i}" for i in range(30) if i % 3 != 1 and i * 1.5 < 10},
        "not (color = 'red' or stock = true)": {f"doc-{i}" for i in range(30) if i % 3 != 0 and i % 4 != 0},
        "price >= 40.5": {"doc-27", "doc-28", "doc-29"},
        "color > 'green'": {f"doc-{i}" for i in range(0, 30, 3)},
        "missing is null": set(),
    }
    for expr, expected in cases.items():
        if expr == "missing is null":
            with pytest.raises(FilterSyntaxError, match="unknown attribute"):
                query(idx, q, 30, filter=expr)
            continue
        out = query(idx, q, 30, filter=expr)
        assert set(out.ids[0]) == expected, expr
    with pytest.raises(FilterSyntaxError):
        query(idx, q, 3, filter="price < 'cheap'")
    with pytest.raises(FilterSyntaxError):
        query(idx, q, 3, filter="color = ")
    other = tmp_path / "other"
    ingest(other, _jsonl(tmp_path, "ok.jsonl", [{"id": 1, "vector": [1, 2]}]))
    with pytest.raises(InvalidInputError, match="integer ids"):
        ingest(other, _jsonl(tmp_path, "s.jsonl", [{"id": "x", "vector": [1, 2]}]))


def test_attribute_kind_conflicts_are_refused_at_ingest(tmp_path):
    idx = tmp_path / "idx"
    ingest(idx, _jsonl(tmp_path, "a.jsonl", [{"vector": [1, 2], "attributes": {"n": 1}}]))
    ingest(idx, _jsonl(tmp_path, "b.jsonl", [{"vector": [1, 2], "attributes": {"n": 2.5}}]))  # int+float mix
    with pytest.raises(InvalidInputError, match="attribute 'n'"):
        ingest(idx, _jsonl(tmp_path, "c.jsonl", [{"vector": [1, 2], "attributes": {"n": "x"}}]))
    compact(idx)
    assert stats(idx).attributes == {"n": "float"}
    out = query(idx, np.array([[1.0, 2.0]]), 5, filter="n > 1")
    assert out.ids[0] == [1]


def test_many_small_compactions_merge_to_a_fixed_point(tmp_path):
    idx = tmp_path / "idx"
    rng = np.random.default_rng(0)
    for i in range(2 * MERGE_FACTOR + 1):
        ingest(idx, _npy(tmp_path, f"{i}.npy", rng.normal(size=(20, 4)).astype(np.float32)))
        compact(idx)
    assert len(stats(idx).segments) < MERGE_FACTOR
    assert compact(idx).changed is False
    x = np.concatenate([np.load(tmp_path / f"{i}.npy") for i in range(2 * MERGE_FACTOR + 1)])
    q = rng.normal(size=(5, 4)).astype(np.float32)
    D, I = knn(q, x, 7, "l2")
    assert np.array(query(idx, q, 7).ids).tolist() == I.tolist()


def test_plan_merges_policy():
    live = {f"s{i}": 100 for i in range(MERGE_FACTOR)} | {"big": 10**6}
    dead = dict.fromkeys(live, 0) | {"big": 10**6}
    groups = plan_merges(live, dead)
    assert sorted(map(sorted, groups)) == [["big"], sorted(f"s{i}" for i in range(MERGE_FACTOR))]
    assert plan_merges({"a": 10, "b": 10}, {"a": 0, "b": 0}) == []
