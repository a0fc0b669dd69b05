"""The README's exit-code table, walked for every command, and closed pipes (exit 141)."""

import builtins
import errno
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tidepool_cli.cli.app import app

runner = CliRunner()
README = Path(__file__).resolve().parents[2] / "README.md"
COMMANDS = ["ingest", "delete", "compact", "build-hnsw", "build-ivf", "query", "get", "count", "export", "stats"]


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture()
def index(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "base.npy", rng.normal(size=(200, 4)).astype(np.float32))
    idx = tmp_path / "idx"
    assert run("ingest", idx, "--input", tmp_path / "base.npy").exit_code == 0
    assert run("compact", idx).exit_code == 0
    return idx


def _args(cmd, idx, d):
    """Arguments with which ``cmd`` succeeds on ``idx``."""
    return {
        "ingest": ["ingest", idx, "--input", d / "base.npy"],
        "delete": ["delete", idx, "--id", 1],
        "compact": ["compact", idx],
        "build-hnsw": ["build-hnsw", idx, "--min-rows", 0],
        "build-ivf": ["build-ivf", idx, "--min-rows", 0],
        "query": ["query", idx, "--vector", "[0, 0, 0, 0]"],
        "get": ["get", idx, "--id", 2],
        "count": ["count", idx],
        "export": ["export", idx, "--output", d / "out.jsonl"],
        "stats": ["stats", idx, "--verify"],
    }[cmd]


def _code(result, expected):
    assert result.exit_code == expected, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    if expected not in (0, 2):  # usage errors are printed by the parser, with its usage line
        lines = result.stderr.strip().splitlines()
        assert len(lines) >= 1 and all(line.startswith("Error: ") for line in lines), result.stderr


def test_readme_documents_the_codes_this_walk_checks():
    table = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|$", README.read_text(), re.M))
    for code in ("2", "3", "4", "5", "8", "10"):
        assert code in table


@pytest.mark.parametrize("cmd", COMMANDS)
def test_success_and_usage_errors(index, cmd):
    _code(run(*_args(cmd, index, index.parent)), 0)
    _code(run(*_args(cmd, index, index.parent), "--no-such-option"), 2)
    _code(run(cmd), 2)  # missing INDEX


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "IDX", "--input", "BASE", "--metric", "hamming"],
        ["ingest", "IDX", "--input", "BASE", "--input-format", "csv"],
        ["ingest", "IDX", "--input", "BASE", "--batch-rows", 0],
        ["query", "IDX", "--vector", "[0,0,0,0]", "--format", "xml"],
        ["query", "IDX", "--vector", "[0,0,0,0]", "-k", 0],
        ["query", "IDX"],
        ["query", "IDX", "--vector", "[0,0,0,0]", "--input", "BASE"],
        ["build-ivf", "IDX", "--id-codec", "zip"],
        ["build-hnsw", "IDX", "--m", 1],
        ["compact", "IDX", "--grace", -1],
        ["delete", "IDX", "--id", 1, "--lock-timeout", -1],
    ],
)
def test_usage_errors_exit_2(index, args):
    before = sorted(p.name for p in index.rglob("*"))
    r = run(*[index if a == "IDX" else index.parent / "base.npy" if a == "BASE" else a for a in args])
    _code(r, 2)
    assert sorted(p.name for p in index.rglob("*")) == before


def test_choices_show_in_help():
    assert "l2|cosine|dot" in run("ingest", "--help").stdout
    assert "json|jsonl|table" in run("query", "--help").stdout
    assert "ans|roc|elias-fano|raw" in run("build-ivf", "--help").stdout


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c != "ingest"])
def test_not_an_index_exits_3(tmp_path, cmd):
    np.save(tmp_path / "base.npy", np.ones((2, 4), np.float32))
    _code(run(*_args(cmd, tmp_path / "missing", tmp_path)), 3)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("hi")
    _code(run(*_args(cmd, tmp_path / "foreign", tmp_path)), 3)


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "IDX", "--input", "BAD"],
        ["delete", "IDX", "--id", "abc"],
        ["query", "IDX", "--vector", "[0, 0]"],
        ["query", "IDX", "--vector", "[0,0,0,0]", "--filter", "x ="],
        ["query", "IDX", "--input", "BAD"],
    ],
)
def test_invalid_input_exits_4(index, args):
    bad = index.parent / "bad.npy"
    np.save(bad, np.ones((2, 3), np.float32))
    _code(run(*[index if a == "IDX" else bad if a == "BAD" else a for a in args]), 4)


def _flip_ids_section(idx):
    from tidepool_cli.storage.container import open_container

    seg = next((idx / "segments").glob("*.tpvs"))
    off = open_container(seg, "seg", b"VSEG", 1).sections["ids"].offset
    raw = bytearray(seg.read_bytes())
    raw[off + 1] ^= 0x40
    seg.write_bytes(bytes(raw))


