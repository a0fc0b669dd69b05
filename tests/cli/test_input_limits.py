"""What input may claim: every limit refused with exit 4 before anything is written, and a
failed first ingest leaves no index behind."""

import io
import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from tidepool_cli.cli.app import app
from tidepool_cli.limits import MAX_DIM, MAX_STRING_CHARS

runner = CliRunner()


def run(*args, input=None):
    # Any warning (NumPy's overflow RuntimeWarning) becomes an error, so none can leak to stderr.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return runner.invoke(app, [str(a) for a in args], input=input)


def assert_fails(result, code, pattern):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and pattern in lines[0], result.stderr


def _npy_header(rows, dim):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return buf.getvalue() + b"\0" * 64


def _jsonl(*objs):
    return "".join(json.dumps(o) + "\n" for o in objs)


BAD_FIRST_INPUTS = [
    ("nan.npy", lambda p: np.save(p, np.array([[1.0, 2.0], [np.nan, 0.0]])), "row 1 contains NaN"),
    ("inf.npy", lambda p: np.save(p, np.array([[np.inf, 2.0]], np.float32)), "NaN or Inf"),
    ("overflow.npy", lambda p: np.save(p, np.array([[1e300, 2.0]])), "NaN or Inf"),
    ("late-nan.npy", lambda p: np.save(p, np.vstack([np.ones((9, 2)), [[np.nan, 1.0]]])), "row 9"),
    ("e400.jsonl", lambda p: p.write_text('{"vector": [1, 2]}\n{"vector": [1, 1e400]}\n'), "row 1 contains NaN or Inf"),
    ("nan.jsonl", lambda p: p.write_text('{"vector": [1, NaN]}\n'), "NaN or Inf"),
    ("zero-dim.npy", lambda p: np.save(p, np.ones((3, 0), np.float32)), "dimension 0"),
    ("wide.npy", lambda p: np.save(p, np.ones((1, MAX_DIM + 1), np.float32)), f"between 1 and {MAX_DIM:,}"),
    ("empty-vector.jsonl", lambda p: p.write_text('{"vector": []}\n'), "dimension 0"),
    ("rows-2-31.npy", lambda p: p.write_bytes(_npy_header(2**31, 4)), "claims 2,147,483,648 rows"),
    ("rows-2-40.npy", lambda p: p.write_bytes(_npy_header(2**40, 4)), "claims 1,099,511,627,776 rows"),
    ("long-attr.jsonl", lambda p: p.write_text(_jsonl({"vector": [1, 2], "attributes": {"a": "x" * 10**7}})), "10,000,000 characters"),
    ("long-name.jsonl", lambda p: p.write_text(_jsonl({"vector": [1, 2], "attributes": {"n" * (MAX_STRING_CHARS + 1): 1}})), "attribute name is"),
    ("long-id.jsonl", lambda p: p.write_text(_jsonl({"id": "i" * (MAX_STRING_CHARS + 1), "vector": [1, 2]})), "string id is"),
    ("deep.jsonl", lambda p: p.write_text('{"vector": ' + "[" * 10**4 + "]" * 10**4 + "}\n"), "nested too deeply"),
    ("deep-attr.jsonl", lambda p: p.write_text('{"vector": [1, 2], "attributes": {"a": ' + "[" * 10**4 + "]" * 10**4 + "}}\n"), "nested too deeply"),
    ("bad-utf8.jsonl", lambda p: p.write_bytes(b'{"vector": [1, 2], "attributes": {"a": "\xff"}}\n'), "not valid UTF-8"),
    ("surrogate-name.jsonl", lambda p: p.write_text('{"vector": [1, 2], "attributes": {"\\ud800": 1}}\n'), "lone surrogate"),
    ("surrogate-value.jsonl", lambda p: p.write_text('{"vector": [1, 2], "attributes": {"a": "x\\udfff"}}\n'), "lone surrogate"),
    ("surrogate-id.jsonl", lambda p: p.write_text('{"id": "\\ud83d", "vector": [1, 2]}\n'), "lone surrogate"),
    ("huge-int.jsonl", lambda p: p.write_text('{"vector": [1, ' + "9" * 400 + "]}\n"), "non-numeric"),
]


@pytest.mark.parametrize("name, make, pattern", BAD_FIRST_INPUTS, ids=[c[0] for c in BAD_FIRST_INPUTS])
def test_a_failed_first_ingest_creates_nothing(tmp_path, name, make, pattern):
    src = tmp_path / name
    make(src)
    idx = tmp_path / "idx"
    assert_fails(run("ingest", idx, "--input", src, "--batch-rows", 4), 4, pattern)
    assert not idx.exists()
    # The user's next, correct ingest chooses the metric freely.
    np.save(tmp_path / "good.npy", np.ones((3, 5), np.float32))
    r = run("ingest", idx, "--input", tmp_path / "good.npy", "--metric", "cosine")
    assert r.exit_code == 0, r.stderr
    assert json.loads(run("stats", idx, "--json").stdout)["metric"] == "cosine"


