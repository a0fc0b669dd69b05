"""Roots of trust: CURRENT, manifests, tidepool.json and the WAL sequence are all checked.

Every damage here used to be read silently (wrong answers with a clean ``--verify``) or
to end in a traceback; each must now be a one-line exit 5 naming the file, or, for a
damaged or missing CURRENT, a recovery that says so on stderr.
"""

import json
import os

import numpy as np
import pytest

from tidepool_cli.errors import CorruptIndexError, IndexRecoveryWarning, UnsupportedFormatError
from tidepool_cli.ops.build_hnsw import build_hnsw
from tidepool_cli.ops.compact import compact
from tidepool_cli.ops.query import query
from tidepool_cli.ops.stats import stats
from tidepool_cli.storage import sealed
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import read_current
from tidepool_cli.storage.wal import list_wal

from storage_helpers import make_index, one_error_line, tidepool

Q = np.zeros((1, 8), np.float32)


def flip(path, offset, mask=0x04):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))


def test_missing_or_damaged_current_recovers_the_newest_intact_manifest(tmp_path):
    idx = make_index(tmp_path)
    want = query(idx, Q, 10).ids
    current = idx / "CURRENT"
    good = current.read_bytes()
    for damage in (None, b"manifest-000001.jso\xff crc32:00000000\n", good.replace(b"000001", b"000007")):
        if damage is None:
            current.unlink()
        else:
            current.write_bytes(damage)
        with pytest.warns(IndexRecoveryWarning, match="newest intact manifest"):
            assert query(idx, Q, 10).ids == want
        r = tidepool("query", idx, "--vector", json.dumps([0.0] * 8))
        assert r.returncode == 0 and r.stderr.startswith("Warning: ") and "CURRENT" in r.stderr, r.stderr
        current.write_bytes(good)
    assert query(idx, Q, 10).ids == want


def test_a_flipped_manifest_byte_is_detected(tmp_path):
    idx = make_index(tmp_path)
    build_hnsw(idx, min_rows=0)
    manifest = next(p for p in idx.glob("manifest-*.json") if p.name in (idx / "CURRENT").read_text())
    text = manifest.read_bytes()
    at = text.index(b'"ef_construction"') + 20  # inside the index parameters
    flip(manifest, at)
    with pytest.raises(CorruptIndexError, match="checksum mismatch"):
        read_current(Layout(idx))
    one_error_line(tidepool("stats", idx, "--verify"), 5, manifest.name)


def test_unknown_reader_feature_is_refused_naming_it(tmp_path):
    idx = make_index(tmp_path)
    manifest = next(p for p in idx.glob("manifest-*.json") if p.name in (idx / "CURRENT").read_text())
    d = json.loads(manifest.read_bytes())
    d.pop("checksum")
    d["features"] = ["sidecar.vamana"]
    manifest.write_bytes(sealed.seal(d, indent=1))
    with pytest.raises(UnsupportedFormatError, match="sidecar.vamana"):
        read_current(Layout(idx))
    one_error_line(tidepool("query", idx, "--vector", json.dumps([0.0] * 8)), 8, "'sidecar.vamana'")


@pytest.mark.parametrize("damage", ["truncate-at-boundary", "remove-middle", "remove-last", "renumber"])
def test_wal_damage_is_never_skipped(tmp_path, damage):
    idx = make_index(tmp_path, wal_files=3)
    wal = [p for seq, p in list_wal(Layout(idx)) if seq > read_current(Layout(idx)).wal_applied_through]
    assert len(wal) == 3
    if damage == "truncate-at-boundary":
        from tidepool_cli.storage.container import open_container

        first = open_container(wal[2], "w", b"WALR", 2, verify="header")
        with open(wal[2], "r+b") as f:  # keep the data record, drop the end record
            f.truncate(first.length)
        name = wal[2].name
    elif damage == "remove-middle":
        wal[1].unlink()
        name = wal[1].name
    elif damage == "remove-last":
        wal[2].unlink()
        name = wal[2].name
    else:
        os.rename(wal[2], wal[2].with_name(f"{int(wal[2].stem) + 1:012d}.wal"))
        name = wal[2].name
    with pytest.raises(CorruptIndexError, match=name):
        query(idx, Q, 10)
    r = tidepool("stats", idx, "--verify", "--json")
    assert r.returncode == 5 and name in r.stderr, r.stderr
    one_error_line(tidepool("query", idx, "--vector", json.dumps([0.0] * 8)), 5, name)


