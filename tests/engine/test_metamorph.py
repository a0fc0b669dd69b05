"""Temperature metadata, policies and transition plans, on replayed timelines with explicit times."""

import numpy as np
import pytest

from tidepool_cli.engine.metamorph import (
    ADULT,
    LARVAL,
    NEVER,
    NYMPH,
    PRESETS,
    Policy,
    RowMeta,
    apply,
    fold,
    make_policy,
    new_rows,
    plan,
)
from tidepool_cli.errors import InvalidInputError

DAY = 1_700_006_400  # a midnight (UTC): a multiple of 86,400 and so of every preset's hot window
H, M = 3600, 60
RUN = 10 * M  # metamorph from cron every 10 minutes


def replay(events, n, policy, start=DAY, end=DAY + 24 * H, **kw):
    """Run fold + plan + apply every RUN seconds over the day; the stage of each row after each run."""
    rows = np.array([r for r, _ in events], np.int64)
    ts = np.array([t for _, t in events], np.int64)
    meta = new_rows(n, start)
    stages, moves = {}, 0
    prev = start
    for now in range(start + RUN, end + 1, RUN):
        due = (ts > prev) & (ts <= now)
        meta = fold(meta, rows[due], ts[due], policy)
        p = plan(meta, policy, now, **kw)
        meta = apply(meta, p, policy)
        stages[now] = meta.stage.copy()
        moves += len(p)
        prev = now
    return stages, meta


def at(stages, hh, mm=0):
    return stages[DAY + hh * H + mm * M]


def test_presets_carry_the_seed_numbers_and_overrides_make_a_custom_policy():
    assert PRESETS["conservative"] == {"cold_after": 3600, "warm_accesses": 3, "hot_accesses": 5, "hot_window": 300, "larval_bits": 4}
    assert PRESETS["balanced"] == {"cold_after": 1800, "warm_accesses": 5, "hot_accesses": 10, "hot_window": 120, "larval_bits": 2}
    assert PRESETS["aggressive"] == {"cold_after": 300, "warm_accesses": 10, "hot_accesses": 20, "hot_window": 60, "larval_bits": 1}
    p = make_policy()
    assert p.name == "balanced" and p.hot_hold == 900
    c = make_policy("aggressive", larval_bits=3, cold_after=None)
    assert c.name == "custom" and c.larval_bits == 3 and c.cold_after == 300 and c.hot_accesses == 20
    assert Policy.from_dict(c.to_dict()) == c
    assert make_policy("conservative", warm_accesses=3).name == "conservative"
    for bad in ({"larval_bits": 5}, {"hot_window": 0}, {"colder": 3}, {"warm_accesses": 2.5}):
        with pytest.raises(InvalidInputError):
            make_policy("balanced", **bad)
    with pytest.raises(InvalidInputError, match="unknown policy"):
        make_policy("lukewarm")


