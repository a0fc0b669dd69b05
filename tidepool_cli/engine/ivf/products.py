"""Matrix products of the IVF search kept on the calling thread.

Per-list products are split to stay below OpenBLAS' threading threshold: on a busy
2-core machine a BLAS thread hand-off per small product costs far more than the product,
and the woken threads then spin on the other core. The lists are shared between our own
threads instead (:mod:`tidepool_cli.engine.threads`).
"""

from __future__ import annotations

import numpy as np

SERIAL_GEMM_MNK = 65536 * 4
"""OpenBLAS runs a GEMM of at most this many multiply-adds on the calling thread
(``SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD``). Per-list products are split to
stay below it: waking BLAS threads for thousands of small products costs more than the
products, and the woken threads then spin on the other core."""


def product(qa: np.ndarray, qs: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``qa[qs] @ b`` for (nq, e) queries and an (e, n) list operand, as serial BLAS calls.

    Parameters
    ----------
    qa : (nq, e) float32
    qs : (m,) int
        Rows of ``qa`` to multiply.
    b : (e, n) float32

    Returns
    -------
    (m, n) float32, newly allocated (no input is written).
    """
    step = max(1, SERIAL_GEMM_MNK // max(1, b.size))
    if qs.size <= step:
        return qa[qs] @ b
    mp = -(-qs.size // step) * step
    a = np.empty((mp, qa.shape[1]), dtype=np.float32)
    np.take(qa, qs, axis=0, out=a[: qs.size])
    return serial_matmul(a, b, filled=qs.size)


def serial_matmul(a: np.ndarray, b: np.ndarray, filled: int | None = None) -> np.ndarray:
    """``a[:filled] @ b`` as BLAS calls below SERIAL_GEMM_MNK, so none wakes BLAS threads.

    The rows are cut into slices of equal height and multiplied as one stacked
    ``np.matmul``, which loops over the slices in C instead of Python. Rows of ``a``
    past ``filled`` are scratch space that completes the last slice.
    """
    m = a.shape[0] if filled is None else filled
    step = max(1, SERIAL_GEMM_MNK // max(1, b.size))
    if m <= step:
        return a[:m] @ b
    mp = -(-m // step) * step
    if filled is None:
        # The caller's array (maybe a read-only memmap): copy only when the last slice
        # needs padding, and never write into it.
        if mp > m:
            a = np.concatenate([a[:m], np.zeros((mp - m, a.shape[1]), dtype=np.float32)])
    elif a.shape[0] < mp:
        a = np.concatenate([a[:m], np.zeros((mp - m, a.shape[1]), dtype=np.float32)])
    else:
        # Our own scratch rows past ``filled``.
        a = a[:mp]
        a[m:] = 0.0
    return np.matmul(a.reshape(mp // step, step, -1), b).reshape(mp, b.shape[1])[:m]
