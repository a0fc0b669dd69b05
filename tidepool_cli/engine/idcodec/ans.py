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

import constriction
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
        buf = payload_view(payload)
        if n in (0, universe):
            if buf.size:
                raise CorruptIndexError(f"ans payload for {n} of {universe} IDs must be empty")
            return np.arange(n, dtype=np.uint32)
        b, level = ans_params(n, universe)
        model, k = _high_model(level)
        coder = new_coder(payload_to_words(buf, "ans"))

        # The number of escapes is not stored: decode n symbols, then as many more as
        # there were escapes among the last ones, until a batch has none. Each escape
        # stands for (k - 1) << b of gap and the gaps sum to at most N - n, which bounds
        # the work a corrupt payload can ask for.
        max_escapes = (universe - n) // ((k - 1) << b)
        batch = coder.decode(model, n)
        parts = [batch]
        pending = total = int(np.count_nonzero(batch == k - 1))
        while pending:
            if total > max_escapes:
                raise CorruptIndexError("ans payload decodes to gaps beyond the universe")
            batch = coder.decode(model, pending)
            parts.append(batch)
            pending = int(np.count_nonzero(batch == k - 1))
            total += pending
        symbols = np.concatenate(parts) if len(parts) > 1 else batch

        if total:
            terminals = np.flatnonzero(symbols != k - 1)
            gaps = (np.diff(terminals, prepend=-1) - 1) * (k - 1) + symbols[terminals]
        else:  # the usual case: escapes have probability <= 2**-23 unless b hit its cap
            gaps = symbols.astype(np.int64)
        if b:
            gaps <<= b
            n_seed = min(n, -(-_SEED_BITS // b))
            if n > n_seed:
                gaps[: n - n_seed] |= coder.decode(uniform_model(1 << b), n - n_seed)
            seed = words_to_int(coder.get_compressed())
            if seed >> (n_seed * b):
                raise CorruptIndexError("ans payload has words left over after decoding")
            mask = (1 << b) - 1
            gaps[n - n_seed :] |= [(seed >> (i * b)) & mask for i in range(n_seed)]
        elif not coder.is_empty():
            raise CorruptIndexError("ans payload has words left over after decoding")
        # ids = cumsum(gaps + 1) - 1, in place.
        gaps += 1
        np.cumsum(gaps, out=gaps)
        gaps -= 1
        return check_decoded(gaps, n, universe, "ans")
