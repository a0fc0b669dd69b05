"""``tidepool build-ivf``: a k-means IVF index per segment, posting lists losslessly compressed."""

from __future__ import annotations

from pathlib import Path

from tidepool_cli.engine import idcodec, ivf
from tidepool_cli.engine.calibrate import calibrate, geometric_ladder
from tidepool_cli.errors import InvalidInputError
from tidepool_cli.limits import MAX_NLIST
from tidepool_cli.ops.indexing import BuildResult, build_indexes, calibration_params, engine_progress
from tidepool_cli.ops.paths import IvfPath, required_recall
from tidepool_cli.ops.planner import DEFAULT_RECALL, check_recall
from tidepool_cli.ops.progress import NULL_PROGRESS, Progress
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT
from tidepool_cli.storage.sidecars import write_ivf

MIN_ROWS_FOR_IVF = 4096
"""Segments with fewer rows stay on exact scan: a few thousand rows scan faster than they probe."""


def build_ivf(
    index: str | Path,
    *,
    nlist: int | None = None,
    id_codec: str = "ans",
    force: bool = False,
    min_rows: int = MIN_ROWS_FOR_IVF,
    seed: int = 0,
    recall: float = DEFAULT_RECALL,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress = NULL_PROGRESS,
) -> BuildResult:
    """Build an IVF index (k-means coarse quantizer + compressed posting lists) per segment.

    Each index is then calibrated (:func:`~tidepool_cli.engine.calibrate.calibrate`): the
    smallest nprobe whose recall@10 on a sample of the segment's own rows reaches the
    target is stored with it (manifest params ``nprobe``, ``calibrated_recall``), with
    the whole measured curve (``curve``: nprobe -> recall and time) and the timed exact
    scan (``exact_cost``) that the planner's cost model reads.

    Parameters
    ----------
    index : str or Path
    nlist : int, optional
        Posting lists per segment (default :func:`~tidepool_cli.engine.ivf.default_nlist`, about 4·√n).
    id_codec : {"ans", "roc", "elias-fano", "raw"}
        Lossless codec of the posting lists (docs/IDCODEC.md).
    force : bool
        Rebuild segments that already have an IVF index.
    min_rows : int
        Segments with fewer rows stay on exact scan.
    recall : float
        recall@10 target in (0, 1] of the calibrated default (stored as ``recall_target``;
        queries use it unless they pass ``--recall``).
    seed : int
        Seed of the k-means sampling and seeding.
    lock_timeout : float
    progress : Progress

    Returns
    -------
    BuildResult

    Raises
    ------
    InvalidInputError
        Unknown codec, nlist outside 1 to :data:`~tidepool_cli.limits.MAX_NLIST`, or ``recall`` outside (0, 1].
    IndexNotFoundError, CorruptIndexError, LockTimeoutError, StorageIOError
    """
    check_recall(recall)
    if id_codec not in idcodec.CODEC_NAMES:
        raise InvalidInputError(f"unknown --id-codec {id_codec!r}; choose one of {', '.join(idcodec.CODEC_NAMES)}")
    if nlist is not None and not 1 <= nlist <= MAX_NLIST:
        raise InvalidInputError(f"--nlist must be between 1 and {MAX_NLIST}, got {nlist}")

    def build(seg, metric, prog):
        callback = engine_progress(prog, f"ivf {seg.name}", seg.rows)
        lists = min(nlist, seg.rows) if nlist is not None else None
        index_ = ivf.build_ivf(seg.vectors, metric, nlist=lists, codec=id_codec, seed=seed, progress=callback)
        prog.finish()
        cal = calibrate(
            lambda xq, k, n, rows: ivf.search_ivf(index_, seg.vectors, xq, k, nprobe=n, xb_sqnorms=seg.sqnorms),
            seg.vectors, metric, geometric_ladder(min(ivf.MIN_CALIBRATED_NPROBE, index_.nlist), index_.nlist),
            target=required_recall(recall, IvfPath.miss_ratio),
            xb_sqnorms=seg.sqnorms,
        )
        params = {**index_.stats(), **calibration_params(cal, "nprobe"), "recall_target": recall}
        return write_ivf(seg.layout, seg.entry, index_, params)

    return build_indexes(index, "ivf", build, force=force, min_rows=min_rows, lock_timeout=lock_timeout, progress=progress)
