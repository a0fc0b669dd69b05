"""Benchmark the quantizers and the cascade (kernel level) against faiss-cpu peers.

Per data set and codec: training and encoding time, bytes per vector in RAM (codes +
factors), reconstruction error (relative MSE on the base sample), recall@10 of the
cascade against the shipped exact ground truth, batch throughput (queries per second over
the whole query batch) and the fraction of (query, row) pairs that needed an exact f32
distance. Peers, same process, same thread count (2), taking turns run by run:
faiss IndexScalarQuantizer(SQ8) + IndexRefineFlat, PQ fast-scan (4-bit) + IndexRefineFlat,
and IndexRaBitQ behind a random rotation + IndexRefineFlat, each at the smallest refine
k_factor of {1, 2, 4, 8, 16, 32} that reaches recall@10 >= 0.95. Ratios are tidepool QPS
over the peer's QPS at that setting. Every time is the median of ``--repeats`` runs.

Writes bench/results/quantize.json and bench/results/quantize_recall.png
(recall@10 versus bytes per vector and versus QPS).

Usage: python bench/bench_quantize.py [--datasets siftsmall,glove-50-angular,...]
       [--queries 1000] [--repeats 3] [--codecs sq8,rabitq-nbits1,...] [--synthetic 1000000] [--no-peers]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "2"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tidepool_cli.engine.quantize import train_quantizer  # noqa: E402
from tidepool_cli.engine.quantize.cascade import cascade_search  # noqa: E402
from tidepool_cli.engine.recall import recall_at_k  # noqa: E402
from tidepool_cli.engine.topk import knn  # noqa: E402
from _common import load, timed  # noqa: E402

try:
    import faiss

    faiss.omp_set_num_threads(2)
except ImportError:  # faiss is optional: tidepool numbers are still written
    faiss = None

RESULTS = ROOT / "bench" / "results"
K = 10
TARGET = 0.95
VARIANTS = [
    ("f16", {}),
    ("sq8", {}),
    ("sq4", {}),
    ("pq", {"nbits": 8}),
    ("pq", {"nbits": 4}),
    ("rabitq", {"nbits": 1}),
    ("rabitq", {"nbits": 2}),
    ("rabitq", {"nbits": 4}),
]
K_FACTORS = (1, 2, 4, 8, 16, 32)


def label(codec: str, params: dict) -> str:
    return codec + "".join(f"-{k}{v}" for k, v in params.items())


def bench_tidepool(xb, xq, gt, gt_dist, metric, codec, params, repeats):
    t = time.perf_counter()
    q = train_quantizer(codec, xb, metric, seed=0, **params)
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    enc = q.encode(xb)
    encode_s = time.perf_counter() - t
    sample = slice(0, min(len(xb), 5000))
    xh = q.decode(enc.codes[sample], enc.factors[sample])
    xs = xb[sample].astype(np.float64)
    rel_mse = float(((xh - xs) ** 2).sum() / ((xs - xs.mean(0)) ** 2).sum())
    secs, res = timed(lambda: cascade_search(xq, K, q, enc.codes, enc.factors, xb), repeats)
    rec = recall_at_k(res.ids, gt, K, found_dist=res.distances, gt_dist=gt_dist)
    return {
        "method": f"tidepool {label(codec, params)}",
        "bytes_per_vector": q.bytes_per_vector,
        "train_s": round(train_s, 3),
        "encode_s": round(encode_s, 3),
        "rel_mse": round(rel_mse, 5),
        "recall@10": round(rec, 4),
        "qps": round(len(xq) / secs, 1),
        "f32_fraction": round(res.f32_fraction, 5),
        "f32_rows_per_query": round(res.f32_pairs / len(xq), 1),
    }


def faiss_peers(xb, xq, gt, gt_dist, metric, repeats):
    if faiss is None:
        return []
    d = xb.shape[1]
    fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    m4 = next(m for m in (d // 4, d // 2, d) if m and d % m == 0)
    specs = [("faiss SQ8+refine", "SQ8", d + 0), ("faiss PQ%dx4fs+refine" % m4, f"PQ{m4}x4fs", m4 // 2)]
    if hasattr(faiss, "IndexRaBitQ"):
        specs.append(("faiss RR+RaBitQ+refine", f"RR{d},RaBitQ", -(-d // 8) + 8))
    out = []
    for name, factory, code_bytes in specs:
        t = time.perf_counter()
        index = faiss.index_factory(d, factory + ",Refine(Flat)", fm)
        index.train(xb)
        index.add(xb)
        build_s = time.perf_counter() - t
        row = {"method": name, "bytes_per_vector": code_bytes, "build_s": round(build_s, 3)}
        for kf in K_FACTORS:
            params = faiss.IndexRefineSearchParameters(k_factor=kf)
            secs, (D, I) = timed(lambda: index.search(xq, K, params=params), repeats)
            dist = D if metric == "l2" else (1 - D if metric == "cosine" else -D)
            rec = recall_at_k(I, gt, K, found_dist=dist, gt_dist=gt_dist)
            row.update({"k_factor": kf, "recall@10": round(rec, 4), "qps": round(len(xq) / secs, 1),
                        "f32_fraction": round(kf * K / len(xb), 5)})
            if rec >= TARGET:
                break
        out.append(row)
    return out


def synthetic(n: int, nq: int, d: int = 128, seed: int = 0):
    """Clustered rows (1,000 Gaussian clusters of spread 1 around centres of spread 4),
    queries from the same distribution; ground truth by the exact top-k kernel."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32) * 4
    xb = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        xb[s : s + m] = centres[rng.integers(1000, size=m)] + rng.standard_normal((m, d)).astype(np.float32)
    xq = centres[rng.integers(1000, size=nq)] + rng.standard_normal((nq, d)).astype(np.float32)
    gt_dist, gt = knn(xq, xb, 100, "l2")
    return xb, xq, gt, gt_dist, "l2"


