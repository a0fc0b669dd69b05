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
from _common import DATA, timed  # noqa: E402



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


def _worker(kind: str, base: str, queries: str, index: str, repeats: int) -> None:
    """Time one peer in this process (run as a subprocess, so thread pools never compete)."""
    xq = np.load(queries)
    if kind == "faiss":
        import faiss

        faiss.omp_set_num_threads(int(THREADS))
        xb = np.load(base)
        flat = faiss.IndexFlatL2(xb.shape[1])
        flat.add(xb)
        flat.search(xq, 10)
        t, _ = timed(lambda: flat.search(xq, 10), repeats)
        ids = flat.search(xq, 10)[1]
    else:
        searcher = Searcher(index, params=SearchParams(exact=True))
        searcher.search(xq, 10)
        t, _ = timed(lambda: searcher.search(xq, 10), repeats)
        ids = np.array(searcher.search(xq, 10).ids)
    print(json.dumps({"seconds": t, "ids": ids[:50].tolist()}))


def _run_worker(kind: str, work: Path, repeats: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, str(work / "b100k.npy"), str(work / "q1k.npy"), str(work / "idx100k"), str(repeats)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def bench_exact_vs_faiss(work: Path, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((100_000, 128), dtype=np.float32)
    xq = rng.standard_normal((1000, 128), dtype=np.float32)
    np.save(work / "b100k.npy", xb)
    np.save(work / "q1k.npy", xq)
    idx = work / "idx100k"
    ingest(idx, work / "b100k.npy")
    compact(idx)
    out = {"n": 100_000, "nq": 1000, "k": 10, "threads": int(THREADS)}
    try:
        import faiss  # noqa: F401

        peers = ["tidepool", "faiss"]
    except ImportError:
        peers = ["tidepool"]
    times: dict[str, list[float]] = {p: [] for p in peers}
    ids = {}
    for _ in range(3):  # alternate whole processes so both see the same machine load
        for p in peers:
            r = _run_worker(p, work, repeats)
            times[p].append(r["seconds"])
            ids[p] = np.array(r["ids"])
    out["tidepool_qps"] = 1000 / statistics.median(times["tidepool"])
    if "faiss" in times:
        out["faiss_flat_qps"] = 1000 / statistics.median(times["faiss"])
        out["ratio_vs_faiss"] = out["tidepool_qps"] / out["faiss_flat_qps"]
        out["agreement_with_faiss"] = float((ids["tidepool"] == ids["faiss"]).mean())
    # One query, the whole process: start, imports, open, search, JSON out, exit.
    vec = json.dumps(xq[0].tolist())
    cmd = [sys.executable, "-m", "tidepool_cli", "query", str(idx), "--vector", vec, "-k", "10"]
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    out["cli_single_query_seconds"], _ = timed(lambda: subprocess.run(cmd, capture_output=True, check=True), max(7, repeats))
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
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], *sys.argv[3:6], int(sys.argv[6]))
        return
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
            "exact_search": bench_exact_vs_faiss(work, 5),
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
