"""``tidepool quantize`` through the ops layer and the CLI: lifecycle, damage, bad input."""

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from tidepool_cli.cli.app import app
from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.compact import compact
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.quantize import quantize
from tidepool_cli.ops.stats import stats
from tidepool_cli.storage.container import open_container
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import read_current
from tidepool_cli.storage.sidecars import open_sidecar

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def snapshot(root):
    """Content of every file of an index except LOCK."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f != "LOCK":
                p = os.path.join(dirpath, f)
                out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


@pytest.fixture()
def sift_idx(tmp_path, siftsmall):
    xb = siftsmall[0]
    np.save(tmp_path / "base.npy", xb)
    idx = tmp_path / "idx"
    ingest(idx, tmp_path / "base.npy")
    compact(idx)
    return idx


def codes_ref(idx):
    layout = Layout(idx)
    entry = read_current(layout).segments[0]
    return layout, entry, entry.indexes["codes"]


def test_lifecycle_quantize_verify_rerun_force(sift_idx, siftsmall):
    xb = siftsmall[0]
    res = quantize(sift_idx, codec="sq8", seed=3)
    assert res.kind == "codes" and len(res.built) == 1
    seg = res.segments[0]
    assert seg["codec"] == "sq8" and seg["bytes_per_vector"] == 128 + 12
    assert seg["code_bytes"] == xb.shape[0] * 140
    assert 0 < seg["rel_mse"] < 1e-3

    st = stats(sift_idx, verify=True)
    assert st.problems == []
    info = st.segments[0].indexes["codes"]
    assert info["codec"] == "sq8" and info["rel_mse"] == seg["rel_mse"]

    # the stored codes decode to the vectors, and the sidecar carries the trained quantizer
    layout, entry, _ = codes_ref(sift_idx)
    qc = open_sidecar(layout, entry, "codes", verify="all")
    assert qc.codes.shape == (xb.shape[0], 128) and qc.factors.shape == (xb.shape[0], 3)
    err = np.sum((qc.quantizer.decode(np.asarray(qc.codes[:500]), np.asarray(qc.factors[:500])) - xb[:500]) ** 2)
    assert err / np.sum(xb[:500].astype(np.float64) ** 2) < 1e-3

    before = snapshot(sift_idx)
    again = quantize(sift_idx, codec="sq8", seed=3)
    assert again.built == [] and again.already_indexed == [entry.name]
    assert snapshot(sift_idx) == before

    forced = quantize(sift_idx, codec="pq", m=16, nbits=8, force=True)
    assert forced.built == [entry.name]
    _, entry2, ref2 = codes_ref(sift_idx)
    assert ref2.params["codec"] == "pq" and ref2.params["m"] == 16 and ref2.params["bytes_per_vector"] == 16 + 12
    assert stats(sift_idx, verify=True).problems == []


def test_same_seed_gives_identical_codes(tmp_path, siftsmall):
    xb = siftsmall[0][:3000]
    files = []
    for name in ("a", "b"):
        np.save(tmp_path / "base.npy", xb)
        ingest(tmp_path / name, tmp_path / "base.npy")
        compact(tmp_path / name)
        quantize(tmp_path / name, codec="rabitq", nbits=2, seed=7, train_rows=1000)
        layout, entry, _ = codes_ref(tmp_path / name)
        qc = open_sidecar(layout, entry, "codes", verify="all")
        files.append((np.array(qc.codes), np.array(qc.factors)))
    assert np.array_equal(files[0][0], files[1][0]) and np.array_equal(files[0][1], files[1][1])


def test_corrupted_codes_are_reported_by_verify_and_repaired_by_a_rerun(sift_idx):
    quantize(sift_idx, codec="sq8")
    layout, entry, ref = codes_ref(sift_idx)
    path = layout.path(ref.path)
    c = open_container(path, ref.path, b"QCOD", 1, verify="all")
    off = c.sections["codes"].offset + 1000
    data = bytearray(path.read_bytes())
    data[off] ^= 0xFF
    path.write_bytes(bytes(data))
    problems = stats(sift_idx, verify=True).problems
    assert any("codes" in p and ref.path in p for p in problems), problems
    res = quantize(sift_idx, codec="sq8")
    assert res.repaired == [entry.name]
    assert stats(sift_idx, verify=True).problems == []


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--codec", "zz"], 2, "codec"),
        (["--codec", "pq", "--m", "7"], 4, "m"),
        (["--codec", "pq", "--nbits", "5"], 4, "nbits"),
        (["--codec", "rabitq", "--nbits", "9"], 4, "nbits"),
        (["--codec", "sq8", "--nbits", "4"], 4, "nbits"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_index_unchanged(sift_idx, args, code, needle):
    before = snapshot(sift_idx)
    r = cli("quantize", sift_idx, *args)
    assert r.exit_code == code, r.output
    assert needle in r.output and "Error" in r.output
    assert snapshot(sift_idx) == before


def test_quantize_on_an_index_without_compacted_rows_is_refused(tmp_path, siftsmall):
    np.save(tmp_path / "base.npy", siftsmall[0][:100])
    idx = tmp_path / "idx"
    ingest(idx, tmp_path / "base.npy")
    before = snapshot(idx)
    r = cli("quantize", idx, "--codec", "sq8")
    assert r.exit_code == 4 and "no compacted live rows" in r.output
    assert snapshot(idx) == before
    with pytest.raises(InvalidInputError):
        quantize(idx, codec="f16")


def test_a_different_codec_without_force_is_refused(sift_idx):
    quantize(sift_idx, codec="sq4")
    before = snapshot(sift_idx)
    r = cli("quantize", sift_idx, "--codec", "rabitq")
    assert r.exit_code == 4 and "--force" in r.output
    assert snapshot(sift_idx) == before


def test_cli_prints_json_and_counts_rows(sift_idx):
    r = cli("quantize", sift_idx, "--codec", "f16", "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout.strip().splitlines()[0])
    assert doc["kind"] == "codes" and doc["segments"][0]["codec"] == "f16" and doc["segments"][0]["bytes_per_vector"] == 256 + 12


@pytest.mark.parametrize("codec, kw", [("sq8", {}), ("rabitq", {}), ("pq", {"m": 32})])
def test_quantized_scan_answers_default_queries_with_exact_distances(sift_idx, siftsmall, codec, kw):
    from tidepool_cli.engine.recall import recall_at_k
    from tidepool_cli.engine.topk import knn
    from tidepool_cli.ops.query import query

    xb, xq, gt, _ = siftsmall
    quantize(sift_idx, codec=codec, **kw)
    res = query(sift_idx, xq, k=10)
    work = res.explain.sources[0]
    assert work.path == "quantized"
    assert work.distances == xq.shape[0] * xb.shape[0]  # codes scored
    assert 0 < work.reranked < xq.shape[0] * xb.shape[0] // 10
    ids = np.array(res.ids)
    dist = np.asarray(res.distances, dtype=np.float32)
    assert recall_at_k(ids, gt, 10) >= 0.95
    D, _ = knn(xq, xb, 10, "l2")
    np.testing.assert_allclose(dist, D, rtol=1e-5)  # returned distances are exact


def test_damaged_codes_are_reported_and_the_segment_searched_exactly(sift_idx, siftsmall):
    from tidepool_cli.ops.query import query

    xb, xq, _, _ = siftsmall
    quantize(sift_idx, codec="sq8")
    layout, entry, ref = codes_ref(sift_idx)
    path = layout.path(ref.path)
    off = open_container(path, ref.path, b"QCOD", 1, verify="all").sections["codes"].offset + 5
    data = bytearray(path.read_bytes())
    data[off] ^= 0xFF
    path.write_bytes(bytes(data))
    from tidepool_cli.ops.planner import SearchParams

    exact = query(sift_idx, xq[:5], k=10, params=SearchParams(exact=True))
    warnings = []
    res = query(sift_idx, xq[:5], k=10, warn=warnings.append)
    assert res.explain.sources[0].path == "exact"
    assert any("checksum" in w and ref.path in w for w in warnings), warnings
    assert res.ids == exact.ids


def test_compact_encodes_new_and_merged_segments_with_the_index_quantizer(tmp_path, siftsmall):
    from tidepool_cli.ops.compact import MERGE_FACTOR
    from tidepool_cli.ops.query import query
    from tidepool_cli.engine.topk import knn

    xb, xq, _, _ = siftsmall
    idx = tmp_path / "idx"
    parts = np.array_split(xb[:4000], MERGE_FACTOR)
    np.save(tmp_path / "p0.npy", parts[0])
    ingest(idx, tmp_path / "p0.npy")
    compact(idx)
    quantize(idx, codec="sq8", seed=5)
    layout = Layout(idx)
    first = read_current(layout).segments[0]
    state = open_sidecar(layout, first, "codes").quantizer.state()
    for i, part in enumerate(parts[1:], start=1):
        np.save(tmp_path / f"p{i}.npy", part)
        ingest(idx, tmp_path / f"p{i}.npy")
        compact(idx)
    segments = read_current(layout).segments
    assert all("codes" in e.indexes for e in segments)
    assert any(e.rows > parts[0].shape[0] for e in segments)  # a merge happened and was encoded
    for e in segments:
        other = open_sidecar(layout, e, "codes", verify="all").quantizer.state()
        assert other[0] == state[0] and all(np.array_equal(other[1][k], state[1][k]) for k in state[1])
    assert stats(idx, verify=True).problems == []
    assert quantize(idx, codec="sq8").built == []  # nothing left to encode
    res = query(idx, xq[:20], k=10)
    assert {w.path for w in res.explain.sources} == {"quantized"}
    D, _ = knn(xq[:20], xb[:4000], 10, "l2")
    np.testing.assert_allclose(np.asarray(res.distances, np.float32), D, rtol=1e-5)
