"""``tidepool quantize``."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag, LockTimeout
from tidepool_cli.cli.output import TqdmProgress, emit_json, handle_errors, info
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT


def quantize(
    index: IndexArg,
    codec: Annotated[Literal["f16", "sq8", "sq4", "pq", "rabitq"], typer.Option("--codec", help="f16 | sq8 | sq4 | pq | rabitq.")],
    m: Annotated[int | None, typer.Option("--m", min=1, help="PQ sub-quantizers (must divide the dimension).")] = None,
    nbits: Annotated[int | None, typer.Option("--nbits", help="PQ: 4 or 8 (default 8); RaBitQ: 1-4 bits per dimension (default 1).")] = None,
    train_rows: Annotated[int, typer.Option("--train-rows", min=1, help="Live rows sampled to train the quantizer.")] = 65536,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the training sample and codec (equal seeds, equal codes).")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Retrain the quantizer and re-encode every segment.")] = False,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT,
    json_out: JsonFlag = False,
) -> None:
    """Train INDEX's quantizer once and write codes for every segment that lacks them."""
    from tidepool_cli.ops.quantize import quantize as run

    with handle_errors():
        res = run(index, codec=codec, m=m, nbits=nbits, train_rows=train_rows, seed=seed, force=force,
                  lock_timeout=lock_timeout, progress=TqdmProgress())
    if json_out:
        emit_json(res.to_dict())
    n = len(res.built)
    parts = [f"encoded {n} segment{'s' if n != 1 else ''} with {codec}"]
    if res.segments:
        bpv = res.segments[0]["bytes_per_vector"]
        worst = max(s["rel_mse"] for s in res.segments)
        parts.append(f"{bpv} bytes per vector, relative MSE <= {worst:g}")
    if res.already_indexed:
        parts.append(f"{len(res.already_indexed)} already quantized")
    if res.dropped:
        parts.append(f"{len(res.dropped)} merged away meanwhile")
    info(f"{res.index}: " + ", ".join(parts) + f" (generation {res.generation}, {res.seconds:.2f} s)")


def register(app: typer.Typer) -> None:
    app.command("quantize")(quantize)
