"""Reader of Parquet and Arrow IPC inputs (``.parquet``, ``.arrow``, ``.feather``), streamed by record batch.

A table row is one vector. Columns:

- the vector column: a fixed-size list or a list of numbers, every row of the same
  length (``vector_column``; default: the only list column of the table);
- the id column (``id_column``; default ``id`` if the table has one, else rows get
  automatic ids): integers or non-empty strings, no nulls;
- every other column of a scalar type becomes an attribute: booleans, integers, floats
  and strings (also dictionary-encoded), dates and timestamps as ISO 8601 strings; a
  null is a missing value. Columns of other types (nested, binary, decimal) are skipped.

Parquet is read row group by row group (``pyarrow.parquet.ParquetFile.iter_batches``), the
Arrow IPC file format batch by batch, and the IPC stream format (also from standard
input) as it arrives, so memory stays bounded by one batch. pyarrow is an optional
dependency (``pip install 'tidepool-cli[parquet]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tidepool_cli.engine.columns import Column, string_column
from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.inputs import InputBatch, default_batch_rows

INSTALL_HINT = "pip install 'tidepool-cli[parquet]'"
_SCAN_ROWS = 65536
"""Rows per read when the batch size is not known yet (vector lengths not in the schema)."""


def require_pyarrow(what: str):
    """Import pyarrow, or fail with the command that installs it.

    Raises
    ------
    InvalidInputError
        pyarrow is not installed (exit 4).
    """
    try:
        import pyarrow
    except ImportError:
        raise InvalidInputError(f"{what} needs pyarrow, an optional dependency; install it with: {INSTALL_HINT}") from None
    return pyarrow


def sniff_arrow(head: bytes) -> str | None:
    """"parquet" or "arrow" when the first bytes are a Parquet or Arrow IPC magic, else None."""
    if head.startswith(b"PAR1"):
        return "parquet"
    if head.startswith(b"ARROW1") or head.startswith(b"\xff\xff\xff\xff"):
        return "arrow"
    return None


def read_arrow(
    fmt: str,
    path: Path | None,
    stream: BinaryIO | None,
    batch_rows: int | None,
    where: str,
    *,
    vector_column: str | None = None,
    id_column: str | None = None,
) -> Iterator:
    """Batches of a Parquet or Arrow IPC input as :class:`~tidepool_cli.ops.inputs.InputBatch`.

    Parameters
    ----------
    fmt : {"parquet", "arrow"}
    path : Path or None
        The file, or None to read an Arrow IPC stream from ``stream``.
    stream : binary file or None
    batch_rows : int, optional
        Rows per batch (default: about 64 MiB of float32 vectors).
    where : str
        Name of the input in error messages.
    vector_column, id_column : str, optional
        Column names (see the module docstring for the defaults).

    Yields
    ------
    InputBatch
        ``vectors`` (n, d) in the column's value dtype, ``ids`` int64 or str or None,
        ``columns`` the attributes as :class:`~tidepool_cli.engine.columns.Column`,
        ``total`` the table's row count where the file says it.

    Raises
    ------
    InvalidInputError
        pyarrow missing, unreadable file, no or several list columns, unknown column,
        null or ragged vectors, null or mixed ids.
    """
    pa = require_pyarrow(f"{where}: reading {fmt}")
    try:
        schema, total, batches = _open(pa, fmt, path, stream, where)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInputError(f"{where}: not a readable {fmt} file ({exc})") from None
    vcol, icol = _pick_columns(pa, schema, vector_column, id_column, where)
    attrs = [f.name for f in schema if f.name not in (vcol, icol) and _attribute_kind(pa, f.type) is not None]
    vtype = schema.field(vcol).type
    step = batch_rows or (default_batch_rows(vtype.list_size) if pa.types.is_fixed_size_list(vtype) else None)
    columns = [name for name in schema.names if name in {vcol, icol, *attrs}]
    return _batches(pa, batches(columns, step or _SCAN_ROWS), step, total, vcol, icol, attrs, where)


def _open(pa, fmt: str, path: Path | None, stream: BinaryIO | None, where: str):
    """(schema, total rows or None, batches(columns, rows per batch) -> iterator of RecordBatch)."""
    if fmt == "parquet":
        if path is None:
            raise InvalidInputError(f"{where}: Parquet needs a seekable file, not a pipe; save it to a file first (or send an Arrow IPC stream)")
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering holds every column chunk read so far
        # Batches no larger than a row group: Arrow then never stitches row groups together.
        group = max([pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] + [1])
        return pf.schema_arrow, pf.metadata.num_rows, lambda cols, size: _prefetched(pf.iter_batches(batch_size=min(size, group), columns=cols))
    if path is not None:
        with path.open("rb") as f:
            is_file = f.read(6) == b"ARROW1"
        if is_file:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            return reader.schema, reader.count_rows(), lambda cols, size: (reader.get_batch(i).select(cols) for i in range(reader.num_record_batches))
        stream = pa.memory_map(str(path), "r")
    reader = pa.ipc.open_stream(stream)
    return reader.schema, None, lambda cols, size: (b.select(cols) for b in reader)


def _prefetched(batches: Iterator) -> Iterator:
    """The items of ``batches``, the next one decoded by a worker thread while the caller uses this one.

    Parquet decoding releases the GIL, so reading batch i + 1 overlaps with writing batch
    i to the WAL (checksums and file writes release it too). At most two batches are
    decoded ahead.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=1)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                q.put(item)
            q.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.01)


