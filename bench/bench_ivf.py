"""Benchmark tidepool's IVF kernels against faiss IndexIVFFlat (same nlist, same nprobe).

Measures, per data set: build time, recall@10 against exact ground truth and batch
query throughput over an nprobe sweep for both libraries, query time with each posting
list codec at the default nprobe, index sizes, and optionally a cProfile of one search.
A synthetic 1,000,000 x 128 clustered set measures build time at scale.

Both libraries get 2 threads: OMP_NUM_THREADS and OPENBLAS_NUM_THREADS are pinned
before NumPy loads, and faiss.omp_set_num_threads(2). Every time is the median of
``--repeats`` runs; faiss and tidepool run in the same process and take turns run by
run, so a change of machine load hits both alike. The faiss index used for queries holds tidepool's centroids, so
both scan identical posting lists and the throughput ratio compares search kernels
alone; faiss' own build (its k-means with the same iterations and sample size) is
timed separately.

Writes bench/results/ivf.json and bench/results/ivf_recall_qps.png.

Usage: python bench/bench_ivf.py [--datasets siftsmall,fashion-mnist,glove-50-angular]
       [--synthetic 1000000] [--repeats 5] [--exact] [--filters] [--profile]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "2"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import dataclasses  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import pstats  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tidepool_cli.engine import idcodec, ivf  # noqa: E402
from tidepool_cli.engine.distances import sqnorms  # noqa: E402
from tidepool_cli.engine.recall import recall_at_k  # noqa: E402
from tidepool_cli.engine.topk import knn  # noqa: E402
from _common import load, timed  # noqa: E402

try:
    import faiss

    faiss.omp_set_num_threads(2)
except ImportError:  # faiss is optional: tidepool numbers are still written
    faiss = None

STAGES = ("_probe", "bound_pass", "scan_pass", "_merge", "_rerank", "decode_list", "_product", "_keep", "get")
RESULTS = ROOT / "bench" / "results"
K = 10


def interleaved(fns, repeats, pause=0.3):
    """Median seconds per named function and its last result, the functions taking turns
    (in rotating order) so that load changes during the runs hit all of them alike.

    The pause lets idle worker threads stop spinning before the next run (LLVM OpenMP
    spins 200 ms after a parallel region, OpenBLAS a while too), so that neither library
    runs against the other's spinning threads.
    """
    names = list(fns)
    times, out = {n: [] for n in names}, {}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(pause)
            t = time.perf_counter()
            out[n] = fns[n]()
            times[n].append(time.perf_counter() - t)
    return {n: float(np.median(v)) for n, v in times.items()}, out


def synthetic(n, d=128, nq=1000, centers=1000, seed=0):
    """Gaussian blobs with unequal spreads; exact ground truth by topk.knn."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32) * 4
    spread = rng.uniform(0.5, 2.0, centers).astype(np.float32)
    x = np.empty((n + nq, d), dtype=np.float32)
    for s in range(0, n + nq, 100_000):
        m = min(100_000, n + nq - s)
        lab = rng.integers(0, centers, m)
        x[s : s + m] = c[lab] + rng.standard_normal((m, d), dtype=np.float32) * spread[lab, None]
    xb, xq = x[:n], x[n:]
    gt_dist, gt = knn(xq, xb, 100, "l2")
    return xb, xq, gt, gt_dist, "l2"


def faiss_index(index, xb, metric, own_training):
    """IndexIVFFlat with tidepool's centroids, or trained by faiss with the same budget."""
    d = xb.shape[1]
    fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
    fi = faiss.IndexIVFFlat(quantizer, d, index.nlist, fm)
    if own_training:
        fi.cp.niter = ivf.NITER
        fi.cp.max_points_per_centroid = ivf.MAX_POINTS_PER_CENTROID
        fi.cp.seed = 0
        fi.train(xb)
    else:
        quantizer.add(index.centroids)
        fi.is_trained = True
    fi.add(xb)
    return fi


