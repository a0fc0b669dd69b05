"""The shared binary container: round trips, alignment, and every way a file can be damaged."""

import struct

import numpy as np
import pytest

from tidepool_cli.errors import CorruptIndexError, UnsupportedFormatError
from tidepool_cli.storage.container import HEADER, Rows, open_container, write_container


def _write(tmp_path, **kw):
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(100, 7)).astype(np.float32)
    sections = {
        "vectors": [vecs[:40], Rows(vecs, np.arange(40, 100))],
        "ids": np.arange(100, dtype=np.int64),
        "empty": np.zeros(0, np.uint8),
        "flags": np.arange(100) % 3 == 0,
    }
    path = tmp_path / "f.bin"
    nbytes, crc = write_container(path, b"TEST", 1, {"hello": "world"}, sections, bulk=("vectors",), **kw)
    return path, vecs, nbytes, crc


def test_round_trip_is_aligned_and_zero_copy(tmp_path):
    path, vecs, nbytes, crc = _write(tmp_path)
    assert path.stat().st_size == nbytes and nbytes % 64 == 0
    c = open_container(path, "f.bin", b"TEST", 1, verify="all")
    assert c.meta == {"hello": "world"} and c.header_crc == crc
    np.testing.assert_array_equal(c.array("vectors"), vecs)
    np.testing.assert_array_equal(c.array("ids"), np.arange(100))
    assert c.array("empty").shape == (0,)
    assert c.array("flags").dtype == bool and c.array("flags").sum() == 34
    for sec in c.sections.values():
        assert sec.offset % 64 == 0
    assert np.shares_memory(c.array("vectors"), c._buf)  # a view of the file mapping, not a copy
    assert not c.array("vectors").flags.writeable


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_damaged_small_section_is_refused_on_open(tmp_path):
    path, *_ = _write(tmp_path)
    c = open_container(path, "f.bin", b"TEST", 1)
    _flip(path, c.sections["ids"].offset + 3)
    with pytest.raises(CorruptIndexError, match="section 'ids'"):
        open_container(path, "f.bin", b"TEST", 1)


def test_damaged_bulk_section_is_found_by_full_verification(tmp_path):
    path, *_ = _write(tmp_path)
    off = open_container(path, "f.bin", b"TEST", 1).sections["vectors"].offset
    _flip(path, off + 17)
    c = open_container(path, "f.bin", b"TEST", 1, verify="small")  # opens: bulk is checked on demand
    assert c.damaged_sections() == ["vectors"]
    with pytest.raises(CorruptIndexError, match="vectors"):
        open_container(path, "f.bin", b"TEST", 1, verify="all")


def test_damaged_header_or_truncation_or_wrong_kind(tmp_path):
    path, *_ = _write(tmp_path)
    good = path.read_bytes()
    _flip(path, 70)  # inside the section table
    with pytest.raises(CorruptIndexError, match="header checksum"):
        open_container(path, "f.bin", b"TEST", 1)
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptIndexError, match="truncated"):
        open_container(path, "f.bin", b"TEST", 1)
    path.write_bytes(good)
    with pytest.raises(CorruptIndexError, match="expected 'OTHR'"):
        open_container(path, "f.bin", b"OTHR", 1)
    path.write_bytes(b"")
    with pytest.raises(CorruptIndexError, match="empty"):
        open_container(path, "f.bin", b"TEST", 1)


def test_newer_version_and_unknown_features_are_refused(tmp_path):
    path, *_ = _write(tmp_path)
    with pytest.raises(UnsupportedFormatError, match="newer"):
        open_container(path, "f.bin", b"TEST", 0)
    path2 = tmp_path / "g.bin"
    write_container(path2, b"TEST", 1, {}, {"a": np.zeros(3)}, flags=1 << 5)
    with pytest.raises(UnsupportedFormatError, match="feature"):
        open_container(path2, "g.bin", b"TEST", 1)
    assert HEADER.size == 64 and struct.calcsize("<Q") == 8


def test_trailing_empty_section_still_gives_a_complete_file(tmp_path):
    path = tmp_path / "e.bin"
    nbytes, _ = write_container(path, b"TEST", 1, {}, {"a": np.arange(3, dtype=np.uint8), "z": np.zeros(0, np.uint8)})
    assert path.stat().st_size == nbytes
    assert open_container(path, "e.bin", b"TEST", 1, verify="all").array("z").shape == (0,)
