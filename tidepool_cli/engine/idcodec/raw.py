"""``raw``: the sorted IDs as little-endian uint32, 32 bits per ID; the baseline.

Payload: ``4 n`` bytes, ``sorted_ids.astype("<u4")``. Empty for ``n = 0``.
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
from tidepool_cli.errors import CorruptIndexError


class RawCodec:
    """Uncompressed sorted uint32 IDs (``name = "raw"``)."""

    name = "raw"

    def encode(self, ids: np.ndarray, universe: int) -> bytes:
        """Store a set of IDs; see :class:`~tidepool_cli.engine.idcodec.IdCodec`.

        Parameters
        ----------
        ids : (n,) integer array
            Distinct values in ``[0, universe)``, any order.
        universe : int

        Returns
        -------
        bytes
            ``4 n`` bytes.

        Raises
        ------
        InvalidInputError
            On invalid ``ids`` or ``universe``.
        """
        x, _ = prepare_ids(ids, universe)
        return x.astype("<u4").tobytes()

    def decode(self, payload: bytes | memoryview | np.ndarray, n: int, universe: int) -> np.ndarray:
        """Read the sorted IDs back; see :class:`~tidepool_cli.engine.idcodec.IdCodec`.

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
            If the payload is not ``4 n`` bytes or not an increasing set in the universe.
        """
        universe = check_universe(universe)
        n = check_count(n, universe)
        buf = payload_view(payload)
        if buf.size != 4 * n:
            raise CorruptIndexError(f"raw payload has {buf.size} bytes, expected {4 * n}")
        ids = buf.view("<u4").astype(np.int64)
        return check_decoded(ids, n, universe, "raw")
