"""f16: a half-precision copy of every vector (IEEE 754 binary16, 2 bytes per dimension).

Byte layout: row i of ``codes`` is the d little-endian float16 values of vector i
(``codes.view("<f2")`` is the (n, d) half-precision matrix). Rounding to binary16 keeps
11 significant bits, so ``|x - xh| <= 2^-11 |x|`` componentwise: estimates are scored with
the shared reconstruction estimator (:mod:`._common`) and, in the cascade's f16 stage,
with the rigorous bound of :func:`pair_bound`.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.quantize._common import ReconstructionQuantizer, check_train_input, fp_rtol, sample_rows
from tidepool_cli.errors import InvalidInputError

F16_MAX = float(np.finfo(np.float16).max)
UNIT_ROUNDOFF = 2.0**-11
"""Relative rounding error of float32 -> float16 (round to nearest, 11-bit significand)."""


class F16Quantizer(ReconstructionQuantizer):
    """Half-precision copy; see the module docstring.

    Parameters
    ----------
    d : int
    metric : {"l2", "cosine", "dot"}
    mean : (d,) float32
    eps : float
        Calibrated error-bound multiplier (see :mod:`._common`).
    """

    name = "f16"

    def __init__(self, d: int, metric: str, mean: np.ndarray, eps: float):
        self.d, self.metric = int(d), metric
        self.mean = np.asarray(mean, dtype=np.float32)
        self.eps = float(eps)

    @classmethod
    def train(cls, x: np.ndarray, metric: str, *, seed: int = 0, train_rows: int = 65536) -> "F16Quantizer":
        """Mean and calibrated bound of a sample of ``x`` ((n, d) float32).

        Raises
        ------
        InvalidInputError
            A value beyond the float16 range (65504), or bad training input.
        """
        xt = check_train_input(sample_rows(x, train_rows, seed), metric)
        q = cls(xt.shape[1], metric, xt.mean(axis=0, dtype=np.float64).astype(np.float32), 0.0)
        q.calibrate(xt, seed)
        return q

    @property
    def code_bytes(self) -> int:
        return 2 * self.d

    def _encode_codes(self, x: np.ndarray) -> np.ndarray:
        if x.size and float(np.abs(x).max()) > F16_MAX:
            raise InvalidInputError(f"a value exceeds the float16 range ({F16_MAX:g}); use sq8 or rabitq")
        return np.ascontiguousarray(x, dtype="<f2").view(np.uint8)

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(codes).view("<f2").astype(np.float32)

    def _ip(self, qc, extra, codes):
        return qc @ self.decode_codes(codes).T

    def state(self):
        return {"codec": self.name, "d": self.d, "metric": self.metric, "eps": self.eps}, {"mean": self.mean}

    @classmethod
    def from_state(cls, params: dict, arrays: dict) -> "F16Quantizer":
        return cls(params["d"], params["metric"], arrays["mean"], params["eps"])


def pair_distances(xq: np.ndarray, rows16: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Distances from float16 rows and a rigorous bound on their error, one row per query.

    Parameters
    ----------
    xq : (p, d) float32
        The query of each pair (prepared).
    rows16 : (p, d) float16
        The half-precision copy of each pair's row.
    metric : {"l2", "cosine", "dot"}

    Returns
    -------
    est, err : (p,) float32
        With ``|x - xh| <= u |x|`` componentwise (u = 2^-11, so ``|x| <= |xh| / (1 - u)``):
        ip error ``<= u |q| |x|`` and l2 error ``<= |e| (2 |q - xh| + |e|)``, both by
        Cauchy-Schwarz; float32 rounding of the sums is added.
    """
    xh = rows16.astype(np.float32)
    xn = np.sqrt(np.einsum("pd,pd->p", xh, xh)) / (1.0 - UNIT_ROUNDOFF)
    qn = np.sqrt(np.einsum("pd,pd->p", xq, xq))
    en = UNIT_ROUNDOFF * xn
    rt = fp_rtol(xq.shape[1])
    if metric == "l2":
        diff = xq - xh
        est = np.einsum("pd,pd->p", diff, diff)
        err = en * (2.0 * np.sqrt(est) + en) + rt * (est + qn * xn)
        return est, err
    ip = np.einsum("pd,pd->p", xq, xh)
    err = en * qn + rt * qn * xn
    return (1.0 - ip if metric == "cosine" else -ip), err
