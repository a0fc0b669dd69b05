"""``tidepool quantize``: one trained quantizer per index, a codes sidecar per segment.

The quantizer is trained once, on a sample of the index's live rows (deterministic
given the seed), and stored inside every codes sidecar it wrote (kind ``codes`` of
:mod:`~tidepool_cli.storage.sidecars`): later runs and compaction load it from any
intact sidecar and encode new segments with the same codec, so codes of different
segments are comparable. Segments are picked, built and published by
:func:`~tidepool_cli.ops.indexing.build_indexes` exactly like ``build-hnsw`` and
``build-ivf``: re-running is a no-op, a missing or damaged sidecar is rebuilt, and
``force`` retrains and re-encodes every segment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.quantize import CODECS, Quantizer, train_quantizer
from tidepool_cli.errors import CorruptIndexError, InvalidInputError
from tidepool_cli.ops.indexing import BuildResult, build_indexes
from tidepool_cli.ops.progress import NULL_PROGRESS, Progress
from tidepool_cli.ops.view import IndexView
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT
from tidepool_cli.storage.manifest import FileRef, SegmentEntry
from tidepool_cli.storage.segment import Segment
from tidepool_cli.storage.sidecars import QuantizedCodes, open_sidecar, write_codes

KEY = "codes"
"""Manifest key (and sidecar kind) of a segment's codes."""

ENCODE_ROWS = 65536
"""Rows encoded per step (one progress tick)."""

MSE_SAMPLE_ROWS = 2048
"""Rows of a segment whose reconstruction error is measured."""

CALIBRATION_QUERIES = 32
"""Rows of a segment used as queries to measure the cascade (rows reranked, recall@10)."""

CALIBRATION_K = 10

DEFAULT_TRAIN_ROWS = 65536


def quantize(
    index: str | Path,
    *,
    codec: str,
    m: int | None = None,
    nbits: int | None = None,
    train_rows: int = DEFAULT_TRAIN_ROWS,
    seed: int = 0,
    force: bool = False,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress = NULL_PROGRESS,
) -> BuildResult:
    """Train the index's quantizer (once) and write a codes sidecar for every segment lacking one.

    Parameters
    ----------
    index : str or Path
    codec : {"f16", "sq8", "sq4", "pq", "rabitq"}
    m : int, optional
        PQ sub-quantizers; must divide the dimension.
    nbits : int, optional
        PQ: 4 or 8; RaBitQ: 1-4 bits per dimension.
    train_rows : int
        Live rows sampled to train the quantizer.
    seed : int
        Seed of the sample and of the codec's randomised parts (equal seeds, equal codes).
    force : bool
        Retrain and re-encode every segment.
    lock_timeout : float
        Seconds to wait for the writer lock when publishing.
    progress : Progress
        Counts encoded rows per segment.

    Returns
    -------
    BuildResult
        ``kind`` is "codes"; ``segments`` lists each encoded segment's codec parameters,
        ``code_bytes`` and ``bytes_per_vector`` (codes + factors, bytes), ``rel_mse``,
        and the cascade measured on the segment's own rows: ``rerank_per_query`` (f32
        distances per query at k = 10) and ``calibrated_recall`` (recall@10 against the
        exact scan).

    Raises
    ------
    InvalidInputError
        Unknown codec, parameters out of range, ``m`` not dividing the dimension, an
        index with no compacted live rows, or a request that differs from the index's
        existing quantizer without ``force``. Nothing is written.
    IndexNotFoundError, CorruptIndexError, LockTimeoutError, StorageIOError
    """
    if codec not in CODECS:
        raise InvalidInputError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    view = IndexView(index)
    metric = view.settings.metric
    quantizer = None if force else existing_quantizer(view.layout, view.manifest.segments)
    if quantizer is not None:
        _check_same(quantizer, codec, m, nbits)
    else:
        sample = _live_sample(view.segments, train_rows, seed)
        if sample.shape[0] == 0:
            raise InvalidInputError(f"{index}: no compacted live rows to quantize; ingest and compact first")
        quantizer = train_quantizer(codec, sample, metric, m=m, nbits=nbits, seed=seed, train_rows=train_rows)

    def build(seg: Segment, _metric: str, prog: Progress) -> FileRef:
        return encode_segment(seg.layout, seg.entry, seg.vectors, quantizer, prog, seed=seed)

    return build_indexes(index, KEY, build, force=force, min_rows=1, lock_timeout=lock_timeout, progress=progress)


def existing_quantizer(layout: Layout, entries: tuple[SegmentEntry, ...] | list[SegmentEntry]) -> Quantizer | None:
    """The index's trained quantizer, from the first segment whose codes sidecar opens intact.

    Returns None when no segment has (intact) codes.
    """
    for entry in entries:
        if KEY in entry.indexes:
            try:
                return open_sidecar(layout, entry, KEY, verify="small").quantizer
            except CorruptIndexError:
                continue
    return None


