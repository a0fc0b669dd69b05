"""``tidepool stats``: what an index holds, what it costs on disk, and whether it is intact."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tidepool_cli.errors import CorruptIndexError, UnsupportedFormatError
from tidepool_cli.ops.view import IndexView, count_rows
from tidepool_cli.storage.atomic import TMP_MARK
from tidepool_cli.storage.layout import Layout, open_index_dir
from tidepool_cli.storage.manifest import Manifest, read_current
from tidepool_cli.storage.segment import DELETIONS_KIND, DELETIONS_VERSION, SEGMENT_KIND, SEGMENT_VERSION, open_ref
from tidepool_cli.storage.sidecars import SIDECARS
from tidepool_cli.storage.wal import list_wal, read_wal_file

FILE_KINDS = ("vectors", "deletions", "hnsw", "ivf", "wal", "metadata", "obsolete", "temporary")


@dataclass(frozen=True)
class SegmentStats:
    """One segment in ``stats``.

    Attributes
    ----------
    name : str
    rows : int
        Rows in the vector file.
    live : int
        Rows visible to queries.
    deleted : int
        Rows marked in the deletion vector or replaced by a newer write.
    bytes : int
        All files of the segment.
    indexes : dict
        Per sidecar kind, its parameters and size (from the manifest).
    """

    name: str
    rows: int
    live: int
    deleted: int
    bytes: int
    indexes: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class StatsResult:
    """The report of ``tidepool stats``; :meth:`to_dict` gives the documented JSON schema."""

    index: str
    format_version: int
    dim: int
    metric: str
    id_type: str
    generation: int
    live_rows: int
    deleted_rows: int
    segments: list[SegmentStats]
    wal: dict[str, int]
    bytes_by_kind: dict[str, int]
    total_bytes: int
    bytes_per_vector: float | None
    attributes: dict[str, str]
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    verified: bool = False
    problems: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def stats(index: str | Path, *, verify: bool = False) -> StatsResult:
    """Report on the index at ``index``.

    Parameters
    ----------
    index : str or Path
    verify : bool
        Re-read every checksum of every referenced file and pending WAL file and list
        each damaged part in ``problems`` (the report is still returned).

    Returns
    -------
    StatsResult

    Raises
    ------
    IndexNotFoundError
    CorruptIndexError
        Without ``verify``, when a file cannot be opened.
    """
    layout, settings = open_index_dir(Path(index))
    manifest = read_current(layout)
    problems = _verify(layout, manifest) if verify else []
    wal = list_wal(layout)
    pending = [(seq, p) for seq, p in wal if seq > manifest.wal_applied_through]
    wal_stats = {"files": len(pending), "records": 0, "rows": 0, "deletes": 0, "bytes": sum(_size(p) for _, p in pending)}
    schema = dict(manifest.schema)
    if problems:
        # Damaged files: report what the manifest says without opening them.
        per_seg = [SegmentStats(e.name, e.rows, e.live_rows, e.deleted, sum(r.bytes for r in e.files()), _index_info(e)) for e in manifest.segments]
        live = sum(e.live_rows for e in manifest.segments)
        dead = sum(e.deleted for e in manifest.segments)
    else:
        view = IndexView(index)
        schema = dict(view.tail.schema)  # attributes from the WAL tail count before compaction
        counts = count_rows(view.sources())
        for rec in view.tail.records:
            key = "rows" if rec.meta["op"] == "upsert" else "deletes"
            wal_stats[key] += rec.rows
            wal_stats["records"] += 1
        per_seg = []
        for e in manifest.segments:
            live_s, dead_s = counts.per_source[e.name]
            per_seg.append(SegmentStats(e.name, e.rows, live_s, dead_s, sum(r.bytes for r in e.files()), _index_info(e)))
        live, dead = counts.live, counts.dead
    by_kind = _bytes_by_kind(layout, manifest)
    total = sum(by_kind.values())
    # What the index costs per live vector: obsolete and temporary files are on their way out.
    kept = total - by_kind["obsolete"] - by_kind["temporary"]
    return StatsResult(
        str(index),
        settings.format_version,
        settings.dim,
        settings.metric,
        settings.id_type,
        manifest.generation,
        live,
        dead,
        per_seg,
        wal_stats,
        by_kind,
        total,
        round(kept / live, 2) if live else None,
        schema,
        _index_totals(manifest),
        verify,
        problems,
    )


def _index_info(entry) -> dict[str, dict[str, Any]]:
    return {kind: {**ref.params, "bytes": ref.bytes} for kind, ref in entry.indexes.items()}


def _index_totals(manifest: Manifest) -> dict[str, dict[str, Any]]:
    """Per index kind, over all segments that have one: counts, bytes, and for IVF the
    ID-compression figures weighted by rows (bits per ID vs the bound, Elias-Fano, raw)."""
    out: dict[str, dict[str, Any]] = {}
    for e in manifest.segments:
        for key, ref in e.indexes.items():
            t = out.setdefault(key, {"segments": 0, "rows": 0, "bytes": 0})
            t["segments"] += 1
            t["rows"] += e.rows
            t["bytes"] += ref.bytes
            if key == "ivf":
                for metric in ("bits_per_id", "bound_bits_per_id", "elias_fano_bits_per_id", "raw_bits_per_id"):
                    t[metric] = t.get(metric, 0.0) + float(ref.params.get(metric, 0.0)) * e.rows
                t.setdefault("codecs", set()).add(ref.params.get("codec"))
    ivf = out.get("ivf")
    if ivf:
        for metric in ("bits_per_id", "bound_bits_per_id", "elias_fano_bits_per_id", "raw_bits_per_id"):
            ivf[metric] = round(ivf[metric] / max(ivf["rows"], 1), 4)
        ivf["codecs"] = sorted(c for c in ivf["codecs"] if c)
    return out


def _verify(layout: Layout, manifest: Manifest) -> list[str]:
    """Every damaged file or section, each named precisely."""
    problems = []
    for entry in manifest.segments:
        checks = [(entry.vectors, SEGMENT_KIND, SEGMENT_VERSION)]
        if entry.deletions:
            checks.append((entry.deletions, DELETIONS_KIND, DELETIONS_VERSION))
        for key, ref in entry.indexes.items():
            checks.append((ref, SIDECARS[key].kind, SIDECARS[key].version))
        for ref, kind, version in checks:
            try:
                c = open_ref(layout, ref, kind, version, verify="header")
                problems += [f"{ref.path}: checksum mismatch in section {name!r}" for name in c.damaged_sections()]
            except (CorruptIndexError, UnsupportedFormatError) as exc:
                problems.append(str(exc))
    for seq, path in list_wal(layout):
        if seq <= manifest.wal_applied_through:
            continue
        try:
            for rec in read_wal_file(layout, seq, path, verify="header"):
                problems += [f"{rec.container.where}: checksum mismatch in section {name!r}" for name in rec.container.damaged_sections()]
        except CorruptIndexError as exc:
            problems.append(str(exc))
    return problems


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _bytes_by_kind(layout: Layout, manifest: Manifest) -> dict[str, int]:
    """Bytes on disk per kind of file; unreferenced files count as obsolete."""
    out = dict.fromkeys(FILE_KINDS, 0)
    referenced = {}
    for e in manifest.segments:
        referenced[e.vectors.path] = "vectors"
        if e.deletions:
            referenced[e.deletions.path] = "deletions"
        for kind, ref in e.indexes.items():
            referenced[ref.path] = kind if kind in out else "vectors"
    pending = {layout.rel(p) for seq, p in list_wal(layout) if seq > manifest.wal_applied_through}
    current = layout.manifest_path(manifest.generation).name
    for d in (layout.root, layout.segments_dir, layout.wal_dir):
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for name in names:
            path = d / name
            if not path.is_file():
                continue
            rel = layout.rel(path)
            if TMP_MARK in name:
                kind = "temporary"
            elif rel in referenced:
                kind = referenced[rel]
            elif rel in pending:
                kind = "wal"
            elif d == layout.root and (name in ("tidepool.json", "CURRENT", "LOCK") or name == current):
                kind = "metadata"
            else:
                kind = "obsolete"
            out[kind] += _size(path)
    return out
