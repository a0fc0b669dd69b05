"""A consistent read view of an index: one manifest generation plus the WAL after it.

The view resolves the WAL records that compaction has not applied yet (read-your-writes):
automatic ids are assigned, the last write of each id wins (an upsert or a delete), and
every segment row whose id the WAL touched is hidden. The result is a list of
:class:`Source` objects, each a set of rows with a ``live`` mask, which query, compact
and stats all work on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tidepool_cli.engine.columns import Column, concat_columns, merge_kinds
from tidepool_cli.engine.distances import sqnorms
from tidepool_cli.errors import CorruptIndexError
from tidepool_cli.storage.layout import open_index_dir
from tidepool_cli.storage.manifest import Manifest, read_current
from tidepool_cli.storage.segment import Segment
from tidepool_cli.storage.wal import WalRecord, pending_records


@dataclass
class Source:
    """A searchable set of rows: a segment, or the resolved WAL tail.

    Attributes
    ----------
    name : str
        Segment name, or "wal" for the tail.
    vectors : (n, d) float32
    sqnorms : (n,) float32
    ids : (n,) int64 or str array
    live : (n,) bool
        Rows visible in this view (not deleted, not replaced by a later write).
    column : callable(name) -> Column or None
    segment : Segment or None
        The segment, for its sidecar indexes; None for the WAL tail.
    row_ids : (n,) uint64
    """

    name: str
    vectors: np.ndarray
    sqnorms: np.ndarray
    ids: np.ndarray
    live: np.ndarray
    column: Callable[[str], Column | None]
    segment: Segment | None
    row_ids: np.ndarray
    indexes: dict = field(default_factory=dict)
    """Sidecar indexes loaded so far, by kind (None: damaged, skipped)."""

    @property
    def rows(self) -> int:
        """Rows, dead ones included."""
        return int(self.ids.shape[0])


@dataclass
class Tail:
    """The resolved WAL records after the manifest.

    Attributes
    ----------
    records : list of WalRecord
    touched : (m,) int64 or str array
        Every id the tail writes or deletes (hides older segment rows).
    source : Source or None
        The upserted rows, ``live`` where the upsert is the id's last write.
    max_int_id : int or None
        Largest integer id after the tail.
    schema : dict
        Attribute kinds after the tail.
    deletes : int
        Delete operations in the tail.
    """

    records: list[WalRecord]
    touched: np.ndarray
    source: Source | None
    max_int_id: int | None
    schema: dict[str, str]
    deletes: int = 0


def auto_id_bases(manifest_max: int | None, metas: list[dict]) -> list[int | None]:
    """First automatic id of each WAL record (None for records with explicit ids).

    Automatic ids continue after the largest integer id written before the record, in
    WAL order, so every reader derives the same ids without coordination.

    Parameters
    ----------
    manifest_max : int or None
        Largest integer id in the applied generation.
    metas : list of dict
        Record metadata in WAL order.
    """
    running = -1 if manifest_max is None else manifest_max
    bases: list[int | None] = []
    for meta in metas:
        if meta["op"] == "upsert" and meta["auto_ids"]:
            bases.append(running + 1)
            running += int(meta["rows"])
        else:
            bases.append(None)
            if meta.get("max_id") is not None and meta["op"] == "upsert":
                running = max(running, int(meta["max_id"]))
    return bases


def effective_schema(schema: dict[str, str], metas: list[dict]) -> dict[str, str]:
    """Attribute kinds after applying WAL records (their metadata) to ``schema``.

    Raises
    ------
    InvalidInputError
        Two records disagree on an attribute's kind (refused at ingest, so only seen
        when the check is run before publishing a new record).
    """
    out = dict(schema)
    for meta in metas:
        for name, kind in meta.get("schema", {}).items():
            out[name] = merge_kinds(out[name], kind, name) if name in out else kind
    return out


def resolve_tail(manifest: Manifest, records: list[WalRecord], id_type: str, dim: int) -> Tail:
    """Apply last-writer-wins to the WAL records after ``manifest``."""
    metas = [r.meta for r in records]
    schema = effective_schema(dict(manifest.schema), metas)
    bases = auto_id_bases(manifest.max_int_id, metas)
    keys, is_upsert, batches, row_ids = [], [], [], []
    file_offsets: dict[int, int] = {}
    max_id = manifest.max_int_id
    deletes = 0
    for rec, base in zip(records, bases):
        batch = rec.batch()
        ids = np.arange(base, base + batch.n, dtype=np.int64) if base is not None else batch.ids
        keys.append(ids)
        is_upsert.append(np.full(batch.n, batch.op == "upsert"))
        start = file_offsets.get(rec.seq, 0)
        file_offsets[rec.seq] = start + batch.n
        if batch.op == "upsert":
            batches.append(batch)
            row_ids.append((np.uint64(rec.seq) << np.uint64(32)) | np.arange(start, start + batch.n, dtype=np.uint64))
            if id_type == "int" and batch.n:
                top = int(ids.max())
                max_id = top if max_id is None else max(max_id, top)
        else:
            deletes += batch.n
    empty = np.zeros(0, np.int64) if id_type == "int" else np.zeros(0, "U1")
    if not keys:
        return Tail(records, empty, None, max_id, schema)
    all_keys = np.concatenate(keys)
    all_up = np.concatenate(is_upsert)
    # The last write of each key wins: a stable sort keeps write order among equal keys.
    order = np.argsort(all_keys, kind="stable")
    sk = all_keys[order]
    last = np.r_[sk[1:] != sk[:-1], True]
    winner = np.zeros(all_keys.shape[0], bool)
    winner[order[last]] = True
    touched = sk[last]
    source = None
    if batches:
        up_rows = np.flatnonzero(all_up)
        vectors = np.concatenate([np.asarray(b.vectors, np.float32) for b in batches]).reshape(-1, dim)
        lengths = [b.n for b in batches]
        columns = {name: concat_columns([b.columns.get(name) for b in batches], lengths, kind) for name, kind in schema.items()}
        source = Source(
            name="wal",
            vectors=vectors,
            sqnorms=sqnorms(vectors),
            ids=all_keys[up_rows],
            live=winner[up_rows],
            column=columns.get,
            segment=None,
            row_ids=np.concatenate(row_ids),
        )
    return Tail(records, touched, source, max_id, schema, deletes)


class IndexView:
    """A snapshot of an index for reading: settings, one generation, its WAL tail.

    Parameters
    ----------
    root : str or Path
        Index directory.
    verify : {"header", "small", "all"}
        Checksums checked while opening files (see :class:`~tidepool_cli.storage.segment.Segment`).

    Raises
    ------
    IndexNotFoundError, CorruptIndexError, UnsupportedFormatError
    """

    def __init__(self, root: str | Path, verify: str = "small"):
        self.layout, self.settings = open_index_dir(Path(root))
        self.manifest = read_current(self.layout)
        self.tail = resolve_tail(self.manifest, pending_records(self.layout, self.manifest), self.settings.id_type, self.settings.dim)
        self.segments = [Segment(self.layout, e, verify) for e in self.manifest.segments]
        self._verify_dims()

    @property
    def schema(self) -> dict[str, str]:
        """Attribute kinds over the whole view."""
        return self.tail.schema

    def sources(self) -> list[Source]:
        """Segments (their rows touched by the WAL tail hidden) and then the tail."""
        out = []
        touched = self.tail.touched
        for seg in self.segments:
            live = ~seg.deleted
            if touched.size:
                live &= ~np.isin(seg.ids, touched)
            out.append(
                Source(name=seg.name, vectors=seg.vectors, sqnorms=seg.sqnorms, ids=seg.ids, live=live, column=seg.column, segment=seg, row_ids=seg.row_ids)
            )
        if self.tail.source is not None:
            out.append(self.tail.source)
        return out

    def _verify_dims(self) -> None:
        for seg in self.segments:
            if seg.container.meta.get("dim") != self.settings.dim:
                raise CorruptIndexError(f"{seg.entry.vectors.path}: dimension differs from tidepool.json")


@dataclass
class ViewCounts:
    """Row counts of a view: live rows and rows that still take space but are dead."""

    live: int = 0
    dead: int = 0
    per_source: dict[str, tuple[int, int]] = field(default_factory=dict)


def count_rows(sources: list[Source]) -> ViewCounts:
    """Live and dead rows per source and in total."""
    counts = ViewCounts()
    for s in sources:
        live = int(np.count_nonzero(s.live))
        counts.per_source[s.name] = (live, s.rows - live)
        counts.live += live
        counts.dead += s.rows - live
    return counts
