"""``tidepool compact``: WAL records into segments, deletes into deletion vectors, merges.

One run:

1. reads a snapshot (the current generation and the WAL after it) without the lock;
2. writes the WAL tail's surviving upserts as one new segment, and for every older
   segment that lost rows to a later upsert or delete, a new deletion vector;
3. merges segments by a size-tiered policy (below), dropping dead rows;
4. under the writer lock, checks that no other compaction published meanwhile (else
   :class:`~tidepool_cli.errors.ConflictError`, nothing changed), publishes the new
   manifest (carrying over sidecar indexes a concurrent build added), and removes files
   that have been obsolete for longer than the grace period.

Merge policy (size-tiered, as in Cassandra's STCS and RocksDB's universal compaction):
a segment with L live rows is in tier 0 if L < ``TIER_BASE_ROWS * MERGE_FACTOR``, else
in tier ``floor(log_F(L / TIER_BASE_ROWS))``. When a tier holds ``MERGE_FACTOR`` or more
segments they are merged into one, which may cascade into the next tier. A segment
with at least ``PURGE_DEAD_FRACTION`` dead rows is rewritten to drop them, and an empty
one is dropped. Segments of ``MAX_MERGE_ROWS`` live rows or more are left alone. Every
run ends at a fixed point of these rules, so a second run in a row changes nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.columns import concat_columns
from tidepool_cli.errors import ConflictError, CorruptIndexError
from tidepool_cli.ops.progress import NULL_PROGRESS, Progress
from tidepool_cli.ops.view import IndexView
from tidepool_cli.storage.atomic import discard
from tidepool_cli.storage.container import Rows
from tidepool_cli.storage.gc import DEFAULT_GRACE_SECONDS
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT
from tidepool_cli.storage.manifest import Manifest, SegmentEntry
from tidepool_cli.storage.publish import publish
from tidepool_cli.storage.segment import SegmentData, write_deletions, write_segment

TIER_BASE_ROWS = 16384
MERGE_FACTOR = 4
PURGE_DEAD_FRACTION = 0.5
MAX_MERGE_ROWS = 1 << 23


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did.

    Attributes
    ----------
    index : str
    changed : bool
        False when there was nothing to do (no new generation).
    generation : int
        Current generation after the run.
    wal_files : int
        WAL files applied.
    rows_written : int
        Rows written to new segments (WAL rows and merged rows).
    rows_deleted : int
        Segment rows newly marked deleted.
    segments_merged : int
        Input segments consumed by merges and purges.
    segments : int
        Segments after the run.
    files_removed : int
        Obsolete files removed by garbage collection.
    bytes_freed : int
    seconds : float
    """

    index: str
    changed: bool
    generation: int
    wal_files: int
    rows_written: int
    rows_deleted: int
    segments_merged: int
    segments: int
    files_removed: int
    bytes_freed: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def tier(live_rows: int) -> int:
    """Size tier of a segment with ``live_rows`` live rows (see the module docstring)."""
    if live_rows < TIER_BASE_ROWS * MERGE_FACTOR:
        return 0
    return int(math.floor(math.log(live_rows / TIER_BASE_ROWS, MERGE_FACTOR)))


def plan_merges(live: dict[str, int], dead: dict[str, int]) -> list[list[str]]:
    """Groups of segment names to rewrite together, by the size-tiered policy.

    Parameters
    ----------
    live, dead : dict of str to int
        Live and dead rows per segment, in segment order (oldest first).

    Returns
    -------
    list of list of str
        Each group becomes one new segment; a group of one is a purge.
    """
    sizes = dict(live)
    groups: list[list[str]] = []
    for name in list(sizes):
        total = sizes[name] + dead[name]
        if 0 < sizes[name] < MAX_MERGE_ROWS and total and dead[name] / total >= PURGE_DEAD_FRACTION:
            groups.append([name])
    pending = {g[0]: g for g in groups}
    while True:
        by_tier: dict[int, list[str]] = {}
        for name, rows in sizes.items():
            if 0 < rows < MAX_MERGE_ROWS:
                by_tier.setdefault(tier(rows), []).append(name)
        full = [names for t, names in sorted(by_tier.items()) if len(names) >= MERGE_FACTOR]
        if not full:
            break
        names = full[0]
        merged_name = "+".join(names)
        group = [m for n in names for m in pending.pop(n, [n])]
        pending[merged_name] = group
        sizes = {n: r for n, r in sizes.items() if n not in names}
        sizes[merged_name] = sum(live[m] for m in group)
    return [g for g in pending.values()]


