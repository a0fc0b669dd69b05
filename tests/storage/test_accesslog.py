"""Access logs: appends from several processes at once, torn tails, killed writers, folding once."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tidepool_cli.errors import InvalidInputError
from tidepool_cli.storage.accesslog import (
    FRAME,
    SUFFIX,
    AccessRecorder,
    collect_access_logs,
    parse_log,
)
from tidepool_cli.storage.atomic import TMP_MARK

ROOT = Path(__file__).resolve().parents[2]

WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from tidepool_cli.storage.accesslog import AccessRecorder
    directory, k, frames, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rec = AccessRecorder(directory)
    for j in range(frames):
        rec.record(f"seg-{k:06d}", np.arange(j, j + 10) * (k + 1), timestamp=1000.0 * k + j)
        if j == frames // 2:
            print("half", flush=True)
            time.sleep(hold)
    rec.close()
    print("done", flush=True)
    """
)


def spawn(directory, k, frames=200, hold=0.0):
    return subprocess.Popen([sys.executable, "-c", WRITER, str(directory), str(k), str(frames), str(hold)],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)


def expected(k, frames):
    rows = np.concatenate([np.arange(j, j + 10) * (k + 1) for j in range(frames)])
    ts = np.repeat(1000.0 * k + np.arange(frames), 10)
    return rows, ts


def test_records_round_trip_and_files_are_removed_once_folded(tmp_path):
    d = tmp_path / "access"
    with AccessRecorder(d) as rec:
        rec.record("seg-000001", np.array([3, 1, 4]), timestamp=1.5)
        rec.record("seg-000002", np.array([], np.int64))  # nothing to write
        rec.record("seg-000002", np.array([2**32 - 1]), timestamp=2.0)
        rec.record("seg-000001", np.array([5]))
        path = rec.path
    assert path.parent == d and path.name.endswith(SUFFIX) and TMP_MARK not in path.name
    with collect_access_logs(d) as batch:
        r = batch.records
        assert r.segments == ("seg-000001", "seg-000002") and len(r) == 5 and batch.torn == 0
        rows, ts = r.of("seg-000001")
        assert rows.tolist() == [3, 1, 4, 5] and ts[:3].tolist() == [1.5] * 3 and abs(ts[3] - time.time()) < 60
        assert r.of("seg-000002")[0].tolist() == [2**32 - 1] and len(r.of("seg-000009")[0]) == 0
        assert batch.remove() == 1
    assert list(d.iterdir()) == []
    with pytest.raises(InvalidInputError):
        AccessRecorder(d).record("seg-000001", np.array([-1]))
    assert len(collect_access_logs(tmp_path / "missing").records) == 0


def test_torn_tails_are_ignored_and_the_complete_frames_kept(tmp_path):
    d = tmp_path / "access"
    with AccessRecorder(d) as rec:
        for j in range(5):
            rec.record("seg-000007", np.arange(j + 1), timestamp=float(j))
        path = rec.path
    good = path.read_bytes()
    frame_ends = np.cumsum([FRAME.size + 12 + 4 * (j + 1) for j in range(5)])  # name "seg-000007" pads to 12
    assert frame_ends[-1] == len(good)
    for cut, frames in [(len(good) - 1, 4), (int(frame_ends[2]) + 10, 3), (5, 0), (int(frame_ends[1]), 2)]:
        got, torn = parse_log(good[:cut])
        assert len(got) == frames and torn == (cut not in frame_ends)
        assert [f[1].tolist() for f in got] == [list(range(j + 1)) for j in range(frames)]
    got, torn = parse_log(good + b"\0" * 4096)  # a zero-filled tail after a power loss
    assert len(got) == 5 and torn
    damaged = bytearray(good)
    damaged[int(frame_ends[2]) + FRAME.size + 13] ^= 1  # a row of frame 3
    got, torn = parse_log(bytes(damaged))
    assert len(got) == 3 and torn
    path.write_bytes(good[: int(frame_ends[3]) + 7])
    batch = collect_access_logs(d)
    assert batch.torn == 1 and len(batch.records) == 1 + 2 + 3 + 4
    batch.remove()


