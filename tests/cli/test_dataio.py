"""get, export, count: rows out of an index, exactly as they went in; exit codes; stdout/stderr."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import tidepool_cli as tp
from tidepool_cli.cli.app import app
from tidepool_cli.ops.view import IndexView

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

pa = pytest.importorskip("pyarrow")


def run(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def _write_jsonl(path, ids, x, attrs):
    with open(path, "w") as f:
        for i, v, a in zip(ids, x.tolist(), attrs):
            f.write(json.dumps({"id": i, "vector": v, "attributes": a}) + "\n")


@pytest.fixture
def docs(tmp_path):
    """A string-id index with attributes: a compacted segment, deletes, and a WAL tail on top."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 6)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(500)]
    attrs = [{"color": ["red", "blue", "green"][i % 3], "price": i * 0.5, "n": i, "ok": i % 2 == 0} if i % 7 else {} for i in range(500)]
    _write_jsonl(tmp_path / "in.jsonl", ids, x, attrs)
    idx = tmp_path / "docs"
    assert run("ingest", idx, "--input", tmp_path / "in.jsonl", "-q").exit_code == 0
    assert run("compact", idx, "-q").exit_code == 0
    assert run("delete", idx, "--id", "doc-3", "--id", "doc-4").exit_code == 0
    x[10] = 1.0  # doc-10 rewritten in the WAL tail
    _write_jsonl(tmp_path / "up.jsonl", ["doc-10", "new-1"], x[[10, 11]], [{"color": "pink"}, {}])
    assert run("ingest", idx, "--input", tmp_path / "up.jsonl").exit_code == 0
    return idx, x


def test_get_reads_snapshot_plus_wal_tail_and_reports_missing_ids(docs):
    idx, x = docs
    r = run("get", idx, "--id", "doc-10", "--id", "doc-3", "--id", "doc-1", "--id", "nope")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert [row["id"] for row in out["rows"]] == ["doc-10", "doc-1"]  # asked order; doc-3 is deleted
    assert out["missing"] == ["doc-3", "nope"]
    assert out["rows"][0]["attributes"] == {"color": "pink"}
    assert np.array(out["rows"][1]["vector"], np.float32).tobytes() == x[1].tobytes()
    assert out["rows"][1]["attributes"] == {"color": "blue", "price": 0.5, "n": 1, "ok": False}
    assert "2 of 4 ids not found" in r.stderr


def test_get_jsonl_ids_file_on_stdin_no_vectors_and_exit_9_when_none_found(docs):
    idx, _ = docs
    r = run("get", idx, "--ids-file", "-", "--no-vectors", "--format", "jsonl", input="new-1\nghost\n")
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.exit_code == 0 and lines == [{"id": "new-1", "attributes": {}}, {"id": "ghost", "missing": True}]
    r = run("get", idx, "--id", "ghost")
    assert r.exit_code == 9 and json.loads(r.stdout) == {"rows": [], "missing": ["ghost"]}
    assert r.stderr.strip().splitlines()[-1].startswith("Error: none of the 1 ids")


def test_count_with_and_without_filter(docs):
    idx, _ = docs
    assert run("count", idx).stdout.strip() == "499"  # 500 - 2 deleted + 1 new
    assert run("count", idx, "--filter", "color = 'pink'").stdout.strip() == "1"
    r = run("count", idx, "--filter", "n < 10 and ok = true", "--json")
    assert json.loads(r.stdout)["count"] == len([i for i in range(10) if i % 7 and i % 2 == 0 and i != 4])
    assert run("count", idx, "--filter", "nope = 1").exit_code == 4


def _rows(index):
    """{id: (vector bytes, attributes)} of every live row."""
    view = IndexView(index)
    out = {}
    for src in view.sources():
        pos = np.flatnonzero(src.live)
        cols = {n: c for n in view.schema if (c := src.column(n)) is not None}
        values = {n: c.python_values(pos) for n, c in cols.items()}
        for j, p in enumerate(pos):
            attrs = {n: v[j] for n, v in values.items() if v[j] is not None}
            out[src.ids[p].item()] = (np.asarray(src.vectors[p]).tobytes(), attrs)
    return out, view.schema


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_then_ingest_gives_the_same_rows(docs, tmp_path, fmt):
    idx, _ = docs
    out = tmp_path / f"rows.{fmt}"
    r = run("export", idx, "--output", out, "--json", "-q")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["rows"] == 499 and r.stderr == ""
    assert run("ingest", tmp_path / "copy", "--input", out).exit_code == 0
    assert _rows(tmp_path / "copy") == _rows(idx)


