"""vapo.stats against scipy and naive references (python loops, float64), by-hand tables and properties."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from vapo.stats import (
    bootstrap_mean_ci,
    estimate_ci,
    fmt_ci,
    holm,
    mde_paired,
    mean_ci,
    paired,
    sign_flip_p,
    spearman,
    two_level_bootstrap,
    welch_p,
    wilson,
)

unit = st.floats(0, 1, allow_nan=False)


# ------------------------------------------------------------------ mean ± t over seeds
def test_ci_by_hand():
    # values 0.5, 0.6, 0.7: mean 0.6, sd 0.1, sem 0.1/√3; t(0.975, df=2) = 4.302652729911275 (tables)
    d = mean_ci([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert d["mean"] == pytest.approx(0.6)
    assert d["sd"] == pytest.approx(0.1)
    assert (d["lo"], d["hi"]) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-9)
    assert fmt_ci(d, scale=100, digits=1) == f"60.0 [{60 - 100 * half:.1f}, {60 + 100 * half:.1f}]"


@settings(max_examples=50, deadline=None)
@given(st.lists(unit, min_size=2, max_size=12))
def test_ci_matches_scipy_and_loops(values):
    d = mean_ci(values)
    v = np.asarray(values, dtype=np.float64)
    if v.std(ddof=1) == 0:
        assert d["lo"] == d["hi"] == d["mean"]
        return
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (d["lo"], d["hi"]) == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1))
    t = stats.t.ppf(0.975, n - 1)
    assert (d["lo"], d["hi"]) == pytest.approx((m - t * s / math.sqrt(n), m + t * s / math.sqrt(n)), abs=1e-9)
    e = estimate_ci(v)
    assert (e["value"], e["lo"], e["hi"], e["n"]) == pytest.approx((d["mean"], d["lo"], d["hi"], n))


def test_one_seed_has_no_interval_and_says_so():
    d = mean_ci([0.42])
    assert d["mean"] == 0.42 and d["lo"] is None and d["hi"] is None and d["n"] == 1
    assert fmt_ci(d) == "0.420 (CI n/a, 1 seed)"
    assert mean_ci([])["mean"] is None and fmt_ci(mean_ci([])) == "n/a"
    e = estimate_ci([0.3])
    assert e["value"] == 0.3 and math.isnan(e["lo"]) and fmt_ci(e) == "0.300"


def test_non_finite_values_are_dropped_not_averaged():
    d = mean_ci([0.5, float("nan"), 0.7, None])
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.6)


# ------------------------------------------------------------------ paired t-test
def _naive_paired(a, b):
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    t = m / se
    p = 2 * stats.t.sf(abs(t), n - 1)
    q = stats.t.ppf(0.975, n - 1)
    return m, sd, m - q * se, m + q * se, p


def test_paired_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, t = 2·√3 with 2 degrees of freedom
    r = paired({0: 4.0, 1: 5.0, 2: 6.0}, {0: 3.0, 1: 3.0, 2: 3.0})
    assert r["diffs"] == [1.0, 2.0, 3.0] and r["n"] == 3 and r["mean"] == pytest.approx(2.0) and r["sd"] == pytest.approx(1.0)
    assert r["p_t"] == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), 2))
    assert (r["lo"], r["hi"]) == pytest.approx((2 - 4.302652729911275 / math.sqrt(3), 2 + 4.302652729911275 / math.sqrt(3)))
    assert r["p_sign_flip"] == pytest.approx(0.25)  # 2 of the 8 sign patterns reach |sum| ≥ 6


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9).flatmap(lambda n: st.tuples(st.lists(unit, min_size=n, max_size=n),
                                                     st.lists(unit, min_size=n, max_size=n))))
def test_paired_matches_scipy_and_loops(ab):
    a, b = ab
    r = paired(dict(enumerate(a)), dict(enumerate(b)))
    d = np.subtract(a, b)
    if d.std(ddof=1) < 1e-9:
        return  # no spread: no t-test (tested below)
    m, sd, lo, hi, p = _naive_paired(a, b)
    ref = stats.ttest_rel(a, b)
    assert r["p_t"] == pytest.approx(ref.pvalue, rel=1e-8, abs=1e-12)
    assert r["p_t"] == pytest.approx(p, rel=1e-6, abs=1e-12)
    assert (r["mean"], r["sd"], r["lo"], r["hi"]) == pytest.approx((m, sd, lo, hi), rel=1e-9, abs=1e-12)


def test_paired_uses_only_seeds_present_on_both_sides():
    r = paired({0: 0.5, 1: 0.6, 2: float("nan"), 3: 0.9}, {0: 0.4, 1: 0.4, 2: 0.3, 4: 0.1})
    assert r["seeds"] == [0, 1] and r["diffs"] == pytest.approx([0.1, 0.2])
    one = paired({0: 0.5}, {0: 0.4})
    assert one["p_t"] is None and one["lo"] is None and "no paired test" in one["note"]
    flat = paired({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})
    assert flat["p_t"] is None and "same difference" in flat["note"] and flat["mde80"] == pytest.approx(0.0, abs=1e-12)


def test_paired_beats_welch_when_seeds_share_an_offset():
    # every seed's warm start differs, but a − b is the same sign and size on every seed
    a, b = {0: 0.90, 1: 0.70, 2: 0.50}, {0: 0.86, 1: 0.65, 2: 0.47}
    r = paired(a, b)
    assert r["p_t"] < 0.05 < welch_p(list(a.values()), list(b.values()))


# ------------------------------------------------------------------ exact sign flip
def _naive_sign_flip(d):
    obs = abs(sum(d))
    hits = total = 0
    for signs in itertools.product((1, -1), repeat=len(d)):
        s = sum(x * g for x, g in zip(d, signs, strict=True))
        hits += abs(s) >= obs - 1e-9 * max(1.0, obs)
        total += 1
    return hits / total


def test_sign_flip_by_hand():
    # [1, 2]: sums 3, −1, 1, −3 → |sum| ≥ 3 twice in 4
    assert sign_flip_p([1.0, 2.0]) == pytest.approx(0.5)
    # [1, −2, 3]: sums 6, 0, 2, −4, 4, −2, 0, −6 → |sum| ≥ 2 six times in 8
    assert sign_flip_p([1.0, -2.0, 3.0]) == pytest.approx(0.75)
    # all five positive: only the observed pattern and its mirror → 2/32
    assert sign_flip_p([0.1, 0.3, 0.2, 0.5, 0.4]) == pytest.approx(2 / 32)
    assert sign_flip_p([0.0, 0.0]) == 1.0 and sign_flip_p([]) is None


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-6, 6).map(lambda k: k / 4), min_size=1, max_size=8))
def test_sign_flip_is_exact(d):
    assert sign_flip_p(d) == pytest.approx(_naive_sign_flip(d), abs=1e-12)


# ------------------------------------------------------------------ Holm
def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 → 3·0.01, max(0.03, 2·0.03), max(0.06, 1·0.04)
    assert holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert holm([]) == [] and holm([None]) == [None] and holm([0.7, 0.8]) == pytest.approx([1.0, 1.0])


def _holm_rejects(p, alpha):
    """Holm's procedure as a loop: reject the smallest p while p_(k) ≤ alpha / (m − k + 1)."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    rejected = set()
    for k, i in enumerate(order):
        if p[i] <= alpha / (len(p) - k):
            rejected.add(i)
        else:
            break
    return rejected


