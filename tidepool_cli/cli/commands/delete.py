"""``tidepool delete``."""

from __future__ import annotations

from typing import Annotated

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag, LockTimeout
from tidepool_cli.cli.output import emit_json, handle_errors, info
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT


def delete(
    index: IndexArg,
    id: Annotated[list[str] | None, typer.Option("--id", help="An id to delete (repeatable).")] = None,
    ids_file: Annotated[str | None, typer.Option("--ids-file", help="File with one id per line, or - for stdin.")] = None,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT,
    json_out: JsonFlag = False,
) -> None:
    """Delete rows of INDEX by id (tombstones in the write-ahead log)."""
    from tidepool_cli.ops.delete import delete as run

    with handle_errors():
        res = run(index, id or [], ids_file=ids_file, lock_timeout=lock_timeout)
        if json_out:
            emit_json(res.to_dict())
        info(f"deleted {res.found} of {res.requested} ids from {res.index}")


def register(app: typer.Typer) -> None:
    app.command()(delete)
