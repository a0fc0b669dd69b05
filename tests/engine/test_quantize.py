"""Quantizers and the cascade on real data: reconstruction, bounds, recall against shipped ground truth."""

import math

import numpy as np
import pytest

from tests.conftest import DATA, load_dataset
from tidepool_cli.engine.distances import normalize_rows
from tidepool_cli.engine.quantize import CODECS, quantizer_from_state, train_quantizer
from tidepool_cli.engine.quantize.cascade import cascade_search
from tidepool_cli.engine.quantize.sq import ScalarQuantizer
from tidepool_cli.engine.recall import recall_at_k
from tidepool_cli.errors import InvalidInputError

# (codec, params): every codec, PQ at both code widths, RaBitQ at 1 bit and extended.
VARIANTS = [
    ("f16", {}),
    ("sq8", {}),
    ("sq4", {}),
    ("pq", {"nbits": 8, "m": 16}),
    ("pq", {"nbits": 4}),
    ("rabitq", {"nbits": 1}),
    ("rabitq", {"nbits": 3}),
]
IDS = [c + "".join(f"-{k}{v}" for k, v in p.items() if k != "m") for c, p in VARIANTS]


def _train(codec, params, xb, metric, **kw):
    return train_quantizer(codec, xb, metric, train_rows=kw.pop("train_rows", 4000), seed=7, **params, **kw)


def _load(name, nq):
    xb, xq, gt, gt_dist = load_dataset(name)
    metric = "cosine" if "angular" in name or name == "debian-minilm" else "l2"
    if metric == "cosine":
        xb, xq = normalize_rows(xb), normalize_rows(xq)
    return xb, xq[:nq], gt[:nq], gt_dist[:nq], metric


def _brute(xq, xb, k, metric):
    q, b = xq.astype(np.float64), xb.astype(np.float64)
    if metric == "l2":
        D = (q**2).sum(1)[:, None] - 2 * q @ b.T + (b**2).sum(1)[None]
    else:
        D = (1 - q @ b.T) if metric == "cosine" else -(q @ b.T)
    pos = np.broadcast_to(np.arange(len(xb)), D.shape)
    I = np.lexsort((pos, D), axis=1)[:, :k]
    return np.take_along_axis(D, I, 1), I


@pytest.fixture(scope="module")
def sift2k():
    xb, xq, gt, gt_dist = load_dataset("siftsmall-2k")
    return xb, xq, gt, gt_dist


# -- reconstruction and state -------------------------------------------------------------

REL_MSE_MAX = {"f16": 1e-6, "sq8": 1e-3, "sq4": 0.03, "pq-nbits8": 0.3, "pq-nbits4": 0.6,
               "rabitq-nbits1": 0.45, "rabitq-nbits3": 0.05}