# ingest only appends to the WAL; every command that reads a segment's ids refuses a damaged one.
@pytest.mark.parametrize("cmd", ["delete", "compact", "build-hnsw", "build-ivf", "query", "get", "count", "export", "stats"])
def test_corrupt_index_exits_5(index, cmd):
    _flip_ids_section(index)
    _code(run(*_args(cmd, index, index.parent)), 5)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_unsupported_format_exits_8(index, cmd):
    from tidepool_cli.storage import sealed

    settings = json.loads((index / "tidepool.json").read_text())
    settings.pop("checksum")
    settings["format_version"] = 99
    (index / "tidepool.json").write_bytes(sealed.seal(settings))  # a well-formed file of a newer release
    _code(run(*_args(cmd, index, index.parent)), 8)


@pytest.fixture()
def unreadable(monkeypatch):
    """Make chosen paths unreadable, as chmod 000 would for a non-root user (tests run as root)."""
    denied = set()
    real_open = builtins.open

    def guarded(file, *a, **k):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)
    return denied


@pytest.mark.parametrize("name", ["in.npy", "in.jsonl", "in.fvecs"])
@pytest.mark.parametrize("cmd", ["ingest", "query"])
def test_unreadable_input_file_exits_10(index, unreadable, name, cmd):
    src = index.parent / name
    x = np.ones((2, 4), np.float32)
    if name.endswith(".npy"):
        np.save(src, x)
    elif name.endswith(".jsonl"):
        src.write_text('{"vector": [1, 2, 3, 4]}\n')
    else:
        src.write_bytes(np.hstack([np.full((2, 1), 4, "<i4").view("<f4"), x]).tobytes())
    unreadable.add(str(src))
    r = run(cmd, index, "--input", src)
    _code(r, 10)
    assert "permission denied" in r.stderr


def test_unreadable_ids_file_exits_10(index, unreadable):
    (index.parent / "ids.txt").write_text("1\n")
    unreadable.add(str(index.parent / "ids.txt"))
    _code(run("delete", index, "--ids-file", index.parent / "ids.txt"), 10)


def _pipe(args):
    """Run tidepool with stdout a real pipe whose read end is closed early, as `| head -c 0` does.

    The read end closes while the interpreter still starts up, long before the first write.
    """
    p = subprocess.Popen([sys.executable, "-m", "tidepool_cli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    p.stderr.close()
    return p.wait(), err.decode()


@pytest.mark.parametrize("fmt", ["table", "json", "jsonl"])
def test_output_into_a_closed_pipe_exits_141_quietly(tmp_path, fmt):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(300, 4)).astype(np.float32))
    idx = tmp_path / "idx"
    assert run("ingest", idx, "--input", tmp_path / "x.npy").exit_code == 0
    # Enough output that it cannot all sit in the pipe's buffer before the reader closes it.
    code, err = _pipe(["query", idx, "--input", tmp_path / "x.npy", "-k", 100, "--format", fmt])
    assert (code, err) == (141, "")


def test_stats_table_into_a_closed_pipe_exits_141_quietly(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2), np.float32))
    idx = tmp_path / "idx"
    assert run("ingest", idx, "--input", tmp_path / "x.npy").exit_code == 0
    code, err = _pipe(["stats", idx])
    assert (code, err) == (141, "")


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs (a disk that fills up), where the machine lets tests mount one."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_on_a_first_ingest_exits_10_and_creates_nothing(tmp_path, small_tmpfs):
    np.save(tmp_path / "big.npy", np.ones((4096, 128), np.float32))  # 2 MiB of vectors
    _code(run("ingest", small_tmpfs / "idx", "--input", tmp_path / "big.npy"), 10)
    assert os.listdir(small_tmpfs) == []


@pytest.mark.parametrize("cmd", COMMANDS)
def test_read_only_mount(tmp_path, small_tmpfs, cmd):
    """Writers exit 10 on a read-only mount; readers answer as usual."""
    np.save(tmp_path / "base.npy", np.ones((20, 4), np.float32))
    assert run("ingest", small_tmpfs / "idx", "--input", tmp_path / "base.npy").exit_code == 0
    assert run("compact", small_tmpfs / "idx").exit_code == 0
    assert run("ingest", small_tmpfs / "idx", "--input", tmp_path / "base.npy").exit_code == 0  # work left for compact
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True).returncode == 0
    writes = cmd in ("ingest", "delete", "compact", "build-hnsw", "build-ivf")
    _code(run(*_args(cmd, small_tmpfs / "idx", tmp_path)), 10 if writes else 0)
