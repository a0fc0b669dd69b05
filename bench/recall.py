"""recall@k of `tidepool query --format jsonl` output against a ground-truth .npy file.

Usage: python bench/recall.py RESULTS.jsonl GROUNDTRUTH.npy [-k 10]

The ground truth holds, per query, the ids of the exact nearest neighbours, nearest first
(the integer ids that `tidepool ingest` assigns to .npy rows are their row numbers).
"""

import argparse
import json

import numpy as np

from tidepool_cli.engine.recall import recall_at_k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results")
    ap.add_argument("groundtruth")
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args()
    with open(args.results) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    found = np.full((len(rows), args.k), -1, np.int64)
    for i, row in enumerate(sorted(rows, key=lambda r: r["query"])):
        ids = row["ids"][: args.k]
        found[i, : len(ids)] = ids
    gt = np.load(args.groundtruth)[: len(rows)]
    print(f"recall@{args.k} = {recall_at_k(found, gt, args.k):.4f} over {len(rows)} queries")


if __name__ == "__main__":
    main()
