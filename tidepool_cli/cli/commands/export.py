"""``tidepool export``."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag
from tidepool_cli.cli.output import TqdmProgress, emit_json, handle_errors, info


def export(
    index: IndexArg,
    output: Annotated[str, typer.Option("--output", "-o", help="Destination file, or - for stdout (jsonl, parquet).")],
    filter: Annotated[str | None, typer.Option("--filter", help="Only rows that pass this attribute filter.")] = None,
    format: Annotated[Literal["jsonl", "npy", "parquet"] | None, typer.Option("--format", help="jsonl | npy | parquet (default: by the extension of --output, else jsonl).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Write every live row of INDEX (that passes --filter) to a JSONL, .npy or Parquet file."""
    from tidepool_cli.ops.export import export as run

    with handle_errors():
        res = run(index, output, filter=filter, format=format, progress=TqdmProgress())
    if json_out:
        emit_json(res.to_dict())
    where = ", ".join(res.files) or "stdout"
    info(f"exported {res.rows} rows of {res.index} as {res.format} to {where} in {res.seconds:.2f} s")


def register(app: typer.Typer) -> None:
    app.command()(export)