def test_a_failed_first_ingest_into_an_empty_directory_leaves_it_empty(tmp_path):
    np.save(tmp_path / "late.npy", np.vstack([np.ones((9, 2)), [[np.nan, 1.0]]]))
    (tmp_path / "idx").mkdir()
    assert_fails(run("ingest", tmp_path / "idx", "--input", tmp_path / "late.npy", "--batch-rows", 2), 4, "row 9")
    assert list((tmp_path / "idx").iterdir()) == []


def test_npy_stream_claiming_2_40_rows_is_refused_before_reading(tmp_path):
    assert_fails(run("ingest", tmp_path / "idx", "--input", "-", input=_npy_header(2**40, 4)), 4, "claims 1,099,511,627,776 rows")
    assert not (tmp_path / "idx").exists()


def test_fvecs_with_a_huge_dimension_is_refused(tmp_path):
    (tmp_path / "x.fvecs").write_bytes(np.array([MAX_DIM + 1], "<i4").tobytes() + b"\0" * 4 * (MAX_DIM + 1))
    assert_fails(run("ingest", tmp_path / "idx", "--input", tmp_path / "x.fvecs"), 4, "dimension")
    assert not (tmp_path / "idx").exists()


def test_automatic_ids_never_pass_int64(tmp_path):
    idx = tmp_path / "idx"
    (tmp_path / "top.jsonl").write_text(_jsonl({"id": 2**63 - 2, "vector": [1, 2]}))
    assert run("ingest", idx, "--input", tmp_path / "top.jsonl").exit_code == 0
    (tmp_path / "auto.jsonl").write_text(_jsonl({"vector": [1, 2]}, {"vector": [3, 4]}))
    assert_fails(run("ingest", idx, "--input", tmp_path / "auto.jsonl"), 4, "automatic ids would pass 9223372036854775807")
    (tmp_path / "one.jsonl").write_text(_jsonl({"vector": [5, 6]}))
    assert run("ingest", idx, "--input", tmp_path / "one.jsonl").exit_code == 0  # exactly 2**63 - 1 still fits
    assert run("stats", idx, "--verify").exit_code == 0
    r = run("query", idx, "--vector", "[5, 6]", "-k", 1)
    assert json.loads(r.stdout)["results"][0]["ids"] == [2**63 - 1]
    (tmp_path / "big.jsonl").write_text('{"id": 9223372036854775808, "vector": [1, 2]}\n')
    assert_fails(run("ingest", idx, "--input", tmp_path / "big.jsonl"), 4, "64-bit")


def test_delete_ids_beyond_int64_and_bad_strings(tmp_path):
    idx = tmp_path / "idx"
    np.save(tmp_path / "x.npy", np.ones((3, 2), np.float32))
    assert run("ingest", idx, "--input", tmp_path / "x.npy").exit_code == 0
    assert_fails(run("delete", idx, "--id", 2**64), 4, "outside the 64-bit")
    assert_fails(run("delete", idx, "--id", -(2**63) - 1), 4, "outside the 64-bit")
    assert_fails(run("delete", idx, "--id", "9" * 5000), 4, "not an integer")
    assert run("delete", idx, "--id", 2**63 - 1).exit_code == 0
    sidx = tmp_path / "sidx"
    (tmp_path / "s.jsonl").write_text(_jsonl({"id": "a", "vector": [1, 2]}))
    assert run("ingest", sidx, "--input", tmp_path / "s.jsonl").exit_code == 0
    assert_fails(run("delete", sidx, "--id", "x" * (MAX_STRING_CHARS + 1)), 4, "string id is")
    assert_fails(run("delete", sidx, "--id", "a\udcff"), 4, "lone surrogate")


def test_long_attribute_strings_below_the_limit_compact(tmp_path):
    idx = tmp_path / "idx"
    rows = [{"vector": [i, 0], "attributes": {"s": ("x" * MAX_STRING_CHARS) if i == 0 else f"v{i % 3}"}} for i in range(50)]
    (tmp_path / "a.jsonl").write_text(_jsonl(*rows))
    assert run("ingest", idx, "--input", tmp_path / "a.jsonl").exit_code == 0
    assert run("compact", idx).exit_code == 0
    r = run("query", idx, "--vector", "[0, 0]", "-k", 50, "--filter", "s = 'v1'")
    assert sorted(json.loads(r.stdout)["results"][0]["ids"]) == [i for i in range(50) if i % 3 == 1]


