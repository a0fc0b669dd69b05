"""RaBitQ: 1 bit per dimension with a proven error bound, and extended RaBitQ at 2-4 bits.

Gao & Long, "RaBitQ: Quantizing High-Dimensional Vectors with a Theoretical Error Bound
for Approximate Nearest Neighbor Search", SIGMOD 2024; Gao, Gou, Xu, Yang, Long, Wong,
"Practical and Asymptotically Optimal Quantization of High-Dimensional Vectors in
Euclidean Space for Approximate Nearest Neighbor Search", SIGMOD 2025 (extended RaBitQ).

Encoding. With c the training mean and P a random orthogonal D x D matrix (D = d rounded
up to a multiple of 8, the vector zero-padded), a vector x becomes the unit vector
``u = P^T (x - c) / r`` with ``r = |x - c|``. Its code is the point ``yh`` of the grid
``{+-0.5, +-1.5, ..., +-(2^(B-1) - 0.5)}^D`` whose direction ``o_bar = yh / |yh|`` is
closest to u: at B = 1 simply the signs; at B > 1 the scale t maximising
``cos(u, yh(t))`` with ``yh_i(t) = sign(u_i) (min(floor(t |u_i|), 2^(B-1) - 1) + 0.5)``,
searched over the interval the reference implementation uses (a coarse-to-fine grid of
:data:`SCALE_GRID` scales per round instead of its exact event sweep).

Estimator. With ``a = <o_bar, u>`` stored per vector, ``<u, q_unit>`` is estimated
without bias by ``<o_bar, q_unit> / a``, and with probability at least
``1 - 2 exp(-c0 eps0^2)`` over the rotation (Theorem 3.2 of the 2024 paper)::

    | <o_bar, q_unit> / a - <u, q_unit> | <= sqrt((1 - a^2) / a^2) * eps0 / sqrt(D - 1)

The query is rotated in float32 and ``<yh, P^T (q - c)>`` computed exactly as one GEMM
on the unpacked block (the paper quantises the query to 4 bits to use popcounts; with
BLAS the float product is faster here and adds no error). Distances follow from
``<x - c, q - c> = r |q - c| <u, q_unit>``::

    l2:  |x - q|^2 = r^2 + |q - c|^2 - 2 <x - c, q - c>
    ip:  <x, q>   = <x - c, q - c> + <x, c> - |c|^2 + <c, q>

Why RaBitQ recall collapses elsewhere on SIFT: faiss's IndexRaBitQ leaves the rotation
to an optional pre-transform, and SIFT's coordinates are non-negative, skewed and
correlated, so sign bits of unrotated residuals are far from the uniform-direction
assumption the estimator and its bound rest on; and a fixed re-rank factor ignores the
bound. Here the rotation is part of the codec and the cascade keeps every row the bound
cannot exclude.

Byte layout (codes row, ``D / 8`` bytes per bit plane, B planes): the unsigned code
``y = yh + (2^B - 1) / 2`` in ``[0, 2^B - 1]`` is split into bit planes, most
significant first, each packed little-endian along dimensions (``np.packbits(...,
bitorder="little")``). The first plane is the sign of every rotated coordinate: the
1-bit RaBitQ code. Factors: ``[f_add, f_rescale, f_err]`` with f_add = r^2 (l2) or
``<x, c> - |c|^2`` (ip), ``f_rescale = r / <yh, u>``, ``f_err = r sqrt(1 - a^2) / a``.
"""

from __future__ import annotations

import math

import numpy as np

from tidepool_cli.engine.distances import sqnorms
from tidepool_cli.engine.quantize._common import (
    ENCODE_BLOCK, N_FACTORS, Encoded, Quantizer, check_train_input, fp_rtol, sample_rows,
)
from tidepool_cli.errors import InvalidInputError

EPSILON0 = 1.9
"""The paper's confidence parameter: the bound holds for about erf(eps0 / sqrt 2) of pairs (94 %)."""

SCALE_GRID = 32
"""Scales evaluated per round of the extended-code scale search (two rounds)."""

_TIGHT_START = (0.0, 0.15, 0.20, 0.52)
"""Start of the scale interval as a fraction of its end, per extra bit count (from the
reference implementation's search range)."""


