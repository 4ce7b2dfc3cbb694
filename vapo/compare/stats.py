"""Statistics over seeds: t confidence intervals, whether two intervals separate, rank correlation.

All from scipy.stats; a single seed has no interval (reported as n/a, never a zero-width one).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


def mean_ci(values: list[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and the two-sided Student-t interval over seeds.

    ``values`` [n] → {"mean", "lo", "hi", "n", "sd", "values"}; lo/hi are None when n < 2 (one seed
    says nothing about seed variance) and equal to the mean when every value is the same.
    Non-finite values are dropped (a crashed or NaN cell is counted elsewhere).
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
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


def separated(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """True when the two intervals do not overlap, False when they do, None when either is n/a.

    Non-overlap of two 95% intervals is a conservative test (it implies p < 0.05 and then some)."""
    if a.get("lo") is None or b.get("lo") is None:
        return None
    return bool(a["hi"] < b["lo"] or b["hi"] < a["lo"])


def welch_p(a: list[float], b: list[float]) -> float | None:
    """Two-sided Welch t-test p-value (None with fewer than 2 values on a side or zero variance)."""
    a = [x for x in a if x is not None and math.isfinite(x)]
    b = [x for x in b if x is not None and math.isfinite(x)]
    if len(a) < 2 or len(b) < 2 or (np.var(a) == 0 and np.var(b) == 0):
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def spearman(x: list[float], y: list[float]) -> dict[str, Any]:
    """Spearman's ρ and its p-value; ρ None (with the reason) when it is undefined."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None and math.isfinite(a)]
    n = len(pairs)
    if n < 3:
        return {"rho": None, "p": None, "n": n, "note": f"needs at least 3 ablations with results, have {n}"}
    xs, ys = zip(*pairs, strict=True)
    if len(set(xs)) == 1 or len(set(ys)) == 1:
        return {"rho": None, "p": None, "n": n, "note": "undefined: one side is constant"}
    r = stats.spearmanr(xs, ys)
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": n, "note": ""}


def fmt_ci(d: dict[str, Any] | None, scale: float = 1.0, digits: int = 3) -> str:
    """'0.812 ± 0.034' (half-width of the interval), '0.812 (CI n/a, 1 seed)' or 'n/a'."""
    if not d or d.get("mean") is None:
        return "n/a"
    m = d["mean"] * scale
    if d.get("lo") is None:
        return f"{m:.{digits}f} (CI n/a, {d['n']} seed{'s' if d['n'] != 1 else ''})"
    half = (d["hi"] - d["lo"]) / 2 * scale
    return f"{m:.{digits}f} ± {half:.{digits}f}"


def diff_ci(a: list[float], b: list[float], level: float = 0.95) -> dict[str, Any]:
    """mean(a) − mean(b) with a Welch t interval (Welch–Satterthwaite degrees of freedom).

    lo/hi None when either side has fewer than 2 values."""
    a = [x for x in a if x is not None and math.isfinite(x)]
    b = [x for x in b if x is not None and math.isfinite(x)]
    out: dict[str, Any] = {"mean": None, "lo": None, "hi": None, "n": min(len(a), len(b))}
    if not a or not b:
        return out
    d = float(np.mean(a) - np.mean(b))
    out["mean"] = d
    if len(a) < 2 or len(b) < 2:
        return out
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        out["lo"] = out["hi"] = d
        return out
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    lo, hi = stats.t.interval(level, df=df, loc=d, scale=se)
    out["lo"], out["hi"] = float(lo), float(hi)
    return out
