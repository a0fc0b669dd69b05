"""Data in and out: export of glove-50-angular (390,000 x 50) to Parquet and JSONL, and ingest of Parquet.

Measured, each in its own process so that its peak RSS is its own (``os.wait4``):
- ``tidepool export IDX --output F`` (the CLI, as a user runs it) to Parquet and JSONL:
  peak RSS of the process, and rows/s of the export (its ``--json`` seconds, so without
  interpreter start-up; the CLI's wall time is recorded too), beside
  ``pyarrow.parquet.write_table`` of the same rows (ids and vectors as one in-memory Arrow
  table; its time covers the write only);
- ``tidepool ingest`` of a 1,000,000 x 128 Parquet file (fixed-size list of float32),
  fsync included, beside ingest of the same rows from ``.npy``.

Run: ``.venv/bin/python bench/bench_dataio.py [--rows 1000000] [--repeats 3]``; prints a
table and writes bench/results/dataio.json.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from _common import DATA  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dataio.json"
PEER = """
import json, sys, time, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from tidepool_cli.ops.view import IndexView
src = IndexView(sys.argv[1]).sources()[0]
table = pa.table({"id": pa.array(np.asarray(src.ids)),
                  "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(src.vectors).reshape(-1)), src.vectors.shape[1])})
t = time.perf_counter()
pq.write_table(table, sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t, "rows": table.num_rows}))
"""


def measured(cmd: list[str], repeats: int, before=lambda: None) -> dict:
    """Median wall seconds, largest peak RSS and the last stdout of ``repeats`` runs of ``cmd``."""
    times, rss, out = [], [], ""
    for _ in range(repeats):
        before()
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        times.append(time.perf_counter() - t)
        out = p.stdout.read().decode()
        if status:
            raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr.read().decode()}")
        rss.append(usage.ru_maxrss * 1024)
    return {"seconds": statistics.median(times), "peak_rss_bytes": max(rss), "stdout": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic Parquet file to ingest")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tidepool = [sys.executable, "-m", "tidepool_cli", "-q"]
    work = Path(tempfile.mkdtemp(prefix="tidepool-dataio-"))
    results: dict = {"threads": os.environ["OMP_NUM_THREADS"], "repeats": args.repeats}
    try:
        idx = work / "glove"
        subprocess.run([*tidepool, "ingest", idx, "--input", DATA / "glove-50-angular" / "base.npy", "--metric", "cosine"], check=True)
        subprocess.run([*tidepool, "compact", idx], check=True)
        n = 390_000
        peer = measured([sys.executable, "-c", PEER, idx, work / "peer.parquet"], args.repeats)
        peer_s = json.loads(peer["stdout"])["seconds"]
        results["peer_write_table"] = {"rows_per_s": n / peer_s, "seconds": peer_s, "peak_rss_bytes": peer["peak_rss_bytes"]}
        for fmt in ("parquet", "jsonl"):
            out = work / f"out.{fmt}"
            m = measured([*tidepool, "export", idx, "--output", out, "--json"], args.repeats, before=lambda o=out: o.unlink(missing_ok=True))
            inner = json.loads(m["stdout"])["seconds"]  # the export itself, without interpreter start-up and imports
            results[f"export_{fmt}"] = {"rows": n, "seconds": inner, "rows_per_s": n / inner, "vs_write_table": peer_s / inner,
                                        "cli_seconds": m["seconds"], "cli_rows_per_s": n / m["seconds"],
                                        "peak_rss_bytes": m["peak_rss_bytes"], "bytes": out.stat().st_size}
        shutil.rmtree(idx)

        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.rows, 128), dtype=np.float32)
        np.save(work / "big.npy", x)
        pq.write_table(pa.table({"vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 128)}), work / "big.parquet", row_group_size=65536)
        del x
        for fmt in ("parquet", "npy"):
            target = work / f"idx-{fmt}"
            m = measured([*tidepool, "ingest", target, "--input", work / f"big.{fmt}"], args.repeats,
                         before=lambda t=target: shutil.rmtree(t, ignore_errors=True))
            results[f"ingest_{fmt}"] = {"rows": args.rows, "seconds": m["seconds"], "rows_per_s": args.rows / m["seconds"], "peak_rss_bytes": m["peak_rss_bytes"]}
        results["ingest_parquet"]["vs_npy"] = results["ingest_parquet"]["rows_per_s"] / results["ingest_npy"]["rows_per_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mb = lambda b: f"{b / 2**20:,.0f} MB"
    rows = [
        ("export glove 390k x 50 -> Parquet", f"{results['export_parquet']['rows_per_s']:,.0f} rows/s", mb(results["export_parquet"]["peak_rss_bytes"]),
         f"{results['export_parquet']['vs_write_table']:.2f}x write_table"),
        ("export glove 390k x 50 -> JSONL", f"{results['export_jsonl']['rows_per_s']:,.0f} rows/s", mb(results["export_jsonl"]["peak_rss_bytes"]),
         f"{results['export_jsonl']['vs_write_table']:.2f}x write_table"),
        ("pyarrow.parquet.write_table (peer)", f"{results['peer_write_table']['rows_per_s']:,.0f} rows/s", mb(results["peer_write_table"]["peak_rss_bytes"]), "in-memory table"),
        (f"ingest Parquet {args.rows:,} x 128 (fsync incl.)", f"{results['ingest_parquet']['rows_per_s']:,.0f} rows/s", mb(results["ingest_parquet"]["peak_rss_bytes"]),
         f"{results['ingest_parquet']['vs_npy']:.2f}x .npy"),
        (f"ingest .npy {args.rows:,} x 128 (fsync incl.)", f"{results['ingest_npy']['rows_per_s']:,.0f} rows/s", mb(results["ingest_npy"]["peak_rss_bytes"]), ""),
    ]
    print("export: rows/s of the export itself (the CLI's --json seconds); peak RSS of the whole CLI process")
    print(f"{'what':45} {'speed':>18} {'peak RSS':>10}  ratio")
    for what, speed, rss, ratio in rows:
        print(f"{what:45} {speed:>18} {rss:>10}  {ratio}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
