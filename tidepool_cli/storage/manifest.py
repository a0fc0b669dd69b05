"""Manifest generations: which immutable files make up the index, and the CURRENT pointer.

A manifest is a JSON document listing every segment with its files (sizes and header
CRC-32s), the WAL sequence number up to which records are already in segments, id and
schema bookkeeping, and the files that became obsolete with their time of obsolescence.
Publishing writes ``manifest-<generation>.json`` atomically, then replaces ``CURRENT``
atomically: a reader that reads CURRENT sees one complete generation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tidepool_cli.errors import CorruptIndexError, UnsupportedFormatError
from tidepool_cli.storage.atomic import write_file
from tidepool_cli.storage.layout import Layout

MANIFEST_FORMAT = "tidepool-manifest"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class FileRef:
    """An immutable file referenced by a manifest.

    Attributes
    ----------
    path : str
        Path relative to the index directory.
    bytes : int
        File size in bytes.
    crc32 : int
        Header CRC-32 of the container (covers every section CRC).
    params : mapping
        Small facts about the file worth knowing without opening it
        (index parameters of a sidecar, deleted-row count of a deletion vector).
    """

    path: str
    bytes: int
    crc32: int
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        d: dict[str, Any] = {"path": self.path, "bytes": self.bytes, "crc32": self.crc32}
        if self.params:
            d["params"] = dict(self.params)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FileRef":
        """Parse the JSON form."""
        return cls(d["path"], int(d["bytes"]), int(d["crc32"]), dict(d.get("params", {})))


@dataclass(frozen=True)
class SegmentEntry:
    """One immutable segment and its files.

    Attributes
    ----------
    name : str
        ``seg-NNNNNN``.
    rows : int
        Rows in the vector file, deleted ones included.
    deleted : int
        Rows marked in the deletion vector.
    vectors : FileRef
        The ``.tpvs`` segment file.
    deletions : FileRef or None
        The current deletion vector (``.tpdv``), if any row was deleted.
    indexes : mapping of str to FileRef
        Sidecar index files by kind ("hnsw", "ivf").
    """

    name: str
    rows: int
    deleted: int
    vectors: FileRef
    deletions: FileRef | None = None
    indexes: Mapping[str, FileRef] = field(default_factory=dict)

    @property
    def live_rows(self) -> int:
        """Rows not deleted."""
        return self.rows - self.deleted

    def files(self) -> list[FileRef]:
        """Every file of the segment."""
        refs = [self.vectors, *self.indexes.values()]
        return refs + ([self.deletions] if self.deletions else [])

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "name": self.name,
            "rows": self.rows,
            "deleted": self.deleted,
            "vectors": self.vectors.to_dict(),
            "deletions": self.deletions.to_dict() if self.deletions else None,
            "indexes": {k: v.to_dict() for k, v in sorted(self.indexes.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SegmentEntry":
        """Parse the JSON form."""
        return cls(
            d["name"],
            int(d["rows"]),
            int(d["deleted"]),
            FileRef.from_dict(d["vectors"]),
            FileRef.from_dict(d["deletions"]) if d.get("deletions") else None,
            {k: FileRef.from_dict(v) for k, v in d.get("indexes", {}).items()},
        )


@dataclass(frozen=True)
class Manifest:
    """One generation of the index.

    Attributes
    ----------
    generation : int
        0 for an index that was never compacted (no manifest file yet).
    wal_applied_through : int
        WAL files with a sequence number up to this one are in the segments.
    next_segment : int
        Number of the next segment name.
    max_int_id : int or None
        Largest integer id ever written through the applied WAL (auto ids continue after it).
    schema : mapping of str to str
        Attribute name to type ("bool", "int", "float", "string") over the segments.
    segments : tuple of SegmentEntry
    obsolete : tuple of (str, float)
        Files no longer referenced, with the unix time they became obsolete; removed after
        the grace period.
    created_unix : float
    """

    generation: int = 0
    wal_applied_through: int = 0
    next_segment: int = 1
    max_int_id: int | None = None
    schema: Mapping[str, str] = field(default_factory=dict)
    segments: tuple[SegmentEntry, ...] = ()
    obsolete: tuple[tuple[str, float], ...] = ()
    created_unix: float = 0.0

    def segment(self, name: str) -> SegmentEntry | None:
        """The segment called ``name``, if present."""
        return next((s for s in self.segments if s.name == name), None)

    def referenced_paths(self) -> set[str]:
        """Every file path this generation references."""
        return {ref.path for seg in self.segments for ref in seg.files()}

    def successor(self, **changes: Any) -> "Manifest":
        """The next generation with ``changes`` applied and a fresh timestamp."""
        return replace(self, generation=self.generation + 1, created_unix=time.time(), **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in ``manifest-NNNNNN.json``."""
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "generation": self.generation,
            "created_unix": self.created_unix,
            "wal_applied_through": self.wal_applied_through,
            "next_segment": self.next_segment,
            "max_int_id": self.max_int_id,
            "schema": dict(sorted(self.schema.items())),
            "segments": [s.to_dict() for s in self.segments],
            "obsolete": [{"path": p, "since_unix": t} for p, t in self.obsolete],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> "Manifest":
        """Parse a manifest, checking its format version first.

        Raises
        ------
        UnsupportedFormatError
            Newer manifest version.
        CorruptIndexError
            Missing or malformed fields.
        """
        if d.get("format") != MANIFEST_FORMAT:
            raise CorruptIndexError(f"{where}: not a tidepool manifest")
        if not isinstance(d.get("format_version"), int) or d["format_version"] > MANIFEST_VERSION:
            raise UnsupportedFormatError(f"{where}: manifest version {d.get('format_version')} is newer than this tidepool reads; upgrade tidepool")
        try:
            return cls(
                generation=int(d["generation"]),
                wal_applied_through=int(d["wal_applied_through"]),
                next_segment=int(d["next_segment"]),
                max_int_id=None if d["max_int_id"] is None else int(d["max_int_id"]),
                schema=dict(d["schema"]),
                segments=tuple(SegmentEntry.from_dict(s) for s in d["segments"]),
                obsolete=tuple((o["path"], float(o["since_unix"])) for o in d["obsolete"]),
                created_unix=float(d["created_unix"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptIndexError(f"{where}: malformed manifest ({exc!r})") from None


def read_current(layout: Layout) -> Manifest:
    """The manifest CURRENT names; generation 0 if the index was never compacted.

    Retries when a garbage collector removed the named manifest between the two reads
    (possible only for a reader stalled longer than the grace period).

    Raises
    ------
    CorruptIndexError
        CURRENT names a manifest that does not exist or does not parse.
    """
    for _ in range(5):
        try:
            name = layout.current_path.read_text().strip()
        except FileNotFoundError:
            return Manifest()
        if not name.startswith("manifest-") or "/" in name:
            raise CorruptIndexError(f"{layout.current_path}: does not name a manifest")
        path = layout.root / name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue
        try:
            data = json.loads(raw)
        except ValueError:
            raise CorruptIndexError(f"{path}: not valid JSON") from None
        return Manifest.from_dict(data, str(path))
    raise CorruptIndexError(f"{layout.current_path}: names a manifest that does not exist")


def write_manifest(layout: Layout, manifest: Manifest) -> None:
    """Publish ``manifest``: write its file, then swap CURRENT. Call under the writer lock."""
    path = layout.manifest_path(manifest.generation)
    write_file(path, (json.dumps(manifest.to_dict(), indent=1) + "\n").encode())
    write_file(layout.current_path, (path.name + "\n").encode())