@pytest.mark.parametrize(("codec", "params"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("name", ["siftsmall-2k", "debian-minilm"])
def test_round_trip_state_and_reconstruction_error(codec, params, name):
    xb, _, _, _, metric = _load(name, 1)
    xb = xb[:3000]
    if codec == "pq":
        params = {**params, "m": xb.shape[1] // 8}  # 8 dimensions per sub-quantizer: fast to train
    q = _train(codec, params, xb, metric)
    enc = q.encode(xb)
    assert enc.codes.dtype == np.uint8 and enc.codes.shape == (len(xb), q.code_bytes)
    assert enc.factors.dtype == np.float32 and enc.factors.shape == (len(xb), 3)
    params_, arrays = q.state()
    again = quantizer_from_state(params_, {k: v.copy() for k, v in arrays.items()})
    enc2 = again.encode(xb)
    np.testing.assert_array_equal(enc2.codes, enc.codes)
    np.testing.assert_array_equal(enc2.factors, enc.factors)
    xh = q.decode(enc.codes, enc.factors)
    rel = ((xh - xb).astype(np.float64) ** 2).sum() / ((xb - xb.mean(0)).astype(np.float64) ** 2).sum()
    assert rel <= REL_MSE_MAX[f"{codec}-nbits{params['nbits']}" if "nbits" in params else codec]


def test_training_is_deterministic_with_seed(sift2k):
    xb = sift2k[0]
    for codec, params in VARIANTS:
        params = {**params, "m": 8} if codec == "pq" else params
        a = _train(codec, params, xb, "l2").encode(xb[:500])
        b = _train(codec, params, xb, "l2").encode(xb[:500])
        assert a.codes.shape[1] > 0
        np.testing.assert_array_equal(a.codes, b.codes)


def test_sq_ranges_are_per_dimension_and_beat_one_global_range(sift2k):
    xb = sift2k[0]
    q = ScalarQuantizer.train(xb, "l2", nbits=4, seed=0)
    assert np.unique(q.step).size > 1
    g = ScalarQuantizer(
        "l2", 4, np.full(q.d, xb.min(), np.float32), np.full(q.d, (xb.max() - xb.min()) / 15, np.float32), q.mean, 1.0
    )
    err = lambda z: ((z.decode_codes(z._encode_codes(xb)) - xb) ** 2).sum()  # noqa: E731
    assert err(q) < 0.8 * err(g)


def test_sq4_and_pq4_pack_two_codes_per_byte(sift2k):
    xb = sift2k[0]
    assert _train("sq4", {}, xb, "l2").code_bytes == 64
    pq = _train("pq", {"m": 32, "nbits": 4}, xb, "l2")
    assert pq.code_bytes == 16
    c = pq.encode(xb[:10]).codes
    assert pq.unpack(c).max() < 16


@pytest.mark.parametrize(("codec", "params"), [v for v in VARIANTS if v[0] != "rabitq"], ids=IDS[:5])
@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_scores_match_the_reconstruction_estimator(codec, params, metric, sift2k):
    xb, xq = sift2k[0], sift2k[1][:20]
    if metric == "cosine":
        xb, xq = normalize_rows(xb), normalize_rows(xq)
    q = _train(codec, params, xb, metric)
    enc = q.encode(xb[:500])
    est, err = q.score(q.prepare(xq), enc.codes, enc.factors)
    ip = (xq - q.mean).astype(np.float64) @ q.decode_codes(enc.codes).T.astype(np.float64) + xb[:500] @ q.mean
    want = {"l2": (xq**2).sum(1)[:, None] + (xb[:500] ** 2).sum(1)[None] - 2 * ip, "cosine": 1 - ip, "dot": -ip}[metric]
    np.testing.assert_allclose(est, want, rtol=1e-4, atol=1e-3 * np.abs(want).max())
    assert (err >= 0).all()


# -- RaBitQ's bound -----------------------------------------------------------------------


@pytest.mark.parametrize("nbits", [1, 2, 4])
@pytest.mark.parametrize(("name", "metric"), [("siftsmall-2k", "l2"), ("siftsmall-2k", "dot"), ("glove-50-angular", "cosine")])
def test_rabitq_bound_holds_for_the_stated_fraction_of_pairs(nbits, name, metric):
    xb, xq, _, _, _ = _load(name, 50)
    xb = xb[:2000]
    if metric == "cosine":
        xb, xq = normalize_rows(xb), normalize_rows(xq)
    q = train_quantizer("rabitq", xb, metric, nbits=nbits, seed=3)
    enc = q.encode(xb)
    est, err = q.score(q.prepare(xq), enc.codes, enc.factors)
    true = _brute(xq, xb, len(xb), metric)
    D = np.empty_like(true[0])
    np.put_along_axis(D, true[1], true[0], axis=1)
    inside = np.abs(est - D) <= err
    # The bound has the form sqrt(1 - a^2)/a * eps0 / sqrt(D - 1) of a near-Gaussian error.
    stated = math.erf(q.epsilon0 / math.sqrt(2))
    assert inside.mean() >= stated - 0.01
    # Unbiased: the mean signed error is a small fraction of the mean bound.
    assert abs((est - D).mean()) < 0.05 * err.mean()


def test_rabitq_rotation_is_orthogonal_and_padded(sift2k):
    q = train_quantizer("rabitq", load_dataset("glove-50-angular")[0][:500], "dot", seed=1)
    assert q.D == 56 and q.code_bytes == 7
    np.testing.assert_allclose(q.rotation @ q.rotation.T, np.eye(56), atol=1e-5)


# -- the cascade --------------------------------------------------------------------------

DATASETS = {
    # name: (queries, codec variants); large sets use the cheaper variants to keep the suite fast
    "siftsmall": (100, VARIANTS),
    "fashion-mnist": (100, [("sq4", {}), ("pq", {"m": 98, "nbits": 4}), ("rabitq", {"nbits": 1})]),
    "glove-50-angular": (100, [("sq8", {}), ("rabitq", {"nbits": 1})]),
    "debian-minilm": (100, [("f16", {}), ("sq4", {}), ("pq", {"m": 96, "nbits": 4}), ("rabitq", {"nbits": 1})]),
}


@pytest.mark.parametrize("name", list(DATASETS))
def test_cascade_recall_against_shipped_ground_truth(name):
    nq, variants = DATASETS[name]
    xb, xq, gt, gt_dist, metric = _load(name, nq)
    # Read-only memmap-like input: the kernels must not write into it.
    xb.setflags(write=False)
    for codec, params in variants:
        q = _train(codec, params, xb, metric)
        enc = q.encode(xb)
        enc.codes.setflags(write=False)
        enc.factors.setflags(write=False)
        res = cascade_search(xq, 10, q, enc.codes, enc.factors, xb)
        rec = recall_at_k(res.ids, gt, 10, found_dist=res.distances, gt_dist=gt_dist)
        assert rec >= 0.95, (codec, params, rec)
        assert res.f32_fraction < 0.25, (codec, params, res.f32_fraction)


@pytest.mark.parametrize(("codec", "params"), VARIANTS, ids=IDS)
@pytest.mark.parametrize("metric", ["l2", "cosine", "dot"])
def test_cascade_every_metric_matches_exact_search(codec, params, metric, sift2k):
    xb, xq = sift2k[0], sift2k[1]
    if metric == "cosine":
        xb, xq = normalize_rows(xb), normalize_rows(xq)
    q = _train(codec, params, xb, metric)
    enc = q.encode(xb)
    res = cascade_search(xq, 10, q, enc.codes, enc.factors, xb)
    Dt, It = _brute(xq, xb, 10, metric)
    rec = recall_at_k(res.ids, It, 10, found_dist=res.distances, gt_dist=Dt)
    assert rec >= 0.95
    # Returned distances are exact, whatever found them.
    ok = res.ids >= 0
    direct = _brute(xq, xb, len(xb), metric)
    full = np.empty_like(direct[0])
    np.put_along_axis(full, direct[1], direct[0], axis=1)
    np.testing.assert_allclose(res.distances[ok], np.take_along_axis(full, res.ids, 1)[ok], rtol=1e-4, atol=1e-3)


def test_cascade_memmap_callback_f16_stage_and_mask(tmp_path, sift2k):
    xb, xq = sift2k[0], sift2k[1]
    path = tmp_path / "v.npy"
    np.save(path, xb)
    mm = np.load(path, mmap_mode="r")
    q = _train("rabitq", {"nbits": 1}, mm, "l2")
    enc = q.encode(mm)
    allowed = np.arange(len(xb)) % 3 != 0
    seen = []

    def fetch(rows):
        seen.append(rows)
        return mm[rows]

    plain = cascade_search(xq, 10, q, enc.codes, enc.factors, mm, allowed=allowed)
    staged = cascade_search(xq, 10, q, enc.codes, enc.factors, fetch, allowed=allowed, vectors16=mm.astype(np.float16))
    np.testing.assert_array_equal(plain.ids, staged.ids)
    np.testing.assert_array_equal(plain.distances, staged.distances)
    assert allowed[plain.ids].all()
    assert staged.f32_pairs <= staged.f16_pairs and staged.f16_pairs > 0
    assert all((np.diff(r) > 0).all() for r in seen)
    Dt, It = _brute(xq, xb[allowed], 10, "l2")
    sub = np.flatnonzero(allowed)
    assert recall_at_k(plain.ids, sub[It], 10, found_dist=plain.distances, gt_dist=Dt) >= 0.95


@pytest.mark.parametrize("codec", ["sq8", "rabitq"])
def test_cascade_ties_on_duplicate_rows_break_by_id(codec, sift2k):
    base = sift2k[0][:300]
    xb = np.concatenate([base, base, base])  # every row three times
    ids = np.arange(len(xb))[::-1].copy()  # ids descending with position
    q = _train(codec, {}, xb, "l2", train_rows=900)
    enc = q.encode(xb)
    res = cascade_search(sift2k[1][:10], 9, q, enc.codes, enc.factors, xb, ids=ids)
    d = res.distances
    # Three copies of each neighbour, equal distances, in ascending id order.
    np.testing.assert_array_equal(d[:, 0::3], d[:, 1::3])
    np.testing.assert_array_equal(d[:, 0::3], d[:, 2::3])
    tied = d[:, :-1] == d[:, 1:]
    assert (res.ids[:, :-1][tied] < res.ids[:, 1:][tied]).all()


def test_cascade_fewer_rows_than_k_and_empty(sift2k):
    xb, xq = sift2k[0][:5], sift2k[1][:3]
    q = _train("sq8", {}, xb, "l2", train_rows=5)
    enc = q.encode(xb)
    res = cascade_search(xq, 8, q, enc.codes, enc.factors, xb)
    assert (res.ids[:, 5:] == -1).all() and np.isinf(res.distances[:, 5:]).all()
    assert sorted(res.ids[0, :5]) == list(range(5))
    none = cascade_search(xq, 8, q, enc.codes, enc.factors, xb, allowed=np.zeros(5, bool))
    assert (none.ids == -1).all()


# -- bad input ----------------------------------------------------------------------------


def test_bad_parameters_are_refused(sift2k):
    xb = sift2k[0][:600]
    with pytest.raises(InvalidInputError, match="unknown codec"):
        train_quantizer("opq", xb, "l2")
    with pytest.raises(InvalidInputError, match="dividing"):
        train_quantizer("pq", xb, "l2", m=5)
    with pytest.raises(InvalidInputError, match="nbits"):
        train_quantizer("pq", xb, "l2", nbits=6)
    with pytest.raises(InvalidInputError, match="nbits"):
        train_quantizer("rabitq", xb, "l2", nbits=5)
    with pytest.raises(InvalidInputError, match="only"):
        train_quantizer("sq8", xb, "l2", nbits=4)
    with pytest.raises(InvalidInputError, match="at least"):
        train_quantizer("pq", xb[:100], "l2", nbits=8)
    with pytest.raises(InvalidInputError, match="NaN"):
        train_quantizer("sq8", np.full((10, 4), np.nan, np.float32), "l2")
    with pytest.raises(InvalidInputError, match="float16"):
        train_quantizer("f16", np.full((10, 4), 1e6, np.float32), "l2")
    assert set(CODECS) == {"f16", "sq8", "sq4", "pq", "rabitq"}
    assert DATA.exists()
