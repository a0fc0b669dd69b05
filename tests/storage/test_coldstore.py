"""The cold store: bit-perfect round trips on every data set, random row access, damage detection."""

import numpy as np
import pytest

from tests.conftest import DATA
from tidepool_cli.engine.byteshuffle import shuffle, unshuffle
from tidepool_cli.engine.distances import normalize_rows
from tidepool_cli.errors import CorruptIndexError, InvalidInputError
from tidepool_cli.storage.container import open_container
from tidepool_cli.storage.coldstore import ColdStore, default_block_rows, write_coldstore

SETS = ["siftsmall", "siftsmall-2k", "fashion-mnist", "glove-50-angular", "debian-minilm"]


def subset(name, n=3000, step=7):
    """Every ``step``-th of the first rows of a data set, as the float32 vectors an index stores."""
    path = DATA / name / "base.npy"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return np.ascontiguousarray(np.load(path, mmap_mode="r")[: n * step : step], dtype=np.float32)


def same_bytes(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", SETS)
def test_round_trip_is_bit_perfect_on_every_data_set(tmp_path, name):
    x = subset(name)
    angular = name in ("glove-50-angular", "debian-minilm")
    for i, vecs in enumerate([x, normalize_rows(x)] if angular else [x]):
        info = write_coldstore(tmp_path / f"{i}.cold", vecs)
        store = ColdStore(tmp_path / f"{i}.cold", f"{i}.cold")
        assert same_bytes(store.read_all(), vecs)
        assert info.nbytes == (tmp_path / f"{i}.cold").stat().st_size and info.ratio > 1.0
        assert store.block_rows == default_block_rows(vecs.shape[1], 4)


def test_every_storage_option_round_trips(tmp_path):
    x = subset("siftsmall", 1500)
    for i, kw in enumerate([{"shuffle_bytes": False}, {"dictionary": True}, {"dictionary": False, "level": 19},
                            {"block_rows": 1}, {"block_rows": 1499}, {"block_rows": 5000}]):
        write_coldstore(tmp_path / f"{i}.cold", x, **kw)
        assert same_bytes(ColdStore(tmp_path / f"{i}.cold", "c").read_all(), x), kw
    write_coldstore(tmp_path / "empty.cold", x[:0])
    assert ColdStore(tmp_path / "empty.cold", "c").read_all().shape == (0, 128)


def test_nan_payloads_negative_zero_infinities_and_subnormals_survive(tmp_path):
    bits = np.array([0x7FC00000, 0x7FC00001, 0xFFBAD123, 0x7F800001, 0x80000000, 0x00000000,
                     0x7F800000, 0xFF800000, 0x00000001, 0x807FFFFF, 0x3F800000, 0xDEADBEEF], np.uint32)
    x = np.tile(bits, (40, 3)).view(np.float32)
    x[::3] = -x[::3]  # flips sign bits, NaN payloads kept
    for i, kw in enumerate([{}, {"shuffle_bytes": False}, {"dictionary": True, "block_rows": 2}]):
        write_coldstore(tmp_path / f"{i}.cold", x, **kw)
        back = ColdStore(tmp_path / f"{i}.cold", "c").read_all()
        np.testing.assert_array_equal(back.view(np.uint32), x.view(np.uint32))


def test_byte_shuffle_is_an_exact_inverse_for_any_width():
    rng = np.random.default_rng(1)
    for dtype in (np.uint8, np.float16, np.float32, np.float64, np.int64):
        x = rng.integers(0, 255, (17, 5 * np.dtype(dtype).itemsize), dtype=np.uint8).view(dtype)
        planes = shuffle(x)
        assert planes.shape == (x.nbytes,) and planes[: x.size].tobytes() == x.view(np.uint8)[:, :: x.itemsize].tobytes()
        assert same_bytes(unshuffle(planes, dtype, x.shape), x)
        assert same_bytes(unshuffle(planes.tobytes(), dtype, x.shape), x)
    with pytest.raises(ValueError):
        unshuffle(np.zeros(7, np.uint8), np.float32, (2,))


def test_random_rows_decompress_only_their_blocks(tmp_path, monkeypatch):
    x = subset("glove-50-angular", 2000)
    write_coldstore(tmp_path / "g.cold", x, block_rows=64)
    store = ColdStore(tmp_path / "g.cold", "g.cold")
    assert isinstance(store._blocks.base, np.memmap) or isinstance(store._blocks, np.memmap)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 2000, 500)
    ids[:3] = [1999, 0, 1999]  # the last, partial block; repeats
    assert same_bytes(store.get(ids), x[ids])
    decoded = []
    real = store.block
    monkeypatch.setattr(store, "block", lambda b: decoded.append(b) or real(b))
    assert same_bytes(store.get(np.array([130, 129, 1000, 128])), x[[130, 129, 1000, 128]])
    assert sorted(decoded) == [2, 15]  # rows 128..130 share block 2; row 1000 is in block 15
    assert store.get(np.zeros(0, np.int64)).shape == (0, 50)
    with pytest.raises(InvalidInputError, match="row 2000 outside"):
        store.get(np.array([2000]))


def test_a_damaged_block_is_named_and_the_others_still_read(tmp_path):
    x = subset("siftsmall", 1000)
    path = tmp_path / "s.cold"
    write_coldstore(path, x, block_rows=50)
    start = open_container(path, "s.cold", b"COLD", 1).sections["blocks"].offset
    raw = bytearray(path.read_bytes())
    raw[start + int(ColdStore(path, "s.cold")._offsets[3]) + 5] ^= 0x55
    path.write_bytes(bytes(raw))
    store = ColdStore(path, "segments/s.cold")  # the bulk blocks are checked when read
    assert store.damaged_blocks() == [3]
    with pytest.raises(CorruptIndexError, match=r"segments/s.cold: block 3 \(rows 150..199\) fails its checksum"):
        store.get(np.array([10, 160]))
    assert same_bytes(store.get(np.array([10, 149, 200, 999])), x[[10, 149, 200, 999]])
    with pytest.raises(CorruptIndexError, match="block 3"):
        store.read_all()


def test_a_dictionary_is_kept_only_when_it_pays(tmp_path):
    x = subset("siftsmall", 4000, 2)
    with_d = write_coldstore(tmp_path / "a.cold", x, block_rows=8)
    without = write_coldstore(tmp_path / "b.cold", x, block_rows=8, dictionary=False)
    assert with_d.dict_bytes > 0 and with_d.block_bytes + with_d.dict_bytes < without.block_bytes
    noise = np.random.default_rng(0).integers(0, 2**32, (4000, 32), dtype=np.uint32).view(np.float32)  # random bits
    assert write_coldstore(tmp_path / "c.cold", noise, block_rows=8).dict_bytes == 0
    assert write_coldstore(tmp_path / "d.cold", x[:100]).dict_bytes == 0  # too few blocks to pay
    with pytest.raises(InvalidInputError):
        write_coldstore(tmp_path / "e.cold", x, level=23)
    with pytest.raises(InvalidInputError):
        write_coldstore(tmp_path / "e.cold", x[0])
    assert not (tmp_path / "e.cold").exists()
