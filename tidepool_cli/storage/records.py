"""How rows are laid out as container sections: shared by WAL records and segments.

Section names (docs/FORMAT.md):

================================  ============  =========================================
name                              dtype         content
================================  ============  =========================================
``vectors``                       <f4 (n, d)    vectors (bulk section)
``ids``                           <i8 (n,)      integer external ids
``ids.offsets`` / ``ids.bytes``   <u8 / u1      string external ids, UTF-8, offsets n + 1
``attr.J.values``                 ?/<i8/<f8     values of the J-th attribute (bool/int/float)
``attr.J.valid``                  |b1 (n,)      False where the value is missing
``attr.J.codes``                  <i4 (n,)      string attribute codes, -1 missing
``attr.J.dict.offsets`` / ``.bytes``            its sorted dictionary, UTF-8
================================  ============  =========================================

Attribute J is the J-th name in the metadata's ``"columns"`` list; its kind is in
``"schema"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tidepool_cli.engine.columns import Column
from tidepool_cli.storage.container import Container


@dataclass(frozen=True)
class Batch:
    """The rows of one write: an upsert batch or a delete batch.

    Attributes
    ----------
    op : {"upsert", "delete"}
    n : int
        Rows.
    ids : (n,) int64 or str array, or None
        External ids; None for an upsert with automatic integer ids.
    vectors : (n, d) float32 or None
        Vectors of an upsert (already validated, unit rows for cosine).
    columns : mapping of str to Column
        Attributes of an upsert.
    """

    op: str
    n: int
    ids: np.ndarray | None
    vectors: np.ndarray | None = None
    columns: Mapping[str, Column] = field(default_factory=dict)

    def schema(self) -> dict[str, str]:
        """Attribute name to kind."""
        return {name: col.kind for name, col in self.columns.items()}


def encode_strings(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 encode a string array as (offsets uint64 (n + 1,), bytes uint8)."""
    values = np.asarray(values, dtype=str)
    n = values.shape[0]
    if n == 0:
        return np.zeros(1, np.uint64), np.zeros(0, np.uint8)
    raw = np.char.encode(values, "utf-8")
    width = raw.dtype.itemsize
    lengths = np.char.str_len(raw).astype(np.uint64)
    offsets = np.zeros(n + 1, np.uint64)
    np.cumsum(lengths, out=offsets[1:])
    if width == 0:
        return offsets, np.zeros(0, np.uint8)
    mat = raw.view(np.uint8).reshape(n, width)
    data = mat[np.arange(width)[None, :] < lengths[:, None].astype(np.int64)]
    return offsets, np.ascontiguousarray(data)


def decode_strings(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_strings`: a numpy ``U`` array."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = offsets.shape[0] - 1
    lengths = np.diff(offsets)
    width = int(lengths.max(initial=0))
    if n <= 0 or width == 0:
        return np.full(max(n, 0), "", dtype="U1")
    mat = np.zeros((n, width), np.uint8)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)
    mat[rows, cols] = np.asarray(data)[: offsets[-1]]
    return np.char.decode(mat.view(f"S{width}").reshape(n), "utf-8")


def id_sections(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Sections holding external ids (integers or strings)."""
    if ids.dtype.kind in "iu":
        return {"ids": np.asarray(ids, np.int64)}
    offsets, data = encode_strings(ids)
    return {"ids.offsets": offsets, "ids.bytes": data}


def read_ids(c: Container) -> np.ndarray:
    """External ids of a container: int64 view, or a decoded string array."""
    if "ids" in c:
        return c.array("ids")
    return decode_strings(c.array("ids.offsets"), c.array("ids.bytes"))


def column_sections(j: int, col: Column) -> dict[str, np.ndarray]:
    """Sections of the j-th attribute column."""
    p = f"attr.{j}."
    if col.kind == "string":
        offsets, data = encode_strings(col.dictionary)
        return {p + "codes": np.asarray(col.values, np.int32), p + "dict.offsets": offsets, p + "dict.bytes": data}
    return {p + "values": np.asarray(col.values), p + "valid": col.present()}


def read_column(c: Container, j: int, kind: str) -> Column:
    """The j-th attribute column of a container, of the given kind."""
    p = f"attr.{j}."
    if kind == "string":
        return Column("string", c.array(p + "codes"), None, decode_strings(c.array(p + "dict.offsets"), c.array(p + "dict.bytes")))
    valid = c.array(p + "valid")
    return Column(kind, c.array(p + "values"), valid)


def batch_sections(batch: Batch) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata and sections of a WAL record holding ``batch``."""
    names = sorted(batch.columns)
    meta: dict[str, Any] = {
        "op": batch.op,
        "rows": batch.n,
        "auto_ids": batch.ids is None,
        "schema": {name: batch.columns[name].kind for name in names},
        "columns": names,
    }
    sections: dict[str, np.ndarray] = {}
    if batch.vectors is not None:
        sections["vectors"] = batch.vectors
    if batch.ids is not None:
        sections.update(id_sections(batch.ids))
        if batch.ids.dtype.kind in "iu" and batch.n:
            meta["max_id"] = int(batch.ids.max())
    for j, name in enumerate(names):
        sections.update(column_sections(j, batch.columns[name]))
    return meta, sections


def read_columns(c: Container) -> dict[str, Column]:
    """Every attribute column of a container, by name."""
    schema = c.meta.get("schema", {})
    return {name: read_column(c, j, schema[name]) for j, name in enumerate(c.meta.get("columns", []))}
