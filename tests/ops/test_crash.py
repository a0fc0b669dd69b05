"""SIGKILL at every durable step of ingest, delete and compact: the index always survives intact.

``TIDEPOOL_FAULT_STEP=N`` makes the command kill itself at its N-th write, fsync or
rename (see storage/atomic.py). Running N = 1, 2, 3, ... until the command completes
crashes it at every point where the on-disk state changes.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tidepool_cli.engine.topk import knn
from tidepool_cli.ops.compact import compact
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.query import query
from tidepool_cli.ops.stats import stats

pytestmark = pytest.mark.slow


def tidepool(*args, fault=None):
    env = dict(os.environ)
    if fault is not None:
        env["TIDEPOOL_FAULT_STEP"] = str(fault)
    return subprocess.run([sys.executable, "-m", "tidepool_cli", *map(str, args)], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    np.save(d / "old.npy", x[:400])
    np.save(d / "new.npy", x[400:])
    base = d / "base"
    ingest(base, d / "old.npy", batch_rows=150)
    compact(base)
    ingest(base, d / "old.npy")  # a pending WAL file that upserts ids 400..799 = copies of old rows
    return d, x, rng.normal(size=(5, 16)).astype(np.float32)


def check_intact(idx, q, candidates):
    """The index opens, verifies clean, and answers like exactly one of the candidate data sets."""
    r = tidepool("stats", idx, "--verify", "--json")
    assert r.returncode == 0, r.stderr
    got = query(idx, q, 10)
    matches = []
    for name, (xb, ids) in candidates.items():
        _, I = knn(q, xb, 10, "l2")
        if [list(ids[row]) for row in I] == got.ids:
            matches.append(name)
    assert len(matches) == 1, (matches, got.ids)
    return matches[0]


def run_until_done(make_copy, command, q, candidates, final):
    seen = set()
    for step in range(1, 200):
        idx = make_copy()
        r = tidepool(*command(idx), fault=step)
        if r.returncode == 0:
            assert check_intact(idx, q, candidates) == final  # acknowledged: the write is there
            return seen, step
        assert r.returncode == -9, (step, r.returncode, r.stderr)
        seen.add(check_intact(idx, q, candidates))
        # Recoverable: a compaction of the crashed index succeeds and keeps the answers.
        assert tidepool("compact", idx).returncode == 0
        check_intact(idx, q, candidates)
    raise AssertionError("the command never completed")


def test_kill_ingest_at_every_step(data, tmp_path):
    d, x, q = data
    old = np.concatenate([x[:400], x[:400]])
    cands = {"before": (old, np.arange(800)), "after": (np.concatenate([old, x[400:]]), np.arange(1000))}
    copies = iter(range(1000))

    def make_copy():
        dst = tmp_path / f"i{next(copies)}"
        shutil.copytree(d / "base", dst)
        return dst

    seen, steps = run_until_done(make_copy, lambda idx: ["ingest", idx, "--input", d / "new.npy", "--batch-rows", "70"], q, cands, "after")
    # Each crash shows all of the batches or none ("after" once the rename committed them,
    # before the command could acknowledge); many crash points were exercised.
    assert "before" in seen and seen <= {"before", "after"} and steps >= 8


def test_kill_compact_at_every_step(data, tmp_path):
    d, x, q = data
    old = np.concatenate([x[:400], x[:400]])
    cands = {"same": (old, np.arange(800))}
    copies = iter(range(1000))

    def make_copy():
        dst = tmp_path / f"c{next(copies)}"
        shutil.copytree(d / "base", dst)
        return dst

    seen, steps = run_until_done(make_copy, lambda idx: ["compact", idx], q, cands, "same")
    assert seen == {"same"} and steps > 5
    assert stats(make_copy()).wal["files"] == 1


def test_kill_delete_at_every_step(data, tmp_path):
    d, x, q = data
    old = np.concatenate([x[:400], x[:400]])
    keep = np.ones(800, bool)
    keep[[0, 1, 2, 401, 799]] = False
    cands = {"before": (old, np.arange(800)), "after": (old[keep], np.arange(800)[keep])}
    q = old[[0, 1, 2, 399]]  # queries whose answers include the deleted rows
    copies = iter(range(1000))

    def make_copy():
        dst = tmp_path / f"d{next(copies)}"
        shutil.copytree(d / "base", dst)
        return dst

    seen, _ = run_until_done(make_copy, lambda idx: ["delete", idx, *sum((["--id", i] for i in ["0", "1", "2", "401", "799"]), [])], q, cands, "after")
    assert "before" in seen
    assert json.loads(tidepool("stats", make_copy(), "--json").stdout)["live_rows"] == 800


def test_kill_build_hnsw_at_many_steps(data, tmp_path):
    """A build killed anywhere leaves the index answering as before; a rerun completes it.

    Every seventh durable step, to keep the suite short (a build has many steps)."""
    d, x, q = data
    old = np.concatenate([x[:400], x[:400]])
    cands = {"same": (old, np.arange(800))}
    idx = tmp_path / "b"
    for step in range(1, 400, 7):
        shutil.rmtree(idx, ignore_errors=True)
        shutil.copytree(d / "base", idx)
        r = tidepool("build-hnsw", idx, "--min-rows", "0", fault=step)
        check_intact(idx, q, cands)
        if r.returncode == 0:
            break
        assert r.returncode == -9, (step, r.returncode, r.stderr)
        assert tidepool("build-hnsw", idx, "--min-rows", "0").returncode == 0
        check_intact(idx, q, cands)
    else:
        raise AssertionError("the build never completed")
    assert step > 8
