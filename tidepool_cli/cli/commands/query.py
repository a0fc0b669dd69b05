"""``tidepool query``."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Literal

import typer

from tidepool_cli.cli.options import IndexArg, InputFormat
from tidepool_cli.cli.output import console, handle_errors, warn
from tidepool_cli.errors import InvalidInputError, UsageError
from tidepool_cli.limits import MAX_EF, MAX_K, MAX_NLIST


def query(
    index: IndexArg,
    vector: Annotated[str | None, typer.Option("--vector", help="One query as a JSON list of numbers (or a list of lists).")] = None,
    input: Annotated[str | None, typer.Option("--input", "-i", help="Query vectors: .npy, .fvecs, .bvecs, .jsonl file, or - for stdin.")] = None,
    input_format: InputFormat = "auto",
    k: Annotated[int, typer.Option("-k", "--k", min=1, max=MAX_K, help="Neighbours per query.")] = 10,
    filter: Annotated[str | None, typer.Option("--filter", help="Attribute filter, e.g. \"color = 'red' and price < 10\".")] = None,
    format: Annotated[Literal["json", "jsonl", "table"], typer.Option("--format", help="json | jsonl | table.")] = "json",
    ef_search: Annotated[int | None, typer.Option("--ef-search", min=1, max=MAX_EF, help="Force the HNSW path at this beam width where a segment has a graph (default: the planner picks path and setting).")] = None,
    nprobe: Annotated[int | None, typer.Option("--nprobe", min=1, max=MAX_NLIST, help="Force the IVF path probing this many lists where a segment has an IVF index (default: the planner picks).")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Exact search everywhere, ignoring HNSW/IVF indexes.")] = False,
    recall: Annotated[float | None, typer.Option("--recall", min=0.0, max=1.0, help="recall@10 target: each segment takes the cheapest path and smallest knob its calibration says reach it (default: the build's target, 0.95).")] = None,
    explain: Annotated[bool, typer.Option("--explain", help="Add, per query batch and source, the path, knobs, work done and time (see README).")] = False,
) -> None:
    """k nearest neighbours of each query in INDEX, as JSON on stdout."""
    from tidepool_cli.ops.planner import SearchParams
    from tidepool_cli.ops.query import query as run_one
    from tidepool_cli.ops.query import query_file

    with handle_errors():
        if (vector is None) == (input is None):
            raise UsageError("give exactly one of --vector and --input")
        params = SearchParams(exact=exact, ef_search=ef_search, nprobe=nprobe, recall=recall)
        if vector is not None:
            results = iter([run_one(index, _parse_vector(vector), k, filter=filter, params=params, warn=warn)])
        else:
            results = query_file(index, input, k, input_format=input_format, filter=filter, params=params, warn=warn)
        _write(results, format, k, explain)
        sys.stdout.flush()


def _parse_vector(text: str):
    import numpy as np

    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidInputError("--vector is nested too deeply (a list of numbers, or a list of such lists)") from None
    except ValueError as exc:
        raise InvalidInputError(f"--vector is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: Inf, refused by the query
            arr = np.array(value, dtype=np.float32)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInputError("--vector must be a JSON list of numbers") from None
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise InvalidInputError("--vector must be a JSON list of numbers (or a list of such lists)")
    return arr


def _write(results, fmt: str, k: int, explain: bool) -> None:
    """Render results as they come, flushing after every batch (a pipe gets each answer at once)."""
    out = sys.stdout
    if fmt == "table":
        from rich.table import Table

        out_console = console()
        for res in results:
            for item in res.to_dicts():
                table = Table(title=f"query {item['query']}", title_justify="left")
                for col in ("rank", "id", "distance", "attributes"):
                    table.add_column(col, justify="right" if col in ("rank", "distance") else "left")
                for r, (i, d, a) in enumerate(zip(item["ids"], item["distances"], item["attributes"]), start=1):
                    table.add_row(str(r), str(i), f"{d:.6g}", json.dumps(a, ensure_ascii=False) if a else "")
                out_console.print(table)
            if explain:
                sys.stderr.write(json.dumps({"explain": res.explain.to_dict()}) + "\n")
        return
    if fmt == "jsonl":
        for res in results:
            for item in res.to_dicts():
                out.write(json.dumps(item, ensure_ascii=False) + "\n")
            if explain:
                out.write(json.dumps({"explain": res.explain.to_dict()}) + "\n")
            out.flush()
        return
    count, batches = 0, []
    for res in results:
        if count == 0:
            out.write(f'{{"k": {k}, "metric": {json.dumps(res.metric)}, "results": [')
            count = 1
        for item in res.to_dicts():
            out.write(("" if count == 1 else ", ") + json.dumps(item, ensure_ascii=False))
            count += 1
        if explain:
            batches.append(res.explain.to_dict())
        out.flush()
    out.write("]" + (f', "explain": {json.dumps(batches)}' if explain else "") + "}\n")


def register(app: typer.Typer) -> None:
    app.command()(query)
