"""Readers of user vector files: ``.npy``, ``.fvecs``, ``.bvecs`` and JSONL, file or stdin.

Each reader yields :class:`InputBatch` objects of at most ``batch_rows`` rows, so an
input of any size streams through bounded memory. Files are memory-mapped where the
format allows it (``.npy``, ``.fvecs``, ``.bvecs``); standard input is read in chunks.

Formats
-------
npy    a 2-D array of any real dtype (bool, complex and object arrays are refused);
       values are converted to float32.
fvecs  per row: int32 dimension d, then d float32 (the TEXMEX format).
bvecs  per row: int32 dimension d, then d uint8.
jsonl  one JSON object per line, UTF-8: ``{"id": 7 | "doc-7", "vector": [...], "attributes": {...}}``;
       ``id`` and ``attributes`` are optional, but ``id`` is given on every line or on none.
parquet, arrow
       a table with a vector column, an optional id column and attribute columns; read by
       :mod:`~tidepool_cli.ops.arrow_input` (needs pyarrow).

Every reader enforces the limits of :mod:`tidepool_cli.limits` (rows an input holds or
claims, dimension, string lengths, JSON nesting, UTF-8 without lone surrogates) before
it yields a batch, so nothing is written for an input beyond them.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tidepool_cli.engine.columns import Column, check_string
from tidepool_cli.errors import InvalidInputError, StorageIOError
from tidepool_cli.limits import MAX_DIM, MAX_INPUT_ROWS, MAX_JSON_DEPTH

FORMATS = ("npy", "fvecs", "bvecs", "jsonl", "parquet", "arrow")
_EXTENSIONS = {".npy": "npy", ".fvecs": "fvecs", ".bvecs": "bvecs", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl",
               ".parquet": "parquet", ".arrow": "arrow", ".feather": "arrow", ".arrows": "arrow", ".ipc": "arrow"}
BATCH_BYTES = 64 << 20
"""Default size of one input batch (and so of one WAL record) in vector bytes."""


@dataclass(frozen=True)
class InputBatch:
    """Rows read from an input.

    Attributes
    ----------
    vectors : (n, d) array of a real dtype (float32 unless the file stores another type)
    ids : (n,) int64 or str array, or None when the input gives no ids
    attributes : list of dict or None, one per row (JSONL only)
    first_row : int
        Row number (0-based) of the first row in the whole input.
    first_line : int
        Line number (1-based) of the first row for JSONL, for error messages.
    columns : dict of str to Column, or None
        Attributes already in columns (Parquet, Arrow), instead of ``attributes``.
    total : int or None
        Rows in the whole input, where its header tells (for progress bars).
    """

    vectors: np.ndarray
    ids: np.ndarray | None
    attributes: list[dict[str, Any] | None] | None
    first_row: int
    first_line: int = 0
    columns: dict[str, Column] | None = None
    total: int | None = None


def default_batch_rows(dim: int) -> int:
    """Rows per batch so that a batch holds about :data:`BATCH_BYTES` of float32 vectors."""
    return max(1, BATCH_BYTES // (4 * max(dim, 1)))


def read_input(source: str | Path, fmt: str = "auto", batch_rows: int | None = None, *,
               vector_column: str | None = None, id_column: str | None = None) -> Iterator[InputBatch]:
    """Batches of the input at ``source`` (a path, or ``-`` for standard input).

    Parameters
    ----------
    source : str or Path
    fmt : {"auto", "npy", "fvecs", "bvecs", "jsonl", "parquet", "arrow"}
        "auto" picks by file extension, or by sniffing the first bytes of stdin.
    batch_rows : int, optional
        Rows per batch (default: :func:`default_batch_rows`).
    vector_column, id_column : str, optional
        Columns of a Parquet or Arrow input (see :mod:`~tidepool_cli.ops.arrow_input`).

    Yields
    ------
    InputBatch

    Raises
    ------
    InvalidInputError
        Missing file, unknown or undetectable format, malformed content, an input
        beyond the limits of :mod:`tidepool_cli.limits`.
    StorageIOError
        The file exists but cannot be read (permission denied, I/O error).
    """
    if str(source) == "-":
        stream: BinaryIO = sys.stdin.buffer
        head = stream.peek(8)[:8] if hasattr(stream, "peek") else b""
        if not head and not hasattr(stream, "peek"):
            data = stream.read()
            stream, head = io.BufferedReader(io.BytesIO(data)), data[:8]
        fmt = _sniff(head, "standard input") if fmt == "auto" else fmt
        return _dispatch(fmt, stream, None, batch_rows, "standard input", vector_column, id_column)
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such input file")
    head = _read_head(path)
    if fmt == "auto":
        fmt = _EXTENSIONS.get(path.suffix.lower()) or _sniff(head, str(path))
    return _dispatch(fmt, None, path, batch_rows, str(path), vector_column, id_column)


def _read_head(path: Path) -> bytes:
    """The first bytes of ``path``; proves it is readable before any reader maps it."""
    try:
        with path.open("rb") as f:
            return f.read(8)
    except OSError as exc:
        raise _read_error(exc, path) from None


def _read_error(exc: OSError, path: Path) -> StorageIOError:
    reason = "permission denied" if isinstance(exc, PermissionError) else exc.strerror or str(exc)
    return StorageIOError(f"{path}: cannot read the input file ({reason})")


def check_shape(rows: int, dim: int, where: str) -> None:
    """Refuse an input whose (claimed) shape is beyond :data:`MAX_INPUT_ROWS` or :data:`MAX_DIM`.

    Parameters
    ----------
    rows : int
        Rows the input holds or its header claims (checked before any data is read).
    dim : int
        Vector dimension; at least 1.
    where : str
        The input's name, for the message.

    Raises
    ------
    InvalidInputError
    """
    if not 1 <= dim <= MAX_DIM:
        raise InvalidInputError(f"{where}: vectors have dimension {dim}; it must be between 1 and {MAX_DIM:,}")
    if rows > MAX_INPUT_ROWS:
        raise InvalidInputError(f"{where}: the input claims {rows:,} rows; one input holds at most {MAX_INPUT_ROWS:,} (split it)")


def _sniff(head: bytes, where: str) -> str:
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.lstrip()[:1] == b"{":
        return "jsonl"
    from tidepool_cli.ops.arrow_input import sniff_arrow

    if fmt := sniff_arrow(head):
        return fmt
    raise InvalidInputError(f"{where}: cannot tell the input format; pass --input-format {'|'.join(FORMATS)}")


def _dispatch(fmt: str, stream: BinaryIO | None, path: Path | None, batch_rows: int | None, where: str,
              vector_column: str | None = None, id_column: str | None = None) -> Iterator[InputBatch]:
    if fmt not in FORMATS:
        raise InvalidInputError(f"unknown input format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt in ("parquet", "arrow"):
        from tidepool_cli.ops.arrow_input import read_arrow

        return read_arrow(fmt, path, stream, batch_rows, where, vector_column=vector_column, id_column=id_column)
    if fmt == "npy":
        return _npy_file(path, batch_rows, where) if path else _npy_stream(stream, batch_rows, where)
    if fmt in ("fvecs", "bvecs"):
        return _vecs(path, stream, fmt, batch_rows, where)
    return _jsonl_file(path, batch_rows, where) if path else _jsonl(stream, batch_rows, where)


def _jsonl_file(path: Path, batch_rows: int | None, where: str) -> Iterator[InputBatch]:
    try:
        f = path.open("rb")
    except OSError as exc:
        raise _read_error(exc, path) from None
    with f:
        yield from _jsonl(f, batch_rows, where)


def _check_real(dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "fiu":
        raise InvalidInputError(f"{where}: holds {dtype} values; vectors must be real numbers (int, uint or float)")


def _npy_file(path: Path, batch_rows: int | None, where: str) -> Iterator[InputBatch]:
    try:
        with path.open("rb") as f:
            shape, dtype = _npy_header(f, where)
    except OSError as exc:
        raise _read_error(exc, path) from None
    check_shape(shape[0], shape[1], where)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except PermissionError as exc:
        raise _read_error(exc, path) from None
    except (ValueError, OSError, EOFError, TypeError) as exc:
        raise InvalidInputError(f"{where}: not a valid .npy file ({_short(exc)})") from None
    step = batch_rows or default_batch_rows(arr.shape[1])
    for s in range(0, arr.shape[0], step):
        yield InputBatch(arr[s : s + step], None, None, s, total=arr.shape[0])


def _npy_header(stream: BinaryIO, where: str, streamed: bool = False) -> tuple[tuple[int, int], np.dtype]:
    """Shape and dtype from a .npy header, checked before any data is read."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except OSError:
        raise
    except Exception as exc:  # NumPy parses the header text with Python's tokenizer: any failure means a bad header
        raise InvalidInputError(f"{where}: not a valid .npy {'stream' if streamed else 'file'} ({_short(exc)})") from None
    if len(shape) != 2:
        raise InvalidInputError(f"{where}: expected a 2-D array (rows, dim), got shape {shape}")
    _check_real(dtype, where)
    if fortran and streamed:
        raise InvalidInputError(f"{where}: Fortran-ordered .npy cannot be streamed; save it with np.ascontiguousarray")
    return shape, dtype


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