def faiss_search(fi, xq, nprobe, metric):
    fi.nprobe = nprobe
    D, I = fi.search(xq, K)
    return (1.0 - D if metric == "cosine" else D), I


def sweep_values(nlist, default):
    """Powers of two, the default and 85% of it (near the least nprobe with recall 0.95)."""
    vals = {v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256) if v <= nlist} | {default, max(1, round(0.85 * default))}
    return sorted(vals)


def recode(index, codec):
    """The same posting lists stored with another codec (no retraining)."""
    lists = [
        idcodec.decode_list(index.codec, index.blob, index.offsets, index.crcs, i, int(s), index.universe)
        for i, s in enumerate(index.list_sizes)
    ]
    t = time.perf_counter()
    blob, offsets, crcs = idcodec.encode_lists(codec, lists, index.universe)
    encode_s = time.perf_counter() - t
    new = dataclasses.replace(index, codec=codec, blob=np.frombuffer(blob, np.uint8), offsets=offsets, crcs=crcs)
    return new, encode_s


def profile_search(index, xb, xq, sq, top=18):
    """cProfile of one search at the default nprobe, run on one thread (cProfile sees
    only the calling thread; OMP_NUM_THREADS=1 makes search_ivf stay on it)."""
    prof = cProfile.Profile()
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        prof.enable()
        ivf.search_ivf(index, xb, xq, K, xb_sqnorms=sq)
        prof.disable()
    finally:
        os.environ["OMP_NUM_THREADS"] = "2"
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    total = stats.total_tt
    # Cumulative time of the stages of one search (nested stages overlap their parents).
    stages = {}
    for (path, _, func), (_, _, _, cum, _) in stats.stats.items():
        if func in STAGES and (path.endswith("ivf.py") or func == "decode_list"):
            stages[func] = stages.get(func, 0.0) + cum
    stats.sort_stats("tottime").print_stats(top)
    return {"total_s": total, "stages_s": stages, "text": out.getvalue()}


