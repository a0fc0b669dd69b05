"""``ans``: sorted gaps coded with a geometric model through constriction's vectorized ANS.

The gaps ``g_i = x_i - x_{i-1} - 1`` (``x_{-1} = -1``) of a random ``n``-subset of
``[0, N)`` are close to i.i.d. geometric with ``p = (n + 1) / (N + 1)`` (the maximum
likelihood rate given the expected gap sum ``n (N - n) / (n + 1)``). Coding every gap with
that geometric costs ``N H(p)`` bits in expectation, within about
``log2(2 pi n) / 2`` bits of ``log2 C(N, n)`` (Stirling), so the codec reaches the set bound
up to a few bits per list.

A geometric over a large alphabet is not a table constriction can hold, so each gap is
split as ``g = (h << b) | lo`` (the Golomb-Rice split, Golomb 1966):

* ``lo``, the low ``b`` bits, is coded with ``Uniform(2**b)``. Within a block of ``2**b``
  gaps the geometric density falls by the factor ``q = (1 - p) ** 2**b``; ``b`` is the
  largest value with ``2**b p <= 1/8``, so ``-ln q`` is in ``(1/16, 1/8]`` and the price of
  coding ``lo`` as uniform is ``(ln q)**2 / 24`` nats, under 0.001 bits per ID.
* ``h`` is geometric with ratio ``q``. It is coded with a ``Categorical`` over ``K <= 256``
  symbols: ``0 .. K - 2`` are values and ``K - 1`` is an escape that means "add ``K - 1``
  and read another symbol". The geometric is memoryless, so giving the escape the mass
  ``q ** (K - 1)`` of the whole tail makes the escape chain exact, not an approximation.

Both models depend only on ``(n, N)``, which the caller knows, so the payload holds
nothing but ANS words. ``q`` is rounded to a grid of ``2**14`` levels computed in integer
arithmetic, so that encoder and decoder build bit-identical models on any platform and
the models can be cached (the rounding costs ~1e-6 bits per ID).

ANS state start-up: an empty ANS coder spends about ``24 - log2(1/P)`` extra bits on its
first symbol (constriction's quantiles have 24 bits). The last few ``lo`` values, about
32 bits, are therefore written straight into the coder's initial state (no model, no
rounding) and everything else is pushed on top of them.

Payload (all little-endian): the ``uint32`` words of ``AnsCoder.get_compressed()``, with
the zero high bytes of the last word dropped. Empty for ``n in {0, N}``.

References: Duda, "Asymmetric numeral systems", arXiv:1311.2540 (2013); Bamler,
"Understanding entropy coding with asymmetric numeral systems (ANS): a statistician's
perspective", arXiv:2201.01741 (constriction).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import constriction
import numpy as np

from tidepool_cli.engine.idcodec._common import (
    check_count,
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

_LEVELS = 1 << 14  # grid for 1 - q; q = 1 - level / _LEVELS is exact in float64
_FIXED = 62  # fixed-point bits for the integer computation of q
_MAX_LOW_BITS = 24  # Uniform(2**b) needs 2**b <= 2**24
_MAX_SYMBOLS = 256  # high-part alphabet including the escape
_SEED_BITS = 32  # raw low bits placed in the coder's initial state


@functools.lru_cache(maxsize=1 << 16)
def ans_params(n: int, universe: int) -> tuple[int, int]:
    """Model parameters ``(b, level)`` for ``0 < n < universe``.

    Parameters
    ----------
    n, universe : int

    Returns
    -------
    b : int
        Low bits per gap, in ``[0, 24]``.
    level : int
        ``1 - q`` rounded to a multiple of ``2**-14``, in ``[1, 2**14]``.

    Notes
    -----
    Integer arithmetic only: a float ``exp``/``log`` can differ by one ulp across libms,
    and a model that differs by one level decodes garbage.
    """
    ratio = (universe + 1) // (8 * (n + 1))
    b = min(_MAX_LOW_BITS, max(ratio.bit_length() - 1, 0))
    one = 1 << _FIXED
    q = ((universe - n) << _FIXED) // (universe + 1)  # 1 - p in fixed point
    for _ in range(b):
        q = (q * q) >> _FIXED
    level = ((one - q) * _LEVELS + (one >> 1)) >> _FIXED
    return b, min(max(level, 1), _LEVELS)


@functools.lru_cache(maxsize=4096)
def _high_model(level: int) -> tuple[constriction.stream.model.Categorical, int]:
    """The escape-coded geometric for ``h`` and its alphabet size ``K``.

    Only IEEE-exact float operations (one division by a power of two, multiplications in
    a fixed order) so that the table is bit-identical everywhere.
    """
    w = level / _LEVELS
    q = 1.0 - w
    probs = []
    tail = 1.0
    while len(probs) < _MAX_SYMBOLS - 1:
        probs.append(w * tail)
        tail *= q
        # A tail below constriction's smallest quantum (2**-24) needs no more symbols.
        if tail <= 2.0**-24:
            break
    probs.append(tail)
    table = np.asarray(probs, dtype=np.float64)
    return constriction.stream.model.Categorical(table, perfect=False), table.size


class AnsCodec:
    """Geometric-gap ANS codec, the default (``name = "ans"``).

    Reaches ``log2 C(N, n)`` within a few bits per list plus < 0.002 bits per ID; see the
    module docstring for the model and docs/IDCODEC.md for the byte format and numbers.
    """

    name = "ans"

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
        n = x.size
        if n in (0, universe):
            return b""
        b, level = ans_params(n, universe)
        model, k = _high_model(level)
        gaps = np.diff(x, prepend=-1) - 1
        h = gaps >> b
        esc = h // (k - 1)
        symbols = np.full(n + int(esc.sum()), k - 1, dtype=np.int32)
        symbols[np.cumsum(esc + 1) - 1] = h - esc * (k - 1)
        if b:
            lo = (gaps & ((1 << b) - 1)).astype(np.int32)
            n_seed = min(n, -(-_SEED_BITS // b))
            seed = 0
            for v in lo[n - n_seed :][::-1].tolist():
                seed = (seed << b) | v
            coder = new_coder(int_to_words(seed))
            if n > n_seed:
                coder.encode_reverse(lo[: n - n_seed], uniform_model(1 << b))
        else:
            coder = new_coder()
        coder.encode_reverse(symbols, model)
        return words_to_payload(coder.get_compressed())

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
            If the payload is not canonical, leaves words unread, or decodes to an invalid
            set.
        """
        universe = check_universe(universe)
        n = check_count(n, universe)
        high, low, seed, n_seed, b = _decode_parts(payload_view(payload), n, universe)
        # decode_many's assembly, for one list without the batch bookkeeping.
        ids = high.astype(np.int64)
        if b:
            ids <<= b
            ids[: n - n_seed] |= low
            ids[n - n_seed :] |= [(seed >> (i * b)) & ((1 << b) - 1) for i in range(n_seed)]
        ids += 1
        np.cumsum(ids, out=ids)
        ids -= 1
        if n and ids[-1] >= universe:
            raise CorruptIndexError(f"ans payload decoded to IDs outside [0, {universe})")
        return ids.astype(np.uint32)

    def decode_many(
        self, payloads: Sequence[bytes | memoryview | np.ndarray], ns: Sequence[int], universe: int
    ) -> list[np.ndarray]:
        """Recover several sets at once: :meth:`decode` for each, one pass of NumPy for all.

        A posting-list scan decodes hundreds of short lists per batch. Each list still
        costs its constriction calls, but assembling gaps from their parts, turning gaps
        into IDs and checking them run once over all the lists.

        Parameters
        ----------
        payloads : sequence of L payloads (bytes, memoryview or (nbytes,) uint8)
        ns : sequence of L int
            Set sizes.
        universe : int

        Returns
        -------
        list of L (n_i,) uint32 arrays, each strictly increasing

        Raises
        ------
        InvalidInputError
            If an ``n`` or ``universe`` is out of range.
        CorruptIndexError
            As :meth:`decode`, for the first payload that fails.
        """
        universe = check_universe(universe)
        ns = [check_count(n, universe) for n in ns]
        parts = [_decode_parts(payload_view(p), n, universe) for p, n in zip(payloads, ns)]
        counts = np.asarray(ns, dtype=np.int64)
        ends = np.cumsum(counts)
        starts = ends - counts
        total = int(ends[-1]) if counts.size else 0
        bits = np.array([b for _, _, _, _, b in parts], dtype=np.int64)
        n_seed = np.array([k for _, _, _, k, _ in parts], dtype=np.int64)
        seeds = np.array([sd for _, _, sd, _, _ in parts], dtype=np.uint64)

        # gap = (high << b) | low; the low bits of a set's last n_seed gaps come from its
        # seed word, those of the others from the coded stream.
        gaps = np.concatenate([h for h, _, _, _, _ in parts]).astype(np.int64) if total else np.zeros(0, np.int64)
        gaps <<= np.repeat(bits, counts)
        rank = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
        from_seed = rank >= np.repeat(counts - n_seed, counts)
        lows = [lo for _, lo, _, _, _ in parts if lo is not None]
        if lows:
            gaps[~from_seed & np.repeat(bits > 0, counts)] |= np.concatenate(lows)
        if from_seed.any():
            which = np.repeat(np.arange(counts.size), counts)[from_seed]
            shift = ((rank[from_seed] - (counts - n_seed)[which]) * bits[which]).astype(np.uint64)
            mask = (np.uint64(1) << bits[which].astype(np.uint64)) - np.uint64(1)
            gaps[from_seed] |= ((seeds[which] >> shift) & mask).astype(np.int64)

        # IDs are cumsum(gap + 1) - 1 within each set. Gaps are >= 0, so every set is
        # strictly increasing and only its last ID can leave the universe.
        gaps += 1
        np.cumsum(gaps, out=gaps)
        before = np.where(starts > 0, gaps[np.maximum(starts - 1, 0)] if total else 0, 0)
        gaps -= np.repeat(before + 1, counts)
        last = ends[counts > 0] - 1
        if last.size and int(gaps[last].max()) >= universe:
            raise CorruptIndexError(f"ans payload decoded to IDs outside [0, {universe})")
        return np.split(gaps.astype(np.uint32), ends[:-1])


