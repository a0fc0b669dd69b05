"""Access temperature and precision stages: per-row metadata columns, policies, transition plans.

Every row of a segment lives in one of three stages (the Nymph encoding's life cycle):

======  =====  ===============================  ==========================================
stage   code   representation in RAM            when
======  =====  ===============================  ==========================================
Larval  0      1-4-bit codes (``larval_bits``)  cold: no access for ``cold_after`` seconds
Nymph   1      8-bit codes (SQ8)                warm, or an Adult row that cooled down
Adult   2      float32                          hot: ``hot_accesses`` in ``hot_window``
======  =====  ===============================  ==========================================

Codes are ordered by precision, so ``to > from`` is a promotion. The originals stay
bit-perfect in the cold store whatever the stage.

This module is pure NumPy: it folds access records into the metadata columns, plans the
transitions a policy asks for at a time ``now`` (vectorized over all rows, ordered by the
seed's priorities, bounded by ``max_transitions``), and applies a plan to the columns.
Times are Unix seconds (int64). Every function returns new arrays; inputs (possibly
read-only memmaps) are never written.

Hot windows are aligned to the clock: the window of an access at ``t`` starts at
``t - t % hot_window``. A row is hot when one window holds ``hot_accesses`` accesses; a
burst that straddles a window boundary counts in two windows (so, at worst, it takes
``2 * hot_accesses - 1`` accesses within ``hot_window`` seconds to be seen).

Hysteresis, so that a row does not flip between stages on every run:

* a row promoted to Adult stays Adult until ``hot_hold`` seconds have passed since it was
  last hot (and since it was promoted);
* a row re-enters Adult only on a hot window seen since it entered its current stage, so
  the window that made it Adult once cannot promote it again after its demotion;
* a Larval row returns to Nymph only after ``warm_accesses`` accesses made since it became
  Larval (the lifetime count that made it warm once does not count twice);
* a row demotes to Larval only after ``cold_after`` seconds without any access.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from tidepool_cli.errors import InvalidInputError

LARVAL, NYMPH, ADULT = 0, 1, 2
STAGE_NAMES = ("larval", "nymph", "adult")
U32_MAX = np.iinfo(np.uint32).max
NEVER = -1
"""``last_hot`` of a row that has never been hot."""

# Transition priorities (the seed's): lower runs first.
URGENT, HIGH, NORMAL, LOW = 0, 1, 2, 3

PRESETS: dict[str, dict[str, int]] = {
    "conservative": {"cold_after": 3600, "warm_accesses": 3, "hot_accesses": 5, "hot_window": 300, "larval_bits": 4},
    "balanced": {"cold_after": 1800, "warm_accesses": 5, "hot_accesses": 10, "hot_window": 120, "larval_bits": 2},
    "aggressive": {"cold_after": 300, "warm_accesses": 10, "hot_accesses": 20, "hot_window": 60, "larval_bits": 1},
}
"""The three policy presets of the Nymph encoding seed, in seconds and access counts."""

DEFAULT_POLICY = "balanced"


@dataclass(frozen=True)
class Policy:
    """A temperature policy: when rows move between stages.

    Attributes
    ----------
    name : str
        Preset name, or ``"custom"`` when any setting differs from the preset it started from.
    cold_after : int
        Seconds without access after which a row demotes to Larval.
    warm_accesses : int
        Accesses (since becoming Larval) that promote a Larval row to Nymph.
    hot_accesses : int
        Accesses within one hot window that promote a row to Adult.
    hot_window : int
        Seconds of a hot window (windows are aligned to the clock).
    larval_bits : int
        Bits per dimension of Larval codes, 1 to 4.
    hot_hold : int
        Seconds an Adult row stays Adult after it was last hot (hysteresis); by default
        half of ``cold_after``.
    """

    name: str
    cold_after: int
    warm_accesses: int
    hot_accesses: int
    hot_window: int
    larval_bits: int
    hot_hold: int

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON-ready settings (stored in the index so cron runs reuse them)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Policy":
        """Rebuild a stored policy: its preset, then every stored setting over it.

        Raises
        ------
        InvalidInputError
            Unknown preset or setting, or a setting out of range.
        """
        d = dict(d)
        name = d.pop("name", DEFAULT_POLICY)
        return make_policy(name if name in PRESETS else DEFAULT_POLICY, **d)


def make_policy(preset: str = DEFAULT_POLICY, **overrides: int | None) -> Policy:
    """A preset with some settings overridden (``None`` keeps the preset's value).

    Parameters
    ----------
    preset : {"conservative", "balanced", "aggressive"}
    **overrides : int or None
        Any of ``cold_after``, ``warm_accesses``, ``hot_accesses``, ``hot_window``,
        ``larval_bits``, ``hot_hold``.

    Returns
    -------
    Policy
        Named after the preset if nothing differs from it, else ``"custom"``.

    Raises
    ------
    InvalidInputError
        Unknown preset or setting; a count or duration below 1 (``hot_hold`` may be 0);
        ``larval_bits`` outside 1..4.
    """
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown policy {preset!r}; choose one of {', '.join(PRESETS)}")
    unknown = set(overrides) - set(PRESETS[preset]) - {"hot_hold"}
    if unknown:
        raise InvalidInputError(f"unknown policy setting {sorted(unknown)[0]!r}")
    values = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None and k != "hot_hold"}}
    hold = overrides.get("hot_hold")
    values["hot_hold"] = values["cold_after"] // 2 if hold is None else hold
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidInputError(f"policy setting {key} must be an integer, got {v!r}")
        if v < (0 if key == "hot_hold" else 1):
            raise InvalidInputError(f"policy setting {key} must be at least {0 if key == 'hot_hold' else 1}, got {v}")
    if not 1 <= values["larval_bits"] <= 4:
        raise InvalidInputError(f"larval_bits must be 1 to 4, got {values['larval_bits']}")
    default = {**PRESETS[preset], "hot_hold": PRESETS[preset]["cold_after"] // 2}
    name = preset if values == default else "custom"
    return Policy(name=name, **{k: int(v) for k, v in values.items()})


@dataclass(frozen=True)
class RowMeta:
    """Per-row temperature metadata of one segment, column-wise (n rows).

    Attributes
    ----------
    access_count : (n,) uint32
        Accesses over the row's lifetime (saturates at 2**32 - 1).
    last_access : (n,) int64
        Unix seconds of the latest access (the creation time until the first one).
    created : (n,) int64
        Unix seconds the row was created.
    recent_count : (n,) uint32
        Accesses in the current hot window.
    window_start : (n,) int64
        Unix seconds the current hot window starts (a multiple of ``hot_window``).
    stage : (n,) uint8
        :data:`LARVAL`, :data:`NYMPH` or :data:`ADULT`.
    larval_bits : (n,) uint8
        Bits per dimension of the row's Larval codes; 0 unless the row is Larval.
    stage_since : (n,) int64
        Unix seconds the row entered its stage (its creation time if it never moved).
    stage_accesses : (n,) uint32
        Accesses since the row entered its stage (saturating).
    last_hot : (n,) int64
        Unix seconds of the latest access in a hot window, :data:`NEVER` (-1) if none.
    """

    access_count: np.ndarray
    last_access: np.ndarray
    created: np.ndarray
    recent_count: np.ndarray
    window_start: np.ndarray
    stage: np.ndarray
    larval_bits: np.ndarray
    stage_since: np.ndarray
    stage_accesses: np.ndarray
    last_hot: np.ndarray

    def __len__(self) -> int:
        return int(self.stage.shape[0])

    def columns(self) -> dict[str, np.ndarray]:
        """Name -> column, in declaration order (what a metadata file stores)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_columns(cls, cols: dict[str, np.ndarray], where: str = "row metadata") -> "RowMeta":
        """Columns read back from storage, checked for names, dtypes and equal lengths.

        Raises
        ------
        InvalidInputError
            A column is missing, has another dtype, or another length.
        """
        out = {}
        for name, dtype in COLUMN_DTYPES.items():
            if name not in cols:
                raise InvalidInputError(f"{where}: missing column {name!r}")
            a = cols[name]
            if a.dtype != dtype or a.ndim != 1:
                raise InvalidInputError(f"{where}: column {name!r} is {a.dtype}{list(a.shape)}, expected 1-D {np.dtype(dtype)}")
            out[name] = a
        if len({a.shape[0] for a in out.values()}) > 1:
            raise InvalidInputError(f"{where}: columns of different lengths")
        return cls(**out)

    def take(self, idx: np.ndarray) -> "RowMeta":
        """Rows ``idx`` (int array) as new columns (compaction keeps survivors' history)."""
        return RowMeta(**{k: np.asarray(v)[idx] for k, v in self.columns().items()})

    @classmethod
    def concat(cls, parts: "list[RowMeta]") -> "RowMeta":
        """Rows of several segments one after another (a merge keeps every row's history)."""
        return cls(**{name: np.concatenate([np.asarray(getattr(p, name)) for p in parts]).astype(dtype, copy=False)
                      for name, dtype in COLUMN_DTYPES.items()})

    def stage_counts(self) -> dict[str, int]:
        """Rows per stage, ``{"larval": n, "nymph": n, "adult": n}``."""
        counts = np.bincount(np.asarray(self.stage), minlength=3)
        return {name: int(counts[i]) for i, name in enumerate(STAGE_NAMES)}


COLUMN_DTYPES = {
    "access_count": np.uint32,
    "last_access": np.int64,
    "created": np.int64,
    "recent_count": np.uint32,
    "window_start": np.int64,
    "stage": np.uint8,
    "larval_bits": np.uint8,
    "stage_since": np.int64,
    "stage_accesses": np.uint32,
    "last_hot": np.int64,
}


def new_rows(n: int, created: int, stage: int = ADULT, larval_bits: int = 0) -> RowMeta:
    """Metadata of ``n`` new rows, never accessed.

    Parameters
    ----------
    n : int
        Rows.
    created : int
        Unix seconds of their creation (also their ``last_access`` and ``stage_since``).
    stage : int
        Initial stage; ingested rows enter as :data:`ADULT` (f32 until a policy moves them).
    larval_bits : int
        Bits of their codes if ``stage`` is :data:`LARVAL` (ignored otherwise).

    Returns
    -------
    RowMeta
    """
    t = np.full(n, created, np.int64)
    return RowMeta(
        access_count=np.zeros(n, np.uint32),
        last_access=t.copy(),
        created=t.copy(),
        recent_count=np.zeros(n, np.uint32),
        window_start=t.copy(),
        stage=np.full(n, stage, np.uint8),
        larval_bits=np.full(n, larval_bits if stage == LARVAL else 0, np.uint8),
        stage_since=t.copy(),
        stage_accesses=np.zeros(n, np.uint32),
        last_hot=np.full(n, NEVER, np.int64),
    )


def as_seconds(ts: np.ndarray) -> np.ndarray:
    """Timestamps as int64 Unix seconds.

    Parameters
    ----------
    ts : (m,) float or int
        Unix seconds; floats (as access logs store them) are rounded down.

    Returns
    -------
    (m,) int64
    """
    ts = np.asarray(ts)
    return np.floor(ts).astype(np.int64) if ts.dtype.kind == "f" else ts.astype(np.int64)


def _sat_add(counts: np.ndarray, add: np.ndarray) -> np.ndarray:
    return np.minimum(counts.astype(np.int64) + add, U32_MAX).astype(np.uint32)


def _group_ends(keys: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(first index, one past the last) of each run of equal key tuples in sorted arrays."""
    m = keys[0].shape[0]
    change = np.zeros(m, bool)
    change[:1] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    return starts, np.append(starts[1:], m)


def fold(meta: RowMeta, rows: np.ndarray, ts: np.ndarray, policy: Policy) -> RowMeta:
    """Fold a batch of access records into the metadata columns.

    Records may come in any order and span many hot windows; a window that continues the
    row's current window adds to its count. Records older than the row's current window
    count as accesses but start no window.

    Parameters
    ----------
    meta : RowMeta
        Columns of n rows (not modified).
    rows : (m,) int
        Row of each access (segment row numbers).
    ts : (m,) int64 or float64
        Unix seconds of each access (floats are rounded down).
    policy : Policy
        Supplies ``hot_window`` and ``hot_accesses``.

    Returns
    -------
    RowMeta
        New columns.

    Raises
    ------
    InvalidInputError
        ``rows`` and ``ts`` differ in length, or a row is outside 0..n-1.
    """
    n = len(meta)
    rows = np.asarray(rows).astype(np.int64, copy=False)
    ts = as_seconds(ts)
    if rows.shape != ts.shape or rows.ndim != 1:
        raise InvalidInputError(f"access records: {rows.shape[0]} rows but {ts.shape[0]} timestamps")
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise InvalidInputError(f"access records name row {int(rows.max() if rows.max() >= n else rows.min())}, outside 0..{n - 1}")
    cols = {k: np.array(v) for k, v in meta.columns().items()}  # fresh, writable copies
    if rows.size == 0:
        return RowMeta(**cols)
    w = policy.hot_window
    order = np.lexsort((ts, rows))
    r, t = rows[order], ts[order]
    counts = np.bincount(r, minlength=n)
    cols["access_count"] = _sat_add(cols["access_count"], counts)
    cols["stage_accesses"] = _sat_add(cols["stage_accesses"], counts)

    # Per row: the latest access.
    starts, ends = _group_ends((r,))
    seen = r[starts]
    cols["last_access"][seen] = np.maximum(cols["last_access"][seen], t[ends - 1])

    # Per (row, window): the accesses in it, plus the stored count if it continues the current window.
    epoch = t // w
    gstart, gend = _group_ends((r, epoch))
    g_row, g_epoch, g_last = r[gstart], epoch[gstart], t[gend - 1]
    g_count = (gend - gstart).astype(np.int64)
    cur_epoch = cols["window_start"][g_row] // w
    g_count += np.where(g_epoch == cur_epoch, cols["recent_count"][g_row], 0)
    live = g_epoch >= cur_epoch  # windows older than the current one start nothing

    hot = live & (g_count >= policy.hot_accesses)
    if hot.any():
        h_row, h_last = g_row[hot], g_last[hot]
        _, h_end = _group_ends((h_row,))
        last_row, last_t = h_row[h_end - 1], h_last[h_end - 1]
        cols["last_hot"][last_row] = np.maximum(cols["last_hot"][last_row], last_t)

    lr, le, lc = g_row[live], g_epoch[live], g_count[live]
    if lr.size:
        _, l_end = _group_ends((lr,))
        newest = l_end - 1  # groups are sorted by window within a row: the last is the newest
        cols["window_start"][lr[newest]] = le[newest] * w
        cols["recent_count"][lr[newest]] = np.minimum(lc[newest], U32_MAX)
    return RowMeta(**cols)


@dataclass(frozen=True)
class TransitionPlan:
    """The transitions one run makes, in priority order.

    Attributes
    ----------
    rows : (t,) int64
        Rows that change stage, most urgent first.
    src, dst : (t,) uint8
        Their stage before and after.
    deferred : int
        Rows due for a transition that the ``max_transitions`` bound left for a later run.
    now : int
        Unix seconds the plan was made for.
    """

    rows: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    deferred: int
    now: int

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def counts(self) -> dict[str, int]:
        """Transitions by ``"from->to"`` name (only pairs that occur)."""
        pair = self.src.astype(np.int64) * 3 + self.dst
        c = np.bincount(pair, minlength=9)
        return {f"{STAGE_NAMES[i // 3]}->{STAGE_NAMES[i % 3]}": int(c[i]) for i in np.flatnonzero(c)}

    def ids(self) -> dict[str, np.ndarray]:
        """Rows by ``"from->to"`` name, each sorted ascending."""
        pair = self.src.astype(np.int64) * 3 + self.dst
        return {f"{STAGE_NAMES[i // 3]}->{STAGE_NAMES[i % 3]}": np.sort(self.rows[pair == i]) for i in np.unique(pair)}

    def to_dict(self, with_ids: bool = False) -> dict[str, Any]:
        """JSON-ready summary: ``now``, ``transitions``, ``deferred``, ``counts`` (and ``ids``)."""
        out: dict[str, Any] = {"now": self.now, "transitions": len(self), "deferred": self.deferred, "counts": self.counts()}
        if with_ids:
            out["ids"] = {k: v.tolist() for k, v in self.ids().items()}
        return out


def plan(meta: RowMeta, policy: Policy, now: int, *, max_transitions: int | None = None, prewarm: np.ndarray | None = None) -> TransitionPlan:
    """Decide which rows change stage at time ``now`` (vectorized over all rows).

    Rules (see the module notes on hysteresis), evaluated on every row at once:

    * to Adult: ``prewarm`` rows, and rows hot since they entered their stage whose last
      hot window is less than ``cold_after`` old;
    * Larval -> Nymph: ``warm_accesses`` accesses since becoming Larval, not cold;
    * Adult -> Nymph (or -> Larval if cold): ``hot_hold`` seconds since last hot and since
      promoted;
    * Nymph -> Larval: cold, i.e. no access for ``cold_after`` seconds.

    Priorities (the seed's): urgent promotions to Adult (prewarm first, then the most
    recently hot), high Larval -> Nymph (most accesses first), normal Adult -> Nymph, low
    Nymph -> Larval and Adult -> Larval (longest idle first); ties by row. When more rows
    are due than ``max_transitions``, the most urgent run and the rest are deferred.

    Parameters
    ----------
    meta : RowMeta
    policy : Policy
    now : int
        Unix seconds.
    max_transitions : int, optional
        Upper bound on the plan's length (None: no bound).
    prewarm : (p,) int, optional
        Rows to promote to Adult now, whatever their temperature.

    Returns
    -------
    TransitionPlan

    Raises
    ------
    InvalidInputError
        ``max_transitions`` negative or a ``prewarm`` row outside 0..n-1.
    """
    n = len(meta)
    now = int(now)
    if max_transitions is not None and max_transitions < 0:
        raise InvalidInputError(f"max_transitions must be at least 0, got {max_transitions}")
    stage = np.asarray(meta.stage)
    last_access, last_hot, since = np.asarray(meta.last_access), np.asarray(meta.last_hot), np.asarray(meta.stage_since)
    adult, larval, nymph = stage == ADULT, stage == LARVAL, stage == NYMPH

    cold = now - last_access >= policy.cold_after
    hot = (last_hot >= since) & (last_hot != NEVER) & (now - last_hot < policy.cold_after)
    forced = np.zeros(n, bool)
    if prewarm is not None and len(prewarm):
        p = np.asarray(prewarm).astype(np.int64, copy=False)
        if p.min() < 0 or p.max() >= n:
            raise InvalidInputError(f"prewarm names row {int(p.max() if p.max() >= n else p.min())}, outside 0..{n - 1}")
        forced[p] = True
    to_adult = (hot | forced) & ~adult
    released = adult & ~forced & (now - np.maximum(last_hot, since) >= policy.hot_hold)
    l_to_n = larval & ~to_adult & ~cold & (np.asarray(meta.stage_accesses) >= policy.warm_accesses)
    to_larval = (nymph & cold & ~to_adult) | (released & cold)
    to_nymph = l_to_n | (released & ~cold)

    rows = np.flatnonzero(to_adult | to_nymph | to_larval)
    if rows.size == 0:
        empty = np.zeros(0, np.uint8)
        return TransitionPlan(np.zeros(0, np.int64), empty, empty.copy(), 0, now)
    src = stage[rows]
    dst = np.where(to_adult[rows], ADULT, np.where(to_nymph[rows], NYMPH, LARVAL)).astype(np.uint8)
    # Class, then a key inside the class (smaller runs first); both arrays are ours to fill.
    prio = np.full(rows.size, LOW, np.uint8)
    key = last_access[rows]  # normal and low: longest idle first
    up, warm = dst == ADULT, src == LARVAL
    warm &= ~up
    prio[dst == NYMPH] = NORMAL
    prio[warm] = HIGH
    prio[up] = URGENT
    key[warm] = -np.asarray(meta.stage_accesses)[rows[warm]].astype(np.int64)
    key[up] = -last_hot[rows[up]]
    key[forced[rows]] = np.iinfo(np.int64).min
    bound = rows.size if max_transitions is None else min(rows.size, max_transitions)
    take = _first(prio, key, rows, bound)
    return TransitionPlan(rows[take].astype(np.int64), src[take], dst[take], int(rows.size - bound), now)


def _first(prio: np.ndarray, key: np.ndarray, rows: np.ndarray, bound: int) -> np.ndarray:
    """Positions of the ``bound`` smallest (prio, key, row) triples, in that order.

    Whole priority classes that fit are taken as they are; only the class the bound cuts
    is partitioned on its key (ties by row), so a small bound over a large backlog sorts
    ``bound`` rows instead of all of them.
    """
    if bound < rows.size:
        cum = np.cumsum(np.bincount(prio, minlength=4))
        c = int(np.searchsorted(cum, bound, side="right"))
        need = bound - (int(cum[c - 1]) if c else 0)
        pos = np.flatnonzero(prio == c)  # ascending, so ascending in row too
        kc = key[pos]
        picked = [np.flatnonzero(prio < c)]
        if need:
            kth = np.partition(kc, need - 1)[need - 1]
            below = pos[kc < kth]
            picked += [below, pos[kc == kth][: need - below.size]]
        sel = np.concatenate(picked)
    else:
        sel = np.arange(rows.size)
    return sel[np.lexsort((rows[sel], key[sel], prio[sel]))]


def apply(meta: RowMeta, p: TransitionPlan, policy: Policy) -> RowMeta:
    """The columns after the plan ``p`` ran: new stages, stage clocks reset, Larval bits set.

    Parameters
    ----------
    meta : RowMeta
        Columns the plan was made from (not modified).
    p : TransitionPlan
    policy : Policy
        Supplies ``larval_bits`` for rows entering Larval.

    Returns
    -------
    RowMeta
    """
    stage, bits = np.array(meta.stage), np.array(meta.larval_bits)
    since, acc = np.array(meta.stage_since), np.array(meta.stage_accesses)
    stage[p.rows] = p.dst
    bits[p.rows] = np.where(p.dst == LARVAL, policy.larval_bits, 0)
    since[p.rows] = p.now
    acc[p.rows] = 0
    return replace(meta, stage=stage, larval_bits=bits, stage_since=since, stage_accesses=acc)
