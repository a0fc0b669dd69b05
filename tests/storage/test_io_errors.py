"""Disk full, read-only file systems and permission errors: exit 10, one line, index unchanged.

Real file systems where the machine allows mounting (a small tmpfs, a read-only bind
mount); otherwise those tests skip. The permission cases monkeypatch the errno in.
"""

import errno
import hashlib
import os
import shutil
import subprocess

import numpy as np
import pytest

from tidepool_cli.errors import StorageIOError
from tidepool_cli.ops.build_hnsw import build_hnsw
from tidepool_cli.ops.compact import compact
from tidepool_cli.ops.delete import delete
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.stats import stats

from storage_helpers import make_index, one_error_line, tidepool


def snapshot(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f != "LOCK":
                p = os.path.join(dirpath, f)
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def mount(*args):
    r = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
    return r.returncode == 0


@pytest.fixture()
def tmpfs(tmp_path):
    point = tmp_path / "small"
    point.mkdir()
    if shutil.which("mount") is None or not mount("-t", "tmpfs", "-o", "size=4m", "tmpfs", point):
        pytest.skip("cannot mount a tmpfs here")
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


@pytest.fixture()
def readonly(tmp_path):
    idx = make_index(tmp_path, wal_files=1)
    view = tmp_path / "ro"
    view.mkdir()
    if shutil.which("mount") is None or not mount("--bind", idx, view):
        pytest.skip("cannot bind-mount here")
    if not mount("-o", "remount,ro,bind", view):
        subprocess.run(["umount", "-l", str(view)], check=False)
        pytest.skip("cannot remount read-only here")
    yield tmp_path, view
    subprocess.run(["umount", "-l", str(view)], check=False)


def test_read_only_mount_refuses_every_write_with_exit_10(readonly):
    tmp_path, idx = readonly
    before = snapshot(idx)
    np.save(tmp_path / "v.npy", np.ones((2, 8), np.float32))
    for cmd in (["ingest", idx, "--input", tmp_path / "v.npy"], ["delete", idx, "--id", "1"], ["compact", idx],
                ["build-hnsw", idx, "--min-rows", "0"], ["build-ivf", idx, "--min-rows", "0"]):
        one_error_line(tidepool(*cmd), 10, "")
    assert snapshot(idx) == before
    assert tidepool("query", idx, "--vector", "[0,0,0,0,0,0,0,0]").returncode == 0  # reads still work
    assert tidepool("stats", idx, "--verify").returncode == 0


def test_disk_full_during_ingest_compact_and_build_leaves_the_index_as_it_was(tmpfs, tmp_path):
    rng = np.random.default_rng(0)
    idx = tmpfs / "idx"
    np.save(tmp_path / "small.npy", rng.normal(size=(3000, 64)).astype(np.float32))  # 768 KiB
    ingest(idx, tmp_path / "small.npy")
    compact(idx)
    np.save(tmp_path / "big.npy", rng.normal(size=(20000, 64)).astype(np.float32))  # 5 MiB: does not fit
    before = snapshot(idx)
    one_error_line(tidepool("ingest", idx, "--input", tmp_path / "big.npy"), 10, "no space left")
    assert snapshot(idx) == before
    np.save(tmp_path / "some.npy", rng.normal(size=(3000, 64)).astype(np.float32))
    ingest(idx, tmp_path / "some.npy")
    filler = tmpfs / "filler"
    free = shutil.disk_usage(tmpfs).free
    with open(filler, "wb") as f:  # leave too little room for the new segment
        f.write(b"\0" * max(free - 200_000, 0))
    before = snapshot(idx)
    one_error_line(tidepool("compact", idx), 10, "no space left")
    assert snapshot(idx) == before
    one_error_line(tidepool("build-hnsw", idx, "--min-rows", "0"), 10, "no space left")
    assert snapshot(idx) == before
    with open(filler, "ab", buffering=0) as f:  # now the disk is full to the last block
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    np.save(tmp_path / "two.npy", np.ones((2, 64), np.float32))
    one_error_line(tidepool("ingest", idx, "--input", tmp_path / "two.npy"), 10, "no space left")
    one_error_line(tidepool("delete", idx, "--id", "5"), 10, "no space left")
    assert snapshot(idx) == before
    filler.unlink()
    assert stats(idx, verify=True).problems == []
    assert compact(idx).changed


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC])
def test_os_errors_at_any_write_become_storage_errors(tmp_path, monkeypatch, code):
    idx = make_index(tmp_path, wal_files=1)
    before = snapshot(idx)
    real_fsync = os.fsync

    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    np.save(tmp_path / "v.npy", np.ones((2, 8), np.float32))
    for op in (lambda: ingest(idx, tmp_path / "v.npy"), lambda: delete(idx, ["1"]), lambda: compact(idx), lambda: build_hnsw(idx, min_rows=0)):
        with pytest.raises(StorageIOError):
            op()
        assert snapshot(idx) == before
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert stats(idx, verify=True).problems == []