def _decode_parts(buf: np.ndarray, n: int, universe: int) -> tuple[np.ndarray, np.ndarray | None, int, int, int]:
    """The coded parts of one payload of ``n`` IDs (see :meth:`AnsCodec.decode`).

    Returns
    -------
    high : (n,) integer array
        ``gap >> b`` per gap.
    low : (n - n_seed,) int32 or None
        The low bits of the first ``n - n_seed`` gaps (None when ``b = 0``).
    seed : int
        The low bits of the last ``n_seed`` gaps: gap ``n - n_seed + i`` in bits
        ``[i b, (i + 1) b)``.
    n_seed : int
    b : int

    Raises
    ------
    CorruptIndexError
        If the payload is not canonical, decodes past the universe or leaves words unread.
    """
    if n in (0, universe):
        if buf.size:
            raise CorruptIndexError(f"ans payload for {n} of {universe} IDs must be empty")
        return np.zeros(n, np.int64), None, 0, 0, 0
    b, level = ans_params(n, universe)
    model, k = _high_model(level)
    coder = new_coder(payload_to_words(buf, "ans"))

    # The number of escapes is not stored: decode n symbols, then as many more as
    # there were escapes among the last ones, until a batch has none. Each escape
    # stands for (k - 1) << b of gap and the gaps sum to at most N - n, which bounds
    # the work a corrupt payload can ask for.
    max_escapes = (universe - n) // ((k - 1) << b)
    high = batch = coder.decode(model, n)
    parts = [batch]
    pending = total = int(np.count_nonzero(batch == k - 1))
    while pending:
        if total > max_escapes:
            raise CorruptIndexError("ans payload decodes to gaps beyond the universe")
        batch = coder.decode(model, pending)
        parts.append(batch)
        pending = int(np.count_nonzero(batch == k - 1))
        total += pending
    if total:  # escapes have probability <= 2**-23 unless b hit its cap
        symbols = np.concatenate(parts)
        terminals = np.flatnonzero(symbols != k - 1)
        high = (np.diff(terminals, prepend=-1) - 1) * (k - 1) + symbols[terminals]
    if not b:
        if not coder.is_empty():
            raise CorruptIndexError("ans payload has words left over after decoding")
        return high, None, 0, 0, 0
    n_seed = min(n, -(-_SEED_BITS // b))
    low = coder.decode(uniform_model(1 << b), n - n_seed) if n > n_seed else np.zeros(0, np.int32)
    seed = words_to_int(coder.get_compressed())
    if seed >> (n_seed * b):
        raise CorruptIndexError("ans payload has words left over after decoding")
    return high, low, seed, n_seed, b