def encode_segment(layout: Layout, entry: SegmentEntry, vectors: np.ndarray, quantizer: Quantizer, progress: Progress = NULL_PROGRESS, *, seed: int = 0) -> FileRef:
    """Encode a segment's (rows, d) float32 vectors and write its codes sidecar.

    Returns
    -------
    FileRef
        The new file, with params: codec parameters, ``code_bytes`` (codes + factors of
        all rows, bytes), ``bytes_per_vector`` and ``rel_mse`` (relative reconstruction
        error on a sample of up to :data:`MSE_SAMPLE_ROWS` rows).
    """
    n = vectors.shape[0]
    codes = np.empty((n, quantizer.code_bytes), dtype=np.uint8)
    factors = np.empty((n, 3), dtype=np.float32)
    progress.start(f"quantize {entry.name}", n, "rows")
    for s in range(0, n, ENCODE_ROWS):
        enc = quantizer.encode(np.ascontiguousarray(vectors[s : s + ENCODE_ROWS], dtype=np.float32))
        codes[s : s + len(enc)] = enc.codes
        factors[s : s + len(enc)] = enc.factors
        progress.advance(len(enc))
    progress.finish()
    params = {**codec_params(quantizer), "code_bytes": n * quantizer.bytes_per_vector,
              "bytes_per_vector": quantizer.bytes_per_vector, "rel_mse": relative_mse(quantizer, vectors, codes, factors, seed),
              **measure_cascade(quantizer, vectors, codes, factors, seed)}
    return write_codes(layout, entry, QuantizedCodes(quantizer, codes, factors), params)


def codec_params(quantizer: Quantizer) -> dict[str, Any]:
    """The user-facing parameters of a trained codec: name, and m / nbits where they apply."""
    params, _ = quantizer.state()
    out: dict[str, Any] = {"codec": params["codec"]}
    if params["codec"] in ("pq", "rabitq"):
        out["nbits"] = int(params["nbits"])
    if params["codec"] == "pq":
        out["m"] = int(params["m"])
    return out


def relative_mse(quantizer: Quantizer, vectors: np.ndarray, codes: np.ndarray, factors: np.ndarray, seed: int = 0) -> float:
    """sum |x - decode(x)|^2 / sum |x|^2 over a sample of rows (0.0 for all-zero rows)."""
    n = vectors.shape[0]
    if n == 0:
        return 0.0
    idx = np.arange(n) if n <= MSE_SAMPLE_ROWS else np.sort(np.random.default_rng(seed).choice(n, MSE_SAMPLE_ROWS, replace=False))
    x = np.asarray(vectors[idx], dtype=np.float64)
    xh = np.asarray(quantizer.decode(np.ascontiguousarray(codes[idx]), np.ascontiguousarray(factors[idx])), dtype=np.float64)
    total = float(np.sum(x * x))
    return round(float(np.sum((x - xh) ** 2)) / total, 6) if total > 0 else 0.0


def measure_cascade(quantizer: Quantizer, vectors: np.ndarray, codes: np.ndarray, factors: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Run the cascade with up to :data:`CALIBRATION_QUERIES` of the segment's rows as queries.

    Returns
    -------
    dict
        ``rerank_per_query``: mean exact f32 distances per query (k = 10), the cost the
        quantized scan path plans with; ``calibrated_recall``: recall@10 of the cascade
        against the exact scan (ties within float rounding count as hits).
    """
    from tidepool_cli.engine.quantize.cascade import cascade_search
    from tidepool_cli.engine.recall import recall_at_k
    from tidepool_cli.engine.topk import knn

    n = vectors.shape[0]
    k = min(CALIBRATION_K, n)
    idx = np.arange(n) if n <= CALIBRATION_QUERIES else np.sort(np.random.default_rng(seed + 1).choice(n, CALIBRATION_QUERIES, replace=False))
    xq = np.asarray(vectors[idx], dtype=np.float32)
    res = cascade_search(xq, k, quantizer, codes, factors, vectors)
    D, I = knn(xq, vectors, k, quantizer.metric)
    recall = recall_at_k(res.ids, I, k, found_dist=res.distances, gt_dist=D)
    return {"rerank_per_query": round(res.f32_pairs / len(idx), 2), "calibrated_recall": round(float(recall), 4)}


def _check_same(quantizer: Quantizer, codec: str, m: int | None, nbits: int | None) -> None:
    have = codec_params(quantizer)
    wanted = {"codec": codec, **({"m": m} if m is not None else {}), **({"nbits": nbits} if nbits is not None else {})}
    if any(have.get(k) != v for k, v in wanted.items()):
        shown = ", ".join(f"{k}={v}" for k, v in have.items())
        raise InvalidInputError(f"the index is already quantized with {shown}; pass --force to retrain with the new settings")


def _live_sample(segments: list[Segment], train_rows: int, seed: int) -> np.ndarray:
    """Up to ``train_rows`` live rows drawn uniformly over all segments (sorted per segment)."""
    if train_rows < 1:
        raise InvalidInputError(f"--train-rows must be positive, got {train_rows}")
    live = [np.flatnonzero(~seg.deleted) for seg in segments]
    counts = np.array([p.size for p in live], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.empty((0, segments[0].vectors.shape[1] if segments else 0), np.float32)
    pick = np.arange(total) if total <= train_rows else np.sort(np.random.default_rng(seed).choice(total, train_rows, replace=False))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for seg, pos, lo, hi in zip(segments, live, bounds[:-1], bounds[1:]):
        sel = pick[(pick >= lo) & (pick < hi)] - lo
        if sel.size:
            parts.append(np.asarray(seg.vectors[pos[sel]], dtype=np.float32))
    return np.concatenate(parts)
