"""``elias-fano``: the quasi-succinct monotone sequence code, in pure NumPy.

Elias, "Efficient storage and retrieval by content and address of static files",
J. ACM 21(2), 1974; Fano, "On the number of bits required to implement an associative
memory", MIT Project MAC memo 61, 1971; Vigna, "Quasi-succinct indices", WSDM 2013.

Each sorted ID ``x_i`` is split into ``l = floor(log2(N / n))`` low bits, stored verbatim,
and a high part ``x_i >> l``, stored in unary as a set bit at position ``(x_i >> l) + i``
of a bit vector with ``n + ((N - 1) >> l)`` bits. The size is at most
``n (2 + log2(N / n))`` bits; against ``log2 C(N, n) ~ n (log2(N / n) + log2 e)`` that is
between 0.47 and 0.56 bits per ID over the bound for ``N / n >= 2`` (worst when ``N / n``
is a power of two), plus at most 7 bits of byte padding per list.

Payload, a bit stream read least-significant bit first within each byte:

=====================  ======================  =========================================
bits                   length                  content
=====================  ======================  =========================================
``[0, H)``             ``H = n + ((N-1)>>l)``  high bit vector: bit ``(x_i >> l) + i`` set
``[H, H + n l)``       ``n l``                 ``x_i & (2**l - 1)`` for ``i = 0 .. n-1``
rest of last byte      ``< 8``                 zero
=====================  ======================  =========================================

The high part comes first so that it starts on a byte boundary, which makes the byte
popcounts of :meth:`EliasFanoCodec.access` direct. Empty for ``n = 0``.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.idcodec._common import (
    check_count,
    check_decoded,
    check_universe,
    payload_view,
    prepare_ids,
)
from tidepool_cli.errors import CorruptIndexError, InvalidInputError

_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)
# _SELECT8[byte, r]: position of the r-th set bit (r from 0) of the byte; 0 if absent.
_SELECT8 = np.zeros((256, 8), dtype=np.int64)
for _byte in range(256):
    _bits = [b for b in range(8) if _byte >> b & 1]
    _SELECT8[_byte, : len(_bits)] = _bits
del _byte, _bits


def ef_layout(n: int, universe: int) -> tuple[int, int, int]:
    """Sizes of the Elias-Fano payload for ``0 < n <= universe``.

    Returns
    -------
    low_bits : int
        ``l = floor(log2(N / n))``.
    high_bits : int
        Length ``n + ((N - 1) >> l)`` of the high bit vector.
    nbytes : int
        Payload length, ``ceil((high_bits + n * l) / 8)``.
    """
    low_bits = (universe // n).bit_length() - 1
    high_bits = n + ((universe - 1) >> low_bits)
    return low_bits, high_bits, (high_bits + n * low_bits + 7) // 8


def _read_fields(buf: np.ndarray, bit_offsets: np.ndarray, width: int) -> np.ndarray:
    """Read ``width``-bit little-endian fields (``width <= 56``) at the given bit offsets.

    ``bit_offsets`` is a uint64 array; the result is int64.
    """
    if width == 0:
        return np.zeros(bit_offsets.size, dtype=np.int64)
    padded = np.concatenate([buf, np.zeros(8, dtype=np.uint8)])
    # An unaligned 8-byte window at every byte offset, as a zero-copy strided view.
    windows = np.ndarray(shape=(buf.size + 1,), dtype="<u8", buffer=padded, strides=(1,))
    words = windows[bit_offsets >> np.uint64(3)]
    return ((words >> (bit_offsets & np.uint64(7))) & np.uint64((1 << width) - 1)).astype(np.int64)


def _check_length(buf: np.ndarray, n: int, universe: int) -> tuple[int, int]:
    low_bits, high_bits, nbytes = ef_layout(n, universe)
    if buf.size != nbytes:
        raise CorruptIndexError(f"elias-fano payload has {buf.size} bytes, expected {nbytes}")
    used = (high_bits + n * low_bits) & 7
    if used and buf[-1] >> used:
        raise CorruptIndexError("elias-fano payload has non-zero padding bits")
    return low_bits, high_bits


class EliasFanoCodec:
    """Elias-Fano with vectorized encode, decode and random access (``name = "elias-fano"``).

    See the module docstring for the layout and the size bound.
    """

    name = "elias-fano"

    def encode(self, ids: np.ndarray, universe: int) -> bytes:
        """Compress a set of IDs; see :class:`~tidepool_cli.engine.idcodec.IdCodec`.

        Parameters
        ----------
        ids : (n,) integer array
            Distinct values in ``[0, universe)``, any order.
        universe : int

        Returns
        -------
        bytes
            ``ceil((n + ((N - 1) >> l) + n l) / 8)`` bytes, ``l = floor(log2(N / n))``.

        Raises
        ------
        InvalidInputError
            On invalid ``ids`` or ``universe``.
        """
        x, universe = prepare_ids(ids, universe)
        n = x.size
        if n == 0:
            return b""
        low_bits, high_bits, nbytes = ef_layout(n, universe)
        bits = np.zeros(nbytes * 8, dtype=np.uint8)
        bits[(x >> low_bits) + np.arange(n)] = 1
        if low_bits:
            lows = bits[high_bits : high_bits + n * low_bits].reshape(n, low_bits)
            lows[:] = (x[:, None] >> np.arange(low_bits)) & 1
        return np.packbits(bits, bitorder="little").tobytes()

    def decode(self, payload: bytes | memoryview | np.ndarray, n: int, universe: int) -> np.ndarray:
        """Recover the sorted IDs; see :class:`~tidepool_cli.engine.idcodec.IdCodec`.

        Parameters
        ----------
        payload : bytes, memoryview or (nbytes,) uint8
        n, universe : int

        Returns
        -------
        (n,) uint32, strictly increasing

        Raises
        ------
        InvalidInputError
            If ``n`` or ``universe`` is out of range.
        CorruptIndexError
            On a wrong length, non-zero padding, a high vector without exactly ``n`` set
            bits, or a result that is not an increasing set in the universe.
        """
        universe = check_universe(universe)
        n = check_count(n, universe)
        buf = payload_view(payload)
        if n == 0:
            if buf.size:
                raise CorruptIndexError("elias-fano payload for an empty set must be empty")
            return np.empty(0, dtype=np.uint32)
        low_bits, high_bits = _check_length(buf, n, universe)
        high = np.unpackbits(buf[: (high_bits + 7) // 8], count=high_bits, bitorder="little")
        ones = np.flatnonzero(high.view(bool))
        if ones.size != n:
            raise CorruptIndexError(f"elias-fano high bits hold {ones.size} IDs, expected {n}")
        ids = (ones - np.arange(n)) << low_bits
        if low_bits:
            offsets = np.arange(high_bits, high_bits + n * low_bits, low_bits, dtype=np.uint64)
            ids |= _read_fields(buf, offsets, low_bits)
        return check_decoded(ids, n, universe, "elias-fano")

    def access(
        self,
        payload: bytes | memoryview | np.ndarray,
        n: int,
        universe: int,
        positions: np.ndarray,
    ) -> np.ndarray:
        """Random access: the IDs at the given ranks of the sorted set, without decoding it.

        The high part is found with a rank/popcount select: a cumulative popcount of the
        high vector's bytes (O(n / 8 + N / 2**l / 8) vectorized work per call, no stored
        index), a binary search per position for its byte, and a 256 x 8 table for the
        bit within the byte. The low part is one unaligned read per position.

        Parameters
        ----------
        payload : bytes, memoryview or (nbytes,) uint8
        n, universe : int
        positions : (q,) integer array
            Ranks in ``[0, n)``, any order, repeats allowed.

        Returns
        -------
        (q,) uint32
            ``sorted_ids[positions]``.

        Raises
        ------
        InvalidInputError
            If a position is outside ``[0, n)`` or not an integer.
        CorruptIndexError
            If the payload fails the length, padding or popcount checks, or yields an ID
            outside the universe.
        """
        universe = check_universe(universe)
        n = check_count(n, universe)
        pos = np.asarray(positions)
        if pos.ndim != 1 or (pos.size and pos.dtype.kind not in "iu"):
            raise InvalidInputError("positions must be a 1-D integer array")
        if pos.size and (pos.min() < 0 or pos.max() >= n):
            raise InvalidInputError(f"positions must lie in [0, {n})")
        pos = pos.astype(np.int64)
        buf = payload_view(payload)
        if n == 0:
            if buf.size:
                raise CorruptIndexError("elias-fano payload for an empty set must be empty")
            return np.empty(0, dtype=np.uint32)
        low_bits, high_bits = _check_length(buf, n, universe)
        high = buf[: (high_bits + 7) // 8].copy()
        if high_bits & 7:
            high[-1] &= (1 << (high_bits & 7)) - 1  # the low fields start in this byte
        counts = np.cumsum(_POPCOUNT8[high])
        if counts[-1] != n:
            raise CorruptIndexError(f"elias-fano high bits hold {counts[-1]} IDs, expected {n}")
        byte = np.searchsorted(counts, pos, side="right")
        within = pos - (counts[byte] - _POPCOUNT8[high[byte]])
        hi = byte * 8 + _SELECT8[high[byte], within] - pos
        offsets = (high_bits + pos * low_bits).astype(np.uint64)
        values = (hi << low_bits) | _read_fields(buf, offsets, low_bits)
        if values.size and values.max() >= universe:
            raise CorruptIndexError(f"elias-fano payload yields IDs outside [0, {universe})")
        return values.astype(np.uint32)
