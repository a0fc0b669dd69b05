"""The index directory: its paths, its immutable settings (``tidepool.json``), creation.

::

    INDEX/
      tidepool.json          format name and version, dim, metric, dtype, id type
      CURRENT                names the live manifest; replaced atomically
      manifest-NNNNNN.json   one generation each
      wal/NNNNNNNNNNNN.wal   write-ahead log files, one per committed ingest or delete
      segments/              immutable segment files and their sidecars, seg-NNNNNN.<token>.<kind>
      LOCK                   writer lock
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tidepool_cli.engine.distances import check_metric
from tidepool_cli.errors import CorruptIndexError, IndexNotFoundError, InvalidInputError, UnsupportedFormatError
from tidepool_cli.storage import sealed
from tidepool_cli.storage.atomic import fsync_dir, storage_error, write_file
from tidepool_cli.storage.lock import WriterLock
from tidepool_cli.storage.owner import owner_tag
from tidepool_cli.storage.safe import check_rel, read_small

FORMAT_NAME = "tidepool"
FORMAT_VERSION = 2
"""Version of the index directory layout written by this release (1: no checksums on
``tidepool.json``, manifests and CURRENT, no WAL end records; still read)."""

ID_TYPES = ("int", "str")


@dataclass(frozen=True)
class IndexSettings:
    """Immutable settings of an index, fixed when it is created.

    Attributes
    ----------
    dim : int
        Vector dimension.
    metric : {"l2", "cosine", "dot"}
    id_type : {"int", "str"}
        Kind of external ids: 64-bit signed integers or UTF-8 strings.
    dtype : str
        Stored vector element type; "float32".
    format_version : int
        Layout version the index was created with.
    """

    dim: int
    metric: str
    id_type: str
    dtype: str = "float32"
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in ``tidepool.json``."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "dim": self.dim,
            "metric": self.metric,
            "dtype": self.dtype,
            "id_type": self.id_type,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str, checksum: bool | None = None) -> "IndexSettings":
        """Parse ``tidepool.json``, checking its checksum and format version first.

        Parameters
        ----------
        d : dict
            The parsed JSON.
        where : str
            Names the file in messages.
        checksum : bool or None
            Result of :func:`~tidepool_cli.storage.sealed.check` on the raw bytes (None:
            the file has no checksum, as written by format version 1).

        Raises
        ------
        UnsupportedFormatError
            Written by a newer format version.
        CorruptIndexError
            Checksum mismatch, missing or invalid fields (a damaged ``format_version`` is
            damage, not a newer version).
        """
        if checksum is False:
            raise CorruptIndexError(f"{where}: checksum mismatch (the file is damaged)")
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise CorruptIndexError(f"{where}: not a tidepool settings file")
        version = d.get("format_version")
        if type(version) is not int or version < 1:
            raise CorruptIndexError(f"{where}: invalid format_version {version!r} (the file is damaged)")
        if checksum is None and version == FORMAT_VERSION:
            raise CorruptIndexError(f"{where}: checksum missing (the file is damaged)")
        if version > FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"{where}: index format version {version} is newer than this tidepool reads ({FORMAT_VERSION}); upgrade tidepool"
            )
        try:
            settings = cls(int(d["dim"]), check_metric(d["metric"]), d["id_type"], d["dtype"], version)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndexError(f"{where}: invalid settings ({exc})") from None
        if settings.id_type not in ID_TYPES or settings.dtype != "float32" or settings.dim < 1:
            raise CorruptIndexError(f"{where}: invalid settings")
        return settings


class Layout:
    """Paths inside one index directory.

    Parameters
    ----------
    root : Path
        The index directory.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.settings_path = self.root / "tidepool.json"
        self.current_path = self.root / "CURRENT"
        self.wal_dir = self.root / "wal"
        self.segments_dir = self.root / "segments"

    def manifest_path(self, generation: int) -> Path:
        """``manifest-NNNNNN.json`` of a generation."""
        return self.root / f"manifest-{generation:06d}.json"

    def wal_path(self, seq: int) -> Path:
        """``wal/NNNNNNNNNNNN.wal`` of a WAL sequence number."""
        return self.wal_dir / f"{seq:012d}.wal"

    def new_segment_file(self, segment: str, suffix: str) -> Path:
        """A fresh, never-used path ``segments/<segment>.<token>.<suffix>`` for a new file.

        The random token keeps two writers working concurrently (two compactions, a
        compaction and an index build) from ever choosing the same name, so one can
        never replace a file the other has already published.
        """
        return self.segments_dir / f"{segment}.{uuid.uuid4().hex[:12]}-{owner_tag()}.{suffix}"

    def path(self, rel: str, where: str = "manifest") -> Path:
        """Absolute path of a manifest-relative path.

        Raises
        ------
        CorruptIndexError
            ``rel`` is absolute or leaves the index (see :func:`~tidepool_cli.storage.safe.check_rel`).
        """
        return self.root / check_rel(rel, where)

    def rel(self, path: Path) -> str:
        """Manifest-relative form of a path inside the index."""
        return path.relative_to(self.root).as_posix()

    def lock(self, purpose: str, timeout: float) -> WriterLock:
        """The writer lock of this index (see :class:`WriterLock`)."""
        return WriterLock(self.root, purpose, timeout)