def test_a_replayed_day_gives_the_exact_expected_stages():
    events = []
    # row 0: never accessed.
    # row 1: a burst of 12 accesses inside one hot window at 09:00.
    events += [(1, DAY + 9 * H + 10 * i) for i in range(12)]
    # row 2: warm, not hot: one access every 3 minutes from 12:00 to 12:12.
    events += [(2, DAY + 12 * H + 3 * M * i) for i in range(5)]
    # row 3: one access every 5 minutes all day.
    events += [(3, DAY + 5 * M * i + 7) for i in range(24 * 12)]
    stages, meta = replay(events, 4, make_policy("balanced"))

    s0 = [at(stages, 0, m)[0] for m in (10, 20, 30)]
    assert s0 == [ADULT, NYMPH, LARVAL]  # hold 15 min -> Nymph at 00:20; cold 30 min -> Larval at 00:30
    assert all(s[0] == LARVAL for t, s in stages.items() if t >= DAY + 30 * M)

    r1 = {(hh, mm): at(stages, hh, mm)[1] for hh, mm in [(9, 0), (9, 10), (9, 20), (9, 30), (9, 40), (23, 0)]}
    # hot at 09:10; held 15 min after its promotion (which follows its last hot access), so
    # Nymph at 09:30; cold 30 min after its last access (09:01:50), so Larval at 09:40.
    assert r1 == {(9, 0): LARVAL, (9, 10): ADULT, (9, 20): ADULT, (9, 30): NYMPH, (9, 40): LARVAL, (23, 0): LARVAL}

    # row 2: four accesses by 12:10 are not yet warm, five by 12:20 are; cold 30 min after 12:12.
    assert [at(stages, 12, m)[2] for m in (10, 20, 40, 50)] == [LARVAL, NYMPH, NYMPH, LARVAL]

    # row 3: never cold, never hot: Nymph from 00:20 to the end of the day.
    assert at(stages, 0, 10)[3] == ADULT and all(s[3] == NYMPH for t, s in stages.items() if t >= DAY + 20 * M)
    assert meta.access_count.tolist() == [0, 12, 5, 288]
    assert meta.last_hot[1] == DAY + 9 * H + 110 and meta.last_hot[3] == NEVER
    assert meta.larval_bits.tolist() == [2, 2, 2, 0]


def test_hysteresis_keeps_a_bursty_row_adult_instead_of_flipping_every_run():
    # hot bursts (10 accesses in 36 s, inside one window) every 14 minutes from 06:00 to 07:52.
    events = [(0, DAY + 6 * H + 14 * M * b + 4 * i) for b in range(9) for i in range(10)]
    runs = [DAY + 6 * H + RUN * i for i in range(1, 15)]  # 06:10 .. 08:20

    held, _ = replay(events, 1, make_policy("balanced"))
    assert [int(held[t][0]) for t in runs] == [ADULT] * 12 + [NYMPH] * 2  # 15 min after 07:52:36

    # Without the hold the same row flips on almost every run.
    flip, _ = replay(events, 1, make_policy("balanced", hot_hold=0))
    got = [int(flip[t][0]) for t in runs]
    assert got == [ADULT, NYMPH, ADULT, NYMPH, ADULT, NYMPH, NYMPH, ADULT, NYMPH, ADULT, NYMPH, ADULT, NYMPH, NYMPH]


def test_a_demoted_row_is_not_promoted_again_by_the_window_that_promoted_it():
    pol = make_policy("balanced")
    meta = fold(new_rows(1, DAY, stage=NYMPH), np.zeros(10), np.full(10, DAY + 5), pol)
    meta = apply(meta, p := plan(meta, pol, DAY + 60), pol)
    assert p.counts() == {"nymph->adult": 1}
    meta = apply(meta, p := plan(meta, pol, DAY + 60 + 900), pol)
    assert p.counts() == {"adult->nymph": 1}
    assert len(plan(meta, pol, DAY + 60 + 1000)) == 0  # last_hot precedes the demotion
    # A Larval row is not warmed again by its lifetime count: it needs warm_accesses new accesses.
    meta = apply(meta, plan(meta, pol, DAY + 4000), pol)
    assert meta.stage[0] == LARVAL and meta.access_count[0] == 10
    meta = fold(meta, np.zeros(4), DAY + 4100 + 200 * np.arange(4), pol)
    assert len(plan(meta, pol, DAY + 5000)) == 0
    meta = fold(meta, np.zeros(1), [DAY + 5000], pol)
    assert plan(meta, pol, DAY + 5001).counts() == {"larval->nymph": 1}


