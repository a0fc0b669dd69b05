"""The planner's default choice against every path it could have taken, and against peers.

Per data set (one compacted segment with both build-hnsw and build-ivf):

1. ``query --recall R`` for R in 0.9, 0.95, 0.99: recall@10 delivered on the real
   queries (tie-aware, against ../shared/data ground truth); the bar is >= R - 0.01.
2. At the default target (0.95), for batches of 1, 10, 100, 1,000 and 10,000 queries
   (the real queries, tiled when there are fewer): the planner's default against each
   path forced at the knob its curve gives for the target (exact, HNSW at that
   ef_search, IVF at that nprobe), same run; ratio default / fastest (bar <= 1.15).
3. At batch 10,000: the default's throughput against hnswlib (M 16, efC 200) and faiss
   (HNSW32, IVF-Flat with nlist = 4 sqrt(n)), each at the smallest ef / nprobe of a
   ladder that gives recall@10 >= 0.95 on the real queries, same thread count (bar >= 0.8).

4. ``tidepool query`` of one vector, whole process, on a 100,000 x 128 index with an
   HNSW graph (siftsmall's rows with noise, ten times over): median of 7 (bar <= 0.3 s).

Usage: python bench/bench_planner.py [--datasets a,b] [--work DIR] [--no-peers] [--no-cli]
``--work`` keeps the built indexes between runs. Writes bench/results/planner.json.
"""

from __future__ import annotations

import os

THREADS = 2
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from tidepool_cli.engine.recall import recall_at_k  # noqa: E402
from tidepool_cli.ops.build_hnsw import build_hnsw  # noqa: E402
from tidepool_cli.ops.build_ivf import build_ivf  # noqa: E402
from tidepool_cli.ops.compact import compact  # noqa: E402
from tidepool_cli.ops.ingest import ingest  # noqa: E402
from tidepool_cli.ops.planner import SearchParams  # noqa: E402
from tidepool_cli.ops.query import Searcher  # noqa: E402
from _common import DATA, load, timed  # noqa: E402

DATASETS = "siftsmall,fashion-mnist,glove-50-angular,debian-minilm"
BATCHES = (1, 10, 100, 1000, 10000)
RECALLS = (0.9, 0.95, 0.99)
TARGET = 0.95
SINGLE_QUERIES = 20
"""Batch 1 is timed as the median over this many different single queries."""
PEER_EF = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def build(name: str, work: Path) -> Path:
    idx = work / name
    if not (idx / "CURRENT").exists():
        metric = "cosine" if json.loads((DATA / name / "meta.json").read_text())["metric"] == "angular" else "l2"
        xb = np.load(DATA / name / "base.npy").astype(np.float32)
        np.save(work / f"{name}.npy", xb)
        ingest(idx, work / f"{name}.npy", metric=metric)
        compact(idx)
        build_hnsw(idx, min_rows=0)
        build_ivf(idx, min_rows=0)
        (work / f"{name}.npy").unlink()
    return idx


def tiled(xq: np.ndarray, n: int) -> np.ndarray:
    return np.tile(xq, (math.ceil(n / len(xq)), 1))[:n]


def time_batches(searchers: dict[str, Searcher], xq: np.ndarray, b: int) -> dict[str, float]:
    """Seconds per batch of ``b`` queries for each searcher, runs interleaved, median of repeats.

    Batch 1 is the median over :data:`SINGLE_QUERIES` different single queries.
    """
    times: dict[str, list[float]] = {label: [] for label in searchers}
    if b == 1:
        for i in range(SINGLE_QUERIES):
            for label, s in searchers.items():
                times[label].append(timed(lambda: s.search(xq[i % len(xq) : i % len(xq) + 1], 10))[0])
    else:
        q = tiled(xq, b)
        for _ in range(5 if b <= 100 else 3):
            for label, s in searchers.items():
                times[label].append(timed(lambda: s.search(q, 10))[0])
    out = {label: float(np.median(t)) for label, t in times.items()}
    out.update({f"{label}_min": float(np.min(t)) for label, t in times.items()})
    return out


