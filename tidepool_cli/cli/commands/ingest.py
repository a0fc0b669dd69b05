"""``tidepool ingest``."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from tidepool_cli.cli.options import IndexArg, InputFormat, JsonFlag, LockTimeout
from tidepool_cli.cli.output import TqdmProgress, emit_json, handle_errors, info
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT


def ingest(
    index: IndexArg,
    input: Annotated[str, typer.Option("--input", "-i", help="Vectors: .npy, .fvecs, .bvecs, .jsonl, .parquet or .arrow/.feather file, or - for stdin.")],
    input_format: InputFormat = "auto",
    metric: Annotated[Literal["l2", "cosine", "dot"] | None, typer.Option("--metric", help="Fixed when the index is created (default l2).")] = None,
    batch_rows: Annotated[int | None, typer.Option("--batch-rows", min=1, help="Rows per WAL record (default: ~64 MiB of vectors).")] = None,
    commit_every: Annotated[int | None, typer.Option("--commit-every", min=1, help="Commit every N rows (for endless streams); default: one atomic commit.")] = None,
    vector_column: Annotated[str | None, typer.Option("--vector-column", help="Parquet/Arrow: the vector column (default: the only list column).")] = None,
    id_column: Annotated[str | None, typer.Option("--id-column", help="Parquet/Arrow: the id column (default: 'id' if present, else automatic ids).")] = None,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT,
    json_out: JsonFlag = False,
) -> None:
    """Upsert vectors into INDEX (created on first use) through the write-ahead log."""
    from tidepool_cli.ops.ingest import ingest as run

    with handle_errors():
        res = run(index, input, input_format=input_format, metric=metric, batch_rows=batch_rows,
                  commit_every=commit_every, lock_timeout=lock_timeout, vector_column=vector_column, id_column=id_column,
                  progress=TqdmProgress())
        if json_out:
            emit_json(res.to_dict())
        ids = f", ids {res.first_id}..{res.last_id}" if res.first_id is not None else ""
        info(f"ingested {res.rows} vectors (dim {res.dim}, {res.metric}) into {res.index} in {res.seconds:.2f} s{ids}")


def register(app: typer.Typer) -> None:
    app.command()(ingest)
