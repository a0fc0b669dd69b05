"""Metamorph foundations benchmark: cold-store size and access latency, transition planning speed.

Usage: python bench/bench_metamorph.py [--rows 20000] [--repeats 5] [--out bench/results/metamorph.json]

Cold store, per data set (the first ``--rows`` base vectors as an index stores them:
float32, unit rows for the angular sets): bytes per vector and zstd ratio (raw bytes over
blocks plus dictionary) at the default block size, with and without byte shuffle and a
trained dictionary, at level 3 and 19. The reference row ``zstd-whole`` compresses the
whole array as one frame (no shuffle, no row access): what block addressing costs.

Random access: median seconds to fetch one random row (``get``) from the cold store and,
in the same run, from a memory-mapped float32 file (the peer; both files in the page
cache), and for a batch of 100 random rows.

Planning, on synthetic metadata (no data set needed): rows per second of ``plan`` +
``apply`` when every row of 1,000,000 is due (bar >= 100,000 rows/s); seconds of ``plan``
over 1,000,000 rows with no transition due (bar <= 1 s); records per second of ``fold``
on 1,000,000 Zipf-distributed access records. The seed's own figures (100 transitions in
1-2 ms, a 10,000-row scan in 10-50 ms) are the only reference: no library does this.

Simulated day (a preview of the memory the stages would save; recall needs the tiered
search and is not measured here): ``--qps`` queries per second drawn Zipf(s = 1.1) from the
real query set of fashion-mnist, glove-50-angular and debian-minilm, each accessing its exact
top-10 rows (what an all-Adult index returns), folded and planned every 10 simulated minutes
for 24 hours under each preset. RAM per row is counted as codes only: 4 d bytes Adult, d bytes
Nymph (SQ8), ceil(bits d / 8) bytes Larval; the reduction is against all rows Adult.
"""

from __future__ import annotations

import os

THREADS = "2"
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import zstandard as zstd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tidepool_cli.engine.metamorph import ADULT, NYMPH, RowMeta, apply, fold, make_policy, new_rows, plan  # noqa: E402
from tidepool_cli.storage.coldstore import ColdStore, write_coldstore  # noqa: E402
from _common import load, timed  # noqa: E402

DAY_SETS = ["fashion-mnist", "glove-50-angular", "debian-minilm"]
SETS = ["siftsmall", "fashion-mnist", "glove-50-angular", "debian-minilm"]
VARIANTS = [  # (name, level, shuffle, dictionary)
    ("plain", 3, False, False),
    ("dict", 3, False, None),
    ("shuffle", 3, True, False),
    ("shuffle+dict", 3, True, None),
    ("shuffle+dict-L19", 19, True, None),
]
NOW = 1_700_006_400
RUN = 600


def bench_coldstore(name: str, rows: int, repeats: int, tmp: Path) -> dict:
    xb = np.ascontiguousarray(load(name)[0][:rows])
    n, d = xb.shape
    out = {"dataset": name, "rows": n, "dim": d, "raw_bytes_per_vector": 4 * d, "variants": {}}
    whole = len(zstd.ZstdCompressor(level=3).compress(xb.tobytes()))
    out["variants"]["zstd-whole"] = {"bytes_per_vector": whole / n, "ratio": xb.nbytes / whole}
    for vname, level, shuf, dic in VARIANTS:
        path = tmp / f"{name}.{vname}.cold"
        secs, info = timed(lambda: write_coldstore(path, xb, level=level, shuffle_bytes=shuf, dictionary=dic), 1)
        back = ColdStore(path, path.name).read_all()
        assert back.tobytes() == xb.tobytes()  # bit-perfect, or the numbers mean nothing
        out["variants"][vname] = {"bytes_per_vector": info.nbytes / n, "ratio": info.ratio, "dict_bytes": info.dict_bytes,
                                  "block_rows": info.block_rows, "write_mb_per_s": xb.nbytes / secs / 1e6}
    store = ColdStore(tmp / f"{name}.shuffle+dict.cold", "bench")
    flat = tmp / f"{name}.f32"
    xb.tofile(flat)
    mm = np.memmap(flat, np.float32, "r", shape=(n, d))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, n, 1000)
    one = lambda src: [src(np.array([i])) for i in ids]  # noqa: E731
    t_cold, _ = timed(lambda: one(store.get), repeats)
    t_mm, _ = timed(lambda: one(lambda i: np.array(mm[i])), repeats)
    batches = [rng.integers(0, n, 100) for _ in range(20)]
    t_batch, _ = timed(lambda: [store.get(b) for b in batches], repeats)
    out["random_access"] = {
        "row_seconds": t_cold / len(ids),
        "memmap_row_seconds": t_mm / len(ids),
        "ratio_vs_memmap": t_cold / t_mm,
        "batch100_seconds": t_batch / len(batches),
        "block_rows": store.block_rows,
    }
    return out