def plot(results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(len(results), 2, figsize=(11, 3.2 * len(results)), squeeze=False)
    for (name, rows), (a, b) in zip(results.items(), axes):
        for r in rows:
            mk = "o" if r["method"].startswith("tidepool") else "x"
            a.scatter(r["bytes_per_vector"], r["recall@10"], marker=mk)
            a.annotate(r["method"].replace("tidepool ", ""), (r["bytes_per_vector"], r["recall@10"]), fontsize=6)
            b.scatter(r["qps"], r["recall@10"], marker=mk)
            b.annotate(r["method"].replace("tidepool ", ""), (r["qps"], r["recall@10"]), fontsize=6)
        a.set(xscale="log", xlabel="bytes per vector in RAM", ylabel="recall@10", title=name)
        b.set(xscale="log", xlabel="queries per second (batch)", ylabel="recall@10", title=name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="siftsmall,fashion-mnist,glove-50-angular,debian-minilm")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--codecs", default=",".join(label(c, p) for c, p in VARIANTS))
    ap.add_argument("--synthetic", type=int, default=0, help="rows of a synthetic clustered 128-d set (0: none)")
    ap.add_argument("--no-peers", action="store_true", help="skip the faiss peers")
    args = ap.parse_args()
    wanted = set(args.codecs.split(","))
    results = {}
    names = [n for n in args.datasets.split(",") if n] + ([f"synthetic-{args.synthetic}"] if args.synthetic else [])
    for name in names:
        if name.startswith("synthetic-"):
            xb, xq, gt, gt_dist, metric = synthetic(args.synthetic, args.queries)
        else:
            xb, xq, gt, gt_dist, metric = load(name)
        xq, gt, gt_dist = xq[: args.queries], gt[: args.queries], gt_dist[: args.queries]
        rows = []
        for codec, params in VARIANTS:
            if label(codec, params) not in wanted:
                continue
            rows.append(bench_tidepool(xb, xq, gt, gt_dist, metric, codec, params, args.repeats))
            print(name, rows[-1], flush=True)
        for r in [] if args.no_peers else faiss_peers(xb, xq, gt, gt_dist, metric, args.repeats):
            rows.append(r)
            print(name, r, flush=True)
        peers = {r["method"].split("+")[0].split()[1][:2]: r for r in rows if r["method"].startswith("faiss")}
        for r in rows:
            if r["method"].startswith("tidepool"):
                peer = peers.get("SQ") if ("sq" in r["method"] or "f16" in r["method"]) else peers.get("PQ") if "pq" in r["method"] else peers.get("RR")
                if peer and peer["recall@10"] >= TARGET:
                    r["qps_ratio_vs_" + peer["method"]] = round(r["qps"] / peer["qps"], 3)
        results[name] = rows
    print()
    print(f"{'data set':18} {'method':34} {'B/vec':>6} {'recall@10':>9} {'QPS':>9} {'f32 frac':>9} {'ratio':>7}")
    for name, rows in results.items():
        for r in rows:
            ratio = next((v for k, v in r.items() if k.startswith("qps_ratio")), "")
            print(f"{name:18} {r['method']:34} {r['bytes_per_vector']:6d} {r['recall@10']:9.4f} {r['qps']:9.1f} {r['f32_fraction']:9.5f} {ratio!s:>7}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"threads": 2, "queries": args.queries, "repeats": args.repeats, "k": K, "machine": platform.machine(),
            "numpy": np.__version__, "faiss": getattr(faiss, "__version__", None)}
    out = RESULTS / "quantize.json"
    # Runs over different data sets (or codec lists) accumulate: each run replaces its own sets.
    old = json.loads(out.read_text()) if out.exists() else {"results": {}}
    merged = {**old["results"], **results}
    meta["runs"] = {**old.get("meta", {}).get("runs", {}), **{n: {"queries": args.queries, "codecs": sorted(wanted)} for n in results}}
    out.write_text(json.dumps({"meta": meta, "results": merged}, indent=2) + "\n")
    plot(merged, RESULTS / "quantize_recall.png")


if __name__ == "__main__":
    main()
