"""Argument checks, payload views and the decoded-set guard shared by every ID codec."""

from __future__ import annotations

import functools
import math
import operator
from typing import Protocol, runtime_checkable

import constriction
import numpy as np

from tidepool_cli.errors import CorruptIndexError, InvalidInputError

#: Largest universe (rows in one segment) a codec accepts: IDs must fit an int32.
MAX_UNIVERSE = 2**31 - 1

#: constriction's ``Uniform`` needs 2 <= size <= 2**24 (its quantiles have 24 bits).
_UNIFORM_MAX = 2**24


@runtime_checkable
class IdCodec(Protocol):
    """A lossless codec for a set of distinct row IDs drawn from ``[0, universe)``.

    Order carries no information: ``encode`` accepts the IDs in any order and ``decode``
    returns them sorted. ``n`` and ``universe`` are not stored in the payload; the caller
    (the IVF index) keeps them next to it.

    Attributes
    ----------
    name : str
        The codec's name in :data:`~tidepool_cli.engine.idcodec.CODEC_NAMES`.
    """

    name: str

    def encode(self, ids: np.ndarray, universe: int) -> bytes:
        """Compress a set of IDs.

        Parameters
        ----------
        ids : (n,) integer array
            Distinct values in ``[0, universe)``, any order.
        universe : int
            Number of rows ``N`` the IDs are drawn from, ``0 <= N <= 2**31 - 1``.

        Returns
        -------
        bytes
            The payload; its length in bytes is the cost (``8 * len / n`` bits per ID).

        Raises
        ------
        InvalidInputError
            If ``ids`` is not 1-D integer, has duplicates or values outside the universe.
        """
        ...

    def decode(self, payload: bytes | memoryview | np.ndarray, n: int, universe: int) -> np.ndarray:
        """Recover the sorted IDs from a payload.

        Parameters
        ----------
        payload : bytes, memoryview or (nbytes,) uint8 array
        n : int
            Number of IDs that were encoded, ``0 <= n <= universe``.
        universe : int
            The ``universe`` given to :meth:`encode`.

        Returns
        -------
        (n,) uint32
            Strictly increasing IDs, all ``< universe``.

        Raises
        ------
        InvalidInputError
            If ``n`` or ``universe`` is out of range.
        CorruptIndexError
            If the payload fails a structural check.
        """
        ...


def set_bound_bits(n: int, universe: int) -> float:
    """Information-theoretic size of an ``n``-subset of ``[0, universe)``.

    Parameters
    ----------
    n : int
        Set size, ``0 <= n <= universe``.
    universe : int
        ``N``, the number of possible IDs.

    Returns
    -------
    float
        ``log2 C(N, n)`` in bits, from ``math.lgamma``; exactly ``0.0`` for ``n`` in
        ``{0, N}``. Divide by ``n`` for bits per ID.

    Raises
    ------
    InvalidInputError
        If ``universe`` is outside ``[0, 2**31 - 1]`` or ``n`` outside ``[0, universe]``.
    """
    universe = check_universe(universe)
    n = check_count(n, universe)
    if n in (0, universe):
        return 0.0
    nats = math.lgamma(universe + 1) - math.lgamma(n + 1) - math.lgamma(universe - n + 1)
    return max(0.0, nats / math.log(2))


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InvalidInputError(f"{what} must be an integer, got {value!r}") from None


def check_universe(universe: object) -> int:
    """Return ``universe`` as an int in ``[0, MAX_UNIVERSE]`` or raise InvalidInputError."""
    universe = _as_int(universe, "universe")
    if not 0 <= universe <= MAX_UNIVERSE:
        raise InvalidInputError(f"universe must be in [0, 2**31 - 1], got {universe}")
    return universe


def check_count(n: object, universe: int) -> int:
    """Return ``n`` as an int in ``[0, universe]`` or raise InvalidInputError."""
    n = _as_int(n, "n")
    if not 0 <= n <= universe:
        raise InvalidInputError(f"n must be in [0, universe={universe}], got {n}")
    return n


