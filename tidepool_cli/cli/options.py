"""Shared option types; flag names equal the ops keyword arguments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

IndexArg = Annotated[Path, typer.Argument(help="Index directory.", show_default=False)]
LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", min=0, help="Seconds to wait for another writer to release the index lock.")
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
InputFormat = Annotated[
    Literal["auto", "npy", "fvecs", "bvecs", "jsonl", "parquet", "arrow"],
    typer.Option("--input-format", help="auto: by extension, or sniffed on stdin."),
]
