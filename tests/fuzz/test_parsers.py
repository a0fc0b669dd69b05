"""Fuzzing every input parser: .npy (file and stdin), .fvecs/.bvecs, JSONL and --filter.

Whatever the bytes, ``tidepool`` either succeeds (exit 0) or prints one ``Error: ...``
line with exit 4: never a traceback, a warning, a hang, or a file outside the index.
``TIDEPOOL_FUZZ_EXAMPLES`` sets the examples per test (default 40; e.g. 2000 for a long run).
"""

import io
import json
import os
import signal
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tidepool_cli.cli.app import app

EXAMPLES = int(os.environ.get("TIDEPOOL_FUZZ_EXAMPLES", "40"))
SECONDS_PER_EXAMPLE = 20
fuzz = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
runner = CliRunner()


@contextmanager
def alarm(seconds):
    """Fail an example that runs longer than ``seconds`` (a hang), instead of blocking the suite."""

    def on_alarm(signum, frame):
        raise TimeoutError(f"example ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check(args, workdir, input=None, ok=(0, 4)):
    """Run tidepool in-process and check the contract; returns the result."""
    before = set(os.listdir(workdir))
    with alarm(SECONDS_PER_EXAMPLE), warnings.catch_warnings():
        warnings.simplefilter("error")
        r = runner.invoke(app, [str(a) for a in args], input=input)
    assert r.exit_code in ok, (r.exit_code, r.stderr[-2000:], repr(r.exception))
    assert "Traceback" not in r.stderr
    if r.exit_code:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr[-2000:]
    # Nothing written outside the index directory.
    assert set(os.listdir(workdir)) - before <= {"idx"}
    return r


def ingest_bytes(data: bytes, suffix: str, fmt: str | None = None):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / f"in{suffix}"
        src.write_bytes(data)
        extra = ["--input-format", fmt] if fmt else []
        r = check(["ingest", Path(d) / "idx", "--input", src, "--batch-rows", 3, *extra], d)
        if r.exit_code:
            assert not (Path(d) / "idx").exists()  # a failed first ingest creates nothing
        else:
            check(["stats", Path(d) / "idx", "--verify"], d, ok=(0,))


def npy_bytes(shape, descr, data: bytes, fortran=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buf.getvalue() + data


dims = st.integers(-3, 70_000) | st.integers(0, 6)
shapes = st.one_of(st.tuples(st.integers(0, 2**42), dims), st.tuples(st.integers(0, 8), st.integers(0, 6)), st.tuples(st.integers(0, 5)),
                   st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)))
descrs = st.sampled_from(["<f4", "<f8", "<f2", ">f4", "<i4", "|u1", "|b1", "<c8", "|O", "<U3", "<M8[s]", "|V4"])


@fuzz
@given(shape=shapes, descr=descrs, data=st.binary(max_size=200), fortran=st.booleans(), flips=st.lists(st.tuples(st.integers(0, 127), st.integers(1, 255)), max_size=3))
def test_npy(shape, descr, data, fortran, flips):
    try:
        raw = bytearray(npy_bytes(shape, descr, data, fortran))
    except (ValueError, TypeError):
        return
    for pos, x in flips:
        if pos < len(raw):
            raw[pos] ^= x
    ingest_bytes(bytes(raw), ".npy")


@fuzz
@given(shape=shapes, descr=descrs, data=st.binary(max_size=200))
def test_npy_on_stdin(shape, descr, data):
    try:
        raw = npy_bytes(shape, descr, data)
    except (ValueError, TypeError):
        return
    with tempfile.TemporaryDirectory() as d:
        r = check(["ingest", Path(d) / "idx", "--input", "-"], d, input=raw)
        if r.exit_code:
            assert not (Path(d) / "idx").exists()


@fuzz
@given(
    fmt=st.sampled_from(["fvecs", "bvecs"]),
    rows=st.lists(st.tuples(st.integers(-(2**31), 2**31 - 1) | st.integers(0, 5), st.binary(max_size=24)), max_size=5),
    tail=st.binary(max_size=6),
)
def test_vecs(fmt, rows, tail):
    raw = b"".join(np.array([d], "<i4").tobytes() + body for d, body in rows) + tail
    ingest_bytes(raw, f".{fmt}")


scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=12)
vectors = st.lists(st.integers(-5, 5) | st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=0, max_size=4)
rows = st.fixed_dictionaries(
    {"vector": vectors | json_values},
    optional={"id": st.integers(-(2**64), 2**64) | st.text(max_size=6) | json_values, "attributes": st.dictionaries(st.text(max_size=4), scalars, max_size=3) | json_values},
)


def _dump(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


@fuzz
@given(lines=st.lists(rows.map(_dump) | json_values.map(_dump) | st.binary(max_size=30), min_size=1, max_size=6))
def test_jsonl(lines):
    ingest_bytes(b"\n".join(lines) + b"\n", ".jsonl")


@fuzz
@given(lines=st.lists(st.text(alphabet='{}[]:,"\\ud800 0123456789.eE-+vectoridnaNIfy', max_size=40), min_size=1, max_size=4))
def test_jsonl_text(lines):
    ingest_bytes("\n".join(lines).encode("utf-8", "surrogatepass"), ".jsonl", "jsonl")


@pytest.fixture(scope="module")
def filtered_index(tmp_path_factory):
    d = tmp_path_factory.mktemp("filters")
    recs = [{"vector": [i, i % 3], "attributes": {"color": ["red", "blue", "ab"][i % 3], "n": i, "x": i / 4, "ok": i % 2 == 0, "my attr": i}}
            for i in range(30)]
    (d / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert runner.invoke(app, ["ingest", str(d / "idx"), "--input", str(d / "a.jsonl")]).exit_code == 0
    return d


TOKENS = ["color", "n", "x", "ok", "`my attr`", "missing", "=", "==", "!=", "<", "<=", ">", ">=", "and", "or", "not", "in",
          "is", "null", "true", "false", "(", ")", "[", "]", ",", "'red'", '"blue"', "'a\\'b'", "1", "-2.5", "1e999", "0",
          "99999999999999999999999", "`", "'", "@", "é", "\\"]


@fuzz
@given(tokens=st.lists(st.sampled_from(TOKENS), max_size=12) | st.text(max_size=30).map(lambda t: [t]))
def test_filter(filtered_index, tokens):
    r = check(["query", filtered_index / "idx", "--vector", "[0, 0]", "-k", 5, "--filter", " ".join(tokens)], filtered_index)
    if r.exit_code == 0:
        assert len(json.loads(r.stdout)["results"][0]["ids"]) <= 5