def due_everywhere(n: int) -> RowMeta:
    """n rows, a mix of stages, every one of them due for a transition at NOW."""
    rng = np.random.default_rng(1)
    meta = new_rows(n, NOW - 86400)
    stage = rng.integers(0, 3, n).astype(np.uint8)
    last_access = np.where(stage == ADULT, NOW - rng.integers(1000, 5000, n), NOW - rng.integers(0, 100, n))
    last_hot = np.where(stage == NYMPH, NOW - rng.integers(0, 300, n), -1)
    acc = np.where(stage == 0, 20, 0).astype(np.uint32)
    return RowMeta(**{**meta.columns(), "stage": stage, "last_access": last_access, "last_hot": last_hot, "stage_accesses": acc})


def bench_planning(repeats: int) -> dict:
    pol = make_policy("balanced")
    n = 1_000_000
    busy = due_everywhere(n)
    t_busy, p = timed(lambda: apply(busy, plan(busy, pol, NOW), pol), repeats)
    moved = int(np.count_nonzero(p.stage != busy.stage))
    quiet = new_rows(n, NOW - 60)
    t_quiet, q = timed(lambda: plan(quiet, pol, NOW), repeats)
    rng = np.random.default_rng(2)
    rows = (rng.zipf(1.1, n) - 1) % n
    ts = NOW + rng.integers(0, 600, n)
    t_fold, _ = timed(lambda: fold(quiet, rows, ts, pol), repeats)
    t_bound, pb = timed(lambda: plan(busy, pol, NOW, max_transitions=10_000), repeats)
    return {
        "rows": n,
        "transitions": moved,
        "transition_rows_per_s": moved / t_busy,
        "transition_seconds": t_busy,
        "bounded_10k_seconds": t_bound,
        "quiet_scan_seconds": t_quiet,
        "quiet_scan_transitions": len(q),
        "fold_records_per_s": n / t_fold,
        "seed_transitions_per_s": [50_000, 100_000],
        "seed_scan_seconds_per_1e6_rows": [1.0, 5.0],
    }


def ram_bytes(meta: RowMeta, d: int) -> int:
    """Bytes of the stage representations in RAM (codes only, see the module notes)."""
    stage, bits = np.asarray(meta.stage), np.asarray(meta.larval_bits).astype(np.int64)
    larval = -(-(bits * d) // 8)
    return int(np.where(stage == ADULT, 4 * d, np.where(stage == NYMPH, d, larval)).sum())


def simulate_day(name: str, qps: int, seed: int = 0) -> list[dict]:
    xb, _, gt, _, _ = load(name)
    n, d = xb.shape
    nq = gt.shape[0]
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, nq + 1) ** 1.1
    popular = rng.permutation(nq)  # which query has which Zipf rank
    per_run = RUN * qps
    draws = [(popular[rng.choice(nq, per_run, p=weights / weights.sum())], rng.integers(0, RUN, per_run)) for _ in range(24 * 6)]
    out = []
    for preset in ("conservative", "balanced", "aggressive"):
        pol = make_policy(preset)
        meta, moved, series = new_rows(n, NOW), 0, []
        for run, (q, offset) in enumerate(draws):
            start = NOW + run * RUN
            rows = gt[q, :10].reshape(-1)
            meta = fold(meta, rows, np.repeat(start + offset, 10), pol)
            p = plan(meta, pol, start + RUN)
            meta = apply(meta, p, pol)
            moved += len(p)
            series.append(1 - ram_bytes(meta, d) / (4 * d * n))
        counts = meta.stage_counts()
        out.append({"dataset": name, "policy": preset, "rows": n, "queries": per_run * len(draws),
                    "final_stage_share": {k: v / n for k, v in counts.items()},
                    "ram_reduction_final": series[-1], "ram_reduction_min_after_1h": min(series[6:]),
                    "rows_ever_accessed": int(np.count_nonzero(meta.access_count)), "transitions": moved,
                    "ram_reduction_series": series})
    return out


