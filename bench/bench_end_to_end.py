"""End-to-end: index directories built and queried through tidepool's ops layer.

Per data set: ingest + compact, build-hnsw, build-ivf (both forced onto the single
segment with min_rows=0), then batch query throughput and recall@10 (tie-aware, against
the exact ground truth in ../shared/data) for each access path the planner can take:
exact, HNSW at the ef_search and IVF at the nprobe each build calibrated for its index
(the defaults a `tidepool query` without --ef-search/--nprobe uses). This is what `tidepool
query` does after opening the index (filter masks, per-segment planning, merge, id and
attribute mapping), so it includes everything the kernel benchmarks
(bench_hnsw.py, bench_ivf.py) leave out.

Usage: python bench/bench_end_to_end.py [--datasets siftsmall,fashion-mnist,glove-50-angular] [--repeats 3]
Writes bench/results/end_to_end.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "2"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
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
from tidepool_cli.ops.stats import stats  # noqa: E402
from _common import DATA, timed  # noqa: E402

def run_dataset(name: str, work: Path, repeats: int) -> dict:
    d = DATA / name
    meta = json.loads((d / "meta.json").read_text())
    metric = "cosine" if meta["metric"] == "angular" else "l2"
    xq = np.load(d / "queries.npy").astype(np.float32)
    gt, gt_dist = np.load(d / "gt.npy"), np.load(d / "gt_dist.npy")
    idx = work / name
    out: dict = {"n": meta["n"], "d": meta["d"], "queries": len(xq), "metric": metric}
    out["ingest_s"], _ = timed(lambda: ingest(idx, d / "base.npy", metric=metric))
    out["compact_s"], _ = timed(lambda: compact(idx))
    out["build_hnsw_s"], _ = timed(lambda: build_hnsw(idx, min_rows=0))
    out["build_ivf_s"], _ = timed(lambda: build_ivf(idx, min_rows=0))
    indexes = stats(idx).segments[0].indexes
    settings = {"hnsw": {"ef_search": indexes["hnsw"]["ef_search"]}, "ivf": {"nprobe": indexes["ivf"]["nprobe"]}}
    paths = {
        "exact": SearchParams(exact=True),
        "hnsw": SearchParams(),
        "ivf": SearchParams(nprobe=settings["ivf"]["nprobe"]),  # prefer IVF over the graph
    }
    out["paths"] = {}
    for label, params in paths.items():
        searcher = Searcher(idx, params=params)
        times, res = [], None
        for _ in range(repeats):
            t, res = timed(lambda: searcher.search(xq, 10))
            times.append(t)
        assert set(res.paths.values()) == {label}, res.paths
        ids = np.array(res.ids)
        out["paths"][label] = {
            "qps": len(xq) / statistics.median(times),
            "recall_at_10": recall_at_k(ids, gt, 10, found_dist=res.distances, gt_dist=gt_dist),
            **settings.get(label, {}),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="siftsmall,fashion-mnist,glove-50-angular")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "end_to_end.json"))
    args = ap.parse_args()
    results = {"threads": 2, "datasets": {}}
    with tempfile.TemporaryDirectory(dir=os.environ.get("TIDEPOOL_BENCH_DIR")) as tmp:
        for name in args.datasets.split(","):
            if (DATA / name).exists():
                results["datasets"][name] = run_dataset(name, Path(tmp), args.repeats)
    print(f"{'data set':<18} {'path':<6} {'setting':<14} {'QPS':>9} {'recall@10':>10}   build (s)")
    for name, r in results["datasets"].items():
        builds = {"exact": r["ingest_s"] + r["compact_s"], "hnsw": r["build_hnsw_s"], "ivf": r["build_ivf_s"]}
        for label, p in r["paths"].items():
            setting = " ".join(f"{k}={v}" for k, v in p.items() if k in ("ef_search", "nprobe"))
            print(f"{name:<18} {label:<6} {setting:<14} {p['qps']:>9,.0f} {p['recall_at_10']:>10.4f}   {builds[label]:.1f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
