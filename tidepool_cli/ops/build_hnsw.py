"""``tidepool build-hnsw``: an HNSW graph per segment, as a sidecar file."""

from __future__ import annotations

from pathlib import Path

from tidepool_cli.engine import hnsw
from tidepool_cli.engine.calibrate import calibrate, geometric_ladder
from tidepool_cli.errors import InvalidInputError
from tidepool_cli.limits import MAX_EF, MAX_M
from tidepool_cli.ops.indexing import BuildResult, build_indexes, calibration_params, engine_progress
from tidepool_cli.ops.paths import HnswPath, required_recall
from tidepool_cli.ops.planner import DEFAULT_RECALL, check_recall
from tidepool_cli.ops.progress import NULL_PROGRESS, Progress
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT
from tidepool_cli.storage.sidecars import write_hnsw


def build_hnsw(
    index: str | Path,
    *,
    m: int = hnsw.DEFAULT_M,
    ef_construction: int = hnsw.DEFAULT_EF_CONSTRUCTION,
    force: bool = False,
    min_rows: int = hnsw.MIN_ROWS_FOR_GRAPH,
    seed: int = 0,
    recall: float = DEFAULT_RECALL,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress = NULL_PROGRESS,
) -> BuildResult:
    """Build an HNSW graph (Malkov & Yashunin 2018) for every segment that lacks one.

    Each graph is then calibrated (:func:`~tidepool_cli.engine.calibrate.calibrate`): the
    smallest ef_search whose recall@10 on a sample of the segment's own rows reaches the
    target is stored with it (manifest params ``ef_search``, ``calibrated_recall``), with
    the whole measured curve (``curve``: ef_search -> recall and time) and the timed exact
    scan (``exact_cost``) that the planner's cost model reads.

    Parameters
    ----------
    index : str or Path
    m : int
        M: neighbours per node on the upper layers (2M on layer 0).
    ef_construction : int
        Candidate-list size of the build.
    force : bool
        Rebuild segments that already have a graph.
    min_rows : int
        Segments with fewer rows stay on exact scan, which is faster there.
    recall : float
        recall@10 target in (0, 1] of the calibrated default (stored as ``recall_target``;
        queries use it unless they pass ``--recall``).
    seed : int
        Seed of the level draws and of any sampling in the build.
    lock_timeout : float
    progress : Progress

    Returns
    -------
    BuildResult

    Raises
    ------
    InvalidInputError
        M or ef_construction outside the ranges of :mod:`tidepool_cli.limits`, or ``recall`` outside (0, 1].
    IndexNotFoundError, CorruptIndexError, LockTimeoutError, StorageIOError
    """
    check_recall(recall)
    if not (2 <= m <= MAX_M and 1 <= ef_construction <= MAX_EF):
        raise InvalidInputError(f"need 2 <= --m <= {MAX_M} and 1 <= --ef-construction <= {MAX_EF}, got {m} and {ef_construction}")

    def build(seg, metric, prog):
        callback = engine_progress(prog, f"hnsw {seg.name}", seg.rows)
        graph = hnsw.build_hnsw(seg.vectors, metric, m=m, ef_construction=ef_construction, seed=seed, progress=callback)
        prog.finish()
        cal = calibrate(
            lambda xq, k, ef, rows: hnsw.search_hnsw(
                graph, seg.vectors, xq, k, ef_search=ef, xb_sqnorms=seg.sqnorms, exclude=rows
            ),
            seg.vectors, metric, geometric_ladder(hnsw.DEFAULT_EF_SEARCH, hnsw.MAX_CALIBRATED_EF_SEARCH),
            target=required_recall(recall, HnswPath.miss_ratio),
            xb_sqnorms=seg.sqnorms,
        )
        st = graph.stats()
        params = {
            "m": m,
            "ef_construction": ef_construction,
            "max_level": st["max_level"],
            "nodes_per_level": [lv["nodes"] for lv in st["levels"]],
            "avg_out_degree": [lv["avg_out_degree"] for lv in st["levels"]],
            **calibration_params(cal, "ef_search"),
            "recall_target": recall,
        }
        return write_hnsw(seg.layout, seg.entry, graph, params)

    return build_indexes(index, "hnsw", build, force=force, min_rows=min_rows, lock_timeout=lock_timeout, progress=progress)
