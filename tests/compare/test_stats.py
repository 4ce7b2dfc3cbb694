"""CI math against scipy and a hand computation; interval separation; Spearman; Welch difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from vapo.compare.stats import diff_ci, fmt_ci, mean_ci, separated, spearman, welch_p


def test_ci_by_hand():
    # values 0.5, 0.6, 0.7: mean 0.6, sd 0.1, sem 0.1/√3; t(0.975, df=2) = 4.302652729911275 (tables)
    d = mean_ci([0.5, 0.6, 0.7])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert d["mean"] == pytest.approx(0.6)
    assert d["sd"] == pytest.approx(0.1)
    assert (d["lo"], d["hi"]) == pytest.approx((0.6 - half, 0.6 + half), abs=1e-9)
    assert fmt_ci(d, scale=100, digits=1) == "60.0 ± 24.8"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=12))
def test_ci_matches_scipy(values):
    d = mean_ci(values)
    v = np.asarray(values, dtype=np.float64)
    if v.std(ddof=1) == 0:
        assert d["lo"] == d["hi"] == d["mean"]
        return
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (d["lo"], d["hi"]) == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)
    # naive reference: mean ± t·s/√n in float64 loops
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((x - m) ** 2 for x in values) / (n - 1))
    t = stats.t.ppf(0.975, n - 1)
    assert (d["lo"], d["hi"]) == pytest.approx((m - t * s / math.sqrt(n), m + t * s / math.sqrt(n)), abs=1e-9)


def test_one_seed_has_no_interval_and_says_so():
    d = mean_ci([0.42])
    assert d["mean"] == 0.42 and d["lo"] is None and d["hi"] is None and d["n"] == 1
    assert fmt_ci(d) == "0.420 (CI n/a, 1 seed)"
    assert separated(d, mean_ci([0.1, 0.2])) is None
    assert mean_ci([])["mean"] is None and fmt_ci(mean_ci([])) == "n/a"


def test_non_finite_values_are_dropped_not_averaged():
    d = mean_ci([0.5, float("nan"), 0.7, None])
    assert d["n"] == 2 and d["mean"] == pytest.approx(0.6)


def test_separation():
    a, b = mean_ci([0.50, 0.52, 0.51]), mean_ci([0.80, 0.81, 0.79])
    assert separated(a, b) is True and separated(b, a) is True
    c = mean_ci([0.3, 0.7, 0.5])
    assert separated(a, c) is False


def test_welch_difference_matches_scipy():
    a, b = [0.81, 0.85, 0.9, 0.84], [0.7, 0.76, 0.69]
    d = diff_ci(a, b)
    res = stats.ttest_ind(a, b, equal_var=False)
    lo, hi = res.confidence_interval(0.95)
    assert d["mean"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (d["lo"], d["hi"]) == pytest.approx((lo, hi), rel=1e-9)
    assert welch_p(a, b) == pytest.approx(res.pvalue)
    assert diff_ci([0.5], [0.4, 0.3])["lo"] is None


def test_spearman():
    r = spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
    ref = stats.spearmanr([1, 2, 3, 4], [10, 30, 20, 40])
    assert r["rho"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue) and r["n"] == 4
    assert spearman([1.0, 2.0], [1.0, 2.0])["rho"] is None  # too few, with the reason
    assert "constant" in spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["note"]
    assert spearman([-3.0, -1.0, 2.0], [49.4, 27.4, 15.4])["rho"] == pytest.approx(-1.0)  # printed whatever it is