def _pick_columns(pa, schema, vector_column: str | None, id_column: str | None, where: str) -> tuple[str, str | None]:
    names = schema.names
    lists = [f.name for f in schema if _is_list(pa, f.type)]
    if vector_column is None:
        if len(lists) != 1:
            found = ", ".join(lists) if lists else "none"
            raise InvalidInputError(f"{where}: cannot tell the vector column (list columns: {found}); pass --vector-column NAME")
        vector_column = lists[0]
    elif vector_column not in names:
        raise InvalidInputError(f"{where}: no column {vector_column!r} (columns: {', '.join(names)})")
    elif vector_column not in lists:
        raise InvalidInputError(f"{where}: column {vector_column!r} has type {schema.field(vector_column).type}; the vector column must be a list of numbers")
    value_type = schema.field(vector_column).type.value_type
    if not (pa.types.is_floating(value_type) or pa.types.is_integer(value_type)):
        raise InvalidInputError(f"{where}: column {vector_column!r} holds {value_type} values; vectors must be numbers")
    if id_column is None:
        id_column = "id" if "id" in names else None
    elif id_column not in names:
        raise InvalidInputError(f"{where}: no column {id_column!r} (columns: {', '.join(names)})")
    if id_column is not None:
        t = _value_type(pa, schema.field(id_column).type)
        if not (pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise InvalidInputError(f"{where}: id column {id_column!r} has type {t}; ids must be integers or strings")
    return vector_column, id_column


def _is_list(pa, t) -> bool:
    return pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t)


def _value_type(pa, t):
    return t.value_type if pa.types.is_dictionary(t) else t


def _attribute_kind(pa, t) -> str | None:
    """Attribute kind a column of Arrow type ``t`` becomes, or None to skip it."""
    t = _value_type(pa, t)
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_temporal(t):
        return "string"
    return None


def _batches(pa, source, step, total, vcol, icol, attrs, where) -> Iterator:
    row, dim = 0, None
    try:
        for rb in _rebatch(pa, source, lambda: step):
            vectors = _vectors(pa, rb.column(vcol), row, where)
            if dim is None:
                dim = vectors.shape[1]
                if step is None:  # list<float>: the batch size follows from the first row's length
                    step = default_batch_rows(dim)
            elif vectors.shape[1] != dim:
                raise InvalidInputError(f"{where}: row {row} has a vector of length {vectors.shape[1]}, earlier rows {dim}")
            ids = _ids(pa, rb.column(icol), row, where) if icol else None
            columns = {}
            for name in attrs:
                col = _column(pa, rb.column(name), name, where)
                if col is not None:
                    columns[name] = col
            yield InputBatch(vectors, ids, None, row, 0, columns, total)
            row += rb.num_rows
    except pa.ArrowException as exc:
        raise InvalidInputError(f"{where}: cannot read the rows after row {row} ({exc})") from None


