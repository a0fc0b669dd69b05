"""Manifest generations: which immutable files make up the index, and the CURRENT pointer.

A manifest is a JSON document listing every segment with its files (sizes and header
CRC-32s), the WAL sequence number up to which records are already in segments, id and
schema bookkeeping, and the files that became obsolete with their time of obsolescence.
Publishing writes ``manifest-<generation>.json`` atomically, then replaces ``CURRENT``
atomically: a reader that reads CURRENT sees one complete generation.

Roots of trust (version 2): a manifest ends with its own checksum
(:mod:`~tidepool_cli.storage.sealed`), and CURRENT holds the manifest's name followed by
the CRC-32 of that name. A manifest lists the reader features it needs
(``"features"``); a reader refuses one it does not know. When CURRENT is missing or
damaged but manifests exist, the reader recovers the newest manifest whose checksum
holds and says so with an :class:`~tidepool_cli.errors.IndexRecoveryWarning`.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tidepool_cli.errors import CorruptIndexError, IndexRecoveryWarning, UnsupportedFormatError
from tidepool_cli.storage import sealed
from tidepool_cli.storage.atomic import discard, write_file
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.safe import MANIFEST_LIMIT, check_rel, read_small

MANIFEST_FORMAT = "tidepool-manifest"
MANIFEST_VERSION = 2
"""Written by this release; version 1 (no checksum, no features) is still read."""

_CURRENT = re.compile(rb"^(manifest-(\d{6,})\.json)(?: crc32:([0-9a-f]{8}))?\n?$")
_MANIFEST_NAME = re.compile(r"^manifest-(\d{6,})\.json$")

BASE_FEATURES: frozenset[str] = frozenset()
"""Reader features every manifest of this version may use without listing them."""

_known_features: set[str] = set()


def register_feature(name: str) -> None:
    """Declare that this reader understands the manifest feature ``name``."""
    _known_features.add(name)


def known_features() -> set[str]:
    """Every manifest feature this reader understands (sidecar kinds register theirs)."""
    import tidepool_cli.storage.sidecars  # noqa: F401  (registers the sidecar kinds)

    return set(_known_features) | set(BASE_FEATURES)


READ_ATTEMPTS = 5
"""Reads of CURRENT before a reader falls back to recovery."""
FIRST_PUBLISH_WAIT_S = 0.05
"""Pause between reads when CURRENT is missing beside manifests (seconds)."""

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
        """Parse the JSON form (the path must stay inside the index, see :func:`check_rel`)."""
        return cls(check_rel(d["path"], "manifest"), int(d["bytes"]), int(d["crc32"]), dict(d.get("params", {})))


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

    def features(self) -> list[str]:
        """Reader features this generation needs: one ``sidecar.<key>`` per sidecar kind in use."""
        return sorted({f"sidecar.{key}" for seg in self.segments for key in seg.indexes})

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as stored in ``manifest-NNNNNN.json`` (before its checksum)."""
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "features": self.features(),
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
    def from_dict(cls, d: Mapping[str, Any], where: str, checksum: bool | None = None) -> "Manifest":
        """Parse a manifest, checking its checksum, version and features first.

        Parameters
        ----------
        d : mapping
            The parsed JSON.
        where : str
            Names the file in messages.
        checksum : bool or None
            :func:`~tidepool_cli.storage.sealed.check` of the raw bytes; None when the
            caller has no bytes (then no checksum is required).

        Raises
        ------
        UnsupportedFormatError
            Newer manifest version, or a reader feature this tidepool does not know.
        CorruptIndexError
            Checksum mismatch, missing or malformed fields, a path leaving the index.
        """
        if checksum is False:
            raise CorruptIndexError(f"{where}: checksum mismatch (the manifest is damaged)")
        if not isinstance(d, Mapping) or d.get("format") != MANIFEST_FORMAT:
            raise CorruptIndexError(f"{where}: not a tidepool manifest")
        version = d.get("format_version")
        if type(version) is not int or version < 1:
            raise CorruptIndexError(f"{where}: invalid manifest format_version {version!r} (the manifest is damaged)")
        if version > MANIFEST_VERSION:
            raise UnsupportedFormatError(f"{where}: manifest version {version} is newer than this tidepool reads; upgrade tidepool")
        features = d.get("features", [])
        if not isinstance(features, list):
            raise CorruptIndexError(f"{where}: malformed manifest (features)")
        unknown = sorted(str(f) for f in features if f not in known_features())
        if unknown:
            raise UnsupportedFormatError(f"{where}: needs reader feature {unknown[0]!r}, unknown to this tidepool; upgrade tidepool")
        try:
            return cls(
                generation=int(d["generation"]),
                wal_applied_through=int(d["wal_applied_through"]),
                next_segment=int(d["next_segment"]),
                max_int_id=None if d["max_int_id"] is None else int(d["max_int_id"]),
                schema=dict(d["schema"]),
                segments=tuple(SegmentEntry.from_dict(s) for s in d["segments"]),
                obsolete=tuple((check_rel(o["path"], where), float(o["since_unix"])) for o in d["obsolete"]),
                created_unix=float(d["created_unix"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptIndexError(f"{where}: malformed manifest ({exc!r})") from None


def read_current(layout: Layout) -> Manifest:
    """The manifest CURRENT names; generation 0 if the index was never compacted.

    Retries when a garbage collector removed the named manifest between the two reads
    (possible only for a reader stalled longer than the grace period). A missing or
    damaged CURRENT next to existing manifests is recovered: the newest manifest whose
    checksum holds and whose files are all present with their recorded sizes is used,
    with an :class:`~tidepool_cli.errors.IndexRecoveryWarning`.

    Raises
    ------
    CorruptIndexError
        The named manifest is damaged, or CURRENT is damaged and no manifest is intact.
    UnsupportedFormatError
        A newer manifest version or an unknown reader feature.
    """
    problem = ""
    for attempt in range(READ_ATTEMPTS):
        raw = read_small(layout.root, layout.current_path, "CURRENT")
        if raw is None:
            # The first publish writes manifest-000001.json before CURRENT: give a
            # publisher that is between the two a moment before calling it damage.
            problem = "CURRENT is missing"
            if attempt + 1 < READ_ATTEMPTS and _has_manifests(layout):
                time.sleep(FIRST_PUBLISH_WAIT_S)
                continue
            break
        m = _CURRENT.match(raw)
        if m is None or (m.group(3) is not None and zlib.crc32(m.group(1)) != int(m.group(3), 16)):
            problem = "CURRENT is damaged"
            break
        manifest = _load(layout, m.group(1).decode())
        if manifest is not None:
            return manifest
        problem = f"CURRENT names {m.group(1).decode()}, which does not exist"
    return _recover(layout, problem)


def _has_manifests(layout: Layout) -> bool:
    """Whether any ``manifest-NNNNNN.json`` exists in the index directory."""
    try:
        return any(_MANIFEST_NAME.match(n) for n in os.listdir(layout.root))
    except FileNotFoundError:
        return False


def _load(layout: Layout, name: str) -> Manifest | None:
    """Parse and check one manifest file; None if it does not exist."""
    raw = read_small(layout.root, layout.root / name, name, MANIFEST_LIMIT)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise CorruptIndexError(f"{name}: not valid JSON") from None
    ok = sealed.check(raw)
    if ok is None and isinstance(data, dict) and data.get("format_version") != 1:
        raise CorruptIndexError(f"{name}: checksum missing (the manifest is damaged)")
    return Manifest.from_dict(data, name, ok)


def _recover(layout: Layout, problem: str) -> Manifest:
    """The newest intact manifest when CURRENT cannot be trusted (see :func:`read_current`)."""
    try:
        names = [n for n in os.listdir(layout.root) if _MANIFEST_NAME.match(n)]
    except FileNotFoundError:
        names = []
    if not names:
        if problem == "CURRENT is missing":
            return Manifest()
        raise CorruptIndexError(f"{layout.current_path}: {problem.removeprefix('CURRENT ')} and no manifest is left to recover from")
    for name in sorted(names, key=lambda n: int(_MANIFEST_NAME.match(n).group(1)), reverse=True):
        try:
            manifest = _load(layout, name)
        except CorruptIndexError:
            continue
        if manifest is not None and _files_present(layout, manifest):
            warnings.warn(IndexRecoveryWarning(f"{layout.root}: {problem}; using {name}, the newest intact manifest"), stacklevel=2)
            return manifest
    raise CorruptIndexError(f"{layout.current_path}: {problem.removeprefix('CURRENT ')} and no manifest passes its checksum")


def _files_present(layout: Layout, manifest: Manifest) -> bool:
    """True if every file ``manifest`` references exists with its recorded size."""
    for seg in manifest.segments:
        for ref in seg.files():
            try:
                if os.stat(layout.path(ref.path)).st_size != ref.bytes:
                    return False
            except (OSError, CorruptIndexError):
                return False
    return True


def write_manifest(layout: Layout, manifest: Manifest) -> None:
    """Publish ``manifest``: write its file, then swap CURRENT. Call under the writer lock."""
    path = layout.manifest_path(manifest.generation)
    write_file(path, sealed.seal(manifest.to_dict(), indent=1))
    name = path.name.encode()
    try:
        write_file(layout.current_path, name + f" crc32:{zlib.crc32(name):08x}\n".encode())
    except BaseException:
        discard(path)  # never leave a newer manifest that recovery could pick
        raise
