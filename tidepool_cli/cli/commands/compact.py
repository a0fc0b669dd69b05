"""``tidepool compact``."""

from __future__ import annotations

from typing import Annotated

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag, LockTimeout
from tidepool_cli.cli.output import TqdmProgress, emit_json, handle_errors, info
from tidepool_cli.storage.gc import DEFAULT_GRACE_SECONDS
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT


def compact(
    index: IndexArg,
    grace: Annotated[float, typer.Option("--grace", min=0, help="Seconds obsolete files are kept for running readers.")] = DEFAULT_GRACE_SECONDS,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT,
    json_out: JsonFlag = False,
) -> None:
    """Turn WAL records into segments, apply deletes, merge small segments, collect garbage."""
    from tidepool_cli.ops.compact import compact as run

    with handle_errors():
        res = run(index, grace=grace, lock_timeout=lock_timeout, progress=TqdmProgress())
        if json_out:
            emit_json(res.to_dict())
        if res.changed:
            info(
                f"compacted {res.index}: generation {res.generation}, {res.wal_files} WAL files applied, "
                f"{res.rows_written} rows written, {res.rows_deleted} deleted, {res.segments} segments ({res.seconds:.2f} s)"
            )
        else:
            info(f"{res.index} is already compact (generation {res.generation}); removed {res.files_removed} obsolete files")


def register(app: typer.Typer) -> None:
    app.command()(compact)
