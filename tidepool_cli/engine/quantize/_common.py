"""What every codec shares: the encoded form, the scoring contract, the reconstruction estimator.

A codec turns each stored vector into a row of ``codes`` (uint8, fixed width) and a row
of ``factors`` (float32 per-vector corrections). Scoring a block of codes against a batch
of queries returns, for every (query, row) pair, an *estimate* of the distance in the
public convention of :mod:`tidepool_cli.engine.distances` and an *error bound*
``err >= 0``: the true distance lies in ``[est - err, est + err]`` for the fraction of
pairs the codec states (RaBitQ: the paper's probabilistic bound; the others: a bound
calibrated on the training sample). The cascade (:mod:`.cascade`) relies on nothing else.

Reconstruction codecs (f16, SQ, PQ) share one estimator. With ``mu`` the training mean,
``xh`` the decoded vector and ``e = x - xh``::

    <q, x> = <q - mu, xh> + <mu, x> + <q - mu, e>

``<mu, x>`` and ``|x|^2`` are stored exactly per vector, so the only error left is
``<q - mu, e>``, which is bounded by ``eps * |q - mu| * |e| / sqrt(d)`` with ``eps``
calibrated so that the bound covers :data:`CALIBRATION_QUANTILE` of held-out pairs. The
exact squared norm makes the l2 estimate ``|q|^2 + |x|^2 - 2 <q, x>`` free of the
``|xh|^2 - |x|^2`` bias that plain ADC carries.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from tidepool_cli.engine.distances import check_metric, sqnorms
from tidepool_cli.engine.order import SLACK_TERMS, gamma
from tidepool_cli.errors import InvalidInputError

def fp_rtol(d: int) -> float:
    """Relative float32 rounding allowance added to every error bound (of d-term products).

    :data:`~tidepool_cli.engine.order.SLACK_TERMS` times Higham's ``gamma_(d+2)``
    (:func:`tidepool_cli.engine.order.gamma`): a row within rounding of the cut is kept
    whatever BLAS, summation order or block layout computed its estimate.
    """
    return SLACK_TERMS * gamma(d + 2)

CALIBRATION_QUANTILE = 0.999
"""Fraction of held-out (query, row) pairs a calibrated error bound must cover."""

CALIBRATION_QUERIES = 200
CALIBRATION_ROWS = 4000

ENCODE_BLOCK = 16384
"""Rows encoded per batch: bounds the float32 temporaries of an encode to a few MiB per column."""


N_FACTORS = 3
"""float32 factors per vector, for every codec (12 bytes)."""


@dataclass(frozen=True)
class Encoded:
    """Codes and per-vector factors of a set of vectors.

    Attributes
    ----------
    codes : (n, code_bytes) uint8
    factors : (n, n_factors) float32
    """

    codes: np.ndarray
    factors: np.ndarray

    def __len__(self) -> int:
        return self.codes.shape[0]


class Quantizer(ABC):
    """Base of every codec: encode, decode, score, and a state that round-trips through arrays.

    Subclasses set ``name`` and implement :meth:`encode`, :meth:`decode`, :meth:`prepare`,
    :meth:`score`, :meth:`state`, :meth:`from_state` and :attr:`code_bytes`.
    """

    name: str = ""
    metric: str
    d: int

    @property
    @abstractmethod
    def code_bytes(self) -> int:
        """Bytes of codes per vector (factors excluded)."""

    @property
    def bytes_per_vector(self) -> int:
        """Bytes per vector held in RAM for scoring: codes plus factors."""
        return self.code_bytes + 4 * N_FACTORS

    @abstractmethod
    def encode(self, x: np.ndarray) -> Encoded:
        """Codes and factors of ``x`` ((n, d) float32; unit rows for cosine)."""

    @abstractmethod
    def decode(self, codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
        """(n, d) float32 reconstruction of encoded rows."""

    @abstractmethod
    def prepare(self, xq: np.ndarray) -> dict:
        """Per-query-batch state (rotated queries, lookup tables) for :meth:`score`."""

    @abstractmethod
    def score(self, qs: dict, codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(estimate, error bound), each (nq, b) float32, for a block of b encoded rows."""

    @abstractmethod
    def state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(JSON-able parameters, named arrays) from which :meth:`from_state` rebuilds the codec."""


def check_train_input(x: np.ndarray, metric: str, min_rows: int = 1) -> np.ndarray:
    """Validate training rows and return them as float32.

    Raises
    ------
    InvalidInputError
        Unknown metric, not 2-D, fewer than ``min_rows`` rows, or non-finite values.
    """
    check_metric(metric)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] == 0:
        raise InvalidInputError(f"training vectors must be a non-empty 2-D array, got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise InvalidInputError(f"the quantizer needs at least {min_rows} training rows, got {x.shape[0]}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InvalidInputError("training vectors contain NaN or Inf values")
    return x


def sample_rows(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` rows of ``x`` chosen at random (sorted, so a memmap is read in order)."""
    if x.shape[0] <= n:
        return np.ascontiguousarray(x, dtype=np.float32)
    idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=n, replace=False))
    return np.ascontiguousarray(x[idx], dtype=np.float32)


