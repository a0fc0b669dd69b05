"""``tidepool ingest``: append upserts to the write-ahead log, atomically and durably."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tidepool_cli.engine.columns import check_string, columns_from_records
from tidepool_cli.engine.distances import check_metric, normalize_rows, sqnorms
from tidepool_cli.errors import InvalidInputError
from tidepool_cli.limits import INT64_MAX, MAX_STRING_CHARS
from tidepool_cli.ops.inputs import InputBatch, check_shape, read_input
from tidepool_cli.ops.progress import NULL_PROGRESS, Progress
from tidepool_cli.ops.view import auto_id_bases, effective_schema
from tidepool_cli.storage.layout import IndexSettings, Layout, create_index_dir, discard_new_index
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT
from tidepool_cli.storage.manifest import Manifest
from tidepool_cli.storage.records import Batch
from tidepool_cli.storage.wal import WalWriter, pending_records


@dataclass(frozen=True)
class IngestResult:
    """What an ingest wrote.

    Attributes
    ----------
    index : str
        Index directory.
    rows : int
        Rows written (upserts).
    records : int
        WAL records (input batches) written.
    wal_files : list of int
        Sequence numbers of the published WAL files (one per commit).
    first_id, last_id : int or None
        Range of the automatic ids assigned, when the input gave no ids.
    created : bool
        True if this ingest created the index.
    dim : int
    metric : str
    seconds : float
        Wall time of the whole operation.
    """

    index: str
    rows: int
    records: int
    wal_files: list[int]
    first_id: int | None
    last_id: int | None
    created: bool
    dim: int
    metric: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def ingest(
    index: str | Path,
    source: str | Path,
    *,
    input_format: str = "auto",
    metric: str | None = None,
    batch_rows: int | None = None,
    commit_every: int | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    vector_column: str | None = None,
    id_column: str | None = None,
    progress: Progress = NULL_PROGRESS,
) -> IngestResult:
    """Upsert the vectors of ``source`` into the index at ``index``.

    The whole input is one atomic commit (all rows or none) unless ``commit_every`` asks
    for a commit every that many rows, which suits unbounded streams on stdin. Each
    input batch becomes one WAL record; the WAL file is fsync'ed before this returns.
    A later write of an id replaces the earlier row (upsert).

    Parameters
    ----------
    index : str or Path
        Index directory; created (with the dimension of the first row) if missing.
    source : str or Path
        Input file, or ``-`` for standard input (see :mod:`~tidepool_cli.ops.inputs`).
    input_format : {"auto", "npy", "fvecs", "bvecs", "jsonl", "parquet", "arrow"}
    metric : {"l2", "cosine", "dot"}, optional
        Metric of a new index (default "l2"); must match an existing index's.
    batch_rows : int, optional
        Rows per WAL record (default: about 64 MiB of vectors).
    commit_every : int, optional
        Publish a WAL file every this many rows instead of once at the end.
    lock_timeout : float
        Seconds to wait for the writer lock at each commit.
    vector_column, id_column : str, optional
        Columns of a Parquet or Arrow input (see :mod:`~tidepool_cli.ops.arrow_input`).
    progress : Progress
        Told the rows written, out of the input's row count where its header gives it.

    Returns
    -------
    IngestResult

    Raises
    ------
    InvalidInputError
        Malformed input, dimension or metric or id-type mismatch, NaN/Inf, attribute
        kinds that conflict with the index; nothing is committed.
    LockTimeoutError, StorageIOError, CorruptIndexError, UnsupportedFormatError
    """
    t0 = time.perf_counter()
    if metric is not None:
        check_metric(metric)
    batches = read_input(source, input_format, batch_rows, vector_column=vector_column, id_column=id_column)
    first = next(batches, None)
    if first is None:
        raise InvalidInputError(f"{source}: input holds no vectors")
    root = Path(index)
    made_root = not root.exists()
    had_lock = (root / "LOCK").exists()
    created = not (root / "tidepool.json").exists()
    id_type = "int" if first.ids is None or first.ids.dtype.kind in "iu" else "str"
    wanted = IndexSettings(int(first.vectors.shape[1]), metric or "l2", id_type)
    # A first ingest checks its first batch before the index exists, and removes what it
    # made if a later batch fails: a command that fails creates nothing.
    first_batch = _to_batch(first, wanted, source) if created else None
    total_rows, records, wal_files = 0, 0, []
    auto_ranges: list[tuple[int, int]] = []
    try:
        layout, settings = create_index_dir(root, wanted, lock_timeout)
        _check_settings(settings, first, metric, source)
        if first_batch is not None and settings != wanted:
            first_batch = None  # another process created the index meanwhile: convert for its settings
        progress.start("ingest", first.total, "rows")
        writer = WalWriter(layout)
        try:
            rows_in_file = 0
            for item in _chain([first], batches):
                batch = first_batch if item is first and first_batch is not None else _to_batch(item, settings, source)
                writer.append(batch)
                rows_in_file += batch.n
                total_rows += batch.n
                records += 1
                progress.advance(batch.n)
                if commit_every and rows_in_file >= commit_every:
                    wal_files.append(_commit(writer, layout, lock_timeout, auto_ranges))
                    writer, rows_in_file = WalWriter(layout), 0
            if rows_in_file:
                wal_files.append(_commit(writer, layout, lock_timeout, auto_ranges))
        finally:
            writer.abort()
            progress.finish()
    except BaseException:
        made_something = made_root or (root / "tidepool.json").exists() or (not had_lock and (root / "LOCK").exists())
        if created and not wal_files and root.is_dir() and made_something:
            discard_new_index(Layout(root), made_root, lock_timeout, remove_lock=not had_lock)
        raise
    first_id = auto_ranges[0][0] if auto_ranges else None
    last_id = auto_ranges[-1][1] if auto_ranges else None
    return IngestResult(str(root), total_rows, records, wal_files, first_id, last_id, created, settings.dim, settings.metric, time.perf_counter() - t0)


def _chain(first: list[InputBatch], rest):
    yield from first
    yield from rest


def _check_settings(settings: IndexSettings, first: InputBatch, metric: str | None, source) -> None:
    if metric is not None and metric != settings.metric:
        raise InvalidInputError(f"{source}: the index uses metric {settings.metric!r}; the metric is fixed when an index is created")
    batch_type = "int" if first.ids is None or first.ids.dtype.kind in "iu" else "str"
    if batch_type != settings.id_type:
        what = "integer" if settings.id_type == "int" else "string"
        raise InvalidInputError(f"{source}: this index uses {what} ids; the input gives {'string' if batch_type == 'str' else 'integer or no'} ids")


def _to_batch(item: InputBatch, settings: IndexSettings, source) -> Batch:
    """Validate one input batch and turn it into a WAL batch."""
    vectors = item.vectors
    _check_limits(item, source)
    if vectors.shape[1] != settings.dim:
        raise InvalidInputError(f"{source}: vectors have dimension {vectors.shape[1]}, the index has dimension {settings.dim}")
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become Inf, refused below
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = item.first_row + int(np.flatnonzero(~finite)[0])
        raise InvalidInputError(f"{source}: row {bad} contains NaN or Inf (values beyond float32 range overflow to Inf)")
    if settings.metric == "cosine":
        zero = np.flatnonzero(sqnorms(vectors) == 0)
        if zero.size:
            raise InvalidInputError(f"{source}: row {item.first_row + int(zero[0])} has zero norm; the cosine metric needs a direction")
        vectors = normalize_rows(vectors)
    ids = item.ids
    if ids is not None:
        kind = "int" if ids.dtype.kind in "iu" else "str"
        if kind != settings.id_type:
            raise InvalidInputError(f"{source}: this index uses {settings.id_type} ids; rows from {item.first_row} give {kind} ids")
    try:
        columns = item.columns if item.columns is not None else (
            columns_from_records(item.attributes, item.first_line or 1) if item.attributes is not None else {})
    except InvalidInputError as exc:
        raise InvalidInputError(f"{source}: {exc}") from None
    return Batch("upsert", vectors.shape[0], ids, vectors, columns)


def _check_limits(item: InputBatch, source) -> None:
    """The limits of :mod:`tidepool_cli.limits` for a batch from any reader (Parquet and
    Arrow included): shape, and the length of string ids, attribute names and values."""
    check_shape(item.first_row + item.vectors.shape[0], item.vectors.shape[1], str(source))
    strings = [("string id", item.ids)] if item.ids is not None and item.ids.dtype.kind == "U" else []
    for name, col in (item.columns or {}).items():
        problem = check_string(name, "attribute name", allow_empty=False)
        if problem:
            raise InvalidInputError(f"{source}: {problem}")
        if col.kind == "string" and col.dictionary is not None:
            strings.append((f"attribute {name!r}", col.dictionary))
    for what, arr in strings:
        if arr.size and int(np.char.str_len(arr).max()) > MAX_STRING_CHARS:
            raise InvalidInputError(f"{source}: a {what} is longer than {MAX_STRING_CHARS:,} characters")
    if item.ids is not None and item.ids.dtype.kind == "U" and (item.ids == "").any():
        raise InvalidInputError(f"{source}: string ids must be non-empty")


def _commit(writer: WalWriter, layout: Layout, lock_timeout: float, auto_ranges: list[tuple[int, int]]) -> int:
    """Publish the writer's file after checking it against the index under the lock."""

    def check(manifest: Manifest) -> None:
        # Under the lock: the records published before ours decide schema and auto ids.
        before = [r.meta for r in pending_records(layout, manifest, verify="header")]
        effective_schema(dict(manifest.schema), before + writer.metas)
        bases = auto_id_bases(manifest.max_int_id, before + writer.metas)[len(before) :]
        for meta, base in zip(writer.metas, bases):
            if base is not None:
                if base + meta["rows"] - 1 > INT64_MAX:
                    raise InvalidInputError(
                        f"automatic ids would pass {INT64_MAX} (the largest id in the index is {base - 1}); give explicit ids"
                    )
                auto_ranges.append((base, base + meta["rows"] - 1))

    return writer.publish(lock_timeout, "ingest", check)
