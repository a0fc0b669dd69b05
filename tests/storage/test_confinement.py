"""An index directory someone hands you never makes tidepool read or delete outside it.

Paths from the manifest, its obsolete list and the WAL directory are confined; metadata
reads are bounded and never open a FIFO or a device; LOCK is never followed.
"""

import json
import os
import time

import numpy as np
import pytest

from tidepool_cli.storage import sealed
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import read_current

from storage_helpers import make_index, one_error_line, tidepool

VEC = json.dumps([0.0] * 8)


def current_manifest(idx):
    return next(p for p in idx.glob("manifest-*.json") if p.name in (idx / "CURRENT").read_text())


def rewrite_manifest(idx, change):
    """Edit the current manifest and seal it again, as a hostile (not a damaged) index would."""
    path = current_manifest(idx)
    d = json.loads(path.read_bytes())
    d.pop("checksum")
    change(d)
    path.write_bytes(sealed.seal(d, indent=1))


@pytest.mark.parametrize("target", ["../../etc/passwd", "/etc/passwd", "segments/../../outside.tpvs"])
def test_segment_paths_leaving_the_index_are_refused(tmp_path, target):
    idx = make_index(tmp_path, wal_files=0)
    rewrite_manifest(idx, lambda d: d["segments"][0]["vectors"].update(path=target))
    one_error_line(tidepool("query", idx, "--vector", VEC), 5, "leaves the index directory")
    one_error_line(tidepool("stats", idx, "--verify"), 5, "leaves the index directory")


def test_compact_never_deletes_outside_the_index(tmp_path):
    idx = make_index(tmp_path, wal_files=1)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    for path in ("../victim", str(victim)):
        rewrite_manifest(idx, lambda d: d["obsolete"].append({"path": path, "since_unix": 0.0}))
        r = tidepool("compact", idx, "--grace", "0")
        one_error_line(r, 5, "leaves the index directory")
        assert victim.read_text() == "keep me"
        rewrite_manifest(idx, lambda d: d["obsolete"].pop())


def test_segment_symlinks_out_of_the_index_or_in_a_loop_are_refused(tmp_path):
    idx = make_index(tmp_path, wal_files=0)
    seg = idx / read_current(Layout(idx)).segments[0].vectors.path
    outside = tmp_path / "elsewhere.tpvs"
    os.rename(seg, outside)
    seg.symlink_to(outside)
    one_error_line(tidepool("query", idx, "--vector", VEC), 5, "outside the index directory")
    seg.unlink()
    seg.symlink_to(seg)
    one_error_line(tidepool("query", idx, "--vector", VEC), 5, "symlink loop")


def test_a_wal_name_that_is_a_directory_is_reported(tmp_path):
    idx = make_index(tmp_path, wal_files=1)
    last = max(int(p.stem) for p in (idx / "wal").glob("*.wal"))
    (idx / "wal" / f"{last + 1:012d}.wal").mkdir()
    one_error_line(tidepool("query", idx, "--vector", VEC), 5, "not a regular file")


@pytest.mark.parametrize("name", ["CURRENT", "tidepool.json"])
def test_metadata_that_is_a_device_or_a_fifo_neither_hangs_nor_eats_memory(tmp_path, name):
    idx = make_index(tmp_path, wal_files=0)
    (idx / name).unlink()
    (idx / name).symlink_to("/dev/zero")
    t0 = time.monotonic()
    one_error_line(tidepool("stats", idx, timeout=20), 5, name)
    (idx / name).unlink()
    os.mkfifo(idx / name)
    one_error_line(tidepool("stats", idx, timeout=20), 5, "not a regular file")
    assert time.monotonic() - t0 < 20  # a generous hang guard, not a speed claim


def test_a_huge_metadata_file_is_refused_without_reading_it_whole(tmp_path):
    idx = make_index(tmp_path, wal_files=0)
    with open(idx / "CURRENT", "wb") as f:
        f.truncate(1 << 30)  # sparse: costs no disk
    one_error_line(tidepool("stats", idx), 5, "larger than")


def test_lock_symlink_is_not_followed(tmp_path):
    idx = make_index(tmp_path, wal_files=0)
    target = tmp_path / "precious"
    target.write_text("precious data")
    (idx / "LOCK").unlink()
    (idx / "LOCK").symlink_to(target)
    np.save(tmp_path / "v.npy", np.ones((2, 8), np.float32))
    one_error_line(tidepool("ingest", idx, "--input", tmp_path / "v.npy"), 5, "symlink")
    assert target.read_text() == "precious data"
