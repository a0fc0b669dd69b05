"""``roc``: bits-back Random Order Coding of a set over constriction's ANS coder.

Severo, Townsend, Khisti, Makhzani, Ullrich, "Compressing multisets with large
alphabets", arXiv:2107.09202 (2021), and Severo et al., "Lossless compression of vector
IDs for approximate nearest neighbor search", arXiv:2501.10479 (2025).

A sequence of the ``n`` IDs costs ``log2`` of ``N (N - 1) ... (N - n + 1)`` bits; a set
is that sequence with its ``log2 n!`` bits of order removed. ROC removes them by
*choosing* the order from the compressed data: the encoder repeatedly decodes ("samples")
an index ``j`` uniform over the ``k`` IDs still to be written, which takes ``log2 k`` bits
back out of the ANS state, and then encodes the ``j``-th smallest remaining ID. The
decoder runs the steps backwards: it decodes an ID, works out which index the encoder had
sampled (its rank among the IDs decoded so far) and encodes that index again, returning
the borrowed bits.

Each ID ``x`` is coded as its rank ``x - j`` among the values that are not still to be
written (a universe of ``N - k + 1``), not as ``x`` in ``[0, N)``. The costs then
telescope to ``sum_k log2(N - k + 1) - log2 n! = log2 C(N, n)`` exactly, which keeps dense
sets at the bound too (coding ``x`` in ``[0, N)`` would overpay ``n**2 / (2 N ln 2)``).

Three practical points:

* **Uniforms wider than constriction's.** ``Uniform`` takes sizes ``2 .. 2**24`` and gives
  the rounding remainder of its 24-bit quantiles to the last symbol, which costs real
  bits once the size nears ``2**24``. A size ``S >= 2**12`` is therefore split into a
  high part over ``H = ceil(S / 2**c)`` values, ``H`` in ``(2**11, 2**12]``, and ``c``
  low bits (a shorter last block when ``2**c`` does not divide ``S``), for a loss below
  0.001 bits per ID. Size 1 carries no information and is not coded.
* **Initial bits.** The first sample would find an empty ANS state and take nothing
  back (about ``log2 n`` bits lost), and constriction's first symbol costs 24 bits
  whatever its probability. So the ``m`` smallest IDs are taken out of the sampling and
  written into the coder's *initial state* as the rank of their combination among the
  ``C(min(rest), m)`` possible ones (combinatorial number system); ``m`` is the
  smallest count that gives roughly 28 bits for a random set with this ``n / N``. The
  decoder reads them back last, once ``min(rest)`` is known, and the sampled IDs, all
  above the seed, are coded in ``[m, N)``.
* **Dense sets.** For ``n > N / 2`` the complement is coded instead (same bound,
  fewer steps).

Payload (little-endian): the ``uint32`` words of ``AnsCoder.get_compressed()``, with the
zero high bytes of the last word dropped. Empty for ``n in {0, N}``.

Cost: one Python iteration per ID with two to four constriction calls and a list
insertion, O(n log n) plus an O(n**2) memmove that only matters past ~1e5 IDs per list.
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np

from tidepool_cli.engine.idcodec._common import (
    check_count,
    check_decoded,
    check_universe,
    int_to_words,
    new_coder,
    payload_to_words,
    payload_view,
    prepare_ids,
    uniform_model,
    words_to_int,
    words_to_payload,
)
from tidepool_cli.errors import CorruptIndexError

_ELEMENT_HI_BITS = 12  # IDs: Uniform sizes >= 2**12 are split
_SAMPLE_HI_BITS = 12  # sampled indices: sizes >= 2**12 are split
_SEED_TARGET_BITS = 28


def seed_size(n: int, universe: int) -> int:
    """Number ``m`` of smallest IDs written into the initial ANS state.

    Parameters
    ----------
    n : int
        IDs actually coded (after taking the complement), ``0 <= n <= universe / 2``.
    universe : int

    Returns
    -------
    int
        ``min(n, ceil(28 / (floor(log2((N + 1) / (n + 1))) + 1)))``: a random set has
        about ``log2(N / n) + 1.4`` bits per ID in its smallest elements.
    """
    per_id = ((universe + 1) // (n + 1)).bit_length()
    return min(n, -(-_SEED_TARGET_BITS // per_id))


def _rank_combination(values: list[int]) -> int:
    """Rank of an increasing tuple in the combinatorial number system."""
    return sum(math.comb(v, i + 1) for i, v in enumerate(values))


def _unrank_combination(rank: int, m: int, limit: int) -> list[int]:
    """The increasing ``m``-tuple below ``limit`` whose rank is ``rank < C(limit, m)``."""
    out = [0] * m
    for i in range(m, 0, -1):
        lo, hi = i - 1, limit - 1
        while lo < hi:
            mid = (lo + hi + 1) >> 1
            if math.comb(mid, i) <= rank:
                lo = mid
            else:
                hi = mid - 1
        out[i - 1] = lo
        rank -= math.comb(lo, i)
        limit = lo
    return out


def _pop_uniform(coder, size: int, hi_bits: int) -> int:
    """Decode a value in ``[0, size)``; any ANS state, even garbage, yields a valid one."""
    shift = size.bit_length() - hi_bits
    if shift <= 0:
        return int(coder.decode(uniform_model(size))) if size > 1 else 0
    blocks = ((size - 1) >> shift) + 1
    hi = int(coder.decode(uniform_model(blocks)))
    last = (1 << shift) if hi < blocks - 1 else size - ((blocks - 1) << shift)
    lo = int(coder.decode(uniform_model(last))) if last > 1 else 0
    return (hi << shift) | lo


def _push_uniform(coder, value: int, size: int, hi_bits: int) -> None:
    """Exact inverse of :func:`_pop_uniform` (encodes in the reverse order)."""
    shift = size.bit_length() - hi_bits
    if shift <= 0:
        if size > 1:
            coder.encode_reverse(value, uniform_model(size))
        return
    blocks = ((size - 1) >> shift) + 1
    hi = value >> shift
    last = (1 << shift) if hi < blocks - 1 else size - ((blocks - 1) << shift)
    if last > 1:
        coder.encode_reverse(value & ((1 << shift) - 1), uniform_model(last))
    coder.encode_reverse(hi, uniform_model(blocks))


def roc_encode_sorted(x: list[int], universe: int) -> bytes:
    """ROC payload of an increasing list of IDs with ``len(x) <= universe / 2``."""
    n = len(x)
    m = seed_size(n, universe)
    coder = new_coder(int_to_words(_rank_combination(x[:m])))
    # Every sampled ID is above the m seed IDs, so it is coded in [m, N).
    rest = x[m:]
    top = universe - m
    for k in range(n - m, 0, -1):
        j = _pop_uniform(coder, k, _SAMPLE_HI_BITS)
        _push_uniform(coder, rest.pop(j) - m - j, top - k + 1, _ELEMENT_HI_BITS)
    return words_to_payload(coder.get_compressed())


def roc_decode_sorted(buf: np.ndarray, n: int, universe: int) -> np.ndarray:
    """Inverse of :func:`roc_encode_sorted`: (n,) int64 increasing IDs."""
    m = seed_size(n, universe)
    coder = new_coder(payload_to_words(buf, "roc"))
    seen: list[int] = []
    top = universe - m
    for d in range(n - m):
        v = _pop_uniform(coder, top - d, _ELEMENT_HI_BITS) + m
        # The ID is v + j, the v-th value not in `seen`, where j counts the seen values
        # below it. j is the fixed point of j = #{seen <= v + j}; in a random set a
        # couple of C-level bisections reach it, but a long run of consecutive IDs
        # needs one step per ID of the run, so fall back to a binary search over the
        # monotone predicate seen[i] - i <= v.
        j = bisect_right(seen, v)
        for _ in range(3):
            nxt = bisect_right(seen, v + j)
            if nxt == j:
                break
            j = nxt
        else:
            j, hi = 0, d
            while j < hi:
                mid = (j + hi) >> 1
                if seen[mid] - mid <= v:
                    j = mid + 1
                else:
                    hi = mid
        seen.insert(j, v + j)
        _push_uniform(coder, j, d + 1, _SAMPLE_HI_BITS)
    rank = words_to_int(coder.get_compressed())
    limit = seen[0] if seen else universe
    if rank >= math.comb(limit, m):
        raise CorruptIndexError("roc payload has words left over after decoding")
    return np.asarray(_unrank_combination(rank, m, limit) + seen, dtype=np.int64)


class RocCodec:
    """Bits-back Random Order Coding, the reference set coder (``name = "roc"``).

    About 5 bits per list above ``log2 C(N, n)`` for sparse random sets (byte rounding
    included), up to ~30 for lists denser than ``N / 4``; one Python step per ID, so
    15-30x slower than ``ans``. See the module docstring.
    """

    name = "roc"

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

        Raises
        ------
        InvalidInputError
            On invalid ``ids`` or ``universe``.
        """
        x, universe = prepare_ids(ids, universe)
        if 2 * x.size > universe:
            mask = np.ones(universe, dtype=bool)
            mask[x] = False
            x = np.flatnonzero(mask)
        return roc_encode_sorted(x.tolist(), universe)

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
            If the payload is not canonical or decodes to an invalid set.
        """
        universe = check_universe(universe)
        n = check_count(n, universe)
        buf = payload_view(payload)
        complement = 2 * n > universe
        x = roc_decode_sorted(buf, universe - n if complement else n, universe)
        if complement:
            mask = np.ones(universe, dtype=bool)
            mask[x] = False
            x = np.flatnonzero(mask)
        return check_decoded(x, n, universe, "roc")
