"""The command line: exit codes, one-line errors, an untouched index after every failure, JSON output."""

import fcntl
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from tidepool_cli.cli.app import app
from tidepool_cli.storage import sealed

runner = CliRunner()


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def snapshot(root):
    """Content hash of every file of an index except LOCK (which only names its holder)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f != "LOCK":
                p = os.path.join(dirpath, f)
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


@pytest.fixture()
def index(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "base.npy", rng.normal(size=(300, 8)).astype(np.float32))
    idx = tmp_path / "idx"
    assert run("ingest", idx, "--input", tmp_path / "base.npy").exit_code == 0
    assert run("compact", idx).exit_code == 0
    np.save(tmp_path / "more.npy", rng.normal(size=(20, 8)).astype(np.float32))
    assert run("ingest", idx, "--input", tmp_path / "more.npy").exit_code == 0  # leave a WAL tail too
    return idx


def assert_fails(result, code, pattern):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and pattern in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_missing_or_foreign_directory_exits_3(tmp_path):
    for cmd in (["query", tmp_path / "nope", "--vector", "[1]"], ["stats", tmp_path / "nope"], ["compact", tmp_path / "nope"]):
        assert_fails(run(*cmd), 3, "no such index directory")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hi")
    assert_fails(run("stats", tmp_path / "foreign"), 3, "not a tidepool index")
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    assert_fails(run("ingest", tmp_path / "foreign", "--input", tmp_path / "x.npy"), 4, "not empty")
    assert sorted(os.listdir(tmp_path / "foreign")) == ["notes.txt"]


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda d: np.save(d / "in.npy", np.ones((4, 5), np.float32)), "dimension 5"),
        (lambda d: np.save(d / "in.npy", np.array([[0.0] * 8, [np.nan] + [0.0] * 7], np.float32)), "row 1 contains NaN"),
        (lambda d: np.save(d / "in.npy", np.array([[np.inf] * 8], np.float64)), "NaN or Inf"),
        (lambda d: np.save(d / "in.npy", np.ones((3, 8), complex)), "real numbers"),
        (lambda d: (d / "in.npy").write_bytes(b"\x93NUMPY\x01\x00garbage"), "not a valid .npy"),
        (lambda d: (d / "in.jsonl").write_text('{"vector": [1,2,3,4,5,6,7,8]}\n{"vector": [1,\n'), "line 2: invalid JSON"),
        (lambda d: (d / "in.jsonl").write_text('{"vector": [1,2,3,4,5,6,7,"x"]}\n'), "non-numeric"),
        (lambda d: (d / "in.jsonl").write_text('{"id": "a", "vector": [1,2,3,4,5,6,7,8]}\n'), "integer ids"),
        (lambda d: (d / "in.fvecs").write_bytes(b"\x08\x00\x00\x00abc"), "not a valid .fvecs"),
    ],
)
def test_bad_input_exits_4_and_leaves_the_index_unchanged(index, make, pattern):
    d = index.parent
    make(d)
    src = next(p for p in d.iterdir() if p.name.startswith("in."))
    before = snapshot(index)
    assert_fails(run("ingest", index, "--input", src), 4, pattern)
    assert snapshot(index) == before


def test_bad_row_in_a_late_batch_commits_nothing(index):
    x = np.zeros((100, 8), np.float32)
    x[95, 3] = np.nan
    np.save(index.parent / "late.npy", x)
    before = snapshot(index)
    assert_fails(run("ingest", index, "--input", index.parent / "late.npy", "--batch-rows", "10"), 4, "row 95")
    assert snapshot(index) == before


def test_bad_metric_and_bad_query_arguments(index, tmp_path):
    np.save(tmp_path / "v.npy", np.ones((2, 8), np.float32))
    bad = run("ingest", tmp_path / "new", "--input", tmp_path / "v.npy", "--metric", "hamming")
    assert bad.exit_code == 2 and "Invalid value for '--metric'" in bad.stderr  # a usage error, listing the choices
    assert not (tmp_path / "new").exists()
    assert_fails(run("ingest", index, "--input", tmp_path / "v.npy", "--metric", "cosine"), 4, "metric 'l2'")
    assert_fails(run("query", index, "--vector", "[1, 2]"), 4, "dimension 8")
    assert_fails(run("query", index, "--vector", "[1, 2"), 4, "not valid JSON")
    assert_fails(run("query", index, "--vector", "[1,2,3,4,5,6,7,8]", "--filter", "x ="), 4, "filter")
    bad = run("query", index, "--vector", "[1,2,3,4,5,6,7,8]", "--format", "xml")
    assert bad.exit_code == 2 and "Invalid value for '--format'" in bad.stderr
    assert run("query", index, "--vector", "[1,2,3,4,5,6,7,8]", "-k", "0").exit_code == 2  # usage error


def test_newer_format_version_exits_8(index):
    settings = json.loads((index / "tidepool.json").read_text())
    settings.pop("checksum")
    settings["format_version"] = 99
    (index / "tidepool.json").write_bytes(sealed.seal(settings))  # a well-formed file of a newer release
    assert_fails(run("query", index, "--vector", "[0,0,0,0,0,0,0,0]"), 8, "newer")
    damaged = (index / "tidepool.json").read_bytes().replace(b'"format_version"', b'"format_versinn"')
    (index / "tidepool.json").write_bytes(damaged)  # a flip in the key is damage, not a newer release
    assert_fails(run("query", index, "--vector", "[0,0,0,0,0,0,0,0]"), 5, "damaged")


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x40
    path.write_bytes(bytes(raw))


def test_corruption_exits_5_and_verify_names_the_damage(index):
    from tidepool_cli.storage.container import open_container

    seg = next((index / "segments").glob("*.tpvs"))
    c = open_container(seg, "seg", b"VSEG", 1, verify="header")
    ids_off, vec_off = c.sections["ids"].offset, c.sections["vectors"].offset
    del c
    assert run("stats", index, "--verify").exit_code == 0
    _flip(seg, vec_off + 100)  # bulk data: found by --verify
    r = run("stats", index, "--verify", "--json")
    assert r.exit_code == 5 and f"segments/{seg.name}: checksum mismatch in section 'vectors'" in r.stderr
    assert json.loads(r.stdout)["problems"] == [f"segments/{seg.name}: checksum mismatch in section 'vectors'"]
    _flip(seg, ids_off + 1)  # checked on every open
    assert_fails(run("query", index, "--vector", "[0,0,0,0,0,0,0,0]"), 5, "section 'ids'")
    wal = sorted((index / "wal").glob("*.wal"))[-1]  # the pending one (the first is applied)
    wal_vec = open_container(wal, "wal", b"WALR", 2).sections["vectors"]
    _flip(wal, wal_vec.offset + wal_vec.nbytes - 5)  # inside the record's vectors
    assert f"wal/{wal.name} record 0: checksum mismatch in section 'vectors'" in run("stats", index, "--verify").stderr


def test_second_writer_times_out_with_exit_6(index, tmp_path):
    np.save(tmp_path / "v.npy", np.ones((2, 8), np.float32))
    before = snapshot(index)
    fd = os.open(index / "LOCK", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert_fails(run("ingest", index, "--input", tmp_path / "v.npy", "--lock-timeout", "0.2"), 6, "locked by another writer")
        assert_fails(run("compact", index, "--lock-timeout", "0.2"), 6, "locked")
        assert run("query", index, "--vector", "[0,0,0,0,0,0,0,0]").exit_code == 0  # readers never wait
    finally:
        os.close(fd)
    assert snapshot(index) == before
    assert not [p for p in (index / "wal").iterdir() if ".tmp." in p.name]


def test_query_json_schema(index):
    r = run("query", index, "--vector", "[[0,0,0,0,0,0,0,0],[1,1,1,1,1,1,1,1]]", "-k", "3")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["k"] == 3 and doc["metric"] == "l2" and [q["query"] for q in doc["results"]] == [0, 1]
    for item in doc["results"]:
        assert set(item) == {"query", "ids", "distances", "attributes"}
        assert len(item["ids"]) == len(item["distances"]) == len(item["attributes"]) == 3
        assert item["distances"] == sorted(item["distances"])
    r = run("query", index, "--input", index.parent / "more.npy", "--format", "jsonl")
    assert [json.loads(line)["query"] for line in r.stdout.splitlines()] == list(range(20))


def test_stats_json_and_quiet(index):
    r = run("stats", index, "--json")
    doc = json.loads(r.stdout)
    assert doc["live_rows"] == 320 and doc["wal"]["rows"] == 20 and doc["bytes_by_kind"]["vectors"] > 0
    r = run("--quiet", "compact", index)
    assert r.exit_code == 0 and r.stderr == ""


def test_python_dash_m_and_stdin(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.save(tmp_path / "x.npy", x)
    data = (tmp_path / "x.npy").read_bytes()
    idx = tmp_path / "idx"
    p = subprocess.run([sys.executable, "-m", "tidepool_cli", "ingest", str(idx), "--input", "-", "--json"], input=data, capture_output=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["rows"] == 6
    q = subprocess.run([sys.executable, "-m", "tidepool_cli", "query", str(idx), "--input", "-", "-k", "1", "--format", "jsonl"],
                       input=data, capture_output=True)
    assert [json.loads(line)["ids"] for line in q.stdout.splitlines()] == [[i] for i in range(6)]


def test_builds_report_and_store_their_calibrated_defaults(index):
    """build-hnsw / build-ivf say which ef_search / nprobe queries will use; stats --json keeps it."""
    assert run("compact", index).exit_code == 0
    for cmd, key in (("build-hnsw", "ef_search"), ("build-ivf", "nprobe")):
        res = run(cmd, index, "--min-rows", 0)
        assert res.exit_code == 0, res.stderr
        assert f"default {key} " in res.stderr
        seg = json.loads(run("stats", index, "--json").stdout)["segments"][0]
        assert seg["indexes"][cmd[6:]][key] >= 1 and 0 <= seg["indexes"][cmd[6:]]["calibrated_recall"] <= 1
    out = run("query", index, "--vector", json.dumps([0.0] * 8), "-k", 5)
    assert out.exit_code == 0 and len(json.loads(out.stdout)["results"][0]["ids"]) == 5