@settings(max_examples=80, deadline=None)
@given(st.lists(unit, min_size=1, max_size=15))
def test_holm_properties(p):
    adj = holm(p)
    assert all(a >= r - 1e-15 and a <= 1.0 for a, r in zip(adj, p, strict=True))
    for i, j in itertools.product(range(len(p)), repeat=2):
        if p[i] <= p[j]:
            assert adj[i] <= adj[j] + 1e-15
    for alpha in (0.01, 0.05, 0.1, 0.3):
        assert {i for i, a in enumerate(adj) if a <= alpha} == _holm_rejects(p, alpha)


# ------------------------------------------------------------------ Wilson
@settings(max_examples=80, deadline=None)
@given(st.integers(1, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_inside_unit_interval_and_matches_formula(kn):
    k, n = kn
    lo, hi = wilson(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    z, p = stats.norm.ppf(0.975), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-9)


# ------------------------------------------------------------------ bootstraps
def test_seed_bootstrap_against_exact_enumeration_and_scipy():
    v = [0.62, 0.81, 0.77]
    exact = sorted(sum(v[i] for i in idx) / 3 for idx in itertools.product(range(3), repeat=3))  # 27 equally likely
    r = bootstrap_mean_ci(v, n_resamples=40_000, seed=3)
    assert exact[0] <= r["lo"] <= exact[1] and exact[-2] <= r["hi"] <= exact[-1]
    ref = stats.bootstrap((np.asarray(v),), np.mean, method="percentile", n_resamples=40_000,
                          rng=np.random.default_rng(0)).confidence_interval
    assert (r["lo"], r["hi"]) == pytest.approx((ref.low, ref.high), abs=0.02)
    assert bootstrap_mean_ci([0.5])["lo"] is None


@settings(max_examples=30, deadline=None)
@given(st.lists(unit, min_size=2, max_size=8), st.integers(0, 2**31))
def test_seed_bootstrap_deterministic_and_inside_the_data(v, seed):
    a, b = bootstrap_mean_ci(v, n_resamples=500, seed=seed), bootstrap_mean_ci(v, n_resamples=500, seed=seed)
    assert a == b
    assert min(v) - 1e-12 <= a["lo"] <= a["hi"] <= max(v) + 1e-12


def _naive_two_level(groups, n_resamples, seed):
    """The same draws as two_level_bootstrap, read one resample at a time in python loops."""
    rng = np.random.default_rng(seed)
    S = len(groups)
    seed_idx = rng.integers(0, S, size=(n_resamples, S))
    seed_means = [[0.0] * S for _ in range(n_resamples)]
    for j in range(S):
        for g in range(S):
            rows = [b for b in range(n_resamples) if seed_idx[b, j] == g]
            if not rows:
                continue
            p = len(groups[g])
            draws = rng.integers(0, p, size=(len(rows), p))
            for r, b in enumerate(rows):
                seed_means[b][j] = sum(groups[g][int(i)] for i in draws[r]) / p
    stat = sorted(sum(row) / S for row in seed_means)
    return np.quantile(stat, [0.025, 0.975])


groups_st = st.lists(st.lists(st.integers(-4, 4).map(lambda k: k / 4), min_size=1, max_size=9), min_size=1, max_size=5)


@settings(max_examples=25, deadline=None)
@given(groups_st, st.integers(0, 2**31))
def test_two_level_bootstrap_matches_loops_and_is_deterministic(groups, seed):
    r = two_level_bootstrap(groups, n_resamples=300, seed=seed)
    assert r == two_level_bootstrap(groups, n_resamples=300, seed=seed)
    assert r["mean"] == pytest.approx(sum(sum(g) / len(g) for g in groups) / len(groups))
    if r["lo"] is None:
        assert len(groups) == 1 and len(groups[0]) == 1
        return
    lo, hi = _naive_two_level(groups, 300, seed)
    assert (r["lo"], r["hi"]) == pytest.approx((lo, hi), abs=1e-12)
    allv = [x for g in groups for x in g]
    assert min(allv) - 1e-12 <= r["lo"] <= r["hi"] <= max(allv) + 1e-12


def test_two_level_bootstrap_reduces_to_the_seed_bootstrap_without_problem_spread():
    # constant within each seed: resampling problems changes nothing, only the seed draws count
    groups = [[0.7] * 5, [0.9] * 3, [0.6] * 4, [0.8] * 6]
    a = two_level_bootstrap(groups, n_resamples=2000, seed=11)
    b = bootstrap_mean_ci([0.7, 0.9, 0.6, 0.8], n_resamples=2000, seed=11)  # draws the same seed indices first
    assert (a["lo"], a["hi"]) == pytest.approx((b["lo"], b["hi"]), abs=1e-12)


def test_two_level_bootstrap_is_wider_than_the_seed_bootstrap_with_problem_spread():
    rng = np.random.default_rng(0)
    groups = [rng.integers(0, 2, size=64).astype(float) for _ in range(3)]
    a = two_level_bootstrap(groups, seed=1)
    b = bootstrap_mean_ci([g.mean() for g in groups], seed=1)
    assert a["hi"] - a["lo"] > b["hi"] - b["lo"]


# ------------------------------------------------------------------ minimum detectable effect
def _simulated_power(delta, sd, n, sims, rng):
    q = stats.t.ppf(0.975, n - 1)
    hits = 0
    for _ in range(sims):
        d = [delta + sd * float(rng.standard_normal()) for _ in range(n)]
        m = sum(d) / n
        s = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
        hits += abs(m / (s / math.sqrt(n))) > q
    return hits / sims


@pytest.mark.parametrize("n", [3, 5, 10])
def test_mde_has_80_percent_power_by_simulation(n):
    sd = 0.02
    mde = mde_paired(sd, n)
    power = _simulated_power(mde, sd, n, 4000, np.random.default_rng(n))
    assert power == pytest.approx(0.8, abs=0.025)
    assert _simulated_power(mde / 2, sd, n, 2000, np.random.default_rng(n + 1)) < 0.7


def test_mde_limits():
    # large n: the normal approximation (z_0.975 + z_0.8)·sd/√n
    assert mde_paired(1.0, 5000) == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / math.sqrt(5000), rel=2e-3)
    assert mde_paired(1.0, 3) > mde_paired(1.0, 5) > mde_paired(1.0, 10)
    assert mde_paired(None, 3) is None and mde_paired(1.0, 1) is None and mde_paired(0.0, 4) == 0.0


# ------------------------------------------------------------------ Welch (unpaired, printed beside), Spearman
def test_welch_matches_scipy():
    a, b = [0.81, 0.85, 0.9, 0.84], [0.7, 0.76, 0.69]
    assert welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_p([0.5], [0.4, 0.3]) is None


def test_spearman():
    r = spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
    ref = stats.spearmanr([1, 2, 3, 4], [10, 30, 20, 40])
    assert r["rho"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue) and r["n"] == 4
    assert spearman([1.0, 2.0], [1.0, 2.0])["rho"] is None  # too few, with the reason
    assert "constant" in spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["note"]
    assert spearman([-3.0, -1.0, 2.0], [49.4, 27.4, 15.4])["rho"] == pytest.approx(-1.0)  # printed whatever it is
