"""Sidecar index files of a segment: HNSW graphs (``.hnsw``) and IVF indexes (``.ivf``).

Both are containers (see :mod:`~tidepool_cli.storage.container`) whose sections are the
arrays of the engine's index dataclasses, so a reader memory-maps them and searches
without copying. A sidecar belongs to one immutable segment file: its metadata names the
segment and its row count, and the manifest lists it under the segment's ``indexes``.

HNSW (kind ``HNSW``): metadata ``{"segment", "rows", "m", "ef_construction", "metric",
"entry_point", "max_level"}``; sections ``levels`` (``|u1`` n), ``layer0`` (``<i4`` n × 2M),
and per level l = 1..L ``upper.l.nodes`` (``<i4`` n_l) and ``upper.l.neighbors``
(``<i4`` n_l × M). All sections are checked on every open.

IVF (kind ``IVFL``): metadata ``{"segment", "rows", "metric", "codec", "nlist"}``;
sections ``centroids`` (``<f4`` nlist × d), ``list_sizes`` (``<u4``), ``offsets`` (``<u8``
nlist + 1), ``crcs`` (``<u4``, CRC-32 of each posting list's payload) and ``blob``
(``|u1``, the concatenated posting-list payloads of the ID codec, docs/IDCODEC.md). The
blob is bulk: each probed list is checked against its own CRC when decoded.

Sidecar kinds come from one registry, :data:`SIDECARS`: each :class:`SidecarKind` names
its manifest key, file suffix, four-character container code, layout version, reader and
writer. ``stats``, the builds, garbage collection, verification and the planner all read
it, so adding a kind (a quantizer's codes, a Vamana graph, a tier store) is one
:func:`register` call next to its reader and writer (in this module, or in a module this
one imports, so that every reader of a manifest knows it). Each registered kind is also
a manifest reader feature ``sidecar.<key>``: a tidepool that does not know a kind
refuses an index that uses it (exit 8) instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tidepool_cli.errors import CorruptIndexError, UnsupportedFormatError
from tidepool_cli.storage.container import Container, write_container
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import FileRef, SegmentEntry, register_feature
from tidepool_cli.storage.segment import open_ref

if TYPE_CHECKING:  # the engine modules are imported only when a sidecar is read
    from tidepool_cli.engine.hnsw import HnswGraph
    from tidepool_cli.engine.ivf import IvfIndex


@dataclass(frozen=True)
class SidecarKind:
    """How one kind of sidecar is stored.

    Attributes
    ----------
    key : str
        Name under the segment's ``indexes`` in the manifest ("hnsw", "ivf"); also the
        manifest feature ``sidecar.<key>``.
    suffix : str
        File name suffix.
    code : bytes
        Four-character container kind.
    version : int
        Newest layout version written and read.
    reader : callable(Container) -> object
        Builds the engine object from an opened, checked container.
    writer : callable(Layout, SegmentEntry, object, dict) -> FileRef
        Writes the engine object as a new sidecar file of the segment.
    bulk : tuple of str
        Sections verified on demand (``stats --verify``, builds), not on every open.
    """

    key: str
    suffix: str
    code: bytes
    version: int
    reader: Callable[[Container], Any]
    writer: Callable[..., FileRef]
    bulk: tuple[str, ...] = ()

    @property
    def kind(self) -> bytes:
        """The container kind (alias of :attr:`code`)."""
        return self.code


SIDECARS: dict[str, SidecarKind] = {}
"""Every registered sidecar kind, by manifest key, in registration order."""


def register(kind: SidecarKind) -> SidecarKind:
    """Add a sidecar kind to the registry and declare its manifest feature.

    Raises
    ------
    ValueError
        The key, suffix or code is already taken (a programming error).
    """
    for other in SIDECARS.values():
        if kind.key == other.key or kind.suffix == other.suffix or kind.code == other.code:
            raise ValueError(f"sidecar kind {kind.key!r} clashes with {other.key!r}")
    if len(kind.code) != 4:
        raise ValueError(f"sidecar code {kind.code!r} is not four bytes")
    SIDECARS[kind.key] = kind
    register_feature(f"sidecar.{kind.key}")
    return kind


def kind_of_suffix(suffix: str) -> SidecarKind | None:
    """The registered kind whose files end in ``.<suffix>``, if any."""
    return next((k for k in SIDECARS.values() if k.suffix == suffix), None)


def write_hnsw(layout: Layout, entry: SegmentEntry, graph: "HnswGraph", params: dict[str, Any]) -> FileRef:
    """Write ``graph`` as the HNSW sidecar of ``entry``; ``params`` go to the manifest."""
    meta = {
        "segment": entry.name,
        "rows": entry.rows,
        "m": graph.m,
        "ef_construction": graph.ef_construction,
        "metric": graph.metric,
        "entry_point": int(graph.entry_point),
        "max_level": graph.max_level,
    }
    sections: dict[str, np.ndarray] = {"levels": graph.levels, "layer0": graph.layer0}
    for lvl, (nodes, nb) in enumerate(zip(graph.upper_nodes, graph.upper_neighbors), start=1):
        sections[f"upper.{lvl}.nodes"] = nodes
        sections[f"upper.{lvl}.neighbors"] = nb
    return _write(layout, entry, SIDECARS["hnsw"], meta, sections, params)


def read_hnsw(c: Container) -> "HnswGraph":
    """The graph stored in an opened HNSW sidecar (arrays are memory-mapped views)."""
    from tidepool_cli.engine.hnsw import HnswGraph

    m = c.meta
    levels = range(1, int(m["max_level"]) + 1)
    return HnswGraph(
        m=int(m["m"]),
        ef_construction=int(m["ef_construction"]),
        metric=m["metric"],
        entry_point=int(m["entry_point"]),
        levels=c.array("levels"),
        layer0=c.array("layer0"),
        upper_nodes=tuple(c.array(f"upper.{lvl}.nodes") for lvl in levels),
        upper_neighbors=tuple(c.array(f"upper.{lvl}.neighbors") for lvl in levels),
    )


def write_ivf(layout: Layout, entry: SegmentEntry, index: "IvfIndex", params: dict[str, Any]) -> FileRef:
    """Write ``index`` as the IVF sidecar of ``entry``; ``params`` go to the manifest."""
    meta = {"segment": entry.name, "rows": entry.rows, "metric": index.metric, "codec": index.codec, "nlist": int(index.centroids.shape[0])}
    sections = {
        "centroids": index.centroids,
        "list_sizes": np.asarray(index.list_sizes, np.uint32),
        "offsets": np.asarray(index.offsets, np.uint64),
        "crcs": np.asarray(index.crcs, np.uint32),
        "blob": np.asarray(index.blob, np.uint8),
    }
    return _write(layout, entry, SIDECARS["ivf"], meta, sections, params)


def read_ivf(c: Container) -> "IvfIndex":
    """The IVF index stored in an opened IVF sidecar (arrays are memory-mapped views)."""
    from tidepool_cli.engine.ivf import IvfIndex

    return IvfIndex(
        metric=c.meta["metric"],
        centroids=c.array("centroids"),
        list_sizes=c.array("list_sizes"),
        codec=c.meta["codec"],
        blob=c.array("blob"),
        offsets=c.array("offsets"),
        crcs=c.array("crcs"),
        universe=int(c.meta["rows"]),
    )


HNSW = register(SidecarKind("hnsw", "hnsw", b"HNSW", 1, read_hnsw, write_hnsw))
IVF = register(SidecarKind("ivf", "ivf", b"IVFL", 1, read_ivf, write_ivf, bulk=("blob",)))


def open_sidecar(layout: Layout, entry: SegmentEntry, key: str, verify: str = "small") -> Any:
    """Open, check and load the sidecar ``key`` of ``entry``.

    Parameters
    ----------
    verify : {"header", "small", "all"}
        Checksums checked (see :class:`~tidepool_cli.storage.container.Container`).

    Raises
    ------
    CorruptIndexError
        The file is missing, damaged, or belongs to a different segment.
    UnsupportedFormatError
        Written by a newer tidepool, or a kind this tidepool does not know.
    """
    kind = SIDECARS.get(key)
    if kind is None:
        raise UnsupportedFormatError(f"segment {entry.name}: sidecar kind {key!r} is unknown to this tidepool; upgrade tidepool")
    c = check_sidecar(layout, entry, key, verify)
    return kind.reader(c)


def check_sidecar(layout: Layout, entry: SegmentEntry, key: str, verify: str = "all") -> Container:
    """Open the sidecar ``key`` of ``entry`` and check it belongs to that segment.

    Raises
    ------
    CorruptIndexError, UnsupportedFormatError
        As :func:`open_sidecar`.
    """
    kind = SIDECARS[key]
    ref = entry.indexes[key]
    c = open_ref(layout, ref, kind.code, kind.version, verify=verify)
    if c.meta.get("segment") != entry.name or c.meta.get("rows") != entry.rows:
        raise CorruptIndexError(f"{ref.path}: belongs to segment {c.meta.get('segment')!r}, not {entry.name!r}")
    return c


def _write(layout, entry, kind: SidecarKind, meta, sections, params) -> FileRef:
    path = layout.new_segment_file(entry.name, kind.suffix)
    nbytes, crc = write_container(path, kind.code, kind.version, meta, sections, bulk=kind.bulk)
    return FileRef(layout.rel(path), nbytes, crc, params)