def test_export_npy_writes_vectors_ids_and_attributes_beside(docs, tmp_path):
    idx, _ = docs
    assert run("export", idx, "--output", tmp_path / "v.npy", "--filter", "color = 'red' or color = 'pink'").exit_code == 0
    rows, _ = _rows(idx)
    vectors, ids = np.load(tmp_path / "v.npy"), np.load(tmp_path / "v.ids.npy")
    attrs = [json.loads(line) for line in (tmp_path / "v.attributes.jsonl").read_text().splitlines()]
    assert vectors.dtype == np.float32 and len(ids) == len(attrs) == vectors.shape[0] > 100
    for i, v, a in zip(ids.tolist(), vectors, attrs):
        assert (v.tobytes(), a) == rows[i] and a["color"] in ("red", "pink")


def test_export_to_stdout_and_refusals_create_nothing(docs, tmp_path):
    idx, _ = docs
    r = run("export", idx, "--output", "-", "--filter", "color = 'pink'")
    assert r.exit_code == 0 and [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["doc-10"]
    assert run("export", idx, "--output", "-", "--format", "npy").exit_code == 4
    assert run("export", idx, "--output", tmp_path / "bad.jsonl", "--filter", "price >").exit_code == 4
    assert run("export", idx, "--output", tmp_path / "x", "--format", "csv").exit_code == 2  # not a choice: usage error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "in.jsonl", "up.jsonl"]


def test_export_without_pyarrow_still_writes_jsonl_and_refuses_parquet(docs, tmp_path, monkeypatch):
    idx, _ = docs
    assert run("export", idx, "--output", tmp_path / "fast.jsonl").exit_code == 0
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    assert run("export", idx, "--output", tmp_path / "slow.jsonl").exit_code == 0
    fast = [json.loads(line) for line in (tmp_path / "fast.jsonl").read_text().splitlines()]
    slow = [json.loads(line) for line in (tmp_path / "slow.jsonl").read_text().splitlines()]
    as_f32 = lambda rows: [(r["id"], np.array(r["vector"], np.float32).tobytes(), r["attributes"]) for r in rows]
    assert as_f32(fast) == as_f32(slow)
    r = run("export", idx, "--output", tmp_path / "x.parquet")
    assert r.exit_code == 4 and "pip install 'tidepool-cli[parquet]'" in r.stderr


def _real_round_trip(tmp_path, source, metric, id_column=None):
    tp.ingest(tmp_path / "a", source, metric=metric, id_column=id_column)
    tp.compact(tmp_path / "a")
    want = _rows(tmp_path / "a")
    for fmt in ("jsonl", "parquet"):
        res = tp.export(tmp_path / "a", tmp_path / f"out.{fmt}")
        assert res.rows == len(want[0])
        tp.ingest(tmp_path / fmt, tmp_path / f"out.{fmt}", metric=metric)
        assert _rows(tmp_path / fmt) == want, fmt


def test_round_trip_on_glove_with_integer_ids_is_bit_exact(tmp_path):
    path = DATA / "glove-50-angular" / "base.npy"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    np.save(tmp_path / "g.npy", np.load(path, mmap_mode="r")[:30000])
    _real_round_trip(tmp_path, tmp_path / "g.npy", "cosine")  # cosine: stored unit rows re-normalise to the same bits


def test_round_trip_on_debian_texts_with_string_ids_and_attributes(tmp_path):
    d = DATA / "debian-minilm"
    if not d.exists():
        pytest.skip(f"{d} is not available")
    x = np.load(d / "base.npy", mmap_mode="r")[:4000].astype(np.float32)
    texts = [json.loads(line) for _, line in zip(range(4000), open(d / "texts_base.jsonl"))]
    table = pa.table({"package": [t["package"] for t in texts], "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1]),
                      "text": [t["text"] for t in texts], "row": [t["id"] for t in texts]})
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "in.parquet", row_group_size=1000)
    _real_round_trip(tmp_path, tmp_path / "in.parquet", "cosine", id_column="package")
    assert isinstance(next(iter(_rows(tmp_path / "parquet")[0])), str)


def test_jsonl_export_escapes_strings_and_keeps_float_kinds(tmp_path):
    tricky = ['say "hi"', "back\\slash", "tab\tnew\nline", "ünï©ødé ☃", "\x01ctl", "-0"]
    x = np.array([[0.0, -0.0], [1.0, 1e-45], [3.0e18, -2.5], [0.1, 7.0], [1.0, 2.0], [5.0, 6.0]], np.float32)
    attrs = [{"s": s, "f": f} for s, f in zip(tricky, [3.0, -0.0, 1e20, 0.5, 2.0, 1.0])]
    _write_jsonl(tmp_path / "in.jsonl", tricky, x, attrs)
    assert run("ingest", tmp_path / "a", "--input", tmp_path / "in.jsonl").exit_code == 0
    assert run("export", tmp_path / "a", "--output", tmp_path / "out.jsonl").exit_code == 0
    assert run("ingest", tmp_path / "b", "--input", tmp_path / "out.jsonl").exit_code == 0
    assert _rows(tmp_path / "b") == _rows(tmp_path / "a")
    assert IndexView(tmp_path / "b").schema == {"f": "float", "s": "string"}
