"""Writers that pause while a compaction collects garbage keep their unpublished files.

Both races were seen under cron: a build or a slow stdin ingest pauses (SIGSTOP, a slow
disk) while ``compact --grace 0`` runs; the compaction's garbage collection must not
remove the file the paused writer is about to publish.
"""

import numpy as np
import pytest

import tidepool_cli.ops.build_hnsw as build_hnsw_mod
from tidepool_cli.errors import ConflictError
from tidepool_cli.ops.build_hnsw import build_hnsw
from tidepool_cli.ops.query import query
from tidepool_cli.ops.stats import stats
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import read_current
from tidepool_cli.storage.owner import owner_alive, owner_of, owner_tag
from tidepool_cli.storage.records import Batch
from tidepool_cli.storage.wal import WalWriter

from storage_helpers import make_index, tidepool


def test_build_paused_during_compaction_publishes_an_intact_sidecar(tmp_path, monkeypatch):
    idx = make_index(tmp_path, wal_files=0)
    real = build_hnsw_mod.write_hnsw

    def write_then_pause(layout, entry, graph, params):
        ref = real(layout, entry, graph, params)
        r = tidepool("compact", idx, "--grace", "0")  # another process collects garbage meanwhile
        assert r.returncode == 0, r.stderr
        assert layout.path(ref.path).exists(), "garbage collection removed a file a running build will publish"
        return ref

    monkeypatch.setattr(build_hnsw_mod, "write_hnsw", write_then_pause)
    res = build_hnsw(idx, min_rows=0)
    assert res.built == ["seg-000001"]
    assert stats(idx, verify=True).problems == []
    assert "hnsw" in read_current(Layout(idx)).segments[0].indexes


def test_slow_ingest_keeps_its_pending_wal_file_through_a_compaction(tmp_path):
    idx = make_index(tmp_path, wal_files=0)
    layout = Layout(idx)
    vec = np.ones((3, 8), np.float32)
    with WalWriter(layout) as writer:
        writer.append(Batch("upsert", 3, np.array([10_000, 10_001, 10_002]), vec))
        r = tidepool("compact", idx, "--grace", "0")  # the ingest is "sleeping" on its stdin
        assert r.returncode == 0, r.stderr
        writer.append(Batch("upsert", 3, np.array([10_003, 10_004, 10_005]), vec))
        writer.publish(5.0, "ingest")
    assert stats(idx, verify=True).problems == []
    assert sorted(query(idx, vec[:1], 6).ids[0]) == list(range(10_000, 10_006))


def test_stdin_ingest_that_sleeps_survives_compact_grace_1(tmp_path):
    """The reproduction from the field, end to end through two processes."""
    import subprocess
    import sys
    import time

    idx = make_index(tmp_path, wal_files=0)
    rows = [f'{{"id": {20_000 + i}, "vector": [{", ".join(["0.5"] * 8)}]}}\n' for i in range(50)]
    p = subprocess.Popen([sys.executable, "-m", "tidepool_cli", "ingest", str(idx), "--input", "-", "--batch-rows", "20"],
                         stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    p.stdin.write("".join(rows[:30]))
    p.stdin.flush()
    time.sleep(1.5)  # the first batch is written to the pending file by now
    assert tidepool("compact", idx, "--grace", "1").returncode == 0
    time.sleep(1.2)
    assert tidepool("compact", idx, "--grace", "1").returncode == 0
    out, err = p.communicate("".join(rows[30:]), timeout=60)
    assert p.returncode == 0, err
    assert stats(idx).live_rows == 650


def test_a_sidecar_that_vanishes_before_publication_is_never_named(tmp_path, monkeypatch):
    idx = make_index(tmp_path, wal_files=0)
    real = build_hnsw_mod.write_hnsw

    def write_then_lose(layout, entry, graph, params):
        ref = real(layout, entry, graph, params)
        layout.path(ref.path).unlink()
        return ref

    monkeypatch.setattr(build_hnsw_mod, "write_hnsw", write_then_lose)
    with pytest.raises(ConflictError, match="removed before it could be published"):
        build_hnsw(idx, min_rows=0)
    assert read_current(Layout(idx)).segments[0].indexes == {}
    assert stats(idx, verify=True).problems == []


def test_owner_tags_name_live_and_dead_writers(tmp_path):
    import subprocess
    import sys

    pid, start = owner_of(f"x.tmp.{owner_tag()}.abcd1234")
    assert owner_alive(pid, start)
    assert not owner_alive(pid, start + 1)  # the pid was recycled by another process
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not owner_alive(p.pid, 0)
    assert owner_of("seg-000001.0123456789ab.tpvs") is None  # format 1 names: grace period only