def _mixed_state(pol, now):
    """Nine rows, each due for a known transition at ``now``."""
    n = 9
    meta = new_rows(n, now - 10 * H)
    stage = np.array([LARVAL, NYMPH, LARVAL, LARVAL, ADULT, ADULT, NYMPH, NYMPH, ADULT], np.uint8)
    since = np.full(n, now - 5 * H)
    last_access = np.array([now - 10, now - 20, now - 30, now - 40, now - 1000, now - 1200, now - 4000, now - 2000, now - 9000])
    last_hot = np.array([now - 100, now - 50, NEVER, NEVER, NEVER, NEVER, NEVER, NEVER, NEVER])
    stage_acc = np.array([12, 11, 6, 9, 0, 0, 0, 0, 0], np.uint32)
    bits = np.where(stage == LARVAL, 2, 0).astype(np.uint8)
    return RowMeta(**{**meta.columns(), "stage": stage, "larval_bits": bits, "stage_since": since, "last_access": last_access,
                      "last_hot": last_hot, "stage_accesses": stage_acc})


def test_priorities_under_a_max_transitions_bound():
    pol, now = make_policy("balanced"), DAY + 12 * H
    meta = _mixed_state(pol, now)
    full = plan(meta, pol, now)
    # urgent (most recently hot first), high (most accesses first), normal and low (longest idle first)
    assert full.rows.tolist() == [1, 0, 3, 2, 5, 4, 8, 6, 7]
    assert full.dst.tolist() == [ADULT, ADULT, NYMPH, NYMPH, NYMPH, NYMPH, LARVAL, LARVAL, LARVAL]
    assert full.counts() == {"larval->nymph": 2, "larval->adult": 1, "nymph->larval": 2, "nymph->adult": 1,
                             "adult->larval": 1, "adult->nymph": 2}
    p = plan(meta, pol, now, max_transitions=5)
    assert p.rows.tolist() == [1, 0, 3, 2, 5] and p.deferred == 4
    assert p.to_dict(with_ids=True)["ids"] == {"larval->nymph": [2, 3], "larval->adult": [0], "nymph->adult": [1], "adult->nymph": [5]}
    meta2 = apply(meta, p, pol)
    rest = plan(meta2, pol, now + 1)
    assert rest.rows.tolist() == [4, 8, 6, 7] and rest.deferred == 0
    # prewarm outranks everything and ignores temperature.
    pw = plan(meta, pol, now, max_transitions=2, prewarm=np.array([7]))
    assert pw.rows.tolist() == [7, 1] and pw.dst.tolist() == [ADULT, ADULT]
    assert len(plan(meta, pol, now, max_transitions=0)) == 0


def test_a_bounded_plan_is_the_head_of_the_unbounded_one():
    rng = np.random.default_rng(5)
    pol, now, n = make_policy("balanced"), DAY + 12 * H, 5000
    meta = new_rows(n, now - 10 * H)
    stage = rng.integers(0, 3, n).astype(np.uint8)
    cols = {**meta.columns(), "stage": stage,
            "last_access": now - rng.choice([10, 2000, 4000], n),  # many ties inside each class
            "last_hot": np.where(rng.random(n) < 0.3, now - rng.choice([5, 50], n), NEVER),
            "stage_accesses": rng.choice([0, 6, 9], n).astype(np.uint32)}
    meta = RowMeta(**cols)
    full = plan(meta, pol, now)
    assert len(full) > 3000
    for bound in (0, 1, 7, 500, 1234, len(full) - 1, len(full), len(full) + 5):
        p = plan(meta, pol, now, max_transitions=bound)
        assert p.rows.tolist() == full.rows[:bound].tolist() and p.deferred == len(full) - len(p)
        assert p.dst.tolist() == full.dst[:bound].tolist()


def test_apply_never_writes_its_inputs_and_resets_stage_clocks():
    pol, now = make_policy("aggressive"), DAY + 12 * H
    meta = _mixed_state(pol, now)
    ro = RowMeta(**{k: np.array(v) for k, v in meta.columns().items()})
    for v in ro.columns().values():
        v.setflags(write=False)
    p = plan(ro, pol, now)
    after = apply(fold(ro, np.array([0, 0]), np.array([now, now]), pol), p, pol)
    assert (after.stage_since[p.rows] == now).all() and (after.stage_accesses[p.rows] == 0).all()
    assert (after.larval_bits[p.rows] == np.where(p.dst == LARVAL, 1, 0)).all()
    untouched = np.setdiff1d(np.arange(len(ro)), p.rows)
    np.testing.assert_array_equal(after.larval_bits[untouched], ro.larval_bits[untouched])


