"""Model-based test: random sequences of ingest, delete, compact, build-hnsw, build-ivf and
query through the Python API, checked after every step against a dict in memory.

Vectors are small integers, so every squared L2 distance is exact in float32 and the
only freedom left to the index is the order of equal distances: results are compared
tie-aware (the multiset of distances, and each returned id's own distance and attributes).
``TIDEPOOL_MODEL_EXAMPLES`` and ``TIDEPOOL_MODEL_STEPS`` make a longer run.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import tidepool_cli as tp

DIM = 3
INT_POOL = list(range(12))
STR_POOL = [f"doc-{c}" for c in "abcdefghijkl"]
QUERIES = np.array([[0, 0, 0], [2, -1, 3], [-3, 3, 1]], np.float32)

coords = st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM)
attrs = st.fixed_dictionaries({}, optional={"c": st.sampled_from(["r", "g", "b"]), "n": st.integers(0, 5)})


class IndexModel(RuleBasedStateMachine):
    """One index (integer or string ids) and the dict it must agree with."""

    @initialize(id_type=st.sampled_from(["int", "str"]))
    def create(self, id_type):
        self.dir = Path(tempfile.mkdtemp(prefix="tp-model-"))
        self.idx = self.dir / "idx"
        self.id_type = id_type
        self.rows: dict = {}  # id -> (vector, attributes)
        self.max_int_ever = -1
        self.files = 0
        self.created = False

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def _ingest(self, lines):
        self.files += 1
        path = self.dir / f"in-{self.files}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        res = tp.ingest(self.idx, path)
        self.created = True
        return res

    @rule(rows=st.lists(st.tuples(st.integers(0, len(INT_POOL) - 1), coords, attrs), min_size=1, max_size=8))
    def upsert(self, rows):
        pool = INT_POOL if self.id_type == "int" else STR_POOL
        lines = [{"id": pool[i], "vector": v, "attributes": a} for i, v, a in rows]
        self._ingest(lines)
        for line in lines:  # a later write of an id replaces the earlier row, within one input too
            self.rows[line["id"]] = (line["vector"], line["attributes"])
            if self.id_type == "int":
                self.max_int_ever = max(self.max_int_ever, line["id"])

    @precondition(lambda self: self.id_type == "int")
    @rule(rows=st.lists(st.tuples(coords, attrs), min_size=1, max_size=5))
    def append_without_ids(self, rows):
        res = self._ingest([{"vector": v, "attributes": a} for v, a in rows])
        first = self.max_int_ever + 1  # continues after the largest integer id ever written
        assert (res.first_id, res.last_id) == (first, first + len(rows) - 1)
        for j, (v, a) in enumerate(rows):
            self.rows[first + j] = (v, a)
        self.max_int_ever = first + len(rows) - 1

    @precondition(lambda self: self.created)
    @rule(picks=st.lists(st.integers(0, 40), min_size=1, max_size=4))
    def delete(self, picks):
        if self.id_type == "int":
            ids = list(picks)
        else:
            ids = [STR_POOL[p] if p < len(STR_POOL) else f"none-{p}" for p in picks]
        res = tp.delete(self.idx, ids)
        assert res.found == len({i for i in ids if i in self.rows})
        for i in ids:
            self.rows.pop(i, None)

    @precondition(lambda self: self.created)
    @rule()
    def compact(self):
        tp.compact(self.idx)

    @precondition(lambda self: self.created)
    @rule(m=st.integers(2, 6), min_rows=st.integers(0, 6), compact_first=st.booleans())
    def hnsw(self, m, min_rows, compact_first):
        if compact_first:
            tp.compact(self.idx)
        tp.build_hnsw(self.idx, m=m, ef_construction=16, min_rows=min_rows)

    @precondition(lambda self: self.created)
    @rule(nlist=st.integers(1, 4), codec=st.sampled_from(["ans", "elias-fano", "raw"]), min_rows=st.integers(0, 6), compact_first=st.booleans())
    def ivf(self, nlist, codec, min_rows, compact_first):
        if compact_first:
            tp.compact(self.idx)
        tp.build_ivf(self.idx, nlist=nlist, id_codec=codec, min_rows=min_rows)

    def _expected(self, q, keep):
        out = []
        for i, (v, a) in self.rows.items():
            if keep(a):
                out.append((float(np.sum((np.asarray(v, np.float64) - q) ** 2)), i, a))
        return sorted(out, key=lambda t: t[0])

    def _check(self, k, filter, keep, exact):
        res = tp.query(self.idx, QUERIES, k=k, filter=filter, exact=exact)
        for qi, q in enumerate(QUERIES.astype(np.float64)):
            want = self._expected(q, keep)
            ids = res.ids[qi]
            got_d = [float(x) for x in res.distances[qi, : len(ids)]]
            assert len(set(ids)) == len(ids)
            for i, d, a in zip(ids, got_d, res.attributes[qi]):
                assert i in self.rows, (i, "not live")
                v, wa = self.rows[i]
                assert keep(wa) and d == float(np.sum((np.asarray(v, np.float64) - q) ** 2)) and a == wa
            assert got_d == sorted(got_d)
            if exact:
                # Tie-aware: the k smallest distances, whichever of equally near ids were chosen.
                assert got_d == [t[0] for t in want[:k]], (got_d, want[:k])
                if len(want) > len(ids):
                    assert not ids or got_d[-1] <= want[len(ids)][0]

    @invariant()
    def agrees_with_the_model(self):
        if not self.created:
            return
        for k in (1, 4, 20):
            self._check(k, None, lambda a: True, exact=True)
        schema = tp.stats(self.idx).attributes
        if "c" in schema:
            self._check(5, "c = 'r'", lambda a: a.get("c") == "r", exact=True)
        if "n" in schema and "c" in schema:
            self._check(5, "n >= 2 and not c = 'g'", lambda a: a.get("n", -1) >= 2 and a.get("c") != "g", exact=True)
        self._check(3, None, lambda a: True, exact=False)  # approximate paths: right ids, distances, attributes
        st_ = tp.stats(self.idx, verify=True)
        assert st_.problems == [] and st_.live_rows == len(self.rows)


IndexModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("TIDEPOOL_MODEL_EXAMPLES", "12")),
    stateful_step_count=int(os.environ.get("TIDEPOOL_MODEL_STEPS", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
TestIndexModel = IndexModel.TestCase
