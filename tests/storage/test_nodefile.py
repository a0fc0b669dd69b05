"""The Vamana node file: page-aligned records, round trip, per-block checksums."""

import numpy as np
import pytest

from tidepool_cli.engine.graph import ExactPairs
from tidepool_cli.engine.vamana import build_vamana
from tidepool_cli.engine.vamana_search import search_vamana
from tidepool_cli.engine.topk import knn
from tidepool_cli.errors import CorruptIndexError
from tidepool_cli.storage import nodefile
from tidepool_cli.storage.container import open_container
from tidepool_cli.storage.nodefile import open_nodefile, write_nodefile


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((1500, 32)) + 4 * rng.standard_normal((10, 32))[rng.integers(0, 10, 1500)]).astype(np.float32)
    return x, build_vamana(x, "l2", r=24, l=48, seed=2)


def test_round_trip(tmp_path, data):
    x, G = data
    p = tmp_path / "seg.vamana"
    nbytes, _ = write_nodefile(p, x, G, meta={"segment": "seg-1"})
    f = open_nodefile(p, "seg.vamana")
    assert f.nbytes == nbytes and f.records_offset % 4096 == 0
    assert f.meta["segment"] == "seg-1" and f.meta["r"] == 24 and f.meta["medoid"] == G.medoid
    rows = np.arange(x.shape[0])
    vec, nb, _ = f.records.read(rows)
    assert np.array_equal(vec, x) and np.array_equal(nb, G.adjacency)
    assert not f.records.blocks.flags.writeable
    f.verify()
    _, gt = knn(x[:20], x, 10, "l2")
    ids, _, _ = search_vamana(f.records, x[:20], 10, score=ExactPairs(x, x[:20], "l2"), metric="l2", l=48)
    assert np.mean([len(set(a) & set(b)) for a, b in zip(ids, gt)]) >= 9.5


def test_one_damaged_block_is_found_by_its_own_crc(tmp_path, data):
    x, G = data
    p = tmp_path / "seg.vamana"
    write_nodefile(p, x, G)
    f = open_nodefile(p, "seg.vamana")
    off = f.records_offset + 7 * 4096 + 100
    f.check_blocks(np.array([7]))
    raw = bytearray(p.read_bytes())
    raw[off] ^= 0xFF
    p.write_bytes(bytes(raw))
    # The records are bulk: opening still works, the damaged block is caught when checked.
    f = open_nodefile(p, "seg.vamana")
    f.check_blocks(np.array([0, 6, 8]))
    with pytest.raises(CorruptIndexError, match="node block 7"):
        f.check_blocks(np.array([3, 7]))
    with pytest.raises(CorruptIndexError):
        f.verify()


def test_damaged_small_sections_or_truncation_are_refused(tmp_path, data):
    x, G = data
    p = tmp_path / "seg.vamana"
    write_nodefile(p, x, G)
    good = p.read_bytes()
    raw = bytearray(good)
    c = open_container(p, "seg.vamana", nodefile.KIND, nodefile.VERSION)
    raw[c.sections["slot_of"].offset + 8] ^= 0xFF
    p.write_bytes(bytes(raw))
    with pytest.raises(CorruptIndexError):
        open_nodefile(p, "seg.vamana")
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptIndexError):
        open_nodefile(p, "seg.vamana")


def test_wide_records(tmp_path):
    x = np.random.default_rng(1).standard_normal((40, 1100)).astype(np.float32)
    G = build_vamana(x, "l2", r=8, l=16)
    p = tmp_path / "wide.vamana"
    write_nodefile(p, x, G)
    f = open_nodefile(p, "wide.vamana")
    assert f.layout.block_sectors == 2 and f.records.blocks.shape[1] == 8192
    vec, nb, _ = f.records.read(np.arange(40))
    assert np.array_equal(vec, x) and np.array_equal(nb, G.adjacency)
    assert nodefile.KIND == b"VAMN"
