"""Writes the golden index directories of the current format version into tests/golden/v<N>/.

Run once per released format version (python tests/golden/generate.py); the directories
are committed and tests/test_golden.py reads them with every later release.
"""

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from tidepool_cli.ops.build_hnsw import build_hnsw
from tidepool_cli.ops.build_ivf import build_ivf
from tidepool_cli.ops.compact import compact
from tidepool_cli.ops.delete import delete
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.planner import SearchParams
from tidepool_cli.ops.query import Searcher
from tidepool_cli.storage.layout import FORMAT_VERSION

HERE = Path(__file__).parent


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> None:
    out = HERE / f"v{FORMAT_VERSION}"
    if out.exists():
        sys.exit(f"{out} exists: golden directories of a released version are never rewritten")
    tmp = HERE / "_inputs"
    tmp.mkdir()
    rng = np.random.default_rng(2026)
    x = rng.normal(size=(600, 8)).astype(np.float32)

    # Integer ids, l2: two segments with HNSW and IVF sidecars, a deletion vector, and a
    # pending WAL file holding an upsert and a delete.
    a = out / "int-l2"
    rows = [{"vector": v.tolist(), "attributes": {"tag": ["a", "b", "c"][i % 3], "n": i, "w": i / 7, "odd": bool(i % 2)}} for i, v in enumerate(x[:500])]
    ingest(a, jsonl(tmp / "a.jsonl", rows), batch_rows=200)
    compact(a)
    build_hnsw(a, min_rows=0)
    build_ivf(a, min_rows=0)
    delete(a, ["3", "4"])
    compact(a)
    ingest(a, jsonl(tmp / "b.jsonl", [{"id": 10, "vector": x[500].tolist(), "attributes": {"tag": "z"}}]))
    delete(a, ["11"])

    # String ids, cosine.
    b = out / "str-cosine"
    ingest(b, jsonl(tmp / "c.jsonl", [{"id": f"doc-{i}", "vector": (v + 0.1).tolist(), "attributes": {"tag": ["a", "b"][i % 2]}} for i, v in enumerate(x[:100])]), metric="cosine")
    compact(b)
    ingest(b, jsonl(tmp / "d.jsonl", [{"id": "doc-5", "vector": x[99].tolist()}]))

    q = rng.normal(size=(5, 8)).astype(np.float32)
    expected = {}
    for name in ("int-l2", "str-cosine"):
        res = Searcher(out / name, params=SearchParams(exact=True)).search(q, 10)
        filt = Searcher(out / name, filter="tag = 'a'", params=SearchParams(exact=True)).search(q, 5)
        expected[name] = {"ids": res.ids, "distances": res.distances.tolist(), "attributes": res.attributes, "filtered_ids": filt.ids}
    (out / "expected.json").write_text(json.dumps({"queries": q.tolist(), "results": expected}, indent=1) + "\n")
    shutil.rmtree(tmp)
    for lock in out.rglob("LOCK"):
        lock.unlink()


if __name__ == "__main__":
    main()
