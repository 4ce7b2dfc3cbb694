"""Section 1 — critic error: how far the critic's V(s_t) is from the Monte-Carlo V^π(s_t).

VAPO §3 and VC-PPO §3 locate the failure of value-based RL on long chain-of-thought in the
critic: an error in V(s_t) enters every GAE advantage that bootstraps through s_t. For each
probed prefix state s_k we have the critic's prediction v_k and an unbiased MC estimate V̂_k
with estimated variance σ̂²_k (vapo.train.probe, the estimator value pretraining stops on). Per group of states (relative position in
the response, response-length bucket, all):

    bias  = mean_k (v_k − V̂_k)                          (unbiased for mean(v − V^π))
    RMSE  = sqrt( mean_k (v_k − V̂_k)² − mean_k σ̂²_k )   (MC noise removed: E(v−V̂)² = (v−V)² + σ²)
    EV    = explained_variance(v, V̂)                     (vapo.algos; as logged in training)

with 95% CIs (normal for the bias, percentile bootstrap over states for RMSE and EV).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vapo.algos.losses import explained_variance
from vapo.diagnostics.common import bootstrap_ci
from vapo.stats import estimate_ci
from vapo.train.probe import values_at


def _rmse(e: np.ndarray, noise: np.ndarray) -> float:
    return float(np.sqrt(max(float(np.mean(e**2) - np.mean(noise)), 0.0)))


def _ev(v: np.ndarray, target: np.ndarray) -> float:
    v_t, t_t = torch.from_numpy(v), torch.from_numpy(target)
    return float(explained_variance(v_t, t_t, torch.ones_like(t_t)))


def error_stats(v: np.ndarray, mc_mean: np.ndarray, mc_var: np.ndarray) -> dict[str, Any]:
    """Bias, noise-corrected RMSE and explained variance of predictions v [K] against MC values
    mc_mean [K] (with estimator variances mc_var [K]), each with a 95% CI."""
    v, mc_mean, mc_var = (np.asarray(a, dtype=np.float64) for a in (v, mc_mean, mc_var))
    e = v - mc_mean
    return {
        "n": len(v),
        "bias": estimate_ci(e),
        "rmse": bootstrap_ci(_rmse, e, mc_var),
        "explained_variance": bootstrap_ci(_ev, v, mc_mean),
        "mean_critic": float(v.mean()) if len(v) else float("nan"),
        "mean_mc": float(mc_mean.mean()) if len(v) else float("nan"),
    }


def critic_error_report(v: np.ndarray, mc_mean: np.ndarray, mc_var: np.ndarray, rel: np.ndarray,
                        bucket: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """:func:`error_stats` overall, by relative position ρ of the prefix in its response and by
    response-length bucket.

    Args: v, mc_mean, mc_var, rel [K] float; bucket [K] int index into labels.
    """
    out: dict[str, Any] = {"overall": error_stats(v, mc_mean, mc_var), "by_position": {}, "by_length": {}}
    for rho in sorted(set(rel.tolist())):
        s = rel == rho
        out["by_position"][f"{rho:g}"] = error_stats(v[s], mc_mean[s], mc_var[s])
    for j, lab in enumerate(labels):
        s = bucket == j
        if s.any():
            out["by_length"][lab] = error_stats(v[s], mc_mean[s], mc_var[s])
    return out


def critic_values_at(critic: Any, batch: Any, rows: np.ndarray, ts: np.ndarray, *, max_tokens: int) -> np.ndarray:
    """The critic's V(prompt + response[:t]) [K] float64 at each (row, t) (vapo.train.probe.values_at,
    as value pretraining's probe reads them), in forward passes of at most ``max_tokens`` padded
    tokens (the run's optim.micro_batch_tokens)."""
    return values_at(critic, batch, rows, ts, max_tokens=max_tokens)


def finding(report: dict[str, Any] | None, name: str = "critic") -> str:
    """One line: the critic's overall bias, RMSE and where (relative position) it is worst."""
    if report is None:
        return "no critic in this run"
    o = report["overall"]
    b, r, ev = o["bias"], o["rmse"], o["explained_variance"]
    worst = max(report["by_position"].items(), key=lambda kv: abs(kv[1]["bias"]["value"]), default=None)
    sig = b["lo"] > 0 or b["hi"] < 0
    direction = ("over" if b["value"] > 0 else "under") + "estimates V^π" if sig else "bias not significant"
    where = f"; worst at ρ={worst[0]} (bias {worst[1]['bias']['value']:+.3f})" if worst else ""
    return (f"{name} {direction}: bias {b['value']:+.3f} [{b['lo']:+.3f}, {b['hi']:+.3f}], RMSE {r['value']:.3f}, "
            f"EV {ev['value']:+.2f}{where}")
