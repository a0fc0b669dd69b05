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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tidepool_cli.engine.hnsw import HnswGraph
from tidepool_cli.engine.ivf import IvfIndex
from tidepool_cli.errors import CorruptIndexError
from tidepool_cli.storage.container import Container, write_container
from tidepool_cli.storage.layout import Layout
from tidepool_cli.storage.manifest import FileRef, SegmentEntry
from tidepool_cli.storage.segment import open_ref


@dataclass(frozen=True)
class SidecarKind:
    """How one kind of sidecar is stored.

    Attributes
    ----------
    key : str
        Name under the segment's ``indexes`` in the manifest ("hnsw", "ivf").
    kind : bytes
        Container kind.
    version : int
        Newest layout version written and read.
    suffix : str
        File name suffix.
    """

    key: str
    kind: bytes
    version: int
    suffix: str


HNSW = SidecarKind("hnsw", b"HNSW", 1, "hnsw")
IVF = SidecarKind("ivf", b"IVFL", 1, "ivf")
SIDECARS = {s.key: s for s in (HNSW, IVF)}


def write_hnsw(layout: Layout, entry: SegmentEntry, graph: HnswGraph, params: dict[str, Any]) -> FileRef:
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
    return _write(layout, entry, HNSW, meta, sections, (), params)


def read_hnsw(c: Container) -> HnswGraph:
    """The graph stored in an opened HNSW sidecar (arrays are memory-mapped views)."""
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


def write_ivf(layout: Layout, entry: SegmentEntry, index: IvfIndex, params: dict[str, Any]) -> FileRef:
    """Write ``index`` as the IVF sidecar of ``entry``; ``params`` go to the manifest."""
    meta = {"segment": entry.name, "rows": entry.rows, "metric": index.metric, "codec": index.codec, "nlist": int(index.centroids.shape[0])}
    sections = {
        "centroids": index.centroids,
        "list_sizes": np.asarray(index.list_sizes, np.uint32),
        "offsets": np.asarray(index.offsets, np.uint64),
        "crcs": np.asarray(index.crcs, np.uint32),
        "blob": np.asarray(index.blob, np.uint8),
    }
    return _write(layout, entry, IVF, meta, sections, ("blob",), params)


def read_ivf(c: Container) -> IvfIndex:
    """The IVF index stored in an opened IVF sidecar (arrays are memory-mapped views)."""
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


READERS = {"hnsw": read_hnsw, "ivf": read_ivf}


def open_sidecar(layout: Layout, entry: SegmentEntry, key: str) -> HnswGraph | IvfIndex:
    """Open, check and load the sidecar ``key`` of ``entry``.

    Raises
    ------
    CorruptIndexError
        The file is missing, damaged, or belongs to a different segment.
    UnsupportedFormatError
        Written by a newer tidepool.
    """
    kind = SIDECARS[key]
    ref = entry.indexes[key]
    c = open_ref(layout, ref, kind.kind, kind.version, verify="small")
    if c.meta.get("segment") != entry.name or c.meta.get("rows") != entry.rows:
        raise CorruptIndexError(f"{ref.path}: belongs to segment {c.meta.get('segment')!r}, not {entry.name!r}")
    return READERS[key](c)


def _write(layout, entry, kind: SidecarKind, meta, sections, bulk, params) -> FileRef:
    path = layout.new_segment_file(entry.name, kind.suffix)
    nbytes, crc = write_container(path, kind.kind, kind.version, meta, sections, bulk=bulk)
    return FileRef(layout.rel(path), nbytes, crc, params)