def test_settings_flips_are_damage_not_a_newer_release(tmp_path):
    idx = make_index(tmp_path, wal_files=0)
    path = idx / "tidepool.json"
    good = path.read_bytes()
    for old, new in ((b'"format_version"', b'"format_versinn"'), (b'"format_version": 2', b'"format_version": 3'), (b'"dim": 8', b'"dim": 9')):
        path.write_bytes(good.replace(old, new))
        one_error_line(tidepool("stats", idx), 5, "tidepool.json")
    path.write_bytes(good)
    assert tidepool("stats", idx).returncode == 0


def test_stats_verify_reports_the_counts_it_can_read(tmp_path):
    idx = make_index(tmp_path, wal_files=2)
    plain = stats(idx)
    seg = idx / read_current(Layout(idx)).segments[0].vectors.path
    from tidepool_cli.storage.container import open_container

    vec = open_container(seg, "s", b"VSEG", 1, verify="header").sections["vectors"]
    flip(seg, vec.offset + 40)
    checked = stats(idx, verify=True)
    assert checked.problems == [f"{seg.relative_to(idx)}: checksum mismatch in section 'vectors'"]
    assert (checked.live_rows, checked.wal["rows"], checked.wal["files"]) == (plain.live_rows, 20, 2)


def test_compaction_never_launders_a_damaged_segment(tmp_path):
    """Four small segments merge on the fourth compaction: a flipped vector byte stops it."""
    rng = np.random.default_rng(1)
    idx = tmp_path / "idx"
    from tidepool_cli.ops.ingest import ingest

    for i in range(4):
        np.save(tmp_path / f"b{i}.npy", rng.normal(size=(50, 8)).astype(np.float32))
        ingest(idx, tmp_path / f"b{i}.npy")
        if i < 3:
            compact(idx)
    first = read_current(Layout(idx)).segments[0]
    from tidepool_cli.storage.container import open_container

    vec = open_container(idx / first.vectors.path, "s", b"VSEG", 1, verify="header").sections["vectors"]
    flip(idx / first.vectors.path, vec.offset + 4)
    before = sorted(p.name for p in (idx / "segments").iterdir())
    one_error_line(tidepool("compact", idx), 5, "section 'vectors'")
    assert sorted(p.name for p in (idx / "segments").iterdir()) == before  # no new segment holds them
    assert read_current(Layout(idx)).segments[0] == first


@pytest.mark.parametrize("how", ["missing", "damaged"])
def test_a_build_repairs_a_missing_or_damaged_sidecar_without_force(tmp_path, how):
    idx = make_index(tmp_path, wal_files=0)
    build_hnsw(idx, min_rows=0)
    ref = read_current(Layout(idx)).segments[0].indexes["hnsw"]
    if how == "missing":
        (idx / ref.path).unlink()
    else:
        flip(idx / ref.path, ref.bytes - 8)
    assert stats(idx, verify=True).problems
    res = build_hnsw(idx, min_rows=0)
    assert res.built == ["seg-000001"] and res.repaired == ["seg-000001"]
    assert stats(idx, verify=True).problems == []
    assert build_hnsw(idx, min_rows=0).built == []  # intact now: nothing to do


def test_recovery_skips_damaged_manifests_and_manifests_with_missing_files(tmp_path):
    idx = make_index(tmp_path, wal_files=1)
    compact(idx)  # generation 2; generation 1 and its files stay for the grace period
    names = sorted(p.name for p in idx.glob("manifest-*.json"))
    assert names == ["manifest-000001.json", "manifest-000002.json"]
    flip(idx / names[1], 30)
    (idx / "CURRENT").unlink()
    with pytest.warns(IndexRecoveryWarning, match=names[0]):
        assert read_current(Layout(idx)).generation == 1
    seg = idx / json.loads((idx / names[0]).read_text())["segments"][0]["vectors"]["path"]
    os.rename(seg, seg.with_suffix(".moved"))  # generation 1's segment is gone too
    with pytest.raises(CorruptIndexError, match="no manifest passes"):
        read_current(Layout(idx))


def test_stats_shows_attributes_still_in_the_wal(tmp_path):
    idx = tmp_path / "idx"
    from tidepool_cli.ops.ingest import ingest

    (tmp_path / "a.jsonl").write_text('{"vector": [1, 2], "attributes": {"color": "red", "n": 3}}\n')
    ingest(idx, tmp_path / "a.jsonl")
    assert stats(idx).attributes == {"color": "string", "n": "int"}