def _reference_fold(meta, rows, ts, pol):
    """One row and one record at a time, the obvious way."""
    cols = {k: np.array(v) for k, v in meta.columns().items()}
    w = pol.hot_window
    for r in np.unique(rows):
        for t in np.sort(ts[rows == r]):
            cols["access_count"][r] += 1
            cols["stage_accesses"][r] += 1
            cols["last_access"][r] = max(cols["last_access"][r], t)
            cur = cols["window_start"][r] // w
            if t // w < cur:
                continue
            if t // w > cur:
                cols["window_start"][r], cols["recent_count"][r] = (t // w) * w, 0
            cols["recent_count"][r] += 1
            if cols["recent_count"][r] >= pol.hot_accesses:
                cols["last_hot"][r] = max(cols["last_hot"][r], t)
    return cols


def test_fold_matches_a_record_by_record_reference_across_batches():
    rng = np.random.default_rng(7)
    pol = make_policy("conservative")  # 5 accesses in 300 s
    n = 300
    meta = ref = new_rows(n, DAY)
    ref = ref.columns()
    for b in range(4):
        m = 4000
        rows = rng.zipf(1.3, m) % n
        ts = DAY + b * 900 + rng.integers(0, 1200, m)  # batches overlap: some records arrive late
        meta = fold(meta, rows, ts + rng.random(m), pol)  # float seconds are floored
        ref = _reference_fold(RowMeta(**ref), rows, ts, pol)
    for k, v in meta.columns().items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)
    assert (meta.last_hot != NEVER).sum() > 10 and (meta.recent_count > 0).sum() > 100


def test_fold_rejects_bad_records_and_empty_batches_change_nothing():
    pol = make_policy()
    meta = new_rows(5, DAY)
    with pytest.raises(InvalidInputError, match="outside 0..4"):
        fold(meta, np.array([5]), np.array([DAY]), pol)
    with pytest.raises(InvalidInputError, match="timestamps"):
        fold(meta, np.array([1, 2]), np.array([DAY]), pol)
    with pytest.raises(InvalidInputError, match="prewarm"):
        plan(meta, pol, DAY, prewarm=np.array([-1]))
    same = fold(meta, np.zeros(0, np.int64), np.zeros(0), pol)
    for k, v in meta.columns().items():
        np.testing.assert_array_equal(v, same.columns()[k])
    assert RowMeta.from_columns(same.columns()).stage_counts() == {"larval": 0, "nymph": 0, "adult": 5}
    merged = RowMeta.concat([same.take(np.array([4, 0])), new_rows(2, DAY + 9, stage=LARVAL, larval_bits=3), new_rows(0, DAY)])
    assert len(merged) == 4 and merged.stage.tolist() == [ADULT, ADULT, LARVAL, LARVAL]
    assert merged.created.tolist() == [DAY, DAY, DAY + 9, DAY + 9] and merged.larval_bits.tolist() == [0, 0, 3, 3]
    assert all(merged.columns()[k].dtype == v.dtype for k, v in same.columns().items())
    with pytest.raises(InvalidInputError, match="stage"):
        RowMeta.from_columns({**same.columns(), "stage": same.stage.astype(np.int64)})


def test_planning_a_million_rows_is_one_vectorized_pass():
    pol, now = make_policy(), DAY + 600
    meta = new_rows(1_000_000, DAY)
    assert len(plan(meta, pol, now)) == 0  # young Adult rows inside their hold: nothing due
    p = plan(meta, pol, DAY + 1000, max_transitions=1000)
    assert len(p) == 1000 and p.deferred == 999_000 and p.rows.tolist() == list(range(1000))