class RaBitQuantizer(Quantizer):
    """RaBitQ codes with B = nbits bits per dimension (1 to 4); see the module docstring.

    Parameters
    ----------
    metric : {"l2", "cosine", "dot"}
    nbits : int
        1 (RaBitQ) or 2-4 (extended RaBitQ).
    centroid : (d,) float32
    rotation : (D, D) float32
        Orthogonal; D = d rounded up to a multiple of 8.
    epsilon0 : float
        Confidence parameter of the error bound.
    """

    name = "rabitq"

    def __init__(self, metric: str, nbits: int, centroid: np.ndarray, rotation: np.ndarray, epsilon0: float = EPSILON0):
        if not 1 <= nbits <= 4:
            raise InvalidInputError(f"rabitq supports nbits 1 to 4, got {nbits}")
        self.metric, self.nbits = metric, int(nbits)
        self.centroid = np.asarray(centroid, dtype=np.float32)
        self.rotation = np.ascontiguousarray(rotation, dtype=np.float32)
        self.d = self.centroid.shape[0]
        self.D = self.rotation.shape[0]
        self.epsilon0 = float(epsilon0)

    @classmethod
    def train(
        cls, x: np.ndarray, metric: str, *, nbits: int = 1, seed: int = 0, train_rows: int = 65536,
        epsilon0: float = EPSILON0,
    ) -> "RaBitQuantizer":
        """Centroid of a sample of ``x`` ((n, d) float32) and a seeded random rotation.

        Raises
        ------
        InvalidInputError
            ``nbits`` outside 1-4, or bad training input.
        """
        if not 1 <= nbits <= 4:
            raise InvalidInputError(f"rabitq supports nbits 1 to 4, got {nbits}")
        xt = check_train_input(sample_rows(x, train_rows, seed), metric)
        d = xt.shape[1]
        return cls(metric, nbits, xt.mean(axis=0, dtype=np.float64).astype(np.float32), random_rotation(-(-d // 8) * 8, seed), epsilon0)

    @property
    def code_bytes(self) -> int:
        return self.nbits * self.D // 8

    def _rotate(self, x: np.ndarray) -> np.ndarray:
        """(n, D) float32: ``P^T (x - c)`` (zero-padded to D)."""
        xc = np.asarray(x, dtype=np.float32) - self.centroid
        return xc @ self.rotation[: self.d]

    def encode(self, x: np.ndarray) -> Encoded:
        """Codes (n, nbits * D / 8) uint8 and factors (n, 3) float32 of (n, d) float32 rows."""
        n = x.shape[0]
        codes = np.empty((n, self.code_bytes), dtype=np.uint8)
        factors = np.empty((n, N_FACTORS), dtype=np.float32)
        c64 = self.centroid.astype(np.float64)
        step = max(256, ENCODE_BLOCK * 64 // self.D)  # float64 temporaries of about 8 MiB
        for s in range(0, n, step):
            xb = np.asarray(x[s : s + step], dtype=np.float32)
            r = np.sqrt(sqnorms(xb - self.centroid)).astype(np.float64)
            u = self._rotate(xb).astype(np.float64) / np.where(r > 0, r, 1.0)[:, None]
            y, yh = self._grid_code(u)
            yn = np.sqrt(np.einsum("ij,ij->i", yh, yh))
            ip = np.einsum("ij,ij->i", yh, u)
            zero = r == 0
            ip = np.where(zero, yn, ip)  # a zero residual: any code, a = 1, no error
            a = np.clip(ip / yn, 1e-12, 1.0)
            f = factors[s : s + len(xb)]
            f[:, 0] = r**2 if self.metric == "l2" else xb.astype(np.float64) @ c64 - c64 @ c64
            f[:, 1] = np.where(zero, 0.0, r / ip)
            f[:, 2] = r * np.sqrt(np.maximum(1.0 - a * a, 0.0)) / a
            codes[s : s + len(xb)] = self._pack(y)
        return Encoded(codes, factors)

    def _grid_code(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(unsigned code y (n, D) uint8, signed grid point yh (n, D) float64) of unit rows u."""
        pos = u > 0
        if self.nbits == 1:
            return pos.astype(np.uint8), np.where(pos, 0.5, -0.5)
        top = (1 << (self.nbits - 1)) - 1
        mag = np.abs(u)
        k = _best_levels(mag, top, _TIGHT_START[self.nbits - 1])
        half = 1 << (self.nbits - 1)
        y = np.where(pos, half + k, half - 1 - k).astype(np.uint8)
        return y, np.where(pos, 1.0, -1.0) * (k + 0.5)

    def _pack(self, y: np.ndarray) -> np.ndarray:
        planes = [np.packbits((y >> b) & 1, axis=1, bitorder="little") for b in range(self.nbits - 1, -1, -1)]
        return np.concatenate(planes, axis=1)

    def unpack(self, codes: np.ndarray) -> np.ndarray:
        """(b, D) float32 unsigned codes y of a block."""
        codes = np.asarray(codes)
        w = self.D // 8
        # np.unpackbits then one cast: 5-20x faster than a 256-entry float table lookup.
        y = np.unpackbits(codes[:, :w], axis=1, bitorder="little")
        for p in range(1, self.nbits):
            y = (y << 1) | np.unpackbits(codes[:, p * w : (p + 1) * w], axis=1, bitorder="little")
        return y.astype(np.float32)

    def decode(self, codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
        """(n, d) float32 reconstruction ``c + r a o_bar`` rotated back (the l2-best point on o_bar)."""
        yh = self.unpack(codes).astype(np.float64) - ((1 << self.nbits) - 1) / 2.0
        yn = np.sqrt(np.einsum("ij,ij->i", yh, yh))
        f = np.asarray(factors, dtype=np.float64)
        r_over_a = f[:, 1] * yn
        a = np.sqrt(np.clip(1.0 - (f[:, 2] / np.where(r_over_a > 0, r_over_a, 1.0)) ** 2, 0.0, 1.0))
        scale = np.where(yn > 0, r_over_a * a * a / yn, 0.0)  # r a / |yh|
        back = (yh * scale[:, None]) @ self.rotation.T.astype(np.float64)
        return (back[:, : self.d] + self.centroid).astype(np.float32)

    def prepare(self, xq: np.ndarray) -> dict:
        """Rotated centred queries and their norms; ``xq`` prepared (unit rows for cosine)."""
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        qr = self._rotate(xq)
        qcn = np.sqrt(sqnorms(xq - self.centroid))
        return {
            "qr": np.ascontiguousarray(qr),
            "qsum": qr.sum(axis=1, dtype=np.float64).astype(np.float32),
            "qcn": qcn,
            "qc_dot": (xq @ self.centroid).astype(np.float32),
        }

    def score(self, qs: dict, codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Estimates and error bounds (nq, b) float32; see the module docstring for the formulas."""
        f = np.asarray(factors, dtype=np.float32)
        cb = np.float32(((1 << self.nbits) - 1) / 2.0)
        yq = qs["qr"] @ self.unpack(codes).T - cb * qs["qsum"][:, None]  # <yh, P^T (q - c)>
        cross = yq * f[:, 1][None, :]  # estimate of <x - c, q - c>
        # Rounding: |<y, q'>| <= |y| |q'| with |y| <= (2^B - 1) sqrt(D), rescaled.
        rt = fp_rtol(self.D)
        fp = rt * ((1 << self.nbits) - 1) * math.sqrt(self.D) * f[:, 1][None, :] * qs["qcn"][:, None]
        err = (self.epsilon0 / math.sqrt(self.D - 1)) * f[:, 2][None, :] * qs["qcn"][:, None] + fp
        if self.metric == "l2":
            q2 = qs["qcn"] ** 2
            est = f[:, 0][None, :] + q2[:, None] - 2.0 * cross
            return est, 2.0 * err + rt * (f[:, 0][None, :] + q2[:, None])
        ip = cross + f[:, 0][None, :] + qs["qc_dot"][:, None]
        return (1.0 - ip if self.metric == "cosine" else -ip), err

    def state(self):
        params = {"codec": self.name, "d": self.d, "metric": self.metric, "nbits": self.nbits, "epsilon0": self.epsilon0}
        return params, {"centroid": self.centroid, "rotation": self.rotation}

    @classmethod
    def from_state(cls, params: dict, arrays: dict) -> "RaBitQuantizer":
        return cls(params["metric"], params["nbits"], arrays["centroid"], arrays["rotation"], params["epsilon0"])


def random_rotation(D: int, seed: int) -> np.ndarray:
    """(D, D) float32 random orthogonal matrix, Haar-distributed (QR of a Gaussian, signs fixed).

    Mezzadri, "How to generate random matrices from the classical compact groups", 2007.
    """
    g = np.random.default_rng(seed).standard_normal((D, D))
    q, r = np.linalg.qr(g)
    return (q * np.sign(np.diag(r))[None, :]).astype(np.float32)


def _best_levels(mag: np.ndarray, top: int, tight: float) -> np.ndarray:
    """Levels ``k = min(floor(t |u|), top)`` at the scale t maximising cos(|u|, k + 0.5), per row.

    Parameters
    ----------
    mag : (n, D) float64, non-negative, rows of unit norm
    top : int
        Largest level, ``2^(B-1) - 1``.
    tight : float
        Interval start as a fraction of its end ``(top + 10) / max |u|``.

    Returns
    -------
    (n, D) int64
    """
    mmax = np.maximum(mag.max(axis=1), 1e-30)
    hi = (top + 10) / mmax
    lo = hi * tight
    best_t = lo.copy()
    best_cos = np.full(mag.shape[0], -np.inf)
    for _ in range(2):
        ts = np.linspace(0.0, 1.0, SCALE_GRID)[:, None] * (hi - lo)[None, :] + lo[None, :]
        for t in ts:
            k = np.minimum(np.floor(mag * t[:, None]), top) + 0.5
            cos = np.einsum("ij,ij->i", mag, k) / np.sqrt(np.einsum("ij,ij->i", k, k))
            better = cos > best_cos
            best_cos = np.where(better, cos, best_cos)
            best_t = np.where(better, t, best_t)
        # Second round: the grid cell either side of the best scale.
        width = (hi - lo) / (SCALE_GRID - 1)
        lo, hi = np.maximum(best_t - width, 0.0), best_t + width
    return np.minimum(np.floor(mag * best_t[:, None]), top).astype(np.int64)
