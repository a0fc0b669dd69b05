"""Helpers shared by the storage fault tests: a small index, the CLI as a subprocess."""

import os
import subprocess
import sys

import numpy as np

from tidepool_cli.ops.compact import compact
from tidepool_cli.ops.ingest import ingest


def tidepool(*args, input=None, timeout=60):
    """Run the CLI in a fresh process; returns the CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "tidepool_cli", *map(str, args)], input=input, capture_output=True, text=True, timeout=timeout, env=dict(os.environ)
    )


def one_error_line(r, code, pattern):
    """The command failed with ``code`` and exactly one ``Error:`` line containing ``pattern``."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: ") and pattern in lines[0], r.stderr


def make_index(tmp_path, rows=600, dim=8, wal_files=2, seed=0):
    """A compacted index of ``rows`` rows plus ``wal_files`` pending WAL files of 10 rows each."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    np.save(tmp_path / "base.npy", x)
    idx = tmp_path / "idx"
    ingest(idx, tmp_path / "base.npy")
    compact(idx)
    for i in range(wal_files):
        np.save(tmp_path / f"more{i}.npy", rng.normal(size=(10, dim)).astype(np.float32))
        ingest(idx, tmp_path / f"more{i}.npy")
    return idx
