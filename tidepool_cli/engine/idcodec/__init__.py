"""Lossless codecs for sets of row IDs: the compressed ID side of IVF posting lists.

A posting list is a *set* of ``n`` distinct IDs from ``[0, N)`` (``N`` = rows in the
segment, at most ``2**31 - 1``). Its order carries no information, so the least any
code can spend on average is ``log2 C(N, n)`` bits (:func:`set_bound_bits`); for
``N = 1e6`` split into 1,024 lists that is 11.44 bits per ID, against 32 for raw uint32.

==============  =========================================================  ==============
name            method                                                     module
==============  =========================================================  ==============
``ans``         geometric model of sorted gaps, vectorized ANS (default)   :mod:`.ans`
``roc``         bits-back Random Order Coding, one Python step per ID      :mod:`.roc`
``elias-fano``  Elias-Fano, with random access                             :mod:`.elias_fano`
``raw``         little-endian uint32                                       :mod:`.raw`
==============  =========================================================  ==============

Every codec takes the IDs in any order, returns them sorted as uint32, stores neither
``n`` nor ``N`` (the caller does) and checks what it decodes: exactly ``n`` strictly
increasing IDs below ``N``, else :class:`~tidepool_cli.errors.CorruptIndexError`.
:func:`encode_lists` / :func:`decode_list` add a CRC32 per list so that a flipped byte is
reported as corruption instead of decoding to other IDs; :func:`decode_lists` decodes the
many short lists of a query batch in one call. Byte formats and measured sizes
and speeds: docs/IDCODEC.md.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from tidepool_cli.engine.idcodec._common import (
    MAX_UNIVERSE,
    IdCodec,
    payload_view,
    set_bound_bits,
)
from tidepool_cli.engine.idcodec.ans import AnsCodec
from tidepool_cli.engine.idcodec.elias_fano import EliasFanoCodec
from tidepool_cli.engine.idcodec.raw import RawCodec
from tidepool_cli.engine.idcodec.roc import RocCodec
from tidepool_cli.errors import CorruptIndexError, InvalidInputError

__all__ = [
    "CODEC_NAMES",
    "DEFAULT_CODEC",
    "MAX_UNIVERSE",
    "AnsCodec",
    "EliasFanoCodec",
    "IdCodec",
    "RawCodec",
    "RocCodec",
    "decode_list",
    "decode_lists",
    "elias_fano_access",
    "encode_lists",
    "get_codec",
    "set_bound_bits",
]

_CODECS: dict[str, IdCodec] = {
    codec.name: codec for codec in (AnsCodec(), RocCodec(), EliasFanoCodec(), RawCodec())
}

#: Names accepted by :func:`get_codec`, the default first.
CODEC_NAMES: tuple[str, ...] = tuple(_CODECS)

#: The codec an IVF index uses unless told otherwise.
DEFAULT_CODEC = "ans"


def get_codec(name: str) -> IdCodec:
    """The codec called ``name``.

    Parameters
    ----------
    name : str
        One of :data:`CODEC_NAMES`: ``"ans"``, ``"roc"``, ``"elias-fano"``, ``"raw"``.

    Returns
    -------
    IdCodec
        A stateless, shared instance.

    Raises
    ------
    InvalidInputError
        For any other name.
    """
    try:
        return _CODECS[name]
    except (KeyError, TypeError):
        raise InvalidInputError(f"unknown ID codec {name!r}; choose one of {', '.join(CODEC_NAMES)}") from None


def elias_fano_access(
    payload: bytes | memoryview | np.ndarray, n: int, universe: int, positions: np.ndarray
) -> np.ndarray:
    """Random access into an ``elias-fano`` payload; see :meth:`EliasFanoCodec.access`.

    Parameters
    ----------
    payload : bytes, memoryview or (nbytes,) uint8
    n, universe : int
    positions : (q,) integer array
        Ranks in ``[0, n)``.

    Returns
    -------
    (q,) uint32
        ``sorted_ids[positions]``.

    Raises
    ------
    InvalidInputError
        On a position outside ``[0, n)``.
    CorruptIndexError
        If the payload fails its structural checks.
    """
    return _CODECS["elias-fano"].access(payload, n, universe, positions)  # type: ignore[attr-defined]


def encode_lists(
    codec_name: str, lists: Sequence[np.ndarray], universe: int
) -> tuple[bytes, np.ndarray, np.ndarray]:
    """Encode many posting lists into one blob with byte offsets and per-list CRC32s.

    Parameters
    ----------
    codec_name : str
        One of :data:`CODEC_NAMES`.
    lists : sequence of L (n_i,) integer arrays
        Each a set of distinct IDs in ``[0, universe)``, any order.
    universe : int
        Rows in the segment, shared by all lists.

    Returns
    -------
    blob : bytes
        The payloads, concatenated in list order.
    offsets : (L + 1,) uint64
        Byte offsets: list ``i`` is ``blob[offsets[i]:offsets[i + 1]]``.
    crcs : (L,) uint32
        ``zlib.crc32`` of each list's payload bytes.

    Raises
    ------
    InvalidInputError
        For an unknown codec or an invalid list (the message names the list).
    """
    codec = get_codec(codec_name)
    payloads = []
    for i, ids in enumerate(lists):
        try:
            payloads.append(codec.encode(ids, universe))
        except InvalidInputError as exc:
            raise InvalidInputError(f"posting list {i}: {exc}") from exc
    offsets = np.zeros(len(payloads) + 1, dtype=np.uint64)
    offsets[1:] = np.cumsum([len(p) for p in payloads], dtype=np.uint64)
    crcs = np.array([zlib.crc32(p) for p in payloads], dtype=np.uint32)
    return b"".join(payloads), offsets, crcs


def decode_list(
    codec_name: str,
    blob: bytes | memoryview | np.ndarray,
    offsets: np.ndarray,
    crcs: np.ndarray,
    list_id: int,
    n: int,
    universe: int,
) -> np.ndarray:
    """Decode one posting list from a blob written by :func:`encode_lists`.

    The list's CRC32 is checked before its payload is decoded.

    Parameters
    ----------
    codec_name : str
    blob : bytes, memoryview or (nbytes,) uint8
    offsets : (L + 1,) uint64
    crcs : (L,) uint32
    list_id : int
        Which list, in ``[0, L)``.
    n : int
        Number of IDs in that list.
    universe : int

    Returns
    -------
    (n,) uint32
        The list's IDs, strictly increasing.

    Raises
    ------
    InvalidInputError
        For an unknown codec, ``list_id`` outside ``[0, L)`` or a bad ``n``/``universe``.
    CorruptIndexError
        If the offsets are inconsistent with the blob, the CRC32 does not match, or the
        payload fails the codec's own checks; the message names the list.
    """
    return decode_lists(codec_name, blob, offsets, crcs, [list_id], [n], universe)[0]


def decode_lists(
    codec_name: str,
    blob: bytes | memoryview | np.ndarray,
    offsets: np.ndarray,
    crcs: np.ndarray,
    list_ids: Sequence[int],
    ns: Sequence[int],
    universe: int,
) -> list[np.ndarray]:
    """Decode several posting lists from a blob written by :func:`encode_lists`.

    The same checks as :func:`decode_list` for every list; a codec with a
    ``decode_many`` method (``ans``) decodes them in one call, which spares the NumPy
    overhead per list that dominates short lists.

    Parameters
    ----------
    codec_name : str
    blob : bytes, memoryview or (nbytes,) uint8
    offsets : (L + 1,) uint64
    crcs : (L,) uint32
    list_ids : sequence of m int
        Which lists, each in ``[0, L)``.
    ns : sequence of m int
        Number of IDs in each.
    universe : int

    Returns
    -------
    list of m (n_i,) uint32 arrays
        Each list's IDs, strictly increasing.

    Raises
    ------
    InvalidInputError
        For an unknown codec, a list id outside ``[0, L)``, a bad ``n``/``universe``, or
        ``list_ids`` and ``ns`` of different lengths.
    CorruptIndexError
        If the offsets are inconsistent with the blob, a CRC32 does not match, or a
        payload fails the codec's own checks; the message names the list.
    """
    codec = get_codec(codec_name)
    offsets = np.asarray(offsets)
    crcs = np.asarray(crcs)
    if offsets.ndim != 1 or crcs.ndim != 1 or offsets.size != crcs.size + 1:
        raise CorruptIndexError(f"posting list offsets ({offsets.shape}) and CRCs ({crcs.shape}) disagree")
    if len(ns) != len(list_ids):
        raise InvalidInputError(f"got {len(list_ids)} list ids but {len(ns)} sizes")
    buf = payload_view(blob)
    bounds = offsets.tolist()
    stored = crcs.tolist()
    payloads = []
    for list_id in list_ids:
        if isinstance(list_id, bool) or not isinstance(list_id, (int, np.integer)) or not 0 <= list_id < len(stored):
            raise InvalidInputError(f"list_id must be an integer in [0, {len(stored)}), got {list_id!r}")
        start, stop = bounds[list_id], bounds[list_id + 1]
        if not 0 <= start <= stop <= buf.size:
            raise CorruptIndexError(f"posting list {list_id}: offsets [{start}, {stop}) outside the {buf.size}-byte blob")
        payload = buf[start:stop]
        crc = zlib.crc32(payload)
        if crc != stored[list_id]:
            raise CorruptIndexError(f"posting list {list_id}: CRC32 mismatch (stored {stored[list_id]:#010x}, computed {crc:#010x})")
        payloads.append(payload)
    many = getattr(codec, "decode_many", None)
    if many is not None and len(payloads) > 1:
        try:
            return many(payloads, ns, universe)
        except CorruptIndexError:
            pass  # decoded one by one below, so the error names its list
    out = []
    for list_id, payload, n in zip(list_ids, payloads, ns):
        try:
            out.append(codec.decode(payload, n, universe))
        except CorruptIndexError as exc:
            raise CorruptIndexError(f"posting list {list_id}: {exc}") from exc
    return out