def test_several_processes_append_while_a_collector_folds(tmp_path):
    d = tmp_path / "access"
    writers = [spawn(d, k, frames=300) for k in range(4)]
    seen = []

    def fold_once():
        batch = collect_access_logs(d)  # takes only the files of writers that have finished
        r = batch.records
        seen.append((np.array(r.segments + ("",))[r.segment], r.rows, r.ts))
        batch.remove()

    while any(w.poll() is None for w in writers):
        fold_once()
        time.sleep(0.05)
    assert all(w.wait() == 0 for w in writers)
    fold_once()
    seg, rows, ts = (np.concatenate(parts) for parts in zip(*seen))
    for k in range(4):
        sel = seg == f"seg-{k:06d}"
        want_rows, want_ts = expected(k, 300)
        order = np.lexsort((rows[sel], ts[sel]))
        np.testing.assert_array_equal(rows[sel][order], want_rows)  # every record exactly once
        np.testing.assert_array_equal(ts[sel][order], want_ts)
    assert list(d.iterdir()) == []


def test_a_live_writer_s_file_is_left_alone_and_a_killed_one_s_is_folded(tmp_path):
    d = tmp_path / "access"
    w = spawn(d, 1, frames=100, hold=30.0)
    assert w.stdout.readline().strip() == "half"
    batch = collect_access_logs(d)
    assert batch.files == [] and len(list(d.glob(f"*{SUFFIX}"))) == 1  # still appending: not taken
    os.kill(w.pid, signal.SIGKILL)
    w.wait()
    batch = collect_access_logs(d)
    rows, ts = batch.records.of("seg-000001")
    want_rows, want_ts = expected(1, 51)  # frames 0..50 were written before the pause
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(ts, want_ts)
    names = batch.names
    batch.release()  # e.g. metamorph crashed after publishing, before removing
    again = collect_access_logs(d, folded=names)
    assert len(again.records) == 0 and again.files == batch.files  # not counted twice
    assert again.remove() == 1


def test_recording_is_best_effort_when_the_directory_cannot_be_written(tmp_path):
    blocker = tmp_path / "access"
    blocker.write_text("not a directory")
    rec = AccessRecorder(blocker)
    rec.record("seg-000001", np.arange(3))  # no exception: recording just turns off
    assert not rec.enabled
    stale = tmp_path / "d"
    stale.mkdir()
    leftover = stale / f"1-abc{SUFFIX}{TMP_MARK}1.deadbeef"
    leftover.write_bytes(b"")
    collect_access_logs(stale, now=time.time())
    assert leftover.exists()  # young: its writer may be about to rename it
    collect_access_logs(stale, now=time.time() + 3600).release()
    assert not leftover.exists()


def test_collected_records_fold_into_row_temperatures(tmp_path):
    from tidepool_cli.engine.metamorph import ADULT, LARVAL, apply, fold, make_policy, new_rows, plan

    day, pol = 1_700_006_400, make_policy("balanced")
    d = tmp_path / "access"
    with AccessRecorder(d) as rec:
        for i in range(12):  # row 3 is hot: 12 accesses in one 2-minute window
            rec.record("seg-000001", np.array([3, 7 * (i % 2)]), timestamp=day + 5.75 * i)
        rec.record("seg-000002", np.array([1]), timestamp=day + 1)
    meta = new_rows(10, day - 3600, stage=LARVAL, larval_bits=2)
    with collect_access_logs(d) as batch:
        rows, ts = batch.records.of("seg-000001")
        meta = fold(meta, rows, ts, pol)
        p = plan(meta, pol, day + 600)
        meta = apply(meta, p, pol)
        batch.remove()
    assert p.counts() == {"larval->adult": 1, "larval->nymph": 2} and meta.stage[3] == ADULT  # rows 0 and 7 are warm
    assert meta.access_count[[0, 3, 7]].tolist() == [6, 12, 6] and meta.last_access[3] == day + 63  # 5.75 * 11 rounded down
    assert list(d.iterdir()) == []


def test_a_fifo_or_symlink_in_the_access_directory_is_skipped_not_opened(tmp_path):
    directory = tmp_path / "access"
    directory.mkdir()
    os.mkfifo(directory / f"1-fifo{SUFFIX}")  # opening it for reading would block forever
    outside = tmp_path / "outside.tpal"
    outside.write_bytes(b"x" * 100)
    (directory / f"2-link{SUFFIX}").symlink_to(outside)
    batch = collect_access_logs(directory)
    assert len(batch.records.rows) == 0 and batch.names == []
    batch.release()