def compact(
    index: str | Path,
    *,
    grace: float = DEFAULT_GRACE_SECONDS,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    progress: Progress = NULL_PROGRESS,
) -> CompactResult:
    """Compact the index at ``index`` (see the module docstring).

    Parameters
    ----------
    index : str or Path
    grace : float
        Seconds obsolete files are kept before removal.
    lock_timeout : float
    progress : Progress

    Returns
    -------
    CompactResult

    Raises
    ------
    ConflictError
        Another compaction published while this one worked; nothing was changed.
    CorruptIndexError
        A file to be rewritten fails its checksums (compaction refuses to copy damage).
    IndexNotFoundError, LockTimeoutError, StorageIOError, UnsupportedFormatError
    """
    t0 = time.perf_counter()
    view = IndexView(index)
    layout, base = view.layout, view.manifest
    sources = {s.name: s for s in view.sources()}
    tail = view.tail
    segs = {s.name: s for s in view.segments}

    # Every segment's live rows after the WAL tail; "wal" stands for the tail's upserts,
    # which the merge plan may fold straight into a merged segment.
    live_rows = {n: int(np.count_nonzero(sources[n].live)) for n in segs}
    dead_rows = {n: segs[n].rows - live_rows[n] for n in segs}
    newly_dead = {n for n in segs if int(segs[n].deleted.sum()) != dead_rows[n]}
    dropped = {n for n in segs if live_rows[n] == 0}
    if "wal" in sources:
        live_rows["wal"], dead_rows["wal"] = int(np.count_nonzero(sources["wal"].live)), 0
    plan_live = {n: r for n, r in live_rows.items() if n not in dropped}
    groups = plan_merges(plan_live, dead_rows)
    if "wal" in plan_live and not any("wal" in g for g in groups):
        groups.append(["wal"])
    merged = {n for g in groups for n in g if n != "wal"} | dropped
    if not tail.records and not groups and not dropped and not newly_dead:
        done = publish(layout, "compact", lock_timeout, lambda current: None, grace=grace)
        current, gc = done.manifest, done.gc
        return CompactResult(
            index=str(index), changed=False, generation=current.generation, wal_files=0, rows_written=0, rows_deleted=0,
            segments_merged=0, segments=len(current.segments), files_removed=gc.files, bytes_freed=gc.bytes,
            seconds=time.perf_counter() - t0,
        )

    next_segment = base.next_segment
    new_entries: list[SegmentEntry] = []
    updated: dict[str, SegmentEntry] = {}
    rows_written = 0
    progress.start("compact", sum(plan_live[n] for g in groups for n in g), "rows")
    try:
        for group in groups:
            for n in group:
                bad = segs[n].container.damaged_sections() if n in segs else []
                if bad:
                    raise CorruptIndexError(f"{segs[n].entry.vectors.path}: checksum mismatch in section {bad[0]!r}; not merging it")
            data = _merge_data([sources[n] for n in group], view.schema)
            new_entries.append(write_segment(layout, f"seg-{next_segment:06d}", data, view.settings.dim))
            next_segment += 1
            rows_written += data.rows
            progress.advance(data.rows)
        for n in sorted(newly_dead - merged):
            updated[n] = write_deletions(layout, segs[n].entry, ~sources[n].live)
    except BaseException:
        _remove_new(layout, new_entries, updated)
        raise
    finally:
        progress.finish()
    rows_deleted = sum(segs[n].rows - segs[n].entry.deleted - live_rows[n] for n in segs)

    applied_through = max((r.seq for r in tail.records), default=base.wal_applied_through)

    def update(current: Manifest) -> dict:
        _check_unchanged(base, current, merged | set(updated))
        return {
            "wal_applied_through": applied_through,
            "next_segment": next_segment,
            "max_int_id": tail.max_int_id,
            "schema": dict(tail.schema),
            **_rewire(layout, current, merged, updated, new_entries, tail.records),
        }

    done = publish(layout, "compact", lock_timeout, update, discard=lambda: _remove_new(layout, new_entries, updated), grace=grace)
    new, gc = done.manifest, done.gc
    return CompactResult(
        index=str(index),
        changed=True,
        generation=new.generation,
        wal_files=len({r.seq for r in tail.records}),
        rows_written=rows_written,
        rows_deleted=rows_deleted,
        segments_merged=sum(1 for g in groups for n in g if n != "wal") + len(dropped),
        segments=len(new.segments),
        files_removed=gc.files,
        bytes_freed=gc.bytes,
        seconds=time.perf_counter() - t0,
    )


