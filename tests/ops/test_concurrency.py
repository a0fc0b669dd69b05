"""Queries in this process while ingest and compact run in others: every answer is exact.

An ingester process adds siftsmall in chunks (each acknowledged before the next starts)
and a compactor process compacts in a loop. Every query answer must equal the exact
k-NN over some prefix of the chunks: at least those acknowledged before the query
began, at most those acknowledged by the time it returned (snapshot isolation).
"""

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tidepool_cli.engine.topk import knn
from tidepool_cli.ops.ingest import ingest
from tidepool_cli.ops.query import query

pytestmark = pytest.mark.slow
CHUNK = 1000


def test_queries_stay_exact_while_ingest_and_compact_run(tmp_path, siftsmall):
    xb, xq, _, _ = siftsmall
    chunks = len(xb) // CHUNK
    for c in range(chunks):
        np.save(tmp_path / f"chunk{c}.npy", xb[c * CHUNK : (c + 1) * CHUNK])
    idx = tmp_path / "idx"
    ingest(idx, tmp_path / "chunk0.npy")
    acked = [1]  # chunks acknowledged so far
    done = threading.Event()
    errors = []

    def ingester():
        for c in range(1, chunks):
            r = subprocess.run([sys.executable, "-m", "tidepool_cli", "ingest", str(idx), "--input", str(tmp_path / f"chunk{c}.npy")],
                               capture_output=True, text=True)
            if r.returncode:
                errors.append(r.stderr)
                break
            acked[0] = c + 1
            time.sleep(0.05)
        done.set()

    compactor = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom tidepool_cli.ops.compact import compact\n"
         "while True:\n    compact(sys.argv[1])\n    time.sleep(0.02)\n", str(idx)],
        env=dict(os.environ), stderr=subprocess.PIPE,
    )
    thread = threading.Thread(target=ingester)
    thread.start()
    q = xq[:8]
    truth = {p: knn(q, xb[: p * CHUNK], 10, "l2")[1].tolist() for p in range(1, chunks + 1)}
    answers = 0
    try:
        while not done.is_set() or answers < 5:
            lo = acked[0]
            got = np.array(query(idx, q, 10).ids).tolist()
            hi = acked[0] + 1  # a chunk whose ingest committed but is not acknowledged yet may show
            assert any(got == truth[p] for p in range(lo, min(hi, chunks) + 1)), (lo, hi)
            answers += 1
    finally:
        thread.join()
        compactor.kill()
        _, err = compactor.communicate()
    assert not errors, errors
    assert answers >= 10
    assert compactor.returncode == -9, err.decode()  # it ran until killed, no crash of its own
    assert np.array(query(idx, q, 10).ids).tolist() == truth[chunks]
