"""Index directories written by every released format version still open, verify and answer alike."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.ops.compact import compact
from tidepool_cli.ops.planner import SearchParams
from tidepool_cli.ops.query import Searcher
from tidepool_cli.ops.stats import stats

GOLDEN = Path(__file__).parent / "golden"
VERSIONS = sorted(p for p in GOLDEN.glob("v*") if p.is_dir())


@pytest.mark.parametrize("version", VERSIONS, ids=lambda p: p.name)
@pytest.mark.parametrize("name", ["int-l2", "str-cosine"])
def test_golden_index_reads_verifies_and_answers(tmp_path, version, name):
    expected = json.loads((version / "expected.json").read_text())
    q = np.array(expected["queries"], np.float32)
    want = expected["results"][name]
    idx = tmp_path / name
    shutil.copytree(version / name, idx)
    assert stats(idx, verify=True).problems == []
    for phase in ("as written", "after compaction by this release"):
        exact = Searcher(idx, params=SearchParams(exact=True)).search(q, 10)
        assert exact.ids == want["ids"], phase
        np.testing.assert_allclose(exact.distances, want["distances"], rtol=1e-5, atol=1e-6)
        assert exact.attributes == want["attributes"]
        assert Searcher(idx, filter="tag = 'a'", params=SearchParams(exact=True)).search(q, 5).ids == want["filtered_ids"]
        default = Searcher(idx).search(q, 10)
        if isinstance(want["ids"][0][0], int):
            assert recall_at_k(np.array(default.ids), np.array(want["ids"]), 10) >= 0.9
        compact(idx)
