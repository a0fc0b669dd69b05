"""Writers of ``tidepool export``: JSONL, .npy (+ ids and attributes files) and Parquet.

Each writer takes :class:`~tidepool_cli.ops.select.RowBlock` objects one after another
and keeps nothing of them, so an export runs in constant memory. Vectors are written so
that they read back as the same float32 bits: raw little-endian float32 in ``.npy`` and
Parquet, and in JSON the shortest decimal text that rounds to the same float32 (what
``numpy`` and Arrow print for a float32), e.g. ``0.1`` rather than ``0.10000000149011612``.

JSON lines are assembled by Arrow compute kernels when pyarrow is installed (the float
formatting is the costly part), otherwise by :mod:`json` (longer float text, same values).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

from tidepool_cli.engine.threads import workers
from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.select import RowBlock, row_attributes
from tidepool_cli.storage.atomic import publish_file, storage_error, tmp_path
from tidepool_cli.storage.layout import IndexSettings

FORMATS = ("jsonl", "npy", "parquet")
_TEXT_VALUES = 1 << 18
"""float32 values formatted as text per Arrow call (bounds the temporary strings to a few MB)."""


def _pyarrow():
    """pyarrow and pyarrow.compute, or (None, None) when it is not installed."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
    except ImportError:
        return None, None
    return pa, pc


class _Outputs:
    """Destination files written under temporary names and renamed into place on success."""

    def __init__(self, finals: list[Path]):
        self.finals = finals
        self.tmps = [tmp_path(f) for f in finals]
        self.files: list[BinaryIO] = []
        try:
            for t in self.tmps:
                self.files.append(open(t, "wb"))
        except OSError as exc:
            self.abort()
            raise storage_error(exc, finals[len(self.files)]) from exc

    def publish(self) -> list[str]:
        try:
            for f in self.files:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            for t, final in zip(self.tmps, self.finals):
                publish_file(t, final)
        except OSError as exc:
            self.abort()
            raise storage_error(exc, self.finals[0]) from exc
        return [str(f) for f in self.finals]

    def abort(self) -> None:
        for f in self.files:
            f.close()
        for t in self.tmps:
            t.unlink(missing_ok=True)


def open_writer(fmt: str, output: str | Path | BinaryIO, settings: IndexSettings, schema: dict[str, str], total: int, id_width: int):
    """A writer for ``fmt`` with ``write(block)``, ``close() -> files`` and ``abort()``.

    Parameters
    ----------
    fmt : {"jsonl", "npy", "parquet"}
    output : str, Path or binary stream
    settings : IndexSettings
        Dimension and id type of the index.
    schema : dict of str to str
        Attribute kinds.
    total : int
        Rows that will be written (the .npy headers need it first).
    id_width : int
        Longest string id in characters (the .npy ids file's dtype).

    Raises
    ------
    InvalidInputError
        ``npy`` to a stream; ``parquet`` without pyarrow, or with an attribute named
        ``id`` or ``vector``.
    StorageIOError
        A destination file cannot be created.
    """
    stream = not isinstance(output, (str, Path))
    if fmt == "npy":
        if stream:
            raise InvalidInputError("npy export writes three files (vectors, ids, attributes); give --output PATH.npy, not -")
        return NpyWriter(Path(output), settings, schema, total, id_width)
    if fmt == "parquet":
        return ParquetWriter(output, settings, schema)
    return JsonlWriter(output, schema)


