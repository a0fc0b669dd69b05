"""``tidepool count``."""

from __future__ import annotations

from typing import Annotated

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag
from tidepool_cli.cli.output import emit_json, handle_errors


def count(
    index: IndexArg,
    filter: Annotated[str | None, typer.Option("--filter", help="Count only rows that pass this attribute filter.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Print the number of live rows of INDEX (that pass --filter)."""
    from tidepool_cli.ops.select import count as run

    with handle_errors():
        res = run(index, filter=filter)
    if json_out:
        emit_json(res.to_dict())
    else:
        typer.echo(res.count)


def register(app: typer.Typer) -> None:
    app.command()(count)