def print_table(cold: list[dict], planning: dict, day: list[dict]) -> None:
    names = ["zstd-whole"] + [v[0] for v in VARIANTS]
    print(f"{'data set':18s} {'B/vec raw':>9s} " + " ".join(f"{n:>17s}" for n in names))
    for r in cold:
        cells = " ".join(f"{r['variants'][n]['bytes_per_vector']:8.0f} ({r['variants'][n]['ratio']:4.2f}x)" for n in names)
        print(f"{r['dataset']:18s} {r['raw_bytes_per_vector']:9d} {cells}")
    print()
    print(f"{'data set':18s} {'rows/blk':>8s} {'row us':>8s} {'memmap us':>9s} {'ratio':>7s} {'100 rows ms':>11s}")
    for r in cold:
        a = r["random_access"]
        print(f"{r['dataset']:18s} {a['block_rows']:8d} {a['row_seconds'] * 1e6:8.1f} {a['memmap_row_seconds'] * 1e6:9.2f} "
              f"{a['ratio_vs_memmap']:7.1f} {a['batch100_seconds'] * 1e3:11.2f}")
    print()
    p = planning
    print(f"transitions: {p['transitions']:,} of {p['rows']:,} rows in {p['transition_seconds']:.3f} s = "
          f"{p['transition_rows_per_s']:,.0f} rows/s (bar 100,000; seed 50,000-100,000)")
    print(f"bounded plan (10,000 of {p['transitions']:,} due): {p['bounded_10k_seconds']:.3f} s")
    print(f"quiet scan of {p['rows']:,} rows: {p['quiet_scan_seconds']:.3f} s, {p['quiet_scan_transitions']} transitions (bar 1 s; seed 1-5 s)")
    print(f"fold: {p['fold_records_per_s']:,.0f} access records/s")
    print()
    print(f"{'data set':18s} {'policy':13s} {'adult':>7s} {'nymph':>7s} {'larval':>7s} {'RAM saved 24h':>13s} {'min after 1h':>12s} {'accessed':>9s} {'moves':>8s}")
    for r in day:
        sh = r["final_stage_share"]
        print(f"{r['dataset']:18s} {r['policy']:13s} {sh['adult']:7.2%} {sh['nymph']:7.2%} {sh['larval']:7.2%} "
              f"{r['ram_reduction_final']:13.2%} {r['ram_reduction_min_after_1h']:12.2%} {r['rows_ever_accessed']:9,d} {r['transitions']:8,d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--qps", type=int, default=1, help="simulated queries per second")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "metamorph.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cold = [bench_coldstore(name, args.rows, args.repeats, Path(tmp)) for name in SETS]
    planning = bench_planning(args.repeats)
    day = [r for name in DAY_SETS for r in simulate_day(name, args.qps)]
    print_table(cold, planning, day)
    report = {
        "benchmark": "metamorph",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "zstandard": zstd.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": int(THREADS),
        "repeats": args.repeats,
        "size_unit": "bytes per vector = cold-store file bytes / rows; ratio = raw bytes / (blocks + dictionary)",
        "time_unit": "seconds, median of repeats",
        "coldstore": cold,
        "planning": planning,
        "simulated_day": {"qps": args.qps, "zipf_s": 1.1, "k": 10, "run_every_seconds": RUN, "results": day},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
