"""release_pages hands a memory map's pages back, so a streaming pass keeps a constant resident size."""

import numpy as np
import pytest

from tidepool_cli.storage.pages import release_pages


def _rss_file_bytes() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssFile:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status RssFile on this platform")


def _stream(a: np.ndarray, release: bool) -> int:
    """Peak growth of file-backed resident bytes while summing ``a`` block by block."""
    start, peak, total = _rss_file_bytes(), 0, 0.0
    for s in range(0, a.shape[0], 4096):
        total += float(a[s : s + 4096].sum())
        if release:
            assert release_pages(a[s : s + 4096])
        peak = max(peak, _rss_file_bytes() - start)
    assert total == a.shape[0] * a.shape[1]
    return peak


def test_streaming_with_release_stays_small_and_without_grows(tmp_path):
    np.save(tmp_path / "a.npy", np.ones((65536, 128), np.float32))  # 32 MiB
    assert _stream(np.load(tmp_path / "a.npy", mmap_mode="r"), release=True) < 8 << 20
    assert _stream(np.load(tmp_path / "a.npy", mmap_mode="r"), release=False) > 24 << 20


def test_plain_arrays_are_left_alone():
    assert release_pages(np.ones((10, 4), np.float32)) is False
