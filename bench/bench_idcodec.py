"""ID codec benchmark: bits per ID against log2 C(N, n), encode and bulk-decode speed.

Usage: python bench/bench_idcodec.py [--repeats 5] [--out bench/results/idcodec.json]

Workloads (each a partition of all N rows into posting lists, like an IVF assignment):

* ``uniform-1e6x1024``: N = 1e6 rows assigned to 1,024 lists uniformly at random, the
  planning workload (about 977 IDs per list).
* ``uniform-1e5x316``: N = 1e5 rows in 316 lists (about 316 IDs per list).
* ``clustered-1e6x1024``: N = 1e6 rows in 1,024 lists whose popularity follows a Zipf
  law (s = 1) and where each row stays in the previous row's list with probability 0.7,
  as when rows arrive grouped by source; the lists have runs and very unequal sizes.

Speeds are IDs per second over the whole workload, medians of ``--repeats`` runs, one
thread (the codecs are single-threaded; BLAS threads are pinned to 2 anyway):
``encode`` is :func:`encode_lists` (including CRC32s), ``decode`` is ``codec.decode`` on
every list's payload and ``decode_list`` adds the offset and CRC32 checks. ``zstd-19`` is
not a codec here, only a reference: zstandard level 19 on each list's sorted uint32 bytes.
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
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

# Runnable as `python bench/bench_idcodec.py` from a checkout without installing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tidepool_cli.engine.idcodec import (  # noqa: E402
    CODEC_NAMES,
    decode_list,
    elias_fano_access,
    encode_lists,
    get_codec,
    set_bound_bits,
)
from _common import timed  # noqa: E402


def uniform_lists(universe: int, nlist: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    assign = rng.integers(0, nlist, size=universe)
    order = np.argsort(assign, kind="stable")
    return np.split(order, np.cumsum(np.bincount(assign, minlength=nlist))[:-1])


def clustered_lists(universe: int, nlist: int, seed: int, stay: float = 0.7) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, nlist + 1)
    fresh = rng.choice(nlist, size=universe, p=popularity / popularity.sum())
    # Row i keeps the list of the last row that drew a fresh one: a run-length process.
    redraw = rng.random(universe) >= stay
    redraw[0] = True
    assign = fresh[np.maximum.accumulate(np.where(redraw, np.arange(universe), 0))]
    order = np.argsort(assign, kind="stable")
    return np.split(order, np.cumsum(np.bincount(assign, minlength=nlist))[:-1])


def bench_workload(name: str, universe: int, lists: list[np.ndarray], repeats: int) -> dict:
    total = sum(ids.size for ids in lists)
    bound = sum(set_bound_bits(ids.size, universe) for ids in lists)
    sizes = np.array([ids.size for ids in lists])
    result = {
        "workload": name,
        "universe": universe,
        "lists": len(lists),
        "ids": total,
        "list_size_min_median_max": [int(sizes.min()), int(np.median(sizes)), int(sizes.max())],
        "bound_bits_per_id": bound / total,
        "codecs": {},
    }
    for codec_name in CODEC_NAMES:
        codec = get_codec(codec_name)
        reps = max(1, repeats // 2) if codec_name == "roc" else repeats  # roc: ~1 s per pass
        blob, offsets, crcs = encode_lists(codec_name, lists, universe)
        payloads = [blob[int(offsets[i]) : int(offsets[i + 1])] for i in range(len(lists))]
        for i, ids in enumerate(lists):  # every bench run is also a round-trip check
            if not np.array_equal(codec.decode(payloads[i], ids.size, universe), np.sort(ids)):
                raise SystemExit(f"{codec_name} round trip failed on {name} list {i}")
        t_enc, _ = timed(lambda: encode_lists(codec_name, lists, universe), reps)
        t_dec, _ = timed(
            lambda: [codec.decode(p, ids.size, universe) for p, ids in zip(payloads, lists)], reps
        )
        t_list, _ = timed(
            lambda: [
                decode_list(codec_name, blob, offsets, crcs, i, ids.size, universe) for i, ids in enumerate(lists)
            ],
            reps,
        )
        bits = 8 * len(blob)
        entry = {
            "bytes": len(blob),
            "bits_per_id": bits / total,
            "ratio_to_bound": bits / bound if bound else float("nan"),
            "excess_bits_per_list": (bits - bound) / len(lists),
            "encode_ids_per_s": total / t_enc,
            "decode_ids_per_s": total / t_dec,
            "decode_list_ids_per_s": total / t_list,
            "repeats": reps,
        }
        if codec_name == "elias-fano":
            positions = [np.random.default_rng(i).integers(0, max(ids.size, 1), 64) for i, ids in enumerate(lists)]
            t_acc, _ = timed(
                lambda: [
                    elias_fano_access(p, ids.size, universe, pos)
                    for p, ids, pos in zip(payloads, lists, positions)
                    if ids.size
                ],
                reps,
            )
            entry["access_lookups_per_s"] = 64 * sum(1 for ids in lists if ids.size) / t_acc
        result["codecs"][codec_name] = entry
    try:
        import zstandard
    except ImportError:
        return result
    cctx = zstandard.ZstdCompressor(level=19)
    zbytes = sum(len(cctx.compress(np.sort(ids).astype("<u4").tobytes())) for ids in lists)
    result["reference_zstd19_bits_per_id"] = 8 * zbytes / total
    return result


def print_table(results: list[dict]) -> None:
    head = f"{'workload':<20} {'codec':<11} {'bits/ID':>8} {'bound':>7} {'ratio':>7} {'+bits/list':>10} " \
           f"{'enc MID/s':>9} {'dec MID/s':>9} {'list MID/s':>10}"
    print(head)
    print("-" * len(head))
    for r in results:
        for codec_name, e in r["codecs"].items():
            print(
                f"{r['workload']:<20} {codec_name:<11} {e['bits_per_id']:>8.3f} {r['bound_bits_per_id']:>7.3f} "
                f"{e['ratio_to_bound']:>7.4f} {e['excess_bits_per_list']:>10.1f} {e['encode_ids_per_s'] / 1e6:>9.2f} "
                f"{e['decode_ids_per_s'] / 1e6:>9.2f} {e['decode_list_ids_per_s'] / 1e6:>10.2f}"
            )
        if "reference_zstd19_bits_per_id" in r:
            print(f"{r['workload']:<20} {'(zstd-19)':<11} {r['reference_zstd19_bits_per_id']:>8.3f}")
        ef = r["codecs"].get("elias-fano", {})
        if "access_lookups_per_s" in ef:
            print(f"{r['workload']:<20} elias-fano random access: {ef['access_lookups_per_s'] / 1e6:.2f} M lookups/s")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "idcodec.json")
    args = parser.parse_args()

    workloads = [
        ("uniform-1e6x1024", 1_000_000, uniform_lists(1_000_000, 1024, seed=0)),
        ("uniform-1e5x316", 100_000, uniform_lists(100_000, 316, seed=1)),
        ("clustered-1e6x1024", 1_000_000, clustered_lists(1_000_000, 1024, seed=2)),
    ]
    results = [bench_workload(name, universe, lists, args.repeats) for name, universe, lists in workloads]
    print_table(results)
    report = {
        "benchmark": "idcodec",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": int(THREADS),
        "repeats": args.repeats,
        "speed_unit": "IDs per second, median of repeats (roc: half as many repeats)",
        "size_unit": "bits per ID = 8 * payload bytes / IDs; bound = sum over lists of log2 C(N, n) / IDs",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
