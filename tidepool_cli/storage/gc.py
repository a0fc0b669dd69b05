"""Garbage collection: remove files no generation needs any more, after a grace period.

A file becomes obsolete when a new manifest stops referencing it (a merged segment, a
replaced deletion vector, an applied WAL file, an older manifest). It is removed only
once it has been obsolete for the grace period, so that a query that opened the older
generation a moment ago never loses a file under its feet. Temporary files and
unreferenced files left by a killed process are removed once they are older than the
grace period too. Collection runs under the writer lock.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tidepool_cli.errors import CorruptIndexError
from tidepool_cli.storage.atomic import TMP_MARK
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import Manifest
from tidepool_cli.storage.owner import owner_alive, owner_of
from tidepool_cli.storage.safe import inside
from tidepool_cli.storage.segment import DELETIONS_SUFFIX, SEGMENT_SUFFIX
from tidepool_cli.storage.sidecars import SIDECARS
from tidepool_cli.storage.wal import LEDGER_NAME, list_wal

PROTECTED = frozenset({"tidepool.json", "CURRENT", "LOCK", f"wal/{LEDGER_NAME}"})
"""Metadata files garbage collection never removes, whatever a manifest says."""

DEFAULT_GRACE_SECONDS = 300.0
"""Seconds an obsolete file is kept for readers of older generations (``--grace``)."""


@dataclass(frozen=True)
class GcResult:
    """What a collection removed.

    Attributes
    ----------
    files : int
        Files removed.
    bytes : int
        Bytes freed.
    """

    files: int = 0
    bytes: int = 0


def collect_garbage(layout: Layout, manifest: Manifest, grace: float, now: float | None = None) -> GcResult:
    """Remove files of ``layout`` that ``manifest`` (the current generation) does not need.

    Parameters
    ----------
    layout : Layout
    manifest : Manifest
        The current generation; call under the writer lock so it stays current.
    grace : float
        Seconds a file must have been obsolete (or untouched, for orphans) before removal.
    now : float, optional
        Unix time to compare against (default: the current time).

    Returns
    -------
    GcResult
    """
    now = time.time() if now is None else now
    keep = manifest.referenced_paths() | {layout.rel(layout.manifest_path(manifest.generation))} | PROTECTED
    candidates: list[Path] = []
    for rel, since in manifest.obsolete:
        if now - since >= grace and rel not in keep:
            try:
                candidates.append(layout.path(rel, "obsolete list"))
            except CorruptIndexError:
                continue  # a path leaving the index is never deleted
    obsolete = {rel for rel, _ in manifest.obsolete}
    applied_wal = {p for seq, p in list_wal(layout) if seq <= manifest.wal_applied_through}
    for path in _index_files(layout):
        rel = layout.rel(path)
        if rel in keep or rel in obsolete:
            continue
        if TMP_MARK in path.name or _is_leftover(layout, manifest, path, applied_wal):
            owner = owner_of(path.name)
            if owner is not None and owner_alive(*owner):
                continue  # its writer may still publish or rename it
            try:
                if now - path.lstat().st_mtime >= grace:
                    candidates.append(path)
            except FileNotFoundError:
                continue
    files = freed = 0
    for path in candidates:
        if not inside(layout.root, path.parent):
            continue  # a directory symlinked out of the index: not ours to delete from
        try:
            size = path.lstat().st_size
            path.unlink()
        except OSError:
            continue  # gone already, or not ours to remove (read-only): the next run retries
        files += 1
        freed += size
    return GcResult(files, freed)


def _index_files(layout: Layout) -> list[Path]:
    out = []
    for d in (layout.root, layout.segments_dir, layout.wal_dir):
        try:
            with os.scandir(d) as it:
                out.extend(d / e.name for e in it if not e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return out


def _is_leftover(layout: Layout, manifest: Manifest, path: Path, applied_wal: set[Path]) -> bool:
    """Unreferenced files a crash can leave behind: segment files, applied WAL files, old manifests.

    In ``segments/`` only files of a kind tidepool writes (segments, deletion vectors,
    registered sidecar kinds) are candidates; anything else there is left alone.
    """
    if path.parent == layout.segments_dir:
        return path.suffix[1:] in {SEGMENT_SUFFIX, DELETIONS_SUFFIX, *(k.suffix for k in SIDECARS.values())}
    if path.parent == layout.wal_dir:
        return path in applied_wal
    return path.name.startswith("manifest-") and path.name != layout.manifest_path(manifest.generation).name
