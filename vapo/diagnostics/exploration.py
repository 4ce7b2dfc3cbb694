"""Section 4 — exploration: entropy, zero-signal groups, pass@k and clipping over training.

Under a sparse 0/1 reward a group whose G answers all score the same carries no signal for group
advantages (DAPO §3.2, "dynamic sampling") and a collapsing entropy stops the policy from finding
new answers (DAPO §3.1, "clip-higher"). The series come from the run's metrics.jsonl (one row per
iteration, written by the trainer) and eval.jsonl (pass@k on held-out prompts); pass@k for
k = 1..G at the diagnosed checkpoint comes from the regenerated batch (G answers per prompt),
with the unbiased estimator of Chen et al. 2021 (eq. 1) and a bootstrap CI over prompts.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from vapo.algos.shaping import zero_signal_fraction as algos_zero_signal_fraction
from vapo.diagnostics.common import bootstrap_ci
from vapo.train.evaluate import pass_at_k

SERIES = ("entropy", "zero_signal_frac", "clipfrac_low", "clipfrac_high", "accuracy", "response_length", "approx_kl",
          "explained_variance")


def metric_series(metrics: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """{key: [[iteration, value], ...]} for each key of :data:`SERIES` present in metrics rows."""
    out: dict[str, list[list[float]]] = {}
    for key in SERIES:
        pts = [[float(r["iteration"]), float(r[key])] for r in metrics if key in r and r[key] is not None
               and "iteration" in r and math.isfinite(float(r[key]))]
        if pts:
            out[key] = pts
    return out


def eval_pass_at_k(evals: list[dict[str, Any]], split: str = "heldout") -> dict[str, dict[str, float]]:
    """{iteration: {k: pass@k}} from eval.jsonl rows of ``split``."""
    return {str(r["iteration"]): {str(k): float(v) for k, v in r.get("pass_at_k", {}).items()}
            for r in evals if r.get("split") == split}


def batch_pass_at_k(correct: np.ndarray, group_index: np.ndarray) -> dict[str, dict[str, float]]:
    """pass@k for k = 1..G over the groups of a batch, with bootstrap 95% CIs over prompts.

    Args: correct [B] bool; group_index [B] int (every group has G members).
    """
    groups = np.unique(group_index)
    c = np.array([int(correct[group_index == g].sum()) for g in groups])
    G = int((group_index == groups[0]).sum())
    out = {}
    for k in range(1, G + 1):
        per = np.array([pass_at_k(G, int(ci), k) for ci in c], dtype=np.float64)
        out[str(k)] = bootstrap_ci(np.mean, per)
    return out


def zero_signal_fraction(scores: np.ndarray, group_index: np.ndarray) -> float:
    """Fraction of answers whose group's rewards are all equal (no group-relative signal): the
    one definition, :func:`vapo.algos.shaping.zero_signal_fraction`, on arrays."""
    return algos_zero_signal_fraction(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(group_index))


def exploration_report(metrics: list[dict[str, Any]], evals: list[dict[str, Any]], correct: np.ndarray,
                       scores: np.ndarray, group_index: np.ndarray) -> dict[str, Any]:
    return {
        "series": metric_series(metrics),
        "eval_pass_at_k": eval_pass_at_k(evals),
        "pass_at_k": batch_pass_at_k(correct, group_index),
        "zero_signal_frac_now": zero_signal_fraction(scores, group_index),
    }


def finding(report: dict[str, Any]) -> str:
    """One line: how entropy and zero-signal groups moved, the pass@G − pass@1 gap, clip balance."""
    s = report["series"]
    parts = []
    if "entropy" in s and len(s["entropy"]) >= 1:
        parts.append(f"entropy {s['entropy'][0][1]:.3f} → {s['entropy'][-1][1]:.3f}")
    if "zero_signal_frac" in s:
        parts.append(f"zero-signal groups {s['zero_signal_frac'][0][1]:.0%} → {s['zero_signal_frac'][-1][1]:.0%}")
    else:
        parts.append(f"zero-signal groups now {report['zero_signal_frac_now']:.0%}")
    pk = report["pass_at_k"]
    if pk:
        G = max(pk, key=int)
        parts.append(f"pass@{G} − pass@1 = {pk[G]['value'] - pk['1']['value']:+.2f}")
    if "clipfrac_high" in s and "clipfrac_low" in s:
        hi = np.mean([v for _, v in s["clipfrac_high"]])
        lo = np.mean([v for _, v in s["clipfrac_low"]])
        parts.append(f"clip high/low {hi:.1%}/{lo:.1%}")
    return "; ".join(parts) if parts else "no metrics logged"
