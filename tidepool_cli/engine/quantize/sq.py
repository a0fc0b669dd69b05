"""SQ8 and SQ4: per-dimension affine scalar quantizers trained on the data.

Dimension j maps ``x_j`` to the code ``c = clip(round((x_j - lo_j) / step_j), 0, L - 1)``
with ``L = 2^nbits`` levels and decodes it to ``lo_j + step_j * c``. The range
``[lo_j, hi_j]`` of every dimension is chosen among symmetric quantile clips of the
training sample (:data:`CLIP_QUANTILES`) as the one with the least squared error on that
dimension (clipping a few outliers buys finer steps for the rest; it matters most at 4
bits). One global min/max would waste levels on every narrow dimension.

Byte layout: SQ8 stores one uint8 per dimension (row i, column j); SQ4 packs two codes per
byte, dimension ``2t`` in the low nibble and ``2t + 1`` in the high nibble of byte t
(an odd d gets a zero high nibble at the end). Scoring casts a block of codes (nibbles split
first) to float32 and multiplies it with the step-scaled queries (one GEMM).
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.quantize._common import ReconstructionQuantizer, check_train_input, sample_rows
from tidepool_cli.errors import InvalidInputError

CLIP_QUANTILES = (0.0, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2)
"""Candidate fractions of the sample clipped off each end of a dimension's range."""


class ScalarQuantizer(ReconstructionQuantizer):
    """Per-dimension affine quantizer with 8 or 4 bits per dimension.

    Parameters
    ----------
    metric : {"l2", "cosine", "dot"}
    nbits : {4, 8}
    lo, step : (d,) float32
        Decoded value of code c in dimension j is ``lo[j] + step[j] * c``.
    mean : (d,) float32
    eps : float
        Calibrated error-bound multiplier (see :mod:`._common`).
    """

    def __init__(self, metric: str, nbits: int, lo: np.ndarray, step: np.ndarray, mean: np.ndarray, eps: float):
        if nbits not in (4, 8):
            raise InvalidInputError(f"sq supports nbits 4 or 8, got {nbits}")
        self.metric, self.nbits = metric, int(nbits)
        self.lo = np.asarray(lo, dtype=np.float32)
        self.step = np.asarray(step, dtype=np.float32)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.d = self.lo.shape[0]
        self.eps = float(eps)
        self.name = f"sq{nbits}"

    @classmethod
    def train(cls, x: np.ndarray, metric: str, *, nbits: int = 8, seed: int = 0, train_rows: int = 65536) -> "ScalarQuantizer":
        """Per-dimension ranges minimising the squared error on a sample of ``x`` ((n, d) float32).

        Raises
        ------
        InvalidInputError
            ``nbits`` not 4 or 8, or bad training input.
        """
        if nbits not in (4, 8):
            raise InvalidInputError(f"sq supports nbits 4 or 8, got {nbits}")
        xt = check_train_input(sample_rows(x, train_rows, seed), metric)
        levels = (1 << nbits) - 1
        best_err = np.full(xt.shape[1], np.inf)
        lo = hi = None
        # One sort per dimension serves every candidate clip (np.quantile would sort each time).
        xs = np.sort(xt, axis=0)
        last = xs.shape[0] - 1
        for p in CLIP_QUANTILES:
            clo = xs[int(round(p * last))]
            chi = xs[int(round((1.0 - p) * last))]
            step = _steps(clo, chi, levels)
            xh = clo + step * np.clip(np.rint((xt - clo) / np.where(step > 0, step, 1)), 0, levels)
            err = ((xt - xh).astype(np.float64) ** 2).sum(axis=0)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            lo = clo if lo is None else np.where(better, clo, lo)
            hi = chi if hi is None else np.where(better, chi, hi)
        mean = xt.mean(axis=0, dtype=np.float64).astype(np.float32)
        q = cls(metric, nbits, lo, _steps(lo, hi, levels), mean, 0.0)
        q.calibrate(xt, seed)
        return q

    @property
    def code_bytes(self) -> int:
        return self.d if self.nbits == 8 else (self.d + 1) // 2

    def _encode_codes(self, x: np.ndarray) -> np.ndarray:
        levels = (1 << self.nbits) - 1
        safe = np.where(self.step > 0, self.step, 1)
        c = np.clip(np.rint((x - self.lo) / safe), 0, levels).astype(np.uint8)
        if self.nbits == 8:
            return c
        if self.d % 2:
            c = np.pad(c, ((0, 0), (0, 1)))
        return c[:, 0::2] | (c[:, 1::2] << 4)

    def _unpack(self, codes: np.ndarray) -> np.ndarray:
        """(b, d) float32 code values of a block."""
        if self.nbits == 8:
            return codes.astype(np.float32)
        out = np.empty((codes.shape[0], 2 * codes.shape[1]), dtype=np.uint8)
        np.bitwise_and(codes, 15, out=out[:, 0::2])
        np.right_shift(codes, 4, out=out[:, 1::2])
        return out[:, : self.d].astype(np.float32)

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        return self.lo + self.step * self._unpack(np.asarray(codes))

    def _prepare_ip(self, qc):
        return {"qs": np.ascontiguousarray(qc * self.step), "q0": qc @ self.lo}

    def _ip(self, qc, extra, codes):
        # <qc, lo + step * c> = <qc * step, c> + <qc, lo>: one GEMM on the unpacked block.
        return extra["qs"] @ self._unpack(codes).T + extra["q0"][:, None]

    def state(self):
        params = {"codec": self.name, "d": self.d, "metric": self.metric, "nbits": self.nbits, "eps": self.eps}
        return params, {"lo": self.lo, "step": self.step, "mean": self.mean}

    @classmethod
    def from_state(cls, params: dict, arrays: dict) -> "ScalarQuantizer":
        return cls(params["metric"], params["nbits"], arrays["lo"], arrays["step"], arrays["mean"], params["eps"])


def _steps(lo: np.ndarray, hi: np.ndarray, levels: int) -> np.ndarray:
    return np.maximum(hi - lo, 0).astype(np.float32) / np.float32(levels)
