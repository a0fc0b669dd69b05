"""``tidepool get``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Literal

import typer

from tidepool_cli.cli.options import IndexArg
from tidepool_cli.cli.output import emit_json, handle_errors, info
from tidepool_cli.errors import RowsNotFoundError


def get(
    index: IndexArg,
    id: Annotated[list[str] | None, typer.Option("--id", help="An id to fetch (repeatable).")] = None,
    ids_file: Annotated[str | None, typer.Option("--ids-file", help="File with one id per line, or - for stdin.")] = None,
    vectors: Annotated[bool, typer.Option("--vectors/--no-vectors", help="Print the vectors too (--no-vectors: ids and attributes only).")] = True,
    format: Annotated[Literal["json", "jsonl"], typer.Option("--format", help="json: one document; jsonl: one row per line.")] = "json",
) -> None:
    """Print rows of INDEX by id: id, vector and attributes, as JSON on stdout."""
    from tidepool_cli.ops.get import get as run

    with handle_errors():
        res = run(index, id or [], ids_file=ids_file, vectors=vectors)
        if format == "json":
            emit_json(res.to_dict())
        else:
            out = sys.stdout
            for row in res.rows():
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            for key in res.missing:
                out.write(json.dumps({"id": key, "missing": True}, ensure_ascii=False) + "\n")
        sys.stdout.flush()
        if res.missing:
            asked = len(res.ids) + len(res.missing)
            info(f"{len(res.missing)} of {asked} ids not found in {index}")
        if not res.ids:
            raise RowsNotFoundError(f"none of the {len(res.missing)} ids asked for is a live row of {index}")


def register(app: typer.Typer) -> None:
    app.command()(get)
