"""Vector quantizers (f16, SQ8, SQ4, PQ, RaBitQ) and the cascade from codes to exact distances.

Every codec implements :class:`~tidepool_cli.engine.quantize._common.Quantizer`: it is
trained on a sample (deterministic given ``seed``), encodes rows into fixed-width uint8
codes plus three float32 factors per vector, scores blocks of codes against batches of
queries as matrix work (an estimate and an error bound per pair), and round-trips through
``state()`` / ``from_state()`` so a trained quantizer can be stored and reused to encode
new rows. :func:`~tidepool_cli.engine.quantize.cascade.cascade_search` turns scores into
exact top-k results.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.quantize._common import Encoded, Quantizer
from tidepool_cli.engine.quantize.f16 import F16Quantizer
from tidepool_cli.engine.quantize.pq import ProductQuantizer
from tidepool_cli.engine.quantize.rabitq import RaBitQuantizer
from tidepool_cli.engine.quantize.sq import ScalarQuantizer
from tidepool_cli.errors import InvalidInputError

CODECS: tuple[str, ...] = ("f16", "sq8", "sq4", "pq", "rabitq")


def train_quantizer(
    codec: str,
    x: np.ndarray,
    metric: str,
    *,
    m: int | None = None,
    nbits: int | None = None,
    seed: int = 0,
    train_rows: int = 65536,
) -> Quantizer:
    """Train the named codec on a sample of ``x``.

    Parameters
    ----------
    codec : {"f16", "sq8", "sq4", "pq", "rabitq"}
    x : (n, d) float32
        Vectors as stored (unit rows for cosine); a memmap is fine, only the sample is read.
    metric : {"l2", "cosine", "dot"}
    m : int, optional
        PQ sub-quantizers (must divide d); refused for other codecs.
    nbits : int, optional
        PQ: 4 or 8 (default 8); RaBitQ: 1-4 (default 1); refused for f16, sq8, sq4.
    seed : int
    train_rows : int
        Size of the training sample.

    Returns
    -------
    Quantizer

    Raises
    ------
    InvalidInputError
        Unknown codec, parameters the codec does not take or out of range, bad input.
    """
    if codec not in CODECS:
        raise InvalidInputError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    if m is not None and codec != "pq":
        raise InvalidInputError(f"--m applies to pq only, not {codec}")
    if nbits is not None and codec not in ("pq", "rabitq"):
        raise InvalidInputError(f"--nbits applies to pq and rabitq only, not {codec}")
    if train_rows < 1:
        raise InvalidInputError(f"train_rows must be positive, got {train_rows}")
    if codec == "f16":
        return F16Quantizer.train(x, metric, seed=seed, train_rows=train_rows)
    if codec in ("sq8", "sq4"):
        return ScalarQuantizer.train(x, metric, nbits=int(codec[2]), seed=seed, train_rows=train_rows)
    if codec == "pq":
        return ProductQuantizer.train(x, metric, m=m, nbits=8 if nbits is None else nbits, seed=seed, train_rows=train_rows)
    return RaBitQuantizer.train(x, metric, nbits=1 if nbits is None else nbits, seed=seed, train_rows=train_rows)


def quantizer_from_state(params: dict, arrays: dict[str, np.ndarray]) -> Quantizer:
    """Rebuild a trained quantizer from :meth:`Quantizer.state` output.

    Raises
    ------
    InvalidInputError
        Unknown codec name in ``params``.
    """
    codec = params.get("codec")
    if codec == "f16":
        return F16Quantizer.from_state(params, arrays)
    if codec in ("sq8", "sq4"):
        return ScalarQuantizer.from_state(params, arrays)
    if codec == "pq":
        return ProductQuantizer.from_state(params, arrays)
    if codec == "rabitq":
        return RaBitQuantizer.from_state(params, arrays)
    raise InvalidInputError(f"unknown codec {codec!r} in quantizer state")


__all__ = ["CODECS", "Encoded", "Quantizer", "train_quantizer", "quantizer_from_state"]
