"""The project's statistics, in one place (scipy.stats underneath; numpy only otherwise).

Two kinds of numbers are summarised here:

- **over seeds** (`vapo compare`): a few runs per variant, paired by seed (every variant of a seed
  starts from the same warm start and is evaluated on the same problems). Summaries are dicts with
  ``mean``; an interval that does not exist (one seed) is ``None``, never a zero-width one;
- **estimates from one run** (`vapo diagnose`, the critic probe): thousands of tokens or answers.
  Summaries are dicts with ``value``; an undefined interval is ``nan``.

Paired comparisons (:func:`paired`) give the per-seed differences, the paired t-test and its
interval, the exact sign-flip (permutation) p-value and the minimum detectable effect at 80%
power; :func:`holm` corrects a family of p-values; :func:`bootstrap_mean_ci` and
:func:`two_level_bootstrap` give percentile intervals that stay inside the range of the data
(accuracies stay in [0, 1]); :func:`wilson` is the interval of one binomial proportion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import integrate, optimize, stats

Z95 = float(stats.norm.ppf(0.975))  # two-sided 95% normal quantile
EXACT_SIGN_FLIP_MAX_N = 16  # up to 2^16 sign patterns are enumerated; above, 50,000 random ones
BOOTSTRAP_RESAMPLES = 10_000


def finite(values: Sequence[Any]) -> list[float]:
    """The finite numbers of ``values`` (None, NaN and ±inf dropped), as floats."""
    return [float(x) for x in values if _is_num(x)]


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float | np.floating | np.integer) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------------------------
# Summaries over seeds
# --------------------------------------------------------------------------------------------
def mean_ci(values: Sequence[Any], level: float = 0.95) -> dict[str, Any]:
    """Mean and the two-sided Student-t interval.

    ``values`` [n] → {"mean", "lo", "hi", "n", "sd", "values"}; lo/hi are None when n < 2 (one seed
    says nothing about seed variance) and equal to the mean when every value is the same.
    Non-finite values are dropped (a crashed or NaN cell is counted elsewhere).
    """
    v = np.asarray(finite(values), dtype=np.float64)
    n = int(v.size)
    out: dict[str, Any] = {"mean": None, "lo": None, "hi": None, "n": n, "sd": None, "values": v.tolist()}
    if n == 0:
        return out
    m = float(v.mean())
    out["mean"] = m
    if n < 2:
        return out
    sd = float(v.std(ddof=1))
    out["sd"] = sd
    if sd == 0.0:
        out["lo"] = out["hi"] = m
        return out
    lo, hi = stats.t.interval(level, df=n - 1, loc=m, scale=sd / math.sqrt(n))
    out["lo"], out["hi"] = float(lo), float(hi)
    return out


def estimate_ci(x: Any, level: float = 0.95) -> dict[str, float]:
    """A mean over many draws (tokens, answers) with its t-interval, as {"value", "lo", "hi", "n"};
    nan where undefined (n < 2). The same computation as :func:`mean_ci`, in the estimate form."""
    d = mean_ci(np.asarray(x, dtype=np.float64).ravel().tolist(), level)
    nan = math.nan
    return {"value": nan if d["mean"] is None else d["mean"], "lo": nan if d["lo"] is None else d["lo"],
            "hi": nan if d["hi"] is None else d["hi"], "n": d["n"]}


def bootstrap_mean_ci(values: Sequence[Any], level: float = 0.95, n_resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = 0) -> dict[str, Any]:
    """Mean with the percentile-bootstrap interval (values resampled with replacement).

    The interval lies inside [min, max] of the values, so accuracies stay in [0, 1]. With few
    values it is narrow (three seeds give ten distinct resample means): it describes the seeds
    at hand, and covers less than ``level`` of the truth. {"mean", "lo", "hi", "n", "method"};
    lo/hi None for n < 2. Deterministic given ``seed``."""
    v = np.asarray(finite(values), dtype=np.float64)
    n = int(v.size)
    out: dict[str, Any] = {"mean": float(v.mean()) if n else None, "lo": None, "hi": None, "n": n,
                           "method": "percentile bootstrap over seeds"}
    if n < 2:
        return out
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    out["lo"], out["hi"] = float(lo), float(hi)
    return out


def two_level_bootstrap(groups: Sequence[Sequence[float]], level: float = 0.95,
                        n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """Mean over groups of the mean within each group, with a two-level percentile-bootstrap interval.

    ``groups`` [S][P_s]: one array per seed, one value per evaluation problem (e.g. a problem's
    accuracy under variant a minus under variant b). A resample draws S seeds with replacement,
    then, for each drawn seed, its P_s problems with replacement, and averages the seed means, so
    the interval covers both the seed spread and which problems were drawn.

    Draw order (fixed, so that the result depends on ``seed`` alone): the [B, S] seed indices
    first; then for each slot j = 0..S-1 and each seed g = 0..S-1, the problem indices
    [rows drawing g at slot j, P_g]. {"mean", "lo", "hi", "n_seeds", "n_problems", "method"}."""
    gs = [np.asarray(g, dtype=np.float64) for g in groups]
    gs = [g for g in gs if g.size]
    S = len(gs)
    out: dict[str, Any] = {"mean": float(np.mean([g.mean() for g in gs])) if S else None, "lo": None, "hi": None,
                           "n_seeds": S, "n_problems": [int(g.size) for g in gs],
                           "method": "two-level percentile bootstrap (seeds, then problems within seed)"}
    if S == 0 or (S == 1 and gs[0].size < 2):
        return out
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, S, size=(n_resamples, S))
    seed_means = np.empty((n_resamples, S))
    for j in range(S):
        for g in range(S):
            rows = np.flatnonzero(seed_idx[:, j] == g)
            if rows.size == 0:
                continue
            p = gs[g].size
            seed_means[rows, j] = gs[g][rng.integers(0, p, size=(rows.size, p))].mean(axis=1)
    lo, hi = np.quantile(seed_means.mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
    out["lo"], out["hi"] = float(lo), float(hi)
    return out


def wilson(successes: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy.stats.binomtest); (nan, nan) when
    n = 0. ``successes`` is rounded to the nearest count. Always inside [0, 1]."""
    if n <= 0:
        return (math.nan, math.nan)
    ci = stats.binomtest(int(round(successes)), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return (float(ci.low), float(ci.high))


# --------------------------------------------------------------------------------------------
# Paired comparisons by seed
# --------------------------------------------------------------------------------------------
def sign_flip_p(diffs: Sequence[float], seed: int = 0) -> float | None:
    """Two-sided p-value of the sign-flip permutation test of mean(diffs) = 0
    (scipy.stats.permutation_test, one sample): exact (all 2^n sign patterns) for
    n ≤ EXACT_SIGN_FLIP_MAX_N. Its smallest possible value is 2/2^n (0.25 for n = 3, 0.0625 for
    n = 5). None for n = 0."""
    d = np.asarray(finite(diffs), dtype=np.float64)
    if d.size == 0:
        return None
    if d.size == 1 or not np.any(d):  # one seed: both sign patterns have the same |mean|
        return 1.0
    n_res = np.inf if d.size <= EXACT_SIGN_FLIP_MAX_N else 50_000
    res = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=n_res, vectorized=True,
                                 alternative="two-sided", rng=np.random.default_rng(seed))
    return float(min(1.0, res.pvalue))


