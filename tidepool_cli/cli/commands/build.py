"""``tidepool build-hnsw`` and ``tidepool build-ivf``."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag, LockTimeout
from tidepool_cli.cli.output import TqdmProgress, emit_json, handle_errors, info
from tidepool_cli.limits import MAX_EF, MAX_M, MAX_NLIST
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT

Force = Annotated[bool, typer.Option("--force", help="Rebuild segments that already have this index.")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the randomised parts of the build (equal seeds, equal index).")]


def build_hnsw(
    index: IndexArg,
    m: Annotated[int, typer.Option("--m", min=2, max=MAX_M, help="M: neighbours per node on upper layers (2M on layer 0).")] = 16,
    ef_construction: Annotated[int, typer.Option("--ef-construction", min=1, max=MAX_EF, help="Candidate-list size of the build.")] = 200,
    force: Force = False,
    min_rows: Annotated[int | None, typer.Option("--min-rows", min=0, help="Segments with fewer rows stay on exact scan (default 10000).")] = None,
    seed: Seed = 0,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT,
    json_out: JsonFlag = False,
) -> None:
    """Build an HNSW graph for every segment of INDEX that lacks one."""
    from tidepool_cli.engine.hnsw import MIN_ROWS_FOR_GRAPH
    from tidepool_cli.ops.build_hnsw import build_hnsw as run

    with handle_errors():
        res = run(index, m=m, ef_construction=ef_construction, force=force, seed=seed, lock_timeout=lock_timeout,
                  min_rows=MIN_ROWS_FOR_GRAPH if min_rows is None else min_rows, progress=TqdmProgress())
        _report(res, json_out)


def build_ivf(
    index: IndexArg,
    nlist: Annotated[int | None, typer.Option("--nlist", min=1, max=MAX_NLIST, help="Posting lists per segment (default about 4*sqrt(rows)).")] = None,
    id_codec: Annotated[Literal["ans", "roc", "elias-fano", "raw"], typer.Option("--id-codec", help="Posting-list codec.")] = "ans",
    force: Force = False,
    min_rows: Annotated[int | None, typer.Option("--min-rows", min=0, help="Segments with fewer rows stay on exact scan (default 4096).")] = None,
    seed: Seed = 0,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT,
    json_out: JsonFlag = False,
) -> None:
    """Build a k-means IVF index with compressed posting lists for every segment of INDEX that lacks one."""
    from tidepool_cli.ops.build_ivf import MIN_ROWS_FOR_IVF
    from tidepool_cli.ops.build_ivf import build_ivf as run

    with handle_errors():
        res = run(index, nlist=nlist, id_codec=id_codec, force=force, seed=seed, lock_timeout=lock_timeout,
                  min_rows=MIN_ROWS_FOR_IVF if min_rows is None else min_rows, progress=TqdmProgress())
        _report(res, json_out)


def _report(res, json_out: bool) -> None:
    if json_out:
        emit_json(res.to_dict())
    parts = [f"built {res.kind} for {len(res.built)} segment{'s' if len(res.built) != 1 else ''}"]
    key = "ef_search" if res.kind == "hnsw" else "nprobe"
    calibrated = sorted({seg[key] for seg in res.segments if key in seg})
    if calibrated:
        span = f"{calibrated[0]}" if len(calibrated) == 1 else f"{calibrated[0]}-{calibrated[-1]}"
        low = min(seg["calibrated_recall"] for seg in res.segments if key in seg)
        parts.append(f"default {key} {span} (recall@10 >= {low:.3f} on sampled rows)")
    if res.already_indexed:
        parts.append(f"{len(res.already_indexed)} already indexed")
    if res.skipped_small:
        parts.append(f"{len(res.skipped_small)} below --min-rows stay on exact scan")
    if res.dropped:
        parts.append(f"{len(res.dropped)} merged away meanwhile")
    info(f"{res.index}: " + ", ".join(parts) + f" (generation {res.generation}, {res.seconds:.2f} s)")


def register(app: typer.Typer) -> None:
    app.command("build-hnsw")(build_hnsw)
    app.command("build-ivf")(build_ivf)
