"""``tidepool stats``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag
from tidepool_cli.cli.output import console, emit_json, handle_errors
from tidepool_cli.errors import CorruptIndexError


def stats(
    index: IndexArg,
    json_out: JsonFlag = False,
    verify: Annotated[bool, typer.Option("--verify", help="Re-read every checksum; exit 5 naming each damaged part.")] = False,
    recall_queries: Annotated[Path | None, typer.Option("--recall-queries", help="Query file: report the recall@10 the default query paths deliver on it, against exact search (read only).")] = None,
) -> None:
    """Rows, segments, WAL backlog, bytes on disk by kind, index parameters, health."""
    from tidepool_cli.ops.stats import stats as run

    with handle_errors():
        res = run(index, verify=verify, recall_queries=recall_queries)
        if json_out:
            emit_json(res.to_dict())
        else:
            _table(res)
            if res.recall_queries:
                _recall_line(res.recall_queries)
        sys.stdout.flush()
    if res.problems:
        for p in res.problems:
            sys.stderr.write(f"Error: {p}\n")
        raise typer.Exit(CorruptIndexError.exit_code)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(res) -> None:
    from rich.table import Table

    out = console()
    head = Table(title=f"tidepool index {res.index}", show_header=False, title_justify="left")
    head.add_column("key")
    head.add_column("value")
    bpv = f"{res.bytes_per_vector:.1f}" if res.bytes_per_vector is not None else "-"
    for key, value in [
        ("format version", res.format_version),
        ("dim / metric / ids", f"{res.dim} / {res.metric} / {res.id_type}"),
        ("generation", res.generation),
        ("live rows", f"{res.live_rows:,}"),
        ("deleted rows", f"{res.deleted_rows:,}"),
        ("segments", len(res.segments)),
        ("WAL backlog", f"{res.wal['files']} files, {res.wal['rows']:,} rows, {res.wal['deletes']:,} deletes, {_fmt_bytes(res.wal['bytes'])}"),
        ("bytes on disk", _fmt_bytes(res.total_bytes)),
        ("bytes per vector", bpv),
        ("attributes", ", ".join(f"{k}:{v}" for k, v in res.attributes.items()) or "-"),
        ("verified", "yes, no problems" if res.verified and not res.problems else f"{len(res.problems)} problems" if res.verified else "no (--verify)"),
    ]:
        head.add_row(key, str(value))
    out.print(head)
    kinds = Table(title="bytes on disk by kind", title_justify="left")
    kinds.add_column("kind")
    kinds.add_column("bytes", justify="right")
    for kind, n in res.bytes_by_kind.items():
        if n:
            kinds.add_row(kind, _fmt_bytes(n))
    out.print(kinds)
    if res.segments:
        segs = Table(title="segments", title_justify="left")
        for col in ("name", "rows", "live", "deleted", "bytes", "indexes"):
            segs.add_column(col, justify="left" if col in ("name", "indexes") else "right")
        for s in res.segments:
            segs.add_row(s.name, f"{s.rows:,}", f"{s.live:,}", f"{s.deleted:,}", _fmt_bytes(s.bytes), "\n".join(_index_summary(k, v) for k, v in s.indexes.items()) or "-")
        out.print(segs)
    _curves(out, res)
    ivf = res.indexes.get("ivf")
    if ivf:
        out.print(
            f"IVF posting lists over {ivf['segments']} segments ({', '.join(ivf['codecs'])}): {ivf['bits_per_id']:.3f} bits/ID; "
            f"bound log2 C(N,n)/n {ivf['bound_bits_per_id']:.3f}; Elias-Fano {ivf['elias_fano_bits_per_id']:.3f}; raw {ivf['raw_bits_per_id']:.0f}"
        )


def _curves(out, res) -> None:
    """One table of every calibration curve: knob -> recall@10 on sampled rows and time."""
    from rich.table import Table

    rows = [(s.name, kind, p) for s in res.segments for kind, p in s.indexes.items() if p.get("curve")]
    if not rows:
        return
    table = Table(title="calibration curves: knob:recall@10 on sampled rows (ms per query in the largest timed batch / alone)", title_justify="left")
    for col in ("segment", "index", "knob", "curve"):
        table.add_column(col)
    for name, kind, p in rows:
        knob = next(k for k in p["curve"][0] if k not in ("recall", "seconds"))
        points = "  ".join(f"{c[knob]}:{c['recall']:.3f} ({_ms_per_query(c['seconds'])})" for c in p["curve"])
        table.add_row(name, kind, knob, points)
    out.print(table)


def _ms_per_query(seconds: list) -> str:
    (b0, t0), (b1, t1) = seconds[0], seconds[-1]
    return f"{t1 / b1 * 1e3:.3g}/{t0 / b0 * 1e3:.3g}"


def _recall_line(rep: dict) -> None:
    paths = ", ".join(sorted({p for ps in rep["paths"].values() for p in ps})) or "-"
    sys.stdout.write(
        f"delivered recall@{rep['k']} on {rep['queries']} queries: {rep['recall_at_k']:.4f} "
        f"(95% CI {rep['ci_low']:.4f}-{rep['ci_high']:.4f}; paths {paths})\n"
    )


def _index_summary(kind: str, p: dict) -> str:
    if kind == "hnsw":
        deg = "/".join(f"{d:g}" for d in p.get("avg_out_degree", []))
        return f"hnsw M={p.get('m')} efC={p.get('ef_construction')}{_calibrated(p, 'ef_search', 'efSearch')} levels={p.get('max_level', 0) + 1} out-degree {deg}, {_fmt_bytes(p['bytes'])}"
    if kind == "ivf":
        return (
            f"ivf {p.get('codec')} nlist={p.get('nlist')}{_calibrated(p, 'nprobe', 'nprobe')} {p.get('bits_per_id', 0):.2f} bits/ID (bound {p.get('bound_bits_per_id', 0):.2f}), "
            f"lists {p.get('list_size_min')}/{p.get('list_size_median')}/{p.get('list_size_max')} imbalance {p.get('imbalance_factor', 0):.2f}, {_fmt_bytes(p['bytes'])}"
        )
    if kind == "codes":
        extra = "".join(f" {name}={p[name]}" for name in ("m", "nbits") if name in p)
        return f"codes {p.get('codec')}{extra} {p.get('bytes_per_vector')} B/vector, {_fmt_bytes(p.get('code_bytes', 0))} codes, rel MSE {p.get('rel_mse', 0):.3g}"
    return kind


def _calibrated(p: dict, key: str, label: str) -> str:
    """`` label=V (recall R)`` for an index's calibrated default, empty for older indexes."""
    if key not in p:
        return ""
    return f" {label}={p[key]} (recall@10 {p.get('calibrated_recall', 0):.3f})"


def register(app: typer.Typer) -> None:
    app.command()(stats)