def _t_power(nc: float, df: int, crit: float) -> float:
    """P(|T| > crit) for T noncentral t(df, nc). scipy.stats.nct, or where it returns nan (few
    degrees of freedom, large nc) the same probability integrated over the chi-square variable:
    E_V[Φ(nc − crit·√(V/df)) + Φ(−nc − crit·√(V/df))], V ~ χ²(df)."""
    p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isfinite(p):
        return p

    def f(v: float) -> float:
        c = crit * math.sqrt(v / df)
        return float(stats.chi2.pdf(v, df) * (stats.norm.cdf(nc - c) + stats.norm.cdf(-nc - c)))

    return float(integrate.quad(f, 0.0, np.inf, limit=200)[0])


def mde_paired(sd: float | None, n: int, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Minimum detectable effect of the two-sided paired t-test: the true mean difference that it
    detects at level ``alpha`` with probability ``power``, for n pairs whose differences have
    standard deviation ``sd`` (the observed one). Solved exactly with the noncentral t
    distribution. None for n < 2 or sd missing; 0 for sd = 0."""
    if sd is None or n < 2 or not math.isfinite(sd):
        return None
    if sd == 0.0:
        return 0.0
    df = n - 1
    crit = float(stats.t.ppf(1 - alpha / 2, df))

    def gap(nc: float) -> float:  # power at noncentrality nc = δ / (sd/√n), minus the target
        return _t_power(nc, df, crit) - power

    hi = crit + float(stats.norm.ppf(power)) + 1.0
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-12)) * sd / math.sqrt(n)


def paired(a: dict[Any, Any], b: dict[Any, Any], level: float = 0.95) -> dict[str, Any]:
    """Paired comparison of a and b, given as {seed: value}: only seeds with a finite value on
    both sides count.

    Returns {"seeds", "diffs" (a − b per seed), "n", "mean", "sd", "lo", "hi" (paired t interval),
    "p_t" (scipy.stats.ttest_rel), "p_sign_flip" (exact permutation test), "mde80" (minimum
    detectable effect at 80% power from the observed sd), "note"}. With n < 2, or differences
    without spread, there is no t-test (None, and the note says why)."""
    seeds = [s for s in a if s in b and _is_num(a[s]) and _is_num(b[s])]
    seeds = sorted(seeds, key=lambda s: (str(type(s)), s))
    xa = np.asarray([float(a[s]) for s in seeds], dtype=np.float64)
    xb = np.asarray([float(b[s]) for s in seeds], dtype=np.float64)
    d = xa - xb
    n = len(seeds)
    out: dict[str, Any] = {"seeds": seeds, "diffs": d.tolist(), "n": n, "mean": float(d.mean()) if n else None,
                           "sd": None, "lo": None, "hi": None, "p_t": None, "p_sign_flip": sign_flip_p(d),
                           "mde80": None, "note": ""}
    if n < 2:
        out["note"] = f"{n} paired seed{'s' if n != 1 else ''}: no paired test"
        return out
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, float(np.abs(d).max())):  # equal differences up to rounding
        sd = 0.0
    out["sd"] = sd
    out["mde80"] = mde_paired(sd, n)
    if sd == 0.0:
        out["lo"] = out["hi"] = out["mean"]
        out["note"] = "every seed gives the same difference: no t-test"
        return out
    res = stats.ttest_rel(xa, xb)
    ci = res.confidence_interval(level)
    out["lo"], out["hi"], out["p_t"] = float(ci.low), float(ci.high), float(res.pvalue)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values, in the input order. None entries are not tested: they
    stay None and do not count in the family size. The adjusted value of the k-th smallest of m
    p-values is max over j ≤ k of min(1, (m − j + 1)·p_(j)), so it is ≥ the raw p and monotone in it."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def welch_p(a: Sequence[Any], b: Sequence[Any]) -> float | None:
    """Two-sided Welch t-test p-value, unpaired (None with fewer than 2 values on a side or zero variance)."""
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2 or (np.var(a) == 0 and np.var(b) == 0):
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def spearman(x: Sequence[Any], y: Sequence[Any]) -> dict[str, Any]:
    """Spearman's ρ and its p-value; ρ None (with the reason) when it is undefined."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if _is_num(a) and _is_num(b)]
    n = len(pairs)
    if n < 3:
        return {"rho": None, "p": None, "n": n, "note": f"needs at least 3 ablations with results, have {n}"}
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) == 1 or len(set(ys)) == 1:
        return {"rho": None, "p": None, "n": n, "note": "undefined: one side is constant"}
    r = stats.spearmanr(xs, ys)
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": n, "note": ""}


# --------------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------------
def fmt_ci(d: dict[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    """A summary as text: '0.812 [0.770, 0.850]', '0.812 (CI n/a, 1 seed)' or 'n/a'.

    Accepts both forms (``mean`` over seeds, ``value`` of an estimate)."""
    if not d:
        return "n/a"
    m = d.get("mean", d.get("value"))
    if m is None or not math.isfinite(m):
        return "n/a"
    lo, hi = d.get("lo"), d.get("hi")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        n = d.get("n")
        return f"{m * scale:.{digits}f}" + (f" (CI n/a, {n} seed{'s' if n != 1 else ''})" if "mean" in d else "")
    return f"{m * scale:.{digits}f} [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