def prepare_ids(ids: object, universe: object) -> tuple[np.ndarray, int]:
    """Validate a set of IDs and return it sorted.

    Parameters
    ----------
    ids : (n,) integer array-like
        Distinct values in ``[0, universe)``, any order. An empty array of any dtype is
        accepted (``np.asarray([])`` is float64).
    universe : int

    Returns
    -------
    sorted_ids : (n,) int64
    universe : int

    Raises
    ------
    InvalidInputError
        On a non-1-D or non-integer array, a duplicate, or a value outside the universe.
    """
    universe = check_universe(universe)
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InvalidInputError(f"ids must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64), universe
    if arr.dtype.kind not in "iu":
        raise InvalidInputError(f"ids must have an integer dtype, got {arr.dtype}")
    # Compare in the array's own dtype first so that huge uint64 values cannot wrap.
    if arr.min() < 0 or arr.max() >= universe:
        raise InvalidInputError(f"ids must lie in [0, {universe}); got [{arr.min()}, {arr.max()}]")
    out = np.sort(arr.astype(np.int64))
    if out.size > 1 and not np.all(out[1:] > out[:-1]):
        raise InvalidInputError("ids must be distinct (a posting list is a set)")
    return out, universe


def payload_view(payload: object) -> np.ndarray:
    """View a payload as a read-only (nbytes,) uint8 array without copying.

    Raises
    ------
    InvalidInputError
        If ``payload`` is not bytes-like or a 1-D uint8 array.
    """
    if isinstance(payload, np.ndarray):
        if payload.dtype != np.uint8 or payload.ndim != 1:
            raise InvalidInputError(f"payload array must be 1-D uint8, got {payload.dtype} {payload.shape}")
        return np.ascontiguousarray(payload)
    try:
        return np.frombuffer(memoryview(payload).cast("B"), dtype=np.uint8)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidInputError(f"payload must be bytes-like, got {type(payload).__name__}") from None


def check_decoded(ids: np.ndarray, n: int, universe: int, codec: str) -> np.ndarray:
    """The decoder-side guard: exactly ``n`` strictly increasing values ``< universe``.

    Parameters
    ----------
    ids : (m,) integer array
        What a decoder produced.
    n, universe : int
        What the caller expects.
    codec : str
        Named in the error message.

    Returns
    -------
    (n,) uint32

    Raises
    ------
    CorruptIndexError
        If any of the three conditions fails.
    """
    if ids.shape != (n,):
        raise CorruptIndexError(f"{codec} payload decoded to {ids.size} IDs, expected {n}")
    if n:
        if ids[0] < 0 or ids[-1] >= universe:
            raise CorruptIndexError(f"{codec} payload decoded to IDs outside [0, {universe})")
        if n > 1 and not np.all(ids[1:] > ids[:-1]):
            raise CorruptIndexError(f"{codec} payload decoded to IDs that are not strictly increasing")
    return ids.astype(np.uint32, copy=False)


def words_to_payload(words: np.ndarray) -> bytes:
    """Serialize constriction's compressed words (uint32) as little-endian bytes.

    The high zero bytes of the last word are dropped: constriction never ends its data in
    a zero word, so the decoder restores them unambiguously and the payload saves up to
    24 bits per list.
    """
    return np.asarray(words, dtype="<u4").tobytes().rstrip(b"\0")


def payload_to_words(buf: np.ndarray, codec: str) -> np.ndarray:
    """Inverse of :func:`words_to_payload`: (nbytes,) uint8 -> (nwords,) uint32.

    Raises
    ------
    CorruptIndexError
        If the payload ends in a zero byte, which :func:`words_to_payload` never writes.
    """
    if buf.size and buf[-1] == 0:
        raise CorruptIndexError(f"{codec} payload ends in a zero byte (not a canonical payload)")
    data = buf.tobytes() + b"\0" * (-buf.size % 4)
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def int_to_words(value: int) -> np.ndarray:
    """A non-negative int as little-endian uint32 words without high zero words."""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "little")
    return np.frombuffer(raw + b"\0" * (-len(raw) % 4), dtype="<u4").astype(np.uint32)


def words_to_int(words: np.ndarray) -> int:
    """Inverse of :func:`int_to_words`."""
    return int.from_bytes(np.asarray(words, dtype="<u4").tobytes(), "little")


def new_coder(words: np.ndarray | None = None) -> constriction.stream.stack.AnsCoder:
    """An ``AnsCoder``, empty or holding ``words`` (which must not end in a zero word)."""
    if words is None or words.size == 0:
        return constriction.stream.stack.AnsCoder()
    return constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))


@functools.lru_cache(maxsize=1 << 17)
def uniform_model(size: int) -> constriction.stream.model.Uniform:
    """A cached constriction ``Uniform(size)``; ``size`` must be in ``[2, 2**24]``.

    constriction panics (in Rust) on sizes outside that range, so callers never pass one;
    the check here is a backstop that turns a bug into an exception instead of a crash.
    """
    if not 2 <= size <= _UNIFORM_MAX:
        raise ValueError(f"uniform model size {size} outside [2, 2**24]")
    return constriction.stream.model.Uniform(size)
