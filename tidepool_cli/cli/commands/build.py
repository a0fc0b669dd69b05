"""``tidepool build-hnsw`` and ``tidepool build-ivf``."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag, LockTimeout
from tidepool_cli.cli.output import TqdmProgress, emit_json, handle_errors, info
from tidepool_cli.limits import MAX_EF, MAX_M, MAX_NLIST
from tidepool_cli.storage.lock import DEFAULT_LOCK_TIMEOUT

Force = Annotated[bool, typer.Option("--force", help="Rebuild segments that already have this index.")]
Recall = Annotated[float | None, typer.Option("--recall", min=0.0, max=1.0, help="recall@10 target of the calibrated default that queries use (default 0.95).")]
Seed = Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the randomised parts of the build (equal seeds, equal index).")]


def build_hnsw(
    index: IndexArg,
    m: Annotated[int | None, typer.Option("--m", min=2, max=MAX_M, help="M: neighbours per node on upper layers (2M on layer 0; default 16).")] = None,
    ef_construction: Annotated[int | None, typer.Option("--ef-construction", min=1, max=MAX_EF, help="Candidate-list size of the build (default 200).")] = None,
    force: Force = False,
    min_rows: Annotated[int | None, typer.Option("--min-rows", min=0, help="Segments with fewer rows stay on exact scan (default 10000).")] = None,
    seed: Seed = 0,
    recall: Recall = None,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT,
    json_out: JsonFlag = False,
) -> None:
    """Build an HNSW graph for every segment of INDEX that lacks one."""
    from tidepool_cli.ops.build_hnsw import build_hnsw as run

    with handle_errors():
        given = _given(m=m, ef_construction=ef_construction, min_rows=min_rows, recall=recall)
        res = run(index, force=force, seed=seed, lock_timeout=lock_timeout, progress=TqdmProgress(), **given)
    _report(res, json_out)


def build_ivf(
    index: IndexArg,
    nlist: Annotated[int | None, typer.Option("--nlist", min=1, max=MAX_NLIST, help="Posting lists per segment (default about 4*sqrt(rows)).")] = None,
    id_codec: Annotated[Literal["ans", "roc", "elias-fano", "raw"] | None, typer.Option("--id-codec", help="Posting-list codec: ans | roc | elias-fano | raw (default ans).")] = None,
    force: Force = False,
    min_rows: Annotated[int | None, typer.Option("--min-rows", min=0, help="Segments with fewer rows stay on exact scan (default 4096).")] = None,
    seed: Seed = 0,
    recall: Recall = None,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT,
    json_out: JsonFlag = False,
) -> None:
    """Build a k-means IVF index with compressed posting lists for every segment of INDEX that lacks one."""
    from tidepool_cli.ops.build_ivf import build_ivf as run

    with handle_errors():
        given = _given(nlist=nlist, id_codec=id_codec, min_rows=min_rows, recall=recall)
        res = run(index, force=force, seed=seed, lock_timeout=lock_timeout, progress=TqdmProgress(), **given)
    _report(res, json_out)


def _given(**options):
    """The options the user set: the rest take the ops function's own defaults."""
    return {k: v for k, v in options.items() if v is not None}


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
