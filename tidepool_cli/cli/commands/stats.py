"""``tidepool stats``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from tidepool_cli.cli.options import IndexArg, JsonFlag
from tidepool_cli.cli.output import console, emit_json, handle_errors
from tidepool_cli.errors import CorruptIndexError


def stats(
    index: IndexArg,
    json_out: JsonFlag = False,
    verify: Annotated[bool, typer.Option("--verify", help="Re-read every checksum; exit 5 naming each damaged part.")] = False,
) -> None:
    """Rows, segments, WAL backlog, bytes on disk by kind, index parameters, health."""
    from tidepool_cli.ops.stats import stats as run

    with handle_errors():
        res = run(index, verify=verify)
        if json_out:
            emit_json(res.to_dict())
        else:
            _table(res)
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
    ivf = res.indexes.get("ivf")
    if ivf:
        out.print(
            f"IVF posting lists over {ivf['segments']} segments ({', '.join(ivf['codecs'])}): {ivf['bits_per_id']:.3f} bits/ID; "
            f"bound log2 C(N,n)/n {ivf['bound_bits_per_id']:.3f}; Elias-Fano {ivf['elias_fano_bits_per_id']:.3f}; raw {ivf['raw_bits_per_id']:.0f}"
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
    return kind


def _calibrated(p: dict, key: str, label: str) -> str:
    """`` label=V (recall R)`` for an index's calibrated default, empty for older indexes."""
    if key not in p:
        return ""
    return f" {label}={p[key]} (recall@10 {p.get('calibrated_recall', 0):.3f})"


def register(app: typer.Typer) -> None:
    app.command()(stats)
