"""Foundation benchmarks: ingest and compact throughput, exact search vs faiss, CLI latency, recall.

Usage: python bench/bench_foundation.py [--rows 1000000] [--repeats 3] [--out bench/results/foundation.json]

Speed is reported as medians of several repeats and, where a peer exists, as a ratio to
the peer measured in the same run with the same number of threads (2, pinned below).
faiss-cpu is an optional benchmark extra (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import os

THREADS = "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = THREADS

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

from tidepool_cli.engine.recall import recall_at_k  # noqa: E402
from tidepool_cli.ops.compact import compact  # noqa: E402
from tidepool_cli.ops.ingest import ingest  # noqa: E402
from tidepool_cli.ops.planner import SearchParams  # noqa: E402
from tidepool_cli.ops.query import Searcher  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_ingest_compact(work: Path, rows: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, 128), dtype=np.float32)
    src = work / "big.npy"
    np.save(src, x)
    del x
    ingest_s, compact_s = [], []
    for r in range(repeats):
        idx = work / f"big{r}"
        t = time.perf_counter()
        ingest(idx, src)
        ingest_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        compact(idx)
        compact_s.append(time.perf_counter() - t)
        shutil.rmtree(idx)
    return {
        "rows": rows,
        "ingest_seconds": statistics.median(ingest_s),
        "ingest_vectors_per_s": rows / statistics.median(ingest_s),
        "compact_seconds": statistics.median(compact_s),
    }


def bench_exact_vs_faiss(work: Path, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((100_000, 128), dtype=np.float32)
    xq = rng.standard_normal((1000, 128), dtype=np.float32)
    np.save(work / "b100k.npy", xb)
    idx = work / "idx100k"
    ingest(idx, work / "b100k.npy")
    compact(idx)
    searcher = Searcher(idx, params=SearchParams(exact=True))
    out = {"n": 100_000, "nq": 1000, "k": 10, "threads": int(THREADS)}
    try:
        import faiss

        faiss.omp_set_num_threads(int(THREADS))
        flat = faiss.IndexFlatL2(128)
        flat.add(xb)
    except ImportError:
        flat = None
    ours, peer = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        ours.append(median_time(lambda: searcher.search(xq, 10), 1))
        if flat is not None:
            peer.append(median_time(lambda: flat.search(xq, 10), 1))
    out["tidepool_qps"] = 1000 / statistics.median(ours)
    if peer:
        out["faiss_flat_qps"] = 1000 / statistics.median(peer)
        out["ratio_vs_faiss"] = out["tidepool_qps"] / out["faiss_flat_qps"]
        _, I = flat.search(xq, 10)
        out["agreement_with_faiss"] = float((np.array(searcher.search(xq, 10).ids) == I).mean())
    # One query, the whole process: start, imports, open, search, JSON out, exit.
    vec = json.dumps(xq[0].tolist())
    cmd = [sys.executable, "-m", "tidepool_cli", "query", str(idx), "--vector", vec, "-k", "10"]
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    out["cli_single_query_seconds"] = median_time(lambda: subprocess.run(cmd, capture_output=True, check=True), max(5, repeats))
    return out


def bench_recall(work: Path) -> dict:
    out = {}
    for name in ("siftsmall", "fashion-mnist"):
        d = DATA / name
        if not d.exists():
            continue
        idx = work / f"r-{name}"
        ingest(idx, d / "base.npy")
        compact(idx)
        xq = np.load(d / "queries.npy").astype(np.float32)
        gt, gt_dist = np.load(d / "gt.npy"), np.load(d / "gt_dist.npy")
        res = Searcher(idx, params=SearchParams(exact=True)).search(xq, 10)
        out[name] = {
            "queries": len(xq),
            "recall_at_10": recall_at_k(np.array(res.ids), gt, 10),
            "recall_at_10_tie_aware": recall_at_k(np.array(res.ids), gt, 10, found_dist=res.distances, gt_dist=gt_dist),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="tidepool foundation benchmarks")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "foundation.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TIDEPOOL_BENCH_DIR")) as tmp:
        work = Path(tmp)
        results = {
            "threads": int(THREADS),
            "ingest_compact": bench_ingest_compact(work, args.rows, args.repeats),
            "exact_search": bench_exact_vs_faiss(work, max(args.repeats, 5)),
            "recall": bench_recall(work),
        }
    ic, ex = results["ingest_compact"], results["exact_search"]
    rows = [
        ("ingest .npy, %d x 128 (fsync included)" % ic["rows"], f"{ic['ingest_vectors_per_s']:,.0f} vectors/s", ">= 500,000 vectors/s"),
        ("compact that WAL", f"{ic['compact_seconds']:.2f} s", "<= 10 s"),
        ("exact batch query, 1,000 x 100k x 128, k=10", f"{ex['tidepool_qps']:,.0f} QPS", ""),
        ("faiss IndexFlatL2, same run, 2 threads", f"{ex.get('faiss_flat_qps', float('nan')):,.0f} QPS", ""),
        ("ratio tidepool / faiss", f"{ex.get('ratio_vs_faiss', float('nan')):.2f}", ">= 0.7"),
        ("`tidepool query` one query, whole process", f"{ex['cli_single_query_seconds']:.3f} s", "<= 0.35 s"),
    ]
    for name, r in results["recall"].items():
        rows.append((f"exact recall@10 on {name} ({r['queries']} queries)", f"{r['recall_at_10']:.4f}", "= 1.0"))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>22}  bar")
    for name, value, bar in rows:
        print(f"{name:<{width}}  {value:>22}  {bar}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