class JsonlWriter:
    """``{"id": ..., "vector": [...], "attributes": {...}}`` per line, the JSONL that ``ingest`` reads."""

    def __init__(self, output: str | Path | BinaryIO, schema: dict[str, str]):
        self.outputs = _Outputs([Path(output)]) if isinstance(output, (str, Path)) else None
        self.out: BinaryIO = self.outputs.files[0] if self.outputs else output
        self.schema = schema
        self.pa, self.pc = _pyarrow()
        self.pool = ThreadPoolExecutor(workers()) if self.pa is not None else None

    def write(self, block: RowBlock) -> None:
        if self.pa is None:
            attrs = row_attributes(block.columns, block.rows)
            text = "".join(
                json.dumps({"id": i, "vector": v, "attributes": a}, ensure_ascii=False) + "\n"
                for i, v, a in zip(block.ids.tolist(), block.vectors.tolist(), attrs)
            )
            self.out.write(text.encode())
            return
        # Formatting floats is the costly part; slices of the block are formatted on
        # worker threads side by side (Arrow's kernels release the GIL), written in order.
        step = max(1, _TEXT_VALUES // max(1, block.vectors.shape[1]))
        parts = [block.slice(s, s + step) for s in range(0, block.rows, step)]
        for lines in self.pool.map(self._lines, parts):
            _write_strings(self.out, lines)

    def _lines(self, block: RowBlock):
        pa, pc = self.pa, self.pc
        n, d = block.vectors.shape
        values = pc.cast(pa.array(block.vectors.reshape(-1)), pa.string())
        if np.signbit(block.vectors[block.vectors == 0]).any():  # Arrow prints -0.0 as -0, which JSON reads as the integer 0
            values = pc.if_else(pc.equal(values, "-0"), "-0.0", values)
        offsets = pa.array(np.arange(0, n * d + 1, d, dtype=np.int32))
        vectors = pc.binary_join(pa.ListArray.from_arrays(offsets, values), ", ")
        if block.ids.dtype.kind in "iu":
            ids = pc.cast(pa.array(block.ids), pa.string())
        else:
            ids = pa.array([json.dumps(i, ensure_ascii=False) for i in block.ids.tolist()], pa.string())
        return pc.binary_join_element_wise('{"id": ', ids, ', "vector": [', vectors, '], "attributes": {',
                                           attribute_text(pa, pc, block, self.schema), "}}\n", "")

    def close(self) -> list[str]:
        self._stop()
        if self.outputs:
            return self.outputs.publish()
        self.out.flush()
        return []

    def abort(self) -> None:
        self._stop()
        if self.outputs:
            self.outputs.abort()

    def _stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def attribute_text(pa, pc, block: RowBlock, schema: dict[str, str]):
    """Per row, the inside of its JSON attributes object (``"a": 1, "b": "x"``), as an Arrow string array."""
    n = block.rows
    parts = []
    for name in sorted(block.columns):
        col = block.columns[name]
        key = ", " + json.dumps(name, ensure_ascii=False) + ": "
        present = col.present()
        if col.kind == "string":
            words = pa.array([key + json.dumps(w, ensure_ascii=False) for w in col.dictionary.tolist()], pa.string())
            text = words.take(pa.array(np.asarray(col.values, np.int64), mask=~present))
        else:
            values = pa.array(np.asarray(col.values), mask=~present)
            text = pc.cast(values, pa.string())
            if col.kind == "float":  # keep the kind: 3.0 must not read back as the integer 3
                plain = pc.invert(pc.match_substring_regex(text, "[.eE]"))
                text = pc.if_else(plain, pc.binary_join_element_wise(text, ".0", ""), text)
            text = pc.binary_join_element_wise(key, text, "")
        parts.append(pc.fill_null(text, ""))  # a missing value: no member at all
    if not parts:
        return pa.array([""] * n, pa.string())
    # Every member starts with ", "; drop the first one's.
    return pc.utf8_slice_codeunits(pc.binary_join_element_wise(*parts, ""), 2)


def _write_strings(out: BinaryIO, strings) -> None:
    """Write the bytes of an Arrow string array back to back."""
    if len(strings) == 0:
        return
    _, offsets, data = strings.buffers()
    off = np.frombuffer(offsets, np.int32)
    lo, hi = int(off[strings.offset]), int(off[strings.offset + len(strings)])
    out.write(memoryview(data)[lo:hi])


class NpyWriter:
    """``PATH.npy`` (n, d) float32, ``STEM.ids.npy`` and ``STEM.attributes.jsonl`` beside it."""

    def __init__(self, path: Path, settings: IndexSettings, schema: dict[str, str], total: int, id_width: int):
        stem = path.with_suffix("") if path.suffix == ".npy" else path
        path = stem.with_name(stem.name + ".npy")
        finals = [path, stem.with_name(stem.name + ".ids.npy")]
        if schema:
            finals.append(stem.with_name(stem.name + ".attributes.jsonl"))
        self.id_dtype = np.dtype("<i8") if settings.id_type == "int" else np.dtype(f"<U{id_width}")
        self.outputs = _Outputs(finals)
        self.schema = schema
        self.pa, self.pc = _pyarrow()
        f = self.outputs.files
        np.lib.format.write_array_header_2_0(f[0], {"descr": "<f4", "fortran_order": False, "shape": (total, settings.dim)})
        np.lib.format.write_array_header_2_0(f[1], {"descr": self.id_dtype.str, "fortran_order": False, "shape": (total,)})

    def write(self, block: RowBlock) -> None:
        f = self.outputs.files
        f[0].write(memoryview(np.ascontiguousarray(block.vectors, "<f4")).cast("B"))
        f[1].write(memoryview(np.ascontiguousarray(block.ids, self.id_dtype)).cast("B"))
        if not self.schema:
            return
        if self.pa is None:
            f[2].write("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in row_attributes(block.columns, block.rows)).encode())
        else:
            text = attribute_text(self.pa, self.pc, block, self.schema)
            _write_strings(f[2], self.pc.binary_join_element_wise("{", text, "}\n", ""))

    def close(self) -> list[str]:
        return self.outputs.publish()

    def abort(self) -> None:
        self.outputs.abort()


class ParquetWriter:
    """Columns ``id``, ``vector`` (fixed-size list of float32) and one per attribute; a row group per block."""

    _TYPES = {"bool": "bool_", "int": "int64", "float": "float64", "string": "string"}

    def __init__(self, output: str | Path | BinaryIO, settings: IndexSettings, schema: dict[str, str]):
        from tidepool_cli.ops.arrow_input import require_pyarrow

        pa = require_pyarrow("parquet export")
        import pyarrow.parquet as pq

        clash = sorted({"id", "vector"} & set(schema))
        if clash:
            raise InvalidInputError(f"attribute {clash[0]!r} has the name of a Parquet column of the export; use --format jsonl")
        self.pa, self.dim = pa, settings.dim
        fields = [pa.field("id", pa.int64() if settings.id_type == "int" else pa.string(), nullable=False),
                  pa.field("vector", pa.list_(pa.float32(), settings.dim), nullable=False)]
        fields += [pa.field(name, getattr(pa, self._TYPES[kind])()) for name, kind in sorted(schema.items())]
        meta = {"tidepool": json.dumps({"dim": settings.dim, "metric": settings.metric, "id_type": settings.id_type})}
        self.schema = pa.schema(fields, metadata=meta)
        self.outputs = _Outputs([Path(output)]) if isinstance(output, (str, Path)) else None
        # Dictionary pages pay off for repeated attribute values, not for float vectors or unique ids.
        dictionary = [name for name, kind in schema.items() if kind == "string"] or False
        self.writer = pq.ParquetWriter(self.outputs.files[0] if self.outputs else output, self.schema, use_dictionary=dictionary)

    def write(self, block: RowBlock) -> None:
        pa = self.pa
        arrays = [pa.array(block.ids, self.schema.field("id").type),
                  pa.FixedSizeListArray.from_arrays(pa.array(block.vectors.reshape(-1)), self.dim)]
        for f in list(self.schema)[2:]:
            col = block.columns.get(f.name)
            if col is None:
                arrays.append(pa.nulls(block.rows, f.type))
            elif col.kind == "string":
                words = pa.array(col.dictionary.tolist(), pa.string())
                arrays.append(words.take(pa.array(np.asarray(col.values, np.int64), mask=~col.present())))
            else:
                arrays.append(pa.array(np.asarray(col.values), f.type, mask=~col.present()))
        self.writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))

    def close(self) -> list[str]:
        self.writer.close()
        return self.outputs.publish() if self.outputs else []

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            if self.outputs:
                self.outputs.abort()