def _npy_stream(stream: BinaryIO, batch_rows: int | None, where: str) -> Iterator[InputBatch]:
    (n, d), dtype = _npy_header(stream, where, streamed=True)
    check_shape(n, d, where)
    step = batch_rows or default_batch_rows(d)
    row_bytes = d * dtype.itemsize
    for s in range(0, n, step):
        rows = min(step, n - s)
        raw = stream.read(rows * row_bytes)
        if len(raw) != rows * row_bytes:
            raise InvalidInputError(f"{where}: truncated .npy data (expected {n} rows)")
        yield InputBatch(np.frombuffer(raw, dtype=dtype).reshape(rows, d), None, None, s, total=n)


def _vecs(path: Path | None, stream: BinaryIO | None, fmt: str, batch_rows: int | None, where: str) -> Iterator[InputBatch]:
    raw = np.memmap(path, dtype=np.uint8, mode="r") if path and path.stat().st_size else np.frombuffer(stream.read() if stream else b"", np.uint8)
    if raw.size < 4:
        raise InvalidInputError(f"{where}: empty or truncated .{fmt} file")
    d = int(raw[:4].view("<i4")[0])
    itemsize = 4 if fmt == "fvecs" else 1
    row_bytes = 4 + d * itemsize
    if d <= 0 or raw.size % row_bytes:
        raise InvalidInputError(f"{where}: not a valid .{fmt} file (dimension {d} does not divide the file size)")
    check_shape(raw.size // row_bytes, d, where)
    rows = raw.reshape(-1, row_bytes)
    dims = rows[:, :4].copy().view("<i4").ravel()
    bad = np.flatnonzero(dims != d)
    if bad.size:
        raise InvalidInputError(f"{where}: row {int(bad[0])} has dimension {int(dims[bad[0]])}, expected {d}")
    body = rows[:, 4:]
    vectors = body.view("<f4") if fmt == "fvecs" else body
    step = batch_rows or default_batch_rows(d)
    for s in range(0, vectors.shape[0], step):
        yield InputBatch(vectors[s : s + step], None, None, s, total=vectors.shape[0])


def _jsonl(stream: BinaryIO, batch_rows: int | None, where: str) -> Iterator[InputBatch]:
    step = batch_rows or 8192
    lines: list[bytes] = []
    numbers: list[int] = []
    row = 0
    has_ids: bool | None = None
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        lines.append(line)
        numbers.append(lineno)
        if len(lines) >= step:
            batch, has_ids = _jsonl_batch(lines, numbers, row, has_ids, where)
            yield batch
            row += len(lines)
            lines, numbers = [], []
        if row + len(lines) > MAX_INPUT_ROWS:
            raise InvalidInputError(f"{where}: more than {MAX_INPUT_ROWS:,} rows in one input (split it)")
    if lines:
        batch, _ = _jsonl_batch(lines, numbers, row, has_ids, where)
        yield batch


def _parse_lines(lines: list[bytes], numbers: list[int], where: str) -> list[Any]:
    """Parse JSONL lines: strict UTF-8, and nesting beyond what a row may hold refused as such."""
    try:
        # One C-level parse per batch instead of a Python call per line.
        return json.loads((b"[" + b",".join(lines) + b"]").decode("utf-8"))
    except (ValueError, RecursionError):
        pass
    for line, no in zip(lines, numbers):
        try:
            json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{where}: line {no}: not valid UTF-8 (byte {exc.start})") from None
        except RecursionError:
            raise InvalidInputError(f"{where}: line {no}: JSON nested too deeply (a row nests at most {MAX_JSON_DEPTH} levels)") from None
        except ValueError as exc:
            raise InvalidInputError(f"{where}: line {no}: invalid JSON ({exc.msg})") from None
    raise InvalidInputError(f"{where}: invalid JSON")


def _jsonl_batch(lines: list[bytes], numbers: list[int], first_row: int, has_ids: bool | None, where: str) -> tuple[InputBatch, bool]:
    objs = _parse_lines(lines, numbers, where)
    vectors, ids, attrs = [], [], []
    for obj, no in zip(objs, numbers):
        if not isinstance(obj, dict) or "vector" not in obj:
            raise InvalidInputError(f"{where}: line {no}: expected an object with a \"vector\" field")
        line_has_id = "id" in obj
        if has_ids is None:
            has_ids = line_has_id
        elif has_ids != line_has_id:
            raise InvalidInputError(f"{where}: line {no}: give \"id\" on every line or on none")
        vectors.append(obj["vector"])
        ids.append(obj.get("id"))
        attrs.append(obj.get("attributes"))
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 becomes Inf, refused at ingest
            arr = np.array(vectors, dtype=np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError):
        lens = {len(v) if isinstance(v, list) else -1 for v in vectors}
        detail = "vectors of different lengths" if len(lens) > 1 else "non-numeric values"
        raise InvalidInputError(f"{where}: lines {numbers[0]}-{numbers[-1]}: \"vector\" fields hold {detail}") from None
    if arr.ndim != 2:
        raise InvalidInputError(f"{where}: line {numbers[0]}: \"vector\" must be a flat list of numbers")
    check_shape(first_row + arr.shape[0], arr.shape[1], f"{where}: line {numbers[0]}")
    id_arr = _ids_array(ids, numbers, where) if has_ids else None
    return InputBatch(arr, id_arr, attrs, first_row, numbers[0]), bool(has_ids)


def _ids_array(ids: list[Any], numbers: list[int], where: str) -> np.ndarray:
    kinds = {type(i) for i in ids}
    if kinds <= {int}:
        try:
            return np.array(ids, dtype=np.int64)
        except OverflowError:
            raise InvalidInputError(f"{where}: an \"id\" is outside the 64-bit integer range") from None
    if kinds <= {str}:
        for i, no in zip(ids, numbers):
            problem = check_string(i, "string id", allow_empty=False)
            if problem:
                raise InvalidInputError(f"{where}: line {no}: {problem}")
        return np.array(ids, dtype=str)
    bad = next((no for i, no in zip(ids, numbers) if isinstance(i, bool) or not isinstance(i, (int, str))), None)
    if bad is not None:
        raise InvalidInputError(f"{where}: line {bad}: \"id\" must be an integer or a string")
    raise InvalidInputError(f"{where}: lines {numbers[0]}-{numbers[-1]}: ids mix integers and strings")
