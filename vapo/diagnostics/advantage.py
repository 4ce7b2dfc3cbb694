"""Section 2 — advantage quality: GAE (by λ) and group-relative advantages vs Monte-Carlo advantages.

Ground truth at a probed token (vapo.diagnostics.mc): Â^MC_k = V̂(s_{t+1}) − V̂(s_t), from two
independent sets of continuations, so it is unbiased with variance σ̂²_{t+1} + σ̂²_t (0 for the
exact terminal value). Each estimator's advantage A_k at the same token is compared by

    bias        = mean_k (A_k − Â^MC_k)                           (normal 95% CI)
    sd          = standard deviation of A_k over probed tokens    (its variance, as the policy sees it)
    correlation = corr(A_k, Â^MC_k)                               (Fisher-z 95% CI; scale-free)
    MSE         = mean_k (A_k − Â^MC_k)² − mean_k (σ̂²_{t+1} + σ̂²_t)   (MC noise removed; bootstrap CI)

Estimators: masked GAE (Schulman et al. 2016, eq. 16; vapo.algos.masked_gae) with the run's
critic for λ ∈ {0, 0.5, 0.9, 0.95, 0.99, 1} and for the length-adaptive λ = 1 − 1/(α·l)
(VAPO §3, eq. 7; vapo.algos.adaptive_lambda); and the critic-free group estimators GRPO, Dr. GRPO
and RLOO (vapo.algos registry), whose scale differs from A^π, so only their correlation is
comparable; and the run's own estimator where it is none of these (a value pathway such as
``gae_error_aware`` or ``gae_mc_anchored``, key "run: <name>"), on the same critic values. "Best λ"
per length bucket = the smallest noise-corrected MSE.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from vapo.algos.advantages import (
    AdvantageInput,
    get_advantage_estimator,
    masked_gae,
    resolve_actor_lambda,
)
from vapo.algos.shaping import scores_to_token_rewards
from vapo.config import AdvantageConfig
from vapo.diagnostics.common import bootstrap_ci, corr_ci
from vapo.stats import estimate_ci
from vapo.train.adapter import advantage_params

LAMBDAS: tuple[float, ...] = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)
GROUP_ESTIMATORS: tuple[str, ...] = ("grpo", "dr_grpo", "rloo")
# run estimators that read only critic values, rewards and groups, so the diagnostics can compare them
RUN_ESTIMATORS: tuple[str, ...] = ("gae_error_aware", "gae_mc_anchored")


def _mse(d: np.ndarray, noise: np.ndarray) -> float:
    return float(np.mean(d**2) - np.mean(noise))


def advantage_stats(a: np.ndarray, a_mc: np.ndarray, noise: np.ndarray) -> dict[str, Any]:
    """Bias, sd, correlation and noise-corrected MSE of advantages a [K] against MC advantages
    a_mc [K] whose estimator variances are noise [K]."""
    a, a_mc, noise = (np.asarray(x, dtype=np.float64) for x in (a, a_mc, noise))
    d = a - a_mc
    return {
        "n": len(a),
        "bias": estimate_ci(d),
        "sd": float(a.std(ddof=1)) if len(a) > 1 else float("nan"),
        "correlation": corr_ci(a, a_mc),
        "mse": bootstrap_ci(_mse, d, noise),
    }


def estimator_advantages(batch: Any, values: torch.Tensor | None, adv: AdvantageConfig) -> dict[str, torch.Tensor]:
    """Every compared estimator's advantages [B, T] float64 on ``batch`` (0 at masked positions).

    Args: batch: an :class:`vapo.train.batch.Experience`; values [B, T] the critic's V(s_t)
        (None in a critic-free run: only the group estimators are computed); adv: the run's
        ``algo.advantage`` (γ, α of the adaptive λ, ε of the group z-score).
    Keys: "λ=0", ..., "λ=1", "adaptive" (when values is given), "grpo", "dr_grpo", "rloo", and
    "run: <estimator>" when the run's estimator is another one that reads only these inputs
    (critic values, rewards, groups: the value pathways ``gae_error_aware``, ``gae_mc_anchored``).
    Estimators that need Monte-Carlo points (``vine``) or a critic the run lacks are left out.
    """
    gamma = adv.gamma
    mask = batch.response_mask.double()
    rewards = scores_to_token_rewards(batch.scores.double(), mask)  # score on the last real token
    out: dict[str, torch.Tensor] = {}
    if values is not None:
        v = values.double() * mask
        for lam in LAMBDAS:
            out[f"λ={lam:g}"], _ = masked_gae(rewards, v, mask, gamma=gamma, lam=lam)
        adaptive = replace(advantage_params(adv), lam_actor=None)  # the adaptive λ, whatever the run's
        lam_ad = resolve_actor_lambda(adaptive, batch.lengths.double())
        out["adaptive"], _ = masked_gae(rewards, v, mask, gamma=gamma, lam=lam_ad)
    inp = AdvantageInput(token_rewards=rewards, response_mask=mask, values=None, scores=batch.scores.double(),
                         group_index=batch.group_index)
    for name in GROUP_ESTIMATORS:
        out[name] = get_advantage_estimator(name)(inp, advantage_params(adv)).advantages.double()
    if values is not None and adv.estimator in RUN_ESTIMATORS:  # v: the masked critic values of the GAE rows
        out[f"run: {adv.estimator}"] = get_advantage_estimator(adv.estimator)(
            replace(inp, values=v), advantage_params(adv)).advantages.double()
    return out


def advantage_report(advs: dict[str, torch.Tensor], rows: np.ndarray, ts: np.ndarray, a_mc: np.ndarray,
                     noise: np.ndarray, bucket: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Per estimator × (all, each length bucket): :func:`advantage_stats`; and the best λ per bucket.

    Args: advs from :func:`estimator_advantages`; rows, ts [K] the probed tokens; a_mc, noise [K];
        bucket [K] int index into labels.
    """
    r_t, t_t = torch.from_numpy(rows), torch.from_numpy(ts)
    table: dict[str, Any] = {}
    for name, a in advs.items():
        ak = a[r_t, t_t].numpy()
        entry = {"all": advantage_stats(ak, a_mc, noise)}
        for j, lab in enumerate(labels):
            s = bucket == j
            if s.any():
                entry[lab] = advantage_stats(ak[s], a_mc[s], noise[s])
        table[name] = entry
    gae_names = [n for n in advs if n.startswith("λ=") or n == "adaptive"]
    best: dict[str, Any] = {}
    for key in ["all", *labels]:
        cands = [(n, table[n][key]["mse"]["value"]) for n in gae_names if key in table[n]]
        cands = [(n, m) for n, m in cands if np.isfinite(m)]
        if cands:
            n, m = min(cands, key=lambda c: c[1])
            best[key] = {"estimator": n, "mse": m}
    return {"estimators": table, "best_lambda": best, "mc_advantage_sd": float(np.std(a_mc, ddof=1)) if len(a_mc) > 1 else float("nan")}


def finding(report: dict[str, Any], has_critic: bool) -> str:
    """One line: which λ is best for which length bucket, or how group advantages correlate."""
    est = report["estimators"]
    if not has_critic:
        parts = [f"{n} corr {est[n]['all']['correlation']['value']:+.2f}" for n in GROUP_ESTIMATORS if n in est]
        return "no critic in this run; vs MC advantages: " + ", ".join(parts)
    best = report["best_lambda"]
    per = [f"{k}: {v['estimator']}" for k, v in best.items() if k != "all"]
    ad = est.get("adaptive", {}).get("all", {})
    ad_txt = f"; adaptive λ corr {ad['correlation']['value']:+.2f}" if ad else ""
    overall = best.get("all", {}).get("estimator", "n/a")
    run = [n for n in est if n.startswith("run: ")]
    run_txt = "".join(f"; {n.removeprefix('run: ')} MSE {est[n]['all']['mse']['value']:.4f} vs adaptive GAE "
                      f"{ad.get('mse', {}).get('value', math.nan):.4f}" for n in run)
    return f"lowest-MSE λ overall {overall}; by length {', '.join(per) or 'n/a'}{ad_txt}{run_txt}"