def ip_to_distance(ip_est: np.ndarray, ip_err: np.ndarray, q_sqnorm: np.ndarray, x_sqnorm: np.ndarray, metric: str, d: int):
    """Turn an inner-product estimate and its bound into a distance estimate and bound.

    Parameters
    ----------
    ip_est, ip_err : (nq, b) float32
        Estimate of ``<q, x>`` and a bound on its error.
    q_sqnorm : (nq,) float32
    x_sqnorm : (b,) float32
        Exact squared norms (l2 only).
    metric : {"l2", "cosine", "dot"}
    d : int
        Terms of the inner products (for the rounding allowance :func:`fp_rtol`).

    Returns
    -------
    est, err : (nq, b) float32
        Distance estimate in the public convention and its error bound (rounding included).
    """
    if metric == "l2":
        est = q_sqnorm[:, None] + x_sqnorm[None, :] - 2.0 * ip_est
        err = 2.0 * ip_err + fp_rtol(d) * (q_sqnorm[:, None] + x_sqnorm[None, :])
        return est, err
    slack = fp_rtol(d) * np.sqrt(q_sqnorm)[:, None] * np.sqrt(x_sqnorm)[None, :]
    return (1.0 - ip_est if metric == "cosine" else -ip_est), ip_err + slack


class ReconstructionQuantizer(Quantizer):
    """Codecs that decode to a vector ``xh``; scored by the shared estimator of the module docstring.

    Subclasses implement :meth:`_encode_codes`, :meth:`decode_codes`, :meth:`_prepare_ip`
    and :meth:`_ip` (``<q - mu, xh>`` for a block). Factors per vector are
    ``[<mu, x>, |x|^2, |x - xh|]``.
    """

    mean: np.ndarray
    eps: float

    @abstractmethod
    def _encode_codes(self, x: np.ndarray) -> np.ndarray:
        """(n, code_bytes) uint8 codes of ``x``."""

    @abstractmethod
    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """(n, d) float32 reconstruction from codes alone."""

    def _prepare_ip(self, qc: np.ndarray) -> dict:
        return {}

    @abstractmethod
    def _ip(self, qc: np.ndarray, extra: dict, codes: np.ndarray) -> np.ndarray:
        """(nq, b) float32 ``<q - mu, xh>`` of centred queries against a block of b codes."""

    def encode(self, x: np.ndarray) -> Encoded:
        """Codes and factors ``[<mu, x>, |x|^2, |x - xh|]`` of (n, d) float32 rows."""
        n = x.shape[0]
        codes = np.empty((n, self.code_bytes), dtype=np.uint8)
        factors = np.empty((n, N_FACTORS), dtype=np.float32)
        for s in range(0, n, ENCODE_BLOCK):
            xb = np.asarray(x[s : s + ENCODE_BLOCK], dtype=np.float32)
            c = self._encode_codes(xb)
            codes[s : s + len(xb)] = c
            factors[s : s + len(xb)] = self._factors(xb, self.decode_codes(c))
        return Encoded(codes, factors)

    def _factors(self, x: np.ndarray, xh: np.ndarray) -> np.ndarray:
        f = np.empty((x.shape[0], N_FACTORS), dtype=np.float32)
        f[:, 0] = x.astype(np.float64) @ self.mean.astype(np.float64)
        f[:, 1] = sqnorms(x)
        f[:, 2] = np.sqrt(sqnorms(x - xh))
        return f

    def decode(self, codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
        """(n, d) float32 reconstruction; the factors are not needed."""
        return self.decode_codes(codes)

    def prepare(self, xq: np.ndarray) -> dict:
        """Centred queries, their norms and the codec's own tables; ``xq`` prepared (unit rows for cosine)."""
        xq = np.ascontiguousarray(xq, dtype=np.float32)
        qc = xq - self.mean
        return {
            "qc": qc,
            "q_sqnorm": sqnorms(xq),
            "qc_norm": np.sqrt(sqnorms(qc)),
            "extra": self._prepare_ip(qc),
        }

    def score(self, qs: dict, codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance estimates and bounds (nq, b) float32 for b encoded rows."""
        factors = np.asarray(factors, dtype=np.float32)
        ip = self._ip(qs["qc"], qs["extra"], np.asarray(codes)) + factors[:, 0][None, :]
        err = (self.eps / math.sqrt(self.d)) * qs["qc_norm"][:, None] * factors[:, 2][None, :]
        return ip_to_distance(ip, err, qs["q_sqnorm"], factors[:, 1], self.metric, self.d)

    def calibrate(self, sample: np.ndarray, seed: int) -> float:
        """Set and return ``eps``: the :data:`CALIBRATION_QUANTILE` of ``|<q-mu, e>| sqrt(d) / (|q-mu| |e|)``.

        Queries and rows are disjoint parts of ``sample``, so no row is scored against
        itself (a row's own error correlates with it).
        """
        rng = np.random.default_rng(seed)
        perm = rng.permutation(sample.shape[0])
        nq = min(CALIBRATION_QUERIES, sample.shape[0] // 2)
        q = sample[perm[:nq]]
        x = sample[perm[nq : nq + CALIBRATION_ROWS]]
        if nq == 0 or x.shape[0] == 0:
            self.eps = 3.0
            return self.eps
        e = x - self.decode_codes(self._encode_codes(x))
        qc = q - self.mean
        en = np.sqrt(sqnorms(e))
        qn = np.sqrt(sqnorms(qc))
        denom = qn[:, None] * en[None, :]
        ratio = np.abs(qc.astype(np.float64) @ e.T.astype(np.float64)) * math.sqrt(self.d)
        ok = denom > 0
        vals = ratio[ok] / denom[ok]
        self.eps = float(np.quantile(vals, CALIBRATION_QUANTILE)) if vals.size else 3.0
        return self.eps
