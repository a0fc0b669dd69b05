"""Giving back the resident pages of memory-mapped files after a sequential pass.

A read-only ``np.memmap`` of a segment keeps every page it touched resident in the
process (they count in its RSS) until the mapping is closed. A pass that streams a whole
segment block by block (``export``) calls :func:`release_pages` after each block so the
process stays at a constant size however large the segment is. The pages stay in the
kernel's page cache; touching them again simply maps them back.
"""

from __future__ import annotations

import mmap

import numpy as np


def release_pages(view: np.ndarray) -> bool:
    """Drop this process's mapping of the pages under ``view`` (``madvise(MADV_DONTNEED)``).

    Parameters
    ----------
    view : ndarray
        A contiguous slice of an array backed by a read-only ``mmap`` (any dtype, shape).

    Returns
    -------
    bool
        True if pages were released; False when ``view`` is not backed by an mmap (a
        plain in-memory array) or the platform has no ``madvise``.
    """
    base, mm = view, None
    while base is not None:
        if isinstance(base, mmap.mmap):
            mm = base
            break
        base = getattr(base, "base", None)
    if mm is None or not hasattr(mm, "madvise") or view.size == 0 or not view.flags.c_contiguous:
        return False
    start = np.frombuffer(mm, np.uint8, count=1).ctypes.data
    lo = view.ctypes.data - start
    hi = lo + view.nbytes
    lo -= lo % mmap.PAGESIZE
    mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    return True