def _rebatch(pa, batches, step) -> Iterator:
    """Record batches of at most ``step()`` rows from batches of any size.

    A batch of at least half that size is passed on as it is (sliced if larger): no copy.
    Smaller ones (an IPC stream written a few rows at a time) are merged, so that a WAL
    record is not a handful of rows.
    """
    buf: list = []
    have = 0

    def merged():
        return buf[0] if len(buf) == 1 else pa.Table.from_batches(buf).combine_chunks().to_batches()[0]

    for rb in batches:
        if rb.num_rows == 0:
            continue
        size = step() or rb.num_rows
        if rb.num_rows >= size // 2:
            if buf:
                yield merged()
                buf, have = [], 0
            for s in range(0, rb.num_rows, size):
                yield rb.slice(s, size)
            continue
        buf.append(rb)
        have += rb.num_rows
        if have >= size:
            m = merged()
            yield m.slice(0, size)
            buf, have = ([m.slice(size)], have - size) if have > size else ([], 0)
    if buf:
        yield merged()


def _vectors(pa, arr, first_row: int, where: str) -> np.ndarray:
    """(n, d) array of the list column ``arr`` (zero-copy for fixed-size lists without nulls)."""
    import pyarrow.compute as pc

    n = len(arr)
    if arr.null_count:
        bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise InvalidInputError(f"{where}: row {first_row + bad} has no vector (null)")
    if pa.types.is_fixed_size_list(arr.type):
        d = arr.type.list_size
    else:
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        d = int(lengths[0]) if n else 0
        bad = np.flatnonzero(lengths != d)
        if bad.size:
            raise InvalidInputError(f"{where}: row {first_row + int(bad[0])} has a vector of length {int(lengths[bad[0]])}, row {first_row} of length {d}")
    if d == 0:
        raise InvalidInputError(f"{where}: row {first_row}: vectors must not be empty")
    values = arr.flatten()
    if values.null_count:
        bad = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) // d
        raise InvalidInputError(f"{where}: row {first_row + bad}: a vector holds a null value")
    return values.to_numpy(zero_copy_only=False).reshape(n, d)


def _ids(pa, arr, first_row: int, where: str) -> np.ndarray:
    import pyarrow.compute as pc

    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        bad = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise InvalidInputError(f"{where}: row {first_row + bad} has a null id")
    if pa.types.is_integer(arr.type):
        if pa.types.is_uint64(arr.type) and len(arr) and int(_max(arr)) > np.iinfo(np.int64).max:
            raise InvalidInputError(f"{where}: an id is outside the 64-bit signed integer range")
        return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if len(arr) and (pc.min(pc.utf8_length(arr)).as_py() == 0 or _has_nul(pa, arr)):
        raise InvalidInputError(f"{where}: rows {first_row}-{first_row + len(arr) - 1}: string ids must be non-empty and without NUL")
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=str)


def _max(arr) -> Any:
    import pyarrow.compute as pc

    return pc.max(arr).as_py()


def _has_nul(pa, arr) -> bool:
    import pyarrow.compute as pc

    return bool(pc.any(pc.match_substring(arr, "\0")).as_py())


def _column(pa, arr, name: str, where: str) -> Column | None:
    """The attribute column of Arrow array ``arr`` (None when every value is null)."""
    import pyarrow.compute as pc

    kind = _attribute_kind(pa, arr.type)
    if arr.null_count == len(arr):
        return None
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    if kind == "string":
        if pa.types.is_temporal(arr.type):
            arr = pc.cast(arr, pa.string())
        encoded = pc.dictionary_encode(arr)
        if _has_nul(pa, encoded.dictionary):
            raise InvalidInputError(f"{where}: attribute {name!r}: strings may not contain NUL characters")
        ranked = string_column(np.asarray(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=str))  # sorted dictionary; ranked.values[i] is the rank of words[i]
        codes = encoded.indices.fill_null(0).to_numpy(zero_copy_only=False)
        return Column("string", np.where(valid, ranked.values[codes], -1).astype(np.int32), None, ranked.dictionary)
    dtype = {"bool": bool, "int": np.int64, "float": np.float64}[kind]
    if kind == "int" and pa.types.is_uint64(arr.type) and int(_max(arr)) > np.iinfo(np.int64).max:
        raise InvalidInputError(f"{where}: attribute {name!r}: integer outside the 64-bit range")
    filled = arr.fill_null(False if kind == "bool" else 0)
    values = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=dtype)
    if kind == "float" and not np.isfinite(values[valid]).all():
        raise InvalidInputError(f"{where}: attribute {name!r}: NaN or Inf is not a valid attribute value")
    return Column(kind, values, None if valid.all() else valid)