@pytest.mark.parametrize(
    "args",
    [
        ["query", "IDX", "--vector", "[1, 2]", "-k", 2**62],
        ["query", "IDX", "--vector", "[1, 2]", "--ef-search", 10**9],
        ["query", "IDX", "--vector", "[1, 2]", "--nprobe", 10**9],
        ["build-hnsw", "IDX", "--m", 10**8],
        ["build-hnsw", "IDX", "--ef-construction", 10**9],
        ["build-hnsw", "IDX", "--seed", -1],
        ["build-ivf", "IDX", "--nlist", 10**9],
    ],
)
def test_search_and_build_parameters_have_bounds(tmp_path, args):
    idx = tmp_path / "idx"
    np.save(tmp_path / "x.npy", np.ones((3, 2), np.float32))
    assert run("ingest", idx, "--input", tmp_path / "x.npy").exit_code == 0
    r = run(*[idx if a == "IDX" else a for a in args])
    assert r.exit_code == 2 and "is not in the range" in r.stderr, r.stderr


@pytest.mark.parametrize(
    "text, pattern",
    [("not " * 2000 + "a = 1", "nested more than"), ("(" * 10000 + "a = 1" + ")" * 10000, "nested more than"),
     ("a = " + "1" * 5000, "number too long"), ("a = 1 and " * 20000 + "a = 1", "characters long")],
)
def test_deep_or_huge_filters_are_refused(tmp_path, text, pattern):
    idx = tmp_path / "idx"
    (tmp_path / "a.jsonl").write_text(_jsonl({"vector": [1, 2], "attributes": {"a": 1}}))
    assert run("ingest", idx, "--input", tmp_path / "a.jsonl").exit_code == 0
    assert_fails(run("query", idx, "--vector", "[1, 2]", "--filter", text), 4, pattern)


def test_stats_shows_attributes_of_the_wal_tail(tmp_path):
    idx = tmp_path / "idx"
    (tmp_path / "a.jsonl").write_text(_jsonl({"vector": [1, 2], "attributes": {"color": "red", "n": 3}}))
    assert run("ingest", idx, "--input", tmp_path / "a.jsonl").exit_code == 0
    assert json.loads(run("stats", idx, "--json").stdout)["attributes"] == {"color": "string", "n": "int"}
    assert "color:string" in run("stats", idx).stdout


def test_python_api_build_parameters_have_the_same_bounds(tmp_path):
    from tidepool_cli.errors import InvalidInputError
    from tidepool_cli.ops.build_hnsw import build_hnsw
    from tidepool_cli.ops.build_ivf import build_ivf

    np.save(tmp_path / "x.npy", np.ones((3, 2), np.float32))
    assert run("ingest", tmp_path / "idx", "--input", tmp_path / "x.npy").exit_code == 0
    with pytest.raises(InvalidInputError, match="--m"):
        build_hnsw(tmp_path / "idx", m=10**8, min_rows=0)
    with pytest.raises(InvalidInputError, match="--nlist"):
        build_ivf(tmp_path / "idx", nlist=10**9, min_rows=0)


def test_float64_overflow_leaks_no_warning_to_stderr(tmp_path):
    import subprocess
    import sys

    np.save(tmp_path / "big.npy", np.array([[1e300, 2.0]]))
    p = subprocess.run([sys.executable, "-m", "tidepool_cli", "ingest", str(tmp_path / "idx"), "--input", str(tmp_path / "big.npy")],
                       capture_output=True, text=True)
    assert p.returncode == 4 and p.stderr.splitlines() == ["Error: " + p.stderr.split("Error: ", 1)[1].strip()]
    assert "RuntimeWarning" not in p.stderr and not (tmp_path / "idx").exists()


def test_parquet_input_has_the_same_string_limits(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    vec = pa.array([[1.0, 2.0], [3.0, 4.0]], type=pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"vector": vec, "note": ["ok", "x" * (MAX_STRING_CHARS + 1)]}), tmp_path / "a.parquet")
    assert_fails(run("ingest", tmp_path / "idx", "--input", tmp_path / "a.parquet"), 4, f"longer than {MAX_STRING_CHARS:,}")
    pq.write_table(pa.table({"id": ["a", "i" * (MAX_STRING_CHARS + 1)], "vector": vec}), tmp_path / "b.parquet")
    assert_fails(run("ingest", tmp_path / "idx", "--input", tmp_path / "b.parquet"), 4, "string id is longer")
    assert not (tmp_path / "idx").exists()
