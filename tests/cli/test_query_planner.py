"""query --recall / --explain, the calibration curves in stats, and streaming answers on a pipe."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tidepool_cli.cli.app import app
from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.engine.topk import knn
from tidepool_cli.ops.paths import Batch
from tidepool_cli.ops.planner import SearchParams, choose
from tidepool_cli.ops.query import Searcher


def run(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    """3,000 clustered rows in one segment with both an HNSW graph and an IVF index."""
    d = tmp_path_factory.mktemp("planner")
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(30, 16)).astype(np.float32) * 4
    xb = (centers[rng.integers(0, 30, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    xq = (centers[rng.integers(0, 30, 200)] + rng.normal(size=(200, 16))).astype(np.float32)
    np.save(d / "base.npy", xb)
    np.save(d / "q.npy", xq)
    idx = d / "idx"
    for args in (["ingest", idx, "--input", d / "base.npy"], ["compact", idx], ["build-hnsw", idx, "--min-rows", 0], ["build-ivf", idx, "--min-rows", 0]):
        assert run(*args).exit_code == 0
    return idx, xb, xq, d


def test_builds_store_whole_curves_and_stats_shows_them(indexed):
    idx = indexed[0]
    seg = json.loads(run("stats", idx, "--json").stdout)["segments"][0]["indexes"]
    for kind, knob in (("hnsw", "ef_search"), ("ivf", "nprobe")):
        curve = seg[kind]["curve"]
        assert len(curve) >= 1 and all(knob in p and 0 <= p["recall"] <= 1 for p in curve)
        assert all([b for b, _ in p["seconds"]] == [1, 300, 2048] and min(t for _, t in p["seconds"]) > 0 for p in curve)
        assert [p[knob] for p in curve] == sorted(p[knob] for p in curve)
        assert [b for b, _ in seg[kind]["exact_cost"]["seconds"]] == [1, 300, 2048]
    table = run("stats", idx).stdout
    assert "calibration curves" in table and "ef_search" in table and "nprobe" in table


@pytest.mark.parametrize("target", [0.9, 0.99])
def test_recall_target_is_delivered_and_explained(indexed, target):
    idx, xb, xq, _ = indexed
    _, truth = knn(xq, xb, 10, "l2")
    res = Searcher(idx, params=SearchParams(recall=target)).search(xq, 10)
    assert recall_at_k(np.array(res.ids), truth, 10) >= target - 0.01
    work = res.explain.sources[0]
    assert work.path == res.paths["seg-000001"] and work.expected_recall >= target - 1e-9
    assert work.distances > 0 and work.bytes_read == work.rows_read * 16 * 4 and work.seconds > 0


def test_higher_targets_never_take_smaller_knobs(indexed):
    idx = indexed[0]
    src = Searcher(idx).sources[0][0]
    from tidepool_cli.ops.paths import HnswPath, IvfPath

    for path in (HnswPath(), IvfPath()):
        knobs = [path.pick(src, r, None, 1)[0] for r in (0.5, 0.9, 0.95, 0.99)]
        assert knobs == sorted(knobs)


def test_selective_filters_go_exact_by_cost_and_forced_knobs_win(indexed):
    idx = indexed[0]
    src = Searcher(idx).sources[0][0]
    for nq in (1, 100, 10_000):
        assert choose(src, Batch(nq, 10, 3000, 10, 16), SearchParams())[1].path == "exact-filtered"
        assert choose(src, Batch(nq, 10, 3000, 3000, 16), SearchParams(ef_search=40))[1].path == "hnsw"
        assert choose(src, Batch(nq, 10, 3000, 3000, 16), SearchParams(nprobe=3))[1].knobs == {"nprobe": 3}
        assert choose(src, Batch(nq, 10, 3000, 3000, 16), SearchParams(exact=True))[1].path == "exact"


def test_explain_json_in_both_formats(indexed):
    idx, _, _, d = indexed
    out = run("query", idx, "--input", d / "q.npy", "-k", 3, "--explain")
    assert out.exit_code == 0, out.stderr
    doc = json.loads(out.stdout)
    (batch,) = doc["explain"]
    assert batch["queries"] == 200 and batch["k"] == 3 and batch["recall_target"] is None
    (src,) = batch["sources"]
    assert set(src) >= {"source", "path", "expected_recall", "estimated_seconds", "distances", "reranked", "rows_read", "bytes_read", "allowed", "seconds"}
    lines = run("query", idx, "--input", d / "q.npy", "-k", 3, "--explain", "--format", "jsonl", "--recall", 0.99).stdout.splitlines()
    assert len(lines) == 201 and json.loads(lines[-1])["explain"]["recall_target"] == 0.99
    assert run("query", idx, "--input", d / "q.npy", "--recall", 1.5).exit_code == 2


@pytest.mark.parametrize("force", [["--nprobe", "3"], ["--ef-search", "20"], ["--exact"]])
def test_every_path_answers_queries_read_from_a_read_only_file(indexed, force):
    """Queries from a .npy file arrive as a read-only memmap: no path may write into them."""
    idx, xb, xq, d = indexed
    out = run("query", idx, "--input", d / "q.npy", "-k", 5, *force)
    assert out.exit_code == 0, out.stderr
    _, truth = knn(xq, xb, 5, "l2")
    assert recall_at_k(np.array([r["ids"] for r in json.loads(out.stdout)["results"]]), truth, 5) >= 0.8


def test_recall_queries_reports_delivered_recall_without_touching_the_index(indexed):
    idx, _, _, d = indexed
    before = sorted(p.name for p in idx.rglob("*"))
    out = run("stats", idx, "--recall-queries", d / "q.npy", "--json")
    assert out.exit_code == 0, out.stderr
    rq = json.loads(out.stdout)["recall_queries"]
    assert rq["queries"] == 200 and rq["k"] == 10 and 0.9 <= rq["recall_at_k"] <= 1
    assert rq["ci_low"] <= rq["recall_at_k"] <= rq["ci_high"]
    assert sorted(p.name for p in idx.rglob("*")) == before


def test_a_pipe_gets_each_answer_before_the_next_query_is_written(indexed):
    """Interactive use: write one line, read its answer, then write the next (a real pipe)."""
    idx, xb, xq, _ = indexed
    proc = subprocess.Popen([sys.executable, "-m", "tidepool_cli", "query", str(idx), "--input", "-", "--format", "jsonl", "-k", "3"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        got = []
        for i in range(3):
            line = json.dumps({"vector": xq[i].tolist()}) if i != 1 else json.dumps(xq[i].tolist())  # bare lists too
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())  # blocks until this query is answered
            got.append(answer)
        proc.stdin.close()
        assert proc.stdout.read() == b"" and proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert [a["query"] for a in got] == [0, 1, 2]
    _, truth = knn(xq[:3], xb, 3, "l2")
    assert recall_at_k(np.array([a["ids"] for a in got]), truth, 3) >= 0.9


def test_lines_already_waiting_are_answered_as_one_batch():
    import os

    from tidepool_cli.ops.querystream import stream_lines

    r, w = os.pipe()
    os.write(w, b"".join(json.dumps({"vector": [i, 0.5]}).encode() + b"\n" for i in range(5)) + b"[9, 9]\n\n")
    os.close(w)
    with os.fdopen(r, "rb") as stream:
        batches = list(stream_lines(stream, 4))
    assert [(first, v.shape) for first, v in batches] == [(0, (4, 2)), (4, (2, 2))]
    assert batches[1][1].tolist() == [[4, 0.5], [9, 9]]
