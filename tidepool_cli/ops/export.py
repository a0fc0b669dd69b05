"""``tidepool export``: every live row that passes a filter, streamed to JSONL, .npy or Parquet.

Rows are read from one snapshot plus the WAL tail (as ``query`` sees them), source by
source and block by block (:func:`~tidepool_cli.ops.select.blocks`), and written as they
come, so memory stays constant however large the index. A file output is written under
a temporary name and renamed into place at the end: a failed export leaves nothing.
The formats are written by :mod:`~tidepool_cli.ops.export_writers`; each reads back
with ``tidepool ingest`` to the same ids, vectors (bit for bit) and attributes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from tidepool_cli.errors import InvalidInputError
from tidepool_cli.ops.export_writers import FORMATS, open_writer
from tidepool_cli.ops.progress import NULL_PROGRESS, Progress
from tidepool_cli.ops.select import blocks, matching
from tidepool_cli.ops.view import IndexView


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote.

    Attributes
    ----------
    index : str
    format : {"jsonl", "npy", "parquet"}, optional
        Default: by the extension of ``output`` (``.npy``, ``.parquet``), else ``jsonl``.
    rows : int
        Rows written.
    files : list of str
        Files written (empty for standard output); for ``npy`` the vectors, ids and
        (when the index has attributes) attributes files.
    generation : int
        Manifest generation the rows were read from (plus its WAL tail).
    seconds : float
    """

    index: str
    format: str
    rows: int
    files: list[str]
    generation: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def export(
    index: str | Path,
    output: str | Path | BinaryIO,
    *,
    filter: str | None = None,
    format: str | None = None,
    block_rows: int | None = None,
    progress: Progress = NULL_PROGRESS,
) -> ExportResult:
    """Write every live row of ``index`` that passes ``filter`` to ``output``.

    Parameters
    ----------
    index : str or Path
    output : str, Path or binary file
        Destination file (``npy``: the vectors file; ``ids`` and ``attributes`` files are
        written beside it), ``-`` for standard output, or an open binary stream
        (``jsonl`` and ``parquet``).
    filter : str, optional
        A filter expression (see :mod:`tidepool_cli.engine.filters`).
    format : {"jsonl", "npy", "parquet"}, optional
        Default: by the extension of ``output`` (``.npy``, ``.parquet``), else ``jsonl``.
        ``jsonl``: ``{"id", "vector", "attributes"}`` per line, as ``ingest`` reads it;
        ``npy``: (n, d) float32 vectors, ``<stem>.ids.npy`` (int64, or a unicode array),
        ``<stem>.attributes.jsonl`` (one object per row); ``parquet``: columns ``id``,
        ``vector`` (fixed-size list of float32) and one per attribute (needs pyarrow).
    block_rows : int, optional
        Rows of a segment visited per block (default: 4 MiB of vectors).
    progress : Progress
        Told the rows written, out of the total to write.

    Returns
    -------
    ExportResult

    Raises
    ------
    InvalidInputError
        Unknown format, ``npy`` to a stream, pyarrow missing for ``parquet``, an
        attribute whose name clashes with the ``id`` or ``vector`` column.
    FilterSyntaxError, IndexNotFoundError, CorruptIndexError, StorageIOError
    """
    t0 = time.perf_counter()
    if format is None:
        suffix = Path(output).suffix.lower() if isinstance(output, (str, Path)) else ""
        format = {".npy": "npy", ".parquet": "parquet"}.get(suffix, "jsonl")
    if format not in FORMATS:
        raise InvalidInputError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if str(output) == "-":
        output = sys.stdout.buffer
    view = IndexView(index, verify="all")
    selected = matching(view, filter)
    total = sum(int(np.count_nonzero(mask)) for _, mask in selected)
    id_width = max([src.ids.dtype.itemsize // 4 for src, _ in selected if src.ids.dtype.kind == "U"] + [1])
    writer = open_writer(format, output, view.settings, view.schema, total, id_width)
    progress.start("export", total, "rows")
    written = 0
    try:
        for block in blocks(selected, view.schema, block_rows):
            writer.write(block)
            written += block.rows
            progress.advance(block.rows)
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        progress.finish()
    return ExportResult(str(index), format, written, files, view.manifest.generation, time.perf_counter() - t0)