def run_dataset(name: str, work: Path, peers: bool) -> dict:
    xb, xq, gt, gt_dist, metric = load(name)
    idx = build(name, work)
    out: dict = {"n": len(xb), "d": xb.shape[1], "queries": len(xq), "metric": metric, "recall": {}, "batches": {}}
    for r in RECALLS:
        res = Searcher(idx, params=SearchParams(recall=r)).search(xq, 10)
        got = recall_at_k(np.array(res.ids), gt, 10, found_dist=res.distances, gt_dist=gt_dist)
        work_ = res.explain.sources[0]
        out["recall"][str(r)] = {"recall_at_10": round(got, 4), "path": work_.path, **work_.knobs, "meets": got >= r - 0.01}
    default = Searcher(idx)
    from tidepool_cli.ops.paths import HnswPath, IvfPath

    # Each path forced at the knob its own curve gives for the target.
    src = default.sources[0][0]
    forced = {"exact": SearchParams(exact=True),
              "hnsw": SearchParams(ef_search=HnswPath().pick(src, TARGET, None, 16)[0]),
              "ivf": SearchParams(nprobe=IvfPath().pick(src, TARGET, None, 16)[0])}
    out["forced_knobs"] = {"hnsw": forced["hnsw"].ef_search, "ivf": forced["ivf"].nprobe}
    searchers = {"default": default, **{label: Searcher(idx, params=p) for label, p in forced.items()}}
    for b in BATCHES:
        row = time_batches(searchers, xq, b)
        row["default_path"] = _path_of(default, b)
        fastest = min(forced, key=lambda lab: row[lab])
        row["fastest"] = fastest
        row["ratio"] = round(row["default"] / row[fastest], 3)
        # The same ratio on the fastest repeat of each: machine noise only adds time.
        row["ratio_min"] = round(row["default_min"] / min(row[f"{lab}_min"] for lab in forced), 3)
        out["batches"][str(b)] = row
    if peers:
        out["peers"] = peer_throughput(xb, xq, gt, gt_dist, metric)
        qps = 10000 / out["batches"]["10000"]["default"]
        out["default_qps_10000"] = qps
        best = max(out["peers"].values(), key=lambda p: p["qps"])
        out["peer_ratio"] = round(qps / best["qps"], 3)
    return out


def _path_of(searcher: Searcher, b: int) -> str:
    from tidepool_cli.ops.paths import Batch
    from tidepool_cli.ops.planner import choose

    src, allowed = searcher.sources[0]
    return choose(src, Batch(b, 10, src.rows, int(allowed.sum()), src.vectors.shape[1]), searcher.params)[1].path


def _ladder_qps(search, xq, gt, gt_dist, settings) -> dict:
    q = tiled(xq, 10000)
    gt10, gd10 = np.tile(gt, (math.ceil(10000 / len(gt)), 1))[:10000], np.tile(gt_dist, (math.ceil(10000 / len(gt)), 1))[:10000]
    for s in settings:
        secs, (D, I) = timed(lambda: search(q, s), repeats=2)
        rec = recall_at_k(I, gt10, 10, found_dist=D, gt_dist=gd10)
        if rec >= TARGET:
            return {"setting": s, "recall_at_10": round(rec, 4), "qps": 10000 / secs}
    return {"setting": settings[-1], "recall_at_10": round(rec, 4), "qps": 10000 / secs}


def peer_throughput(xb, xq, gt, gt_dist, metric) -> dict:
    import faiss
    import hnswlib

    faiss.omp_set_num_threads(THREADS)
    space = "l2" if metric == "l2" else "ip"
    out = {}
    h = hnswlib.Index(space=space, dim=xb.shape[1])
    h.init_index(max_elements=len(xb), M=16, ef_construction=200, random_seed=0)
    h.set_num_threads(THREADS)
    h.add_items(xb)

    def hs(q, ef):
        h.set_ef(ef)
        I, D = h.knn_query(q, k=10)
        return (D if metric == "l2" else D).astype(np.float32), I.astype(np.int64)

    out["hnswlib"] = _ladder_qps(hs, xq, gt, gt_dist, PEER_EF)
    del h
    mt = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    fh = faiss.IndexHNSWFlat(xb.shape[1], 32, mt)
    fh.add(xb)

    def fs(q, ef):
        fh.hnsw.efSearch = ef
        D, I = fh.search(q, 10)
        return (D if metric == "l2" else 1 - D).astype(np.float32), I

    out["faiss-hnsw32"] = _ladder_qps(fs, xq, gt, gt_dist, PEER_EF)
    del fh
    nlist = int(4 * math.sqrt(len(xb)))
    quant = faiss.IndexFlat(xb.shape[1], mt)
    fi = faiss.IndexIVFFlat(quant, xb.shape[1], nlist, mt)
    fi.train(xb)
    fi.add(xb)

    def fv(q, nprobe):
        fi.nprobe = nprobe
        D, I = fi.search(q, 10)
        return (D if metric == "l2" else 1 - D).astype(np.float32), I

    out["faiss-ivfflat"] = _ladder_qps(fv, xq, gt, gt_dist, [p for p in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256) if p <= nlist])
    out["faiss-ivfflat"]["nlist"] = nlist
    return out


