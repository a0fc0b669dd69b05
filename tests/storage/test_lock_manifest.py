"""Writer lock, manifest parsing, and the WAL writer's all-or-nothing publication."""

import fcntl
import json
import os

import numpy as np
import pytest

from tidepool_cli.errors import CorruptIndexError, LockTimeoutError, UnsupportedFormatError
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.lock import WriterLock
from tidepool_cli.storage.manifest import Manifest, read_current
from tidepool_cli.storage.records import Batch, decode_strings, encode_strings
from tidepool_cli.storage.wal import WalWriter, list_wal, read_wal_file


def test_lock_times_out_naming_the_holder(tmp_path):
    with WriterLock(tmp_path, "compact", timeout=1):
        fd = os.open(tmp_path / "LOCK", os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        with pytest.raises(LockTimeoutError, match=r"pid \d+ \(compact\)"):
            with WriterLock(tmp_path, "ingest", timeout=0.05):
                pass
    with WriterLock(tmp_path, "ingest", timeout=0):
        pass  # released on exit


def test_manifest_round_trip_and_version_check(tmp_path):
    layout = Layout(tmp_path)
    assert read_current(layout).generation == 0
    m = Manifest(generation=3, wal_applied_through=7, schema={"a": "int"})
    d = m.to_dict()
    assert Manifest.from_dict(json.loads(json.dumps(d)), "m").to_dict() == d
    d["format_version"] = 99
    with pytest.raises(UnsupportedFormatError):
        Manifest.from_dict(d, "m")
    (tmp_path / "CURRENT").write_text("manifest-000009.json\n")
    with pytest.raises(CorruptIndexError):
        read_current(layout)


def test_wal_writer_publishes_all_records_or_nothing(tmp_path):
    layout = Layout(tmp_path)
    layout.wal_dir.mkdir()
    vec = np.ones((5, 3), np.float32)
    with WalWriter(layout) as w:  # left without publish(), as when a later batch is bad
        w.append(Batch("upsert", 5, None, vec))
        w.append(Batch("upsert", 5, np.arange(5), vec * 2))
    assert list_wal(layout) == [] and os.listdir(layout.wal_dir) == []  # aborted: nothing left
    with WalWriter(layout) as w:
        w.append(Batch("upsert", 5, None, vec))
        w.append(Batch("delete", 2, np.array([1, 2])))
        seq = w.publish(1.0, "test")
    assert seq == 1 and [s for s, _ in list_wal(layout)] == [1]
    recs = read_wal_file(layout, 1, list_wal(layout)[0][1])
    assert [r.meta["op"] for r in recs] == ["upsert", "delete"]
    np.testing.assert_array_equal(recs[0].batch().vectors, vec)
    assert recs[0].batch().ids is None and list(recs[1].batch().ids) == [1, 2]


@pytest.mark.parametrize("values", [[], ["a"], ["", "é", "日本語", "x" * 300, "plain"]])
def test_string_encoding_round_trip(values):
    arr = np.array(values, dtype=str) if values else np.zeros(0, "U1")
    off, data = encode_strings(arr)
    assert list(decode_strings(off, data)) == list(values)
