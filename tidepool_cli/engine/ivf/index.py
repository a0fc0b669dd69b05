"""The IVF index as data: centroids and compressed posting lists, its defaults and stats."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine import idcodec
from tidepool_cli.errors import CorruptIndexError, InvalidInputError, UnsupportedFormatError

NPROBE_FRACTION = 1 / 24
"""Default share of the lists a query probes, see :func:`default_nprobe`."""

MIN_NPROBE = 20
"""Default nprobe never goes below this (small indexes have few lists; probing is cheap)."""

MIN_CALIBRATED_NPROBE = 4
"""The first nprobe a calibration tries (it then grows by a quarter per step up to nlist)."""

CALIBRATION_TARGET = 0.965
"""recall@10 a calibrated nprobe must reach on sampled rows, which track real queries
within -0.02 / +0.01 (:mod:`~tidepool_cli.engine.calibrate`)."""


@dataclass(frozen=True, eq=False)
class IvfIndex:
    """An IVF index over the rows of one segment.

    Attributes
    ----------
    metric : {"l2", "cosine", "dot"}
    centroids : (nlist, d) float32
        Coarse quantizer; unit rows for cosine.
    list_sizes : (nlist,) uint32
        Rows per posting list; they sum to ``universe``.
    codec : str
        One of :data:`tidepool_cli.engine.idcodec.CODEC_NAMES`.
    blob : (nbytes,) uint8
        Concatenated posting-list payloads (may be a read-only memmap).
    offsets : (nlist + 1,) uint64
        List ``i`` is ``blob[offsets[i]:offsets[i + 1]]``.
    crcs : (nlist,) uint32
        CRC32 of each payload, checked when the list is decoded.
    universe : int
        ``N``, rows in the segment; posting lists hold positions in ``[0, N)``.

    Raises
    ------
    UnsupportedFormatError
        On construction, for an unknown metric or codec name.
    CorruptIndexError
        On construction, if the arrays disagree in shape or the sizes and offsets are
        inconsistent (what a truncated or mismatched sidecar file looks like).
    """

    metric: str
    centroids: np.ndarray
    list_sizes: np.ndarray
    codec: str
    blob: np.ndarray
    offsets: np.ndarray
    crcs: np.ndarray
    universe: int

    def __post_init__(self) -> None:
        if self.metric not in ("l2", "cosine", "dot"):
            raise UnsupportedFormatError(f"IVF index uses unknown metric {self.metric!r}")
        if self.codec not in idcodec.CODEC_NAMES:
            raise UnsupportedFormatError(f"IVF index uses unknown ID codec {self.codec!r}")
        nlist = self.centroids.shape[0] if self.centroids.ndim == 2 else -1
        shapes_ok = (
            nlist >= 1
            and self.list_sizes.shape == (nlist,)
            and self.offsets.shape == (nlist + 1,)
            and self.crcs.shape == (nlist,)
            and self.blob.ndim == 1
        )
        if not shapes_ok:
            raise CorruptIndexError(
                f"IVF arrays disagree: centroids {self.centroids.shape}, list_sizes "
                f"{self.list_sizes.shape}, offsets {self.offsets.shape}, crcs {self.crcs.shape}"
            )
        if int(self.list_sizes.sum(dtype=np.int64)) != self.universe:
            raise CorruptIndexError(
                f"IVF list sizes sum to {int(self.list_sizes.sum(dtype=np.int64))}, expected {self.universe} rows"
            )
        off = self.offsets.astype(np.int64)
        if off[0] != 0 or off[-1] != self.blob.size or np.any(np.diff(off) < 0):
            raise CorruptIndexError(f"IVF list offsets do not cover the {self.blob.size}-byte blob")

    @property
    def nlist(self) -> int:
        """Number of posting lists."""
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        """Vector dimension ``d``."""
        return self.centroids.shape[1]

    def stats(self) -> dict:
        """Sizes and balance of the index, for ``tidepool stats``.

        Returns
        -------
        dict
            ``codec``; ``nlist``; ``n`` (= universe); ``ids_bytes`` (payload bytes);
            ``bits_per_id`` achieved by the codec; ``bound_bits_per_id``, the sum over
            lists of ``log2 C(N, n_i)`` divided by N (what a codec storing each list on
            its own needs on average over sets; data whose row order correlates with
            the clusters can come in below it); ``partition_bound_bits_per_id``,
            ``log2(N! / prod n_i!) / N`` (the same for the partition as a whole, which
            a codec coding lists jointly could approach); ``elias_fano_bits_per_id``
            (Elias-Fano size by its formula, ``n_i (2 + floor(log2(N / n_i)))`` bits
            per list up to rounding, without framing) and ``raw_bits_per_id`` (32) for
            comparison; ``list_size_min``/``median``/``max``; ``empty_lists``; and
            ``imbalance_factor``, ``nlist * sum(n_i^2) / N^2`` (faiss' definition: 1
            for equal lists, the expected scan cost relative to that).
        """
        sizes = self.list_sizes.astype(np.int64)
        n = self.universe
        ids_bytes = int(self.offsets[-1])
        nonempty = sizes[(sizes > 0) & (sizes < n)]
        bound = sum(idcodec.set_bound_bits(int(s), n) for s in nonempty)
        partition = (math.lgamma(n + 1) - sum(math.lgamma(int(s) + 1) for s in sizes)) / math.log(2)
        low = np.floor(np.log2(n / nonempty)).astype(np.int64) if nonempty.size else nonempty
        ef_bits = int(np.sum(nonempty * low + nonempty + (n >> low)))
        per = (lambda bits: bits / n) if n else (lambda bits: 0.0)
        return {
            "codec": self.codec,
            "nlist": self.nlist,
            "n": n,
            "ids_bytes": ids_bytes,
            "bits_per_id": per(8 * ids_bytes),
            "bound_bits_per_id": per(bound),
            "partition_bound_bits_per_id": per(max(partition, 0.0)),
            "elias_fano_bits_per_id": per(ef_bits),
            "raw_bits_per_id": 32.0,
            "list_size_min": int(sizes.min()),
            "list_size_median": float(np.median(sizes)),
            "list_size_max": int(sizes.max()),
            "empty_lists": int(np.count_nonzero(sizes == 0)),
            "imbalance_factor": float(self.nlist * np.sum(sizes**2) / n**2) if n else 1.0,
        }


def default_nlist(n: int) -> int:
    """Default number of posting lists for ``n`` rows: ``round(4 * sqrt(n))`` in ``[1, n]``.

    Parameters
    ----------
    n : int
        Rows in the segment.

    Returns
    -------
    int
        400 lists for 10,000 rows, 980 for 60,000, 2,498 for 390,000, 4,000 for 10^6.

    Notes
    -----
    Probing costs ``nlist`` centroid scores plus ``nprobe * n / nlist`` row scores per
    query; ``nlist ~ c sqrt(n)`` balances the two for a fixed probed share. faiss' guide
    recommends ``4 sqrt(n)`` to ``16 sqrt(n)``; the low end keeps lists long (about
    ``sqrt(n) / 4`` rows), which suits the batched per-list matrix products here, and
    costs a quarter of the k-means work of ``8 sqrt(n)`` (sample and centroids both
    scale with nlist).

    Raises
    ------
    InvalidInputError
        If ``n < 1``.
    """
    if n < 1:
        raise InvalidInputError(f"an IVF index needs at least one row, got n={n}")
    return int(min(max(round(4 * math.sqrt(n)), 1), n))


def default_nprobe(nlist: int) -> int:
    """Lists probed per query when neither the caller nor the index's calibration gives a number.

    ``max(MIN_NPROBE, ceil(nlist * NPROBE_FRACTION))``, at most ``nlist``. ``build-ivf``
    calibrates every index it builds (:mod:`tidepool_cli.engine.calibrate`), so this rule
    serves indexes built through the engine API alone.

    Parameters
    ----------
    nlist : int

    Returns
    -------
    int
        20 for up to 480 lists (siftsmall: 400), 41 for 980 (fashion-mnist), 105 for
        2,498 (glove-50-angular), 167 for 4,000 (10^6 rows).

    Notes
    -----
    A query probes 1/24 of the lists once there are more than 480. The share is set by
    the hardest of the three
    reference sets, glove-50-angular, which needs 90 of its 2,498 lists for recall@10 of
    0.95 (siftsmall needs 17 of 400, fashion-mnist 8 of 980); 1/24 gives it 0.962 and
    the minimum of 20 gives siftsmall 0.965. Curves per data set: docs/IVF.md.
    """
    return int(min(nlist, max(MIN_NPROBE, math.ceil(nlist * NPROBE_FRACTION))))


def check_int(value, what: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an int if it is an integer in ``[lo, hi]``.

    Raises
    ------
    InvalidInputError
        Not an integer (bools included) or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{what} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidInputError(f"{what} must be {bound}, got {value}")
    return int(value)
