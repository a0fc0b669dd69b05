"""Benchmark the Vamana graph and its node file against tidepool's own HNSW.

Per data set:

* Build time of ``build_vamana`` (R 64, L 32, α 1.2) and of ``build_hnsw`` (M 16,
  ef_construction 200), both with 2 threads, interleaved in one process (median of
  ``--repeats``), as wall-clock and as process CPU seconds (less sensitive to other
  processes on a shared machine); the ratio is the bar (<= 1.5).
* The node file is written to a real file system, then for each search list size L
  (beam width W 4, a cache of ``--cache-nodes`` records near the medoid, navigation on
  an f16 copy of the vectors in RAM) a *cold* run: the file is evicted from the page
  cache with ``posix_fadvise(POSIX_FADV_DONTNEED)``, mapped again with
  ``MADV_RANDOM`` by the node file reader (no read-ahead, so a fault reads one 4-KiB page), the queries run,
  and ``mincore`` counts the file's pages now resident. Reported: recall@10 (tie-aware,
  against the exact ground truth in ../shared/data), the engine's count of distinct
  pages read per query (each query as if alone with a cold cache: the DiskANN measure),
  the pages the whole run faulted in per query (shared pages counted once), and hops.
* The same searches with the records in identity (row) order instead of graph order,
  for the fraction of record reads that land in an already-read sector.
* Warm throughput: queries per second at the smallest L reaching recall@10 0.95, against
  ``search_hnsw`` at the smallest ef_search reaching it, same run (median of repeats).

Usage: python bench/bench_vamana.py [--datasets siftsmall,fashion-mnist] [--queries 1000]
       [--repeats 1] [--cache-nodes 1000]
Writes bench/results/vamana.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "2"

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import load, timed  # noqa: E402

from tidepool_cli.engine.distances import sqnorms  # noqa: E402
from tidepool_cli.engine.graph import ExactPairs  # noqa: E402
from tidepool_cli.engine.hnsw import build_hnsw, search_hnsw  # noqa: E402
from tidepool_cli.engine.recall import recall_at_k  # noqa: E402
from tidepool_cli.engine.vamana import build_vamana  # noqa: E402
from tidepool_cli.engine.vamana_layout import NodeLayout, pack_blocks  # noqa: E402
from tidepool_cli.engine.vamana_search import (  # noqa: E402
    NodeRecords,
    cache_near_medoid,
        search_vamana,
)
from tidepool_cli.storage.nodefile import open_nodefile, write_nodefile  # noqa: E402

RESULTS = ROOT / "bench" / "results"
L_SWEEP = (20, 30, 40, 60, 100)
EF_SWEEP = (16, 32, 48, 64, 96, 128)
W = 4
PAGE = 4096

_libc = ctypes.CDLL(None, use_errno=True)


def resident_pages(addr: int, length: int) -> int:
    """Pages of the mapping at ``addr`` (page-aligned, ``length`` bytes) resident in the page cache."""
    pages = -(-length // PAGE)
    vec = (ctypes.c_ubyte * pages)()
    if _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(length), vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return int((np.frombuffer(vec, dtype=np.uint8) & 1).sum())


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cold_run(path: Path, xq, gt, gtd, score, metric, l, cache_nodes):
    evict(path)
    f = open_nodefile(path, path.name)
    blocks = f.records.blocks
    # The whole file is mapped from offset 0; the records start records_offset bytes in.
    addr, length = blocks.ctypes.data - f.records_offset, f.nbytes
    before = resident_pages(addr, length)
    cache = cache_near_medoid(f.records, cache_nodes)
    after_cache = resident_pages(addr, length)
    ids, dist, st = search_vamana(f.records, xq, 10, score=score, metric=metric, l=l, beam_width=W, cache=cache)
    after = resident_pages(addr, length)
    s = st.summary()
    return {
        "l": l,
        "recall@10": recall_at_k(ids, gt, 10, found_dist=dist, gt_dist=gtd),
        "pages_per_query": s["pages_read"],
        "records_per_query": s["records_read"],
        "hops_per_query": s["hops"],
        "cache_hits_per_query": s["cache_hits"],
        "resident_before": before,
        "resident_pages_after_cache": after_cache,
        "faulted_pages_per_query": (after - after_cache) / xq.shape[0],
    }


def bench_dataset(name: str, nq: int, repeats: int, cache_nodes: int, tmp: Path) -> dict:
    xb, xq, gt, gtd, metric = load(name)
    xq, gt, gtd = xq[:nq], gt[:nq], gtd[:nq]
    print(f"\n== {name}: n={xb.shape[0]} d={xb.shape[1]} queries={xq.shape[0]} metric={metric}", flush=True)
    tv, th, cv, ch = [], [], [], []
    G = H = None
    for _ in range(repeats):
        c = time.process_time()
        t, G = timed(lambda: build_vamana(xb, metric, threads=2))
        tv.append(t)
        cv.append(time.process_time() - c)
        c = time.process_time()
        t, H = timed(lambda: build_hnsw(xb, metric, threads=2))
        th.append(t)
        ch.append(time.process_time() - c)
    build_v, build_h = float(np.median(tv)), float(np.median(th))
    cpu_v, cpu_h = float(np.median(cv)), float(np.median(ch))
    print(f"build wall: vamana {build_v:.1f} s, hnsw {build_h:.1f} s, ratio {build_v / build_h:.2f}; "
          f"CPU: vamana {cpu_v:.1f} s, hnsw {cpu_h:.1f} s, ratio {cpu_v / cpu_h:.2f}", flush=True)
    path = tmp / f"{name}.vamana"
    write_nodefile(path, xb, G)
    codes = xb.astype(np.float16)
    score = ExactPairs(codes, xq, metric, xb_sqnorms=sqnorms(codes.astype(np.float32)) if metric == "l2" else None)
    layout = NodeLayout(xb.shape[0], xb.shape[1], G.r)
    ident = NodeRecords(pack_blocks(xb, G.adjacency, np.arange(xb.shape[0]), layout, 0, layout.n_blocks),
                        np.arange(xb.shape[0], dtype=np.int32), layout, G.medoid)
    sweep = []
    print(f"{'L':>4} {'recall@10':>9} {'pages/q':>8} {'records/q':>9} {'hops/q':>7} {'faulted/q':>9} {'id-order pages/q':>16}")
    for l in L_SWEEP:
        row = cold_run(path, xq, gt, gtd, score, metric, l, cache_nodes)
        _, _, si = search_vamana(ident, xq, 10, score=score, metric=metric, l=l, beam_width=W,
                                 cache=cache_near_medoid(ident, cache_nodes))
        row["identity_order_pages_per_query"] = si.summary()["pages_read"]
        sweep.append(row)
        print(f"{l:>4} {row['recall@10']:>9.4f} {row['pages_per_query']:>8.1f} {row['records_per_query']:>9.1f} "
              f"{row['hops_per_query']:>7.1f} {row['faulted_pages_per_query']:>9.1f} "
              f"{row['identity_order_pages_per_query']:>16.1f}", flush=True)
    # Warm throughput at the bar, against HNSW.
    f = open_nodefile(path, path.name)
    cache = cache_near_medoid(f.records, cache_nodes)
    best_l = next((r["l"] for r in sweep if r["recall@10"] >= 0.95), None)
    qps_v = qps_h = None
    best_ef = None
    if best_l is not None:
        t, _ = timed(lambda: search_vamana(f.records, xq, 10, score=score, metric=metric, l=best_l, beam_width=W, cache=cache), max(3, repeats))
        qps_v = xq.shape[0] / t
    for ef in EF_SWEEP:
        t, (D, I) = timed(lambda: search_hnsw(H, xb, xq, 10, ef_search=ef, threads=1), max(3, repeats))
        if recall_at_k(I, gt, 10, found_dist=D, gt_dist=gtd) >= 0.95:
            qps_h, best_ef = xq.shape[0] / t, ef
            break
    ratio = qps_v / qps_h if qps_v and qps_h else None
    print(f"warm QPS at recall@10 >= 0.95: vamana {qps_v and round(qps_v)} (L {best_l}), "
          f"hnsw {qps_h and round(qps_h)} (ef {best_ef}), ratio {ratio and round(ratio, 2)}", flush=True)
    return {
        "n": int(xb.shape[0]),
        "d": int(xb.shape[1]),
        "queries": int(xq.shape[0]),
        "metric": metric,
        "graph": G.stats(),
        "record_bytes": layout.record_bytes,
        "records_per_sector": layout.per_block,
        "node_file_bytes": path.stat().st_size,
        "build_seconds": {"vamana": build_v, "hnsw": build_h, "ratio": build_v / build_h},
        "build_cpu_seconds": {"vamana": cpu_v, "hnsw": cpu_h, "ratio": cpu_v / cpu_h},
        "cold_sweep": sweep,
        "warm_qps": {"vamana": qps_v, "vamana_l": best_l, "hnsw": qps_h, "hnsw_ef": best_ef, "ratio": ratio},
        "cache_nodes": cache_nodes,
        "navigation": "f16 copy of the vectors in RAM",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="siftsmall,fashion-mnist")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--cache-nodes", type=int, default=1000)
    args = ap.parse_args()
    out = {"machine": platform.processor() or platform.machine(), "threads": 2, "beam_width": W, "datasets": {}}
    # The page-cache counts need the temporary directory on a disk file system, not tmpfs.
    with tempfile.TemporaryDirectory(prefix="tidepool-vamana-") as tmp:
        for name in args.datasets.split(","):
            out["datasets"][name] = bench_dataset(name, args.queries, args.repeats, args.cache_nodes, Path(tmp))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "vamana.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'vamana.json'}")


if __name__ == "__main__":
    main()