def bench_dataset(name, xb, xq, gt, gt_dist, metric, args):
    res = {"n": int(xb.shape[0]), "d": int(xb.shape[1]), "nq": int(xq.shape[0]), "metric": metric}
    sq = sqnorms(xb) if metric == "l2" else None
    build_s, index = timed(lambda: ivf.build_ivf(xb, metric, codec="ans", seed=0), args.build_repeats)
    nprobe0 = ivf.default_nprobe(index.nlist)
    res.update(nlist=index.nlist, default_nprobe=nprobe0, build_s=build_s, stats=index.stats())
    print(f"\n== {name}: n={xb.shape[0]} d={xb.shape[1]} nq={xq.shape[0]} {metric} nlist={index.nlist} "
          f"default nprobe={nprobe0}; build {build_s:.2f} s", flush=True)

    fi = None
    if faiss is not None:
        res["faiss_build_s"], _ = timed(lambda: faiss_index(index, xb, metric, True), args.build_repeats)
        fi = faiss_index(index, xb, metric, False)

    def recall(D, I):
        return recall_at_k(I, gt, K, found_dist=D, gt_dist=gt_dist)

    rows = []
    for nprobe in sweep_values(index.nlist, nprobe0) if not args.quick else [nprobe0]:
        # Interleaved runs: a change of machine load hits both libraries alike.
        runs = {"tidepool": lambda: ivf.search_ivf(index, xb, xq, K, nprobe=nprobe, xb_sqnorms=sq)}
        if fi is not None:
            runs["faiss"] = lambda: faiss_search(fi, xq, nprobe, metric)
        t, out = interleaved(runs, args.repeats)
        row = {"nprobe": nprobe, "tidepool_s": t["tidepool"], "tidepool_qps": len(xq) / t["tidepool"],
               "tidepool_recall": recall(*out["tidepool"])}
        if fi is not None:
            row.update(faiss_s=t["faiss"], faiss_qps=len(xq) / t["faiss"], faiss_recall=recall(*out["faiss"]),
                       ratio=t["faiss"] / t["tidepool"])
        rows.append(row)
        print("  nprobe {nprobe:4d}  tidepool {tidepool_qps:9.0f} QPS recall {tidepool_recall:.4f}".format(**row)
              + ("  faiss {faiss_qps:9.0f} QPS recall {faiss_recall:.4f}  ratio {ratio:.2f}".format(**row) if fi else ""),
              flush=True)
    res["sweep"] = rows
    ok = [r for r in rows if r["tidepool_recall"] >= 0.95]
    res["min_nprobe_095"] = ok[0]["nprobe"] if ok else None

    # Codecs at the default nprobe: same lists, interleaved runs so drift hits all alike.
    codecs = {"ans": (index, None)}
    for codec in ("raw", "elias-fano", "roc"):
        if codec == "roc" and xb.shape[0] > args.roc_max_n:
            continue
        codecs[codec] = recode(index, codec)
    times, _ = interleaved(
        {c: (lambda ix=ix: ivf.search_ivf(ix, xb, xq, K, nprobe=nprobe0, xb_sqnorms=sq)) for c, (ix, _) in codecs.items()},
        args.repeats,
    )
    res["codecs"] = {
        c: {"query_s": times[c], "bits_per_id": codecs[c][0].stats()["bits_per_id"],
            "ids_bytes": codecs[c][0].stats()["ids_bytes"], "encode_s": codecs[c][1]}
        for c in codecs
    }
    res["ans_over_raw"] = res["codecs"]["ans"]["query_s"] / res["codecs"]["raw"]["query_s"]
    for c, v in res["codecs"].items():
        print(f"  codec {c:10s} query {v['query_s']:.3f} s  {v['bits_per_id']:.2f} bits/ID  {v['ids_bytes']} bytes")
    print(f"  ans / raw query time: {res['ans_over_raw']:.3f}")
    if args.filters:
        # Filters keeping a share of rows (a random mask): recall against filtered exact search.
        rng = np.random.default_rng(1)
        fq = xq[: args.filter_queries]
        res["filters"] = []
        for keep in (0.5, 0.05, 0.005):
            allowed = rng.random(len(xb)) < keep
            t_f, (D, I) = timed(lambda: ivf.search_ivf(index, xb, fq, K, allowed=allowed, xb_sqnorms=sq), args.repeats)
            t_e, (De, Ie) = timed(lambda: knn(fq, xb, K, metric, xb_sqnorms=sq, allowed=allowed), 1)
            row = {"keep": keep, "ivf_s": t_f, "exact_s": t_e, "recall": recall_at_k(I, Ie, K, found_dist=D, gt_dist=De),
                   "full": bool((I >= 0).all())}
            res["filters"].append(row)
            print("  filter keep {keep:5.3f}: ivf {ivf_s:.3f} s, exact {exact_s:.3f} s, recall@10 vs filtered exact "
                  "{recall:.4f}, k results for all: {full}".format(**row))
    if args.exact:
        res["exact_s"], _ = timed(lambda: knn(xq, xb, K, metric, xb_sqnorms=sq), 1)
        print(f"  exact search {res['exact_s']:.2f} s ({len(xq) / res['exact_s']:.0f} QPS)")
    if args.profile:
        res["profile"] = profile_search(index, xb, xq, sq)
        print(f"  profile (one thread): total {res['profile']['total_s']:.3f} s; stages (cumulative s): "
              + ", ".join(f"{k} {v:.3f}" for k, v in res["profile"]["stages_s"].items()))
        print(res["profile"]["text"])
    return res


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if len(r.get("sweep", [])) > 1]
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        sw = results[name]["sweep"]
        ax.plot([r["tidepool_recall"] for r in sw], [r["tidepool_qps"] for r in sw], "o-", label="tidepool IVF")
        if "faiss_qps" in sw[0]:
            ax.plot([r["faiss_recall"] for r in sw], [r["faiss_qps"] for r in sw], "s--", label="faiss IVFFlat")
        for r in sw:
            ax.annotate(str(r["nprobe"]), (r["tidepool_recall"], r["tidepool_qps"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        ax.axvline(0.95, color="grey", lw=0.5)
        ax.set_yscale("log")
        ax.set_xlabel("recall@10")
        ax.set_ylabel("queries per second (2 threads)")
        ax.set_title(f"{name} (nlist={results[name]['nlist']})")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="siftsmall,fashion-mnist,glove-50-angular")
    ap.add_argument("--synthetic", type=int, default=1_000_000, help="rows of the synthetic set (0: skip)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--build-repeats", type=int, default=1)
    ap.add_argument("--roc-max-n", type=int, default=100_000, help="skip the slow roc codec above this n")
    ap.add_argument("--exact", action="store_true", help="also time exact search")
    ap.add_argument("--filters", action="store_true", help="also time filtered searches (50%%, 5%%, 0.5%% kept)")
    ap.add_argument("--filter-queries", type=int, default=2000)
    ap.add_argument("--profile", action="store_true", help="cProfile one search per data set")
    ap.add_argument("--quick", action="store_true", help="default nprobe only")
    ap.add_argument("--out", default=str(RESULTS / "ivf.json"))
    args = ap.parse_args()

    env = {
        "python": platform.python_version(), "numpy": np.__version__,
        "faiss": getattr(faiss, "__version__", None), "cpus": os.cpu_count(),
        "threads": 2, "load_avg_start": os.getloadavg(), "repeats": args.repeats,
        "nlist_rule": "round(4 sqrt(n))", "nprobe_rule": f"max({ivf.MIN_NPROBE}, ceil(nlist * {ivf.NPROBE_FRACTION:.4f}))",
    }
    results = {}
    for name in [n for n in args.datasets.split(",") if n]:
        results[name] = bench_dataset(name, *load(name), args)
    if args.synthetic:
        name = f"synthetic-{args.synthetic}x128"
        print(f"\n(generating {name} and its ground truth)", flush=True)
        sub = argparse.Namespace(**{**vars(args), "quick": True, "roc_max_n": 0, "filters": False})
        results[name] = bench_dataset(name, *synthetic(args.synthetic), sub)
    env["load_avg_end"] = os.getloadavg()

    print("\n{:<26s} {:>8s} {:>7s} {:>7s} {:>9s} {:>9s} {:>8s} {:>9s} {:>9s} {:>6s} {:>8s} {:>8s}".format(
        "data set", "build s", "nlist", "nprobe", "recall", "QPS", "faiss", "f.recall", "faiss QPS", "ratio",
        "ans/raw", "bits/ID"))
    for name, r in results.items():
        row = next(x for x in r["sweep"] if x["nprobe"] == r["default_nprobe"])
        print("{:<26s} {:8.2f} {:7d} {:7d} {:9.4f} {:9.0f} {:>8s} {:>9s} {:>9s} {:>6s} {:8.3f} {:8.2f}".format(
            name, r["build_s"], r["nlist"], r["default_nprobe"], row["tidepool_recall"], row["tidepool_qps"],
            f"{r['faiss_build_s']:.1f}s" if "faiss_build_s" in r else "-",
            f"{row['faiss_recall']:.4f}" if "faiss_recall" in row else "-",
            f"{row['faiss_qps']:.0f}" if "faiss_qps" in row else "-",
            f"{row['ratio']:.2f}" if "ratio" in row else "-",
            r["ans_over_raw"], r["codecs"]["ans"]["bits_per_id"]))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"env": env, "datasets": results}, indent=1, default=float) + "\n")
    plot(results, out.with_name("ivf_recall_qps.png"))
    print(f"\nwrote {out} and {out.with_name('ivf_recall_qps.png')}")


if __name__ == "__main__":
    main()
