"""What ``build-hnsw`` and ``build-ivf`` share: pick segments, build, publish by rebase.

A build works on a snapshot without the lock. It builds an index for every segment that
lacks one, or whose sidecar is missing or damaged (a repair, no ``force`` needed), or
every segment with ``force``, provided it has at least ``min_rows`` rows; writes each as
a sidecar file; and then publishes (:func:`~tidepool_cli.storage.publish.publish`) a new
generation made from the *current* manifest: a sidecar is attached to its segment if
that segment still has the same vector file, and dropped (its file removed) if a
compaction merged the segment away meanwhile. A build therefore never conflicts;
re-running it is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tidepool_cli.errors import CorruptIndexError
from tidepool_cli.ops.progress import NULL_PROGRESS, Progress
from tidepool_cli.ops.view import IndexView
from tidepool_cli.storage.atomic import discard
from tidepool_cli.storage.manifest import FileRef, Manifest
from tidepool_cli.storage.publish import publish
from tidepool_cli.storage.segment import Segment
from tidepool_cli.storage.sidecars import check_sidecar


@dataclass(frozen=True)
class BuildResult:
    """What an index build did.

    Attributes
    ----------
    index : str
    kind : str
        "hnsw" or "ivf".
    built : list of str
        Segments that got a new index.
    skipped_small : list of str
        Segments below ``min_rows``: they stay on exact scan.
    already_indexed : list of str
        Segments that had an intact index already (rebuilt only with ``force``).
    dropped : list of str
        Segments merged away by a compaction while the build ran (their index was discarded).
    generation : int
        Current generation after the run.
    seconds : float
    segments : list of dict
        Per built segment: name, rows, seconds and the index's parameters.
    """

    index: str
    kind: str
    built: list[str]
    skipped_small: list[str]
    already_indexed: list[str]
    dropped: list[str]
    generation: int
    seconds: float
    segments: list[dict[str, Any]] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    """Segments whose sidecar was missing or damaged and was rebuilt."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


BuildFn = Callable[[Segment, str, Progress], FileRef]
"""Builds the index of one segment (given the metric), writes its sidecar, returns the file reference."""


def engine_progress(progress: Progress, label: str, rows: int) -> Callable[[int, int], None]:
    """Adapt an ops :class:`Progress` to the engine's ``callback(done, total)`` convention.

    Kernels count their own units of work (k-means passes, insertion steps); the bar
    shows them scaled to the segment's ``rows``, so a user sees rows and a percentage.
    """
    state = {"done": 0, "started": False}

    def callback(done: int, total: int) -> None:
        if not state["started"]:
            progress.start(label, rows, "rows")
            state["started"] = True
        now = rows * min(done, total) // max(total, 1)
        progress.advance(now - state["done"])
        state["done"] = now

    return callback


def build_indexes(
    index: str | Path,
    key: str,
    build: BuildFn,
    *,
    force: bool,
    min_rows: int,
    lock_timeout: float,
    progress: Progress = NULL_PROGRESS,
) -> BuildResult:
    """Build the ``key`` index of every segment that needs one (see the module docstring).

    Raises
    ------
    IndexNotFoundError, CorruptIndexError, LockTimeoutError, StorageIOError
    """
    t0 = time.perf_counter()
    view = IndexView(index)
    layout = view.layout
    small = [s.name for s in view.segments if s.rows < min_rows]
    damaged = {s.name for s in view.segments if key in s.entry.indexes and s.rows >= min_rows and not _intact(s, key)}
    already = [s.name for s in view.segments if key in s.entry.indexes and s.rows >= min_rows and s.name not in damaged]
    targets = [s for s in view.segments if s.rows >= min_rows and (force or key not in s.entry.indexes or s.name in damaged)]
    refs: dict[str, tuple[Segment, FileRef, float]] = {}

    def remove_new() -> None:
        for _, ref, _ in refs.values():
            discard(layout.path(ref.path))

    try:
        for seg in targets:
            ts = time.perf_counter()
            refs[seg.name] = (seg, build(seg, view.settings.metric, progress), time.perf_counter() - ts)
    except BaseException:
        remove_new()
        raise
    if not refs:
        return BuildResult(str(index), key, [], small, already, [], view.manifest.generation, time.perf_counter() - t0)

    attached: set[str] = set()

    def update(current: Manifest) -> dict | None:
        segments, obsolete = [], []
        for entry in current.segments:
            hit = refs.get(entry.name)
            if hit is not None and entry.vectors == hit[0].entry.vectors:
                if key in entry.indexes:
                    obsolete.append(entry.indexes[key].path)
                entry = replace(entry, indexes={**entry.indexes, key: hit[1]})
                attached.add(entry.name)
            segments.append(entry)
        return {"segments": tuple(segments), "obsolete": tuple(obsolete)} if attached else None

    done = publish(layout, f"build-{key}", lock_timeout, update, discard=remove_new)
    for name, (_, ref, _) in refs.items():
        if name not in attached:  # its segment was merged away meanwhile
            discard(layout.path(ref.path))
    built = sorted(attached)
    per = [{"name": n, "rows": refs[n][0].rows, "seconds": round(refs[n][2], 3), **refs[n][1].params} for n in built]
    dropped = sorted(set(refs) - attached)
    return BuildResult(
        str(index), key, built, small, [n for n in already if n not in attached], dropped, done.manifest.generation,
        time.perf_counter() - t0, per, sorted(damaged & attached),
    )


def _intact(seg: Segment, key: str) -> bool:
    """True if the segment's sidecar ``key`` exists and passes every checksum."""
    try:
        check_sidecar(seg.layout, seg.entry, key, verify="all")
    except CorruptIndexError:
        return False
    return True