def cli_one_query(work: Path, repeats: int = 7) -> dict:
    """Whole-process ``tidepool query`` of one vector on a 100,000 x 128 index with HNSW."""
    import subprocess
    import sys

    idx = work / "cli-100k"
    base = np.load(DATA / "siftsmall" / "base.npy").astype(np.float32)
    rng = np.random.default_rng(0)
    if not (idx / "CURRENT").exists():
        xb = np.concatenate([base + rng.normal(scale=4.0, size=base.shape).astype(np.float32) for _ in range(10)])
        np.save(work / "cli-100k.npy", xb)
        ingest(idx, work / "cli-100k.npy")
        compact(idx)
        build_hnsw(idx, min_rows=0)
        (work / "cli-100k.npy").unlink()
    q = json.dumps(np.load(DATA / "siftsmall" / "queries.npy")[0].tolist())
    cmd = [sys.executable, "-m", "tidepool_cli", "query", str(idx), "--vector", q, "-k", "10", "--explain"]
    # As installed: Python caches compiled modules (a warm-up run writes them).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(cmd, capture_output=True, check=True, env=env)
    secs, out = timed(lambda: subprocess.run(cmd, capture_output=True, check=True, text=True, env=env), repeats)
    path = json.loads(out.stdout)["explain"][0]["sources"][0]["path"]
    # The floor on this machine right now: a Python process that only imports NumPy.
    floor, _ = timed(lambda: subprocess.run([sys.executable, "-c", "import numpy"], check=True, env=env), repeats)
    return {"rows": 100_000, "dim": 128, "seconds": secs, "path": path, "python_import_numpy_seconds": floor}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--work", default=None, help="Directory that keeps the built indexes between runs.")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-cli", action="store_true", help="Skip the one-query whole-process timing.")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "planner.json"))
    args = ap.parse_args()
    results = {"threads": THREADS, "target": TARGET, "datasets": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TIDEPOOL_BENCH_DIR")) as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in filter(None, args.datasets.split(",")):
            results["datasets"][name] = r = run_dataset(name, work, not args.no_peers)
            print(json.dumps({name: r}), flush=True)
        if not args.no_cli:
            results["cli_one_query"] = cli_one_query(work)
    print(f"\n{'data set':<18} {'batch':>6} {'default s':>10} {'path':<15} {'exact s':>9} {'hnsw s':>9} {'ivf s':>9} {'ratio':>6} {'ratio(min)':>10}")
    for name, r in results["datasets"].items():
        for b, row in r["batches"].items():
            print(f"{name:<18} {b:>6} {row['default']:>10.4f} {row['default_path']:<15} {row['exact']:>9.4f} {row['hnsw']:>9.4f} "
                  f"{row['ivf']:>9.4f} {row['ratio']:>6.2f} {row['ratio_min']:>10.2f}")
    print(f"\n{'data set':<18} {'--recall':>8} {'recall@10':>10} {'path':<8} meets R-0.01")
    for name, r in results["datasets"].items():
        for R, row in r["recall"].items():
            print(f"{name:<18} {R:>8} {row['recall_at_10']:>10.4f} {row['path']:<8} {row['meets']}")
    if not args.no_peers:
        print(f"\n{'data set':<18} {'default QPS':>11} {'best peer':<14} {'peer QPS':>9} {'ratio':>6}")
        for name, r in results["datasets"].items():
            best = max(r["peers"], key=lambda p: r["peers"][p]["qps"])
            print(f"{name:<18} {r['default_qps_10000']:>11,.0f} {best:<14} {r['peers'][best]['qps']:>9,.0f} {r['peer_ratio']:>6.2f}")
    if "cli_one_query" in results:
        c = results["cli_one_query"]
        print(f"\n`tidepool query`, one query, whole process, 100,000 x 128 with HNSW: {c['seconds']:.3f} s (path {c['path']}; bar <= 0.3 s); "
              f"`python -c 'import numpy'` in the same run: {c['python_import_numpy_seconds']:.3f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
