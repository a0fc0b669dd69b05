"""PQ: product quantization with m sub-quantizers of nbits (4 or 8) and asymmetric distances.

Jegou, Douze, Schmid, "Product quantization for nearest neighbor search", TPAMI 2011.
The centred vector ``x - mu`` is cut into m contiguous sub-vectors of ``d / m``
dimensions; sub-space j has its own codebook of ``2^nbits`` centroids trained with
:func:`tidepool_cli.engine.kmeans.kmeans`, and a vector is stored as the index of the
nearest centroid in every sub-space.

Asymmetric distance computation (ADC): per query batch one lookup table
``lut[j, q, c] = <q_j - mu_j, C_j[c]>`` (one batched matrix product), then the inner
product with a stored vector is ``sum_j lut[j, q, code_j]``, gathered per sub-quantizer
over the whole block at once (at 4 bits, one GEMM of the flattened tables with a one-hot
block instead). The inner product feeds the shared reconstruction
estimator of :mod:`._common` (exact ``|x|^2`` and ``<mu, x>`` stored per vector), which
serves l2, cosine and dot alike.

Byte layout: nbits = 8 stores code j in byte j; nbits = 4 packs sub-quantizer ``2t`` in
the low nibble and ``2t + 1`` in the high nibble of byte t.
"""

from __future__ import annotations

import numpy as np

from tidepool_cli.engine.kmeans import assign, kmeans
from tidepool_cli.engine.quantize._common import ReconstructionQuantizer, check_train_input, sample_rows
from tidepool_cli.errors import InvalidInputError


_ONEHOT16 = np.eye(16, dtype=np.float32)


class ProductQuantizer(ReconstructionQuantizer):
    """m sub-quantizers of nbits each; see the module docstring.

    Parameters
    ----------
    metric : {"l2", "cosine", "dot"}
    codebooks : (m, 2^nbits, d / m) float32
        Centroids of the centred sub-vectors.
    mean : (d,) float32
    eps : float
        Calibrated error-bound multiplier.
    """

    name = "pq"

    def __init__(self, metric: str, codebooks: np.ndarray, mean: np.ndarray, eps: float):
        self.metric = metric
        self.codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        self.m, ksub, self.dsub = self.codebooks.shape
        self.nbits = int(ksub).bit_length() - 1
        self.mean = np.asarray(mean, dtype=np.float32)
        self.d = self.m * self.dsub
        self.eps = float(eps)

    @classmethod
    def train(
        cls, x: np.ndarray, metric: str, *, m: int | None = None, nbits: int = 8, seed: int = 0,
        train_rows: int = 65536, niter: int = 12,
    ) -> "ProductQuantizer":
        """k-means codebooks of every sub-space on a sample of ``x`` ((n, d) float32).

        Parameters
        ----------
        m : int, optional
            Sub-quantizers; must divide d. Default: :func:`default_m`.
        nbits : {4, 8}

        Raises
        ------
        InvalidInputError
            ``m`` not dividing d, ``nbits`` not 4 or 8, or fewer training rows than
            ``2^nbits``.
        """
        if nbits not in (4, 8):
            raise InvalidInputError(f"pq supports nbits 4 or 8, got {nbits}")
        d = np.asarray(x).shape[1] if np.asarray(x).ndim == 2 else 0
        m = default_m(d) if m is None else int(m)
        if m < 1 or d % m:
            raise InvalidInputError(f"pq needs m dividing the dimension {d}, got m={m}")
        ksub = 1 << nbits
        xt = check_train_input(sample_rows(x, train_rows, seed), metric, min_rows=ksub)
        mean = xt.mean(axis=0, dtype=np.float64).astype(np.float32)
        xc = xt - mean
        dsub = d // m
        books = np.empty((m, ksub, dsub), dtype=np.float32)
        for j in range(m):
            sub = np.ascontiguousarray(xc[:, j * dsub : (j + 1) * dsub])
            books[j] = kmeans(sub, ksub, metric="l2", niter=niter, seed=seed + j, max_points_per_centroid=64)
        q = cls(metric, books, mean, 0.0)
        q.calibrate(xt, seed)
        return q

    @property
    def code_bytes(self) -> int:
        return self.m if self.nbits == 8 else (self.m + 1) // 2

    def _encode_codes(self, x: np.ndarray) -> np.ndarray:
        xc = x - self.mean
        c = np.empty((x.shape[0], self.m), dtype=np.uint8)
        for j in range(self.m):
            c[:, j] = assign(np.ascontiguousarray(xc[:, j * self.dsub : (j + 1) * self.dsub]), self.codebooks[j], "l2")[0]
        if self.nbits == 8:
            return c
        if self.m % 2:
            c = np.pad(c, ((0, 0), (0, 1)))
        return c[:, 0::2] | (c[:, 1::2] << 4)

    def unpack(self, codes: np.ndarray) -> np.ndarray:
        """(b, m) uint8 sub-quantizer indices of a block of codes."""
        codes = np.asarray(codes)
        if self.nbits == 8:
            return codes
        out = np.empty((codes.shape[0], 2 * codes.shape[1]), dtype=np.uint8)
        out[:, 0::2] = codes & 15
        out[:, 1::2] = codes >> 4
        return out[:, : self.m]

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        c = self.unpack(codes)
        xh = self.codebooks[np.arange(self.m)[None, :], c]  # (b, m, dsub)
        return xh.reshape(c.shape[0], self.d) + self.mean

    def _prepare_ip(self, qc):
        nq = qc.shape[0]
        # lut[j, q, c] = <qc_j, C_j[c]>; flattened so one gather reads lut[j] for a block.
        lut = np.matmul(qc.reshape(nq, self.m, self.dsub).transpose(1, 0, 2), self.codebooks.transpose(0, 2, 1))
        extra = {"lut": np.ascontiguousarray(lut), "q0": qc @ self.mean}
        if self.nbits == 4:
            extra["lut_flat"] = np.ascontiguousarray(lut.transpose(1, 0, 2).reshape(nq, self.m * 16))
        return extra

    def _ip(self, qc, extra, codes):
        c = self.unpack(codes)
        lut = extra["lut"]
        if self.nbits == 4:
            # 16 entries per table: a one-hot block times the flattened tables is one GEMM,
            # several times faster than m gathers.
            onehot = _ONEHOT16[c].reshape(c.shape[0], self.m * 16)
            return extra["lut_flat"] @ onehot.T + extra["q0"][:, None]
        out = np.take(lut[0], c[:, 0], axis=1)
        for j in range(1, self.m):
            out += np.take(lut[j], c[:, j], axis=1)
        return out + extra["q0"][:, None]

    def state(self):
        params = {"codec": self.name, "d": self.d, "metric": self.metric, "m": self.m, "nbits": self.nbits, "eps": self.eps}
        return params, {"codebooks": self.codebooks, "mean": self.mean}

    @classmethod
    def from_state(cls, params: dict, arrays: dict) -> "ProductQuantizer":
        return cls(params["metric"], arrays["codebooks"], arrays["mean"], params["eps"])


def default_m(d: int) -> int:
    """Default sub-quantizer count: 4 dimensions each where d allows, else 2, else 1."""
    for dsub in (4, 2):
        if d % dsub == 0 and d >= dsub:
            return d // dsub
    return max(d, 1)
