"""``tidepool stats``: what an index holds, what it costs on disk, and whether it is intact."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tidepool_cli.errors import TidepoolError
from tidepool_cli.ops.view import IndexView, count_rows
from tidepool_cli.storage.atomic import TMP_MARK
from tidepool_cli.storage.layout import Layout, open_index_dir
from tidepool_cli.storage.manifest import Manifest, read_current
from tidepool_cli.storage.segment import DELETIONS_KIND, DELETIONS_VERSION, SEGMENT_KIND, SEGMENT_VERSION, open_ref
from tidepool_cli.storage.sidecars import SIDECARS, check_sidecar
from tidepool_cli.storage.wal import LEDGER_NAME, check_sequence, list_wal, read_wal_file

def file_kinds() -> tuple[str, ...]:
    """Kinds of ``bytes_by_kind``: one per registered sidecar kind among them."""
    return ("vectors", "deletions", *SIDECARS, "wal", "metadata", "obsolete", "temporary")


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
    try:
        view = IndexView(index, verify="header" if problems else "small")
        records = view.tail.records
        counts = count_rows(view.sources())
    except TidepoolError:
        if not problems:
            raise
        # Damaged beyond a view: what the manifest says, and every WAL record still readable.
        view, counts, records = None, None, _readable_records(layout, pending)
    for rec in records:
        key = "rows" if rec.meta["op"] == "upsert" else "deletes"
        wal_stats[key] += rec.rows
        wal_stats["records"] += 1
    per_seg = []
    for e in manifest.segments:
        live_s, dead_s = counts.per_source[e.name] if counts else (e.live_rows, e.deleted)
        per_seg.append(SegmentStats(e.name, e.rows, live_s, dead_s, sum(r.bytes for r in e.files()), _index_info(e)))
    if counts:
        live, dead = counts.live, counts.dead
    else:
        live = sum(e.live_rows for e in manifest.segments) + wal_stats["rows"]
        dead = sum(e.deleted for e in manifest.segments)
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
        dict(view.schema) if view is not None else dict(manifest.schema),
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
        for ref, kind, version in checks:
            problems += _container_problems(ref.path, lambda: open_ref(layout, ref, kind, version, verify="header"))
        for key, ref in entry.indexes.items():
            if key not in SIDECARS:
                problems.append(f"{ref.path}: sidecar kind {key!r} is unknown to this tidepool")
                continue
            problems += _container_problems(ref.path, lambda: check_sidecar(layout, entry, key, verify="header"))
    try:
        files, ledger = check_sequence(layout, manifest)
    except TidepoolError as exc:
        problems.append(str(exc))
        files, ledger = [(seq, p) for seq, p in list_wal(layout) if seq > manifest.wal_applied_through], None
    for seq, path in files:
        try:
            for rec in read_wal_file(layout, seq, path, verify="header", expect=ledger if ledger and ledger.seq == seq else None):
                problems += [f"{rec.container.where}: checksum mismatch in section {name!r}" for name in rec.container.damaged_sections()]
        except TidepoolError as exc:
            problems.append(str(exc))
    return problems


def _container_problems(path: str, opener) -> list[str]:
    try:
        c = opener()
    except TidepoolError as exc:
        return [str(exc)]
    return [f"{path}: checksum mismatch in section {name!r}" for name in c.damaged_sections()]


def _readable_records(layout: Layout, pending) -> list:
    """WAL records of the files that can still be read, file by file."""
    out = []
    for seq, path in pending:
        try:
            out += read_wal_file(layout, seq, path, verify="header")
        except TidepoolError:
            continue
    return out


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _bytes_by_kind(layout: Layout, manifest: Manifest) -> dict[str, int]:
    """Bytes on disk per kind of file; unreferenced files count as obsolete."""
    out = dict.fromkeys(file_kinds(), 0)
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
            if not path.is_file() or not path.resolve().is_relative_to(layout.root.resolve()):
                continue
            rel = layout.rel(path)
            if TMP_MARK in name:
                kind = "temporary"
            elif rel in referenced:
                kind = referenced[rel]
            elif rel in pending:
                kind = "wal"
            elif (d == layout.root and (name in ("tidepool.json", "CURRENT", "LOCK") or name == current)) or (d == layout.wal_dir and name == LEDGER_NAME):
                kind = "metadata"
            else:
                kind = "obsolete"
            out[kind] += _size(path)
    return out