def _rewire(layout, current: Manifest, merged: set[str], updated: dict[str, SegmentEntry], new_entries, records) -> dict:
    """Segments and newly obsolete files of the next generation, built on ``current``.

    Entries come from ``current`` (not from the snapshot), so sidecar indexes that a
    concurrent build published for an untouched or re-deleted segment are kept.
    """
    obsolete = []
    segments = []
    for entry in current.segments:
        if entry.name in merged:
            obsolete += [ref.path for ref in entry.files()]
        elif entry.name in updated:
            if entry.deletions:
                obsolete.append(entry.deletions.path)
            segments.append(replace(entry, deletions=updated[entry.name].deletions, deleted=updated[entry.name].deleted))
        else:
            segments.append(entry)
    obsolete += [layout.rel(layout.wal_path(r.seq)) for r in records if r.index == 0]
    return {"segments": tuple(segments) + tuple(new_entries), "obsolete": tuple(obsolete)}


def _merge_data(sources, schema: dict[str, str]) -> SegmentData:
    """Live rows of ``sources``, in order, ready to write as one segment."""
    idxs = [np.flatnonzero(s.live) for s in sources]
    lengths = [len(i) for i in idxs]
    columns = {}
    for name, kind in schema.items():
        parts = [(c.take(i) if (c := s.column(name)) is not None else None) for s, i in zip(sources, idxs)]
        if any(p is not None for p in parts):
            columns[name] = concat_columns(parts, lengths, kind)
    return SegmentData(
        vectors=[Rows(s.vectors, i) for s, i in zip(sources, idxs)],
        sqnorms=np.concatenate([np.asarray(s.sqnorms)[i] for s, i in zip(sources, idxs)]),
        row_ids=np.concatenate([np.asarray(s.row_ids)[i] for s, i in zip(sources, idxs)]),
        ids=np.concatenate([np.asarray(s.ids)[i] for s, i in zip(sources, idxs)]),
        columns=columns,
    )


def _check_unchanged(base: Manifest, current: Manifest, touched: set[str]) -> None:
    """Raise ConflictError if another compaction changed what this one built on."""
    if current.wal_applied_through != base.wal_applied_through:
        raise ConflictError(
            f"another compaction applied the WAL meanwhile (generation {current.generation}); nothing changed, run compact again"
        )
    for name in touched:
        old, now = base.segment(name), current.segment(name)
        if now is None or now.vectors != old.vectors or now.deletions != old.deletions:
            raise ConflictError(f"segment {name} changed meanwhile (generation {current.generation}); nothing changed, run compact again")


def _remove_new(layout, entries: list[SegmentEntry], updated: dict[str, SegmentEntry]) -> None:
    for e in entries:
        discard(layout.path(e.vectors.path))
    for e in updated.values():
        if e.deletions:
            discard(layout.path(e.deletions.path))