def open_index_dir(root: Path) -> tuple[Layout, IndexSettings]:
    """Open an existing index directory and read its settings.

    Raises
    ------
    IndexNotFoundError
        The directory does not exist or holds no ``tidepool.json``.
    UnsupportedFormatError, CorruptIndexError
        From :meth:`IndexSettings.from_dict`.
    """
    layout = Layout(root)
    if not layout.root.is_dir():
        raise IndexNotFoundError(f"{root}: no such index directory")
    raw = read_small(layout.root, layout.settings_path, str(layout.settings_path))
    if raw is None:
        raise IndexNotFoundError(f"{root}: not a tidepool index (no tidepool.json); create one with `tidepool ingest`")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise CorruptIndexError(f"{layout.settings_path}: not valid JSON") from None
    return layout, IndexSettings.from_dict(data, str(layout.settings_path), sealed.check(raw))


def create_index_dir(root: Path, settings: IndexSettings, lock_timeout: float) -> tuple[Layout, IndexSettings]:
    """Open the index at ``root``, creating it with ``settings`` if it does not exist yet.

    Creation happens under the writer lock, so two first ingests cannot both create it.
    An existing index keeps its own settings; the caller checks they fit its data.

    Raises
    ------
    InvalidInputError
        ``root`` is a file, or a non-empty directory that is not an index.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InvalidInputError(f"{root}: exists and is not a directory")
    # tidepool.json is written first, so an interrupted creation leaves at most LOCK and
    # a temporary settings file behind, and a retry completes it.
    leftovers = [p for p in root.iterdir() if p.name != "LOCK" and not p.name.startswith("tidepool.json.tmp.")] if root.is_dir() else []
    if leftovers and not (root / "tidepool.json").exists():
        raise InvalidInputError(f"{root}: directory is not empty and is not a tidepool index; choose a new path")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, root) from None
    layout = Layout(root)
    with layout.lock("create", lock_timeout):
        if not layout.settings_path.exists():
            write_file(layout.settings_path, sealed.seal(settings.to_dict(), indent=2))
        for d in (layout.wal_dir, layout.segments_dir):
            if not d.is_dir():
                try:
                    d.mkdir()
                    fsync_dir(layout.root)
                except OSError as exc:
                    raise storage_error(exc, d) from None
    return open_index_dir(root)


def discard_new_index(layout: Layout, remove_root: bool, lock_timeout: float, remove_lock: bool = True) -> bool:
    """Undo :func:`create_index_dir` for an index that never received a write.

    A first ingest that fails creates nothing: it calls this to remove the settings file
    and the empty ``wal/`` and ``segments/`` directories it made (and the directory
    itself when ``remove_root``; ``LOCK`` too when ``remove_lock``). Under the writer lock, and only while the index holds
    no WAL file (published or in progress), no manifest and no segment, so a concurrent
    writer's work is never removed.

    Returns
    -------
    bool
        True if the index was removed; False if someone else has written to it.
    """
    try:
        with layout.lock("discard", lock_timeout):
            busy = [p for d in (layout.wal_dir, layout.segments_dir) if d.is_dir() for p in d.iterdir()]
            foreign = [p for p in layout.root.iterdir() if p.name not in ("LOCK", "tidepool.json", "wal", "segments")]
            if busy or foreign:
                return False
            layout.settings_path.unlink(missing_ok=True)
            for d in (layout.wal_dir, layout.segments_dir):
                if d.is_dir():
                    d.rmdir()
            if remove_root or remove_lock:
                (layout.root / "LOCK").unlink(missing_ok=True)
            if remove_root:
                layout.root.rmdir()
            elif layout.root.exists():
                fsync_dir(layout.root)
    except OSError:
        return False
    return True
