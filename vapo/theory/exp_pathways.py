"""Claim 6 — improvement pathways beyond VAPO, evaluated on an exact testbed (docs/theory_part2.md).

Testbed: the chain token-MDP of the exploration experiment (prompt k needs l_k tokens, one
correct token per position, reward 1 iff all are correct), with long, heterogeneous lengths
and a tabular softmax policy. Everything is exact: V^π(k, t, ok) = Π_{u≥t} π(correct | k, u)
on the correct path and 0 after a mistake, so A^π(s_t, a_t) = V^π(s_{t+1}) − V^π(s_t) (γ = 1,
deterministic transitions), and ∇J for J = mean_k p_k by autograd.

Controlled critics (docs/theory.md, "Testbed"): V̂(s) = V^π(s) + β·min(1, d/D) + η(s),
a bias that grows with the distance d from the end (claim 1) plus state-dependent noise η
(one fixed draw per state, so all members of a group share V̂ at shared states).

Estimators, all through the `vapo.algos` registry on sampled batches (prompts × G answers):
  "gae" λ = 0.95 (fixed), "gae" λ = None (VAPO adaptive, α = 0.05),
  "gae_error_aware" (pathway A), "gae_mc_anchored" (pathway B, on top of VAPO's adaptive λ).
Metrics per critic condition: MSE of the advantages against A^π over real tokens, and the
cosine between the batch policy-gradient estimate Σ_t Â_t ∇log π(a_t|s_t) / B and the exact ∇J.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from vapo.algos import AdvantageInput, AdvantageParams, get_advantage_estimator
from vapo.theory.framework import Experiment, Verdict, new_figure, register_experiment, save_figure
from vapo.theory.mdp import ChainMDP, make_chain

BASELINES = {
    "gae_fixed_0.95": ("gae", dict(lam_actor=0.95, alpha=0.05)),
    "gae_adaptive": ("gae", dict(lam_actor=None, alpha=0.05)),
}
PATHWAYS = {
    "gae_error_aware": ("gae_error_aware", dict(lam_actor=None, alpha=0.05)),
    "gae_mc_anchored": ("gae_mc_anchored", dict(lam_actor=None, alpha=0.05)),
}


def evaluate_batch(logits, mdp: ChainMDP, v_exact, noise, beta, horizon, n_prompts, group, g):
    """One sampled batch: per estimator, (MSE vs A^π over real tokens, cosine to ∇J)."""
    k = mdp.lengths.shape[0]
    prompts = torch.randint(0, k, (n_prompts,), generator=g).repeat_interleave(group)
    probs = torch.softmax(logits[prompts], dim=-1)
    b, L, v = probs.shape
    tokens = torch.multinomial(probs.reshape(-1, v), 1, generator=g).reshape(b, L)
    mask = mdp.mask[prompts]
    wrong = ((tokens != 0).to(torch.float64) * mask)
    ok_before = (torch.cumsum(wrong, 1) - wrong) == 0  # no mistake before t: state "ok"
    ok_after = torch.cumsum(wrong, 1) == 0
    success = (wrong.sum(1) == 0).to(torch.float64)
    vk = v_exact[prompts]  # [B, L+1]
    v_t = torch.where(ok_before, vk[:, :L], 0.0) * mask
    v_next = torch.where(ok_after, vk[:, 1:], 0.0) * mask
    lengths = mask.sum(1)
    rewards = torch.zeros_like(mask)
    rewards[torch.arange(b), (lengths - 1).long()] = success
    a_true = (rewards + v_next - v_t) * mask  # A^π = r + V(s') − V(s)
    d = torch.flip(torch.cumsum(torch.flip(mask, [1]), 1), [1])
    # state-dependent noise: the ok-path state (k, t) or the failed state (k, t)
    eta = torch.where(ok_before, noise[0][prompts], noise[1][prompts])
    v_hat = (v_t + beta * torch.clamp(d / horizon, max=1.0) + eta) * mask
    inp = AdvantageInput(token_rewards=rewards, response_mask=mask, values=v_hat, scores=success,
                         group_index=prompts)
    pi = torch.softmax(logits, dim=-1)
    grad = mdp.grad(logits).flatten()
    out = {}
    for name, (est, kw) in {**BASELINES, **PATHWAYS}.items():
        adv = get_advantage_estimator(est)(inp, AdvantageParams(lam_critic=1.0, **kw)).advantages
        mse = float((((adv - a_true) ** 2) * mask).sum() / mask.sum())
        # ∇_θ log π(a|k,t) = e_a − π(·|k,t) for tabular logits θ[k, t, :]
        score = torch.nn.functional.one_hot(tokens, v).to(torch.float64) - pi[prompts]
        contrib = (adv * mask)[..., None] * score  # [B, L, V]
        g_hat = torch.zeros_like(logits).index_add_(0, prompts, contrib).flatten() / (b * k)
        cos = float(g_hat @ grad / (g_hat.norm() * grad.norm() + 1e-30))
        out[name] = (mse, cos)
    return out


CRITICS = {  # name: (bias β at distance ≥ horizon, noise std)
    "exact": (0.0, 0.0),
    "bias0.1": (0.1, 0.0),
    "noise0.05": (0.0, 0.05),
    "bias0.1+noise0.05": (0.1, 0.05),
    "bias0.3+noise0.1": (0.3, 0.1),
}


def evidence(res: dict) -> dict:
    """Per estimator: mean MSE and mean cosine over critics; paired cosine differences vs the
    better baseline (per batch, pooled over critics)."""
    pc = res["per_critic"]
    names = list(next(iter(pc.values())))
    summary = {}
    for n in names:
        summary[n] = {
            "mse": float(np.mean([np.mean(pc[c][n]["mse"]) for c in pc])),
            "cos": float(np.mean([np.mean(pc[c][n]["cos"]) for c in pc])),
            "mse_by_critic": {c: float(np.mean(pc[c][n]["mse"])) for c in pc},
            "cos_by_critic": {c: float(np.mean(pc[c][n]["cos"])) for c in pc},
        }
    best_base = max(BASELINES, key=lambda n: summary[n]["cos"])
    for n in PATHWAYS:
        diff = np.concatenate([np.array(pc[c][n]["cos"]) - np.array(pc[c][best_base]["cos"]) for c in pc])
        summary[n]["cos_diff_vs_best_baseline"] = float(diff.mean())
        summary[n]["cos_diff_se"] = float(diff.std(ddof=1) / math.sqrt(len(diff)))
    return {"summary": summary, "best_baseline_by_cos": best_base,
            "baseline_mse": {n: summary[n]["mse"] for n in BASELINES},
            "baseline_cos": {n: summary[n]["cos"] for n in BASELINES}}


def rule(ev: dict) -> tuple[str, dict]:
    """The decision rule as code on the deciding numbers. Returns (status, {pathway: kept?})."""
    s = ev["summary"]
    best_mse = min(ev["baseline_mse"].values())
    best_cos = max(ev["baseline_cos"].values())
    kept, worse_both = {}, {}
    for n in PATHWAYS:
        mse_ok = s[n]["mse"] < best_mse
        cos_ok = s[n]["cos_diff_vs_best_baseline"] >= -2 * s[n]["cos_diff_se"]
        kept[n] = bool(mse_ok and cos_ok)
        worse_both[n] = bool(s[n]["mse"] > best_mse and s[n]["cos"] < best_cos)
    if any(kept.values()):
        verdict = "supported"
    elif all(worse_both.values()):
        verdict = "refuted"
    else:
        verdict = "inconclusive"
    return verdict, kept


@register_experiment("pathways")
class Pathways(Experiment):
    claim = "Advantage estimators beyond VAPO's improve on it on an exact testbed (theory_part2.md claim 6)."
    hypothesis = (
        "At least one proposed pathway (critic-error-aware lambda, MC-anchored values) estimates "
        "advantages better than VAPO's adaptive lambda and fixed lambda = 0.95 on the exact testbed."
    )
    decision_rule = (
        "A pathway is 'kept' on the testbed iff (a) its MSE against A^pi, averaged over the critic "
        "conditions, is below both baselines' (adaptive lambda, lambda = 0.95) and (b) its mean "
        "cosine to the exact grad J is not below the better baseline's by more than 2 standard "
        "errors of the paired per-batch difference. Verdict: supported if >= 1 pathway is kept; "
        "refuted if no pathway is kept and every pathway is worse than the better baseline on both "
        "metrics; inconclusive otherwise."
    )

    def sizes(self, quick: bool) -> dict:
        if quick:
            return dict(n_prompts_mdp=8, max_len=48, vocab=4, batches=4, n_prompts=4, group=4, horizon=24)
        return dict(n_prompts_mdp=32, max_len=512, vocab=4, batches=24, n_prompts=8, group=8, horizon=128)

    def compute(self, sz: dict, seed: int) -> dict:
        """Per critic condition and sampled batch: every estimator's MSE and cosine (no verdict)."""
        mdp = make_chain(sz["n_prompts_mdp"], sz["max_len"], sz["vocab"], (0.05, 0.8), seed)
        logits = mdp.init_logits
        v_exact = mdp.values(logits)
        names = list(BASELINES) + list(PATHWAYS)
        per_critic = {}
        for ci, (cname, (beta, sd)) in enumerate(CRITICS.items()):
            g = torch.Generator().manual_seed(100 * seed + ci)
            noise = (sd * torch.randn(logits.shape[:2], generator=g, dtype=torch.float64),
                     sd * torch.randn(logits.shape[:2], generator=g, dtype=torch.float64))
            res = [evaluate_batch(logits, mdp, v_exact, noise, beta, sz["horizon"], sz["n_prompts"], sz["group"], g)
                   for _ in range(sz["batches"])]
            per_critic[cname] = {n: {"mse": [r[n][0] for r in res], "cos": [r[n][1] for r in res]} for n in names}
        return {"sizes": sz, "seed": seed, "critics": CRITICS, "per_critic": per_critic,
                "lengths": mdp.lengths.tolist()}

    def decide(self, results: dict) -> Verdict:
        ev = evidence(results)
        status, kept = rule(ev)
        s = ev["summary"]
        line = (f"pathways: {status} — kept on testbed: {[n for n, k in kept.items() if k] or 'none'}; "
                + "; ".join(f"{n} MSE {s[n]['mse']:.4g} cos {s[n]['cos']:.3f}" for n in s))
        return Verdict(status, line, {"kept_on_testbed": kept, **ev})

    def plot(self, results: dict, out_dir: Path) -> list[Path]:
        ev = evidence(results)
        s = ev["summary"]
        critics = list(results["per_critic"])
        names = list(s)
        fig, ax = new_figure(2, 1, size=(6.5, 4.0))
        ax = ax[0]
        w = 0.8 / len(names)
        for j, n in enumerate(names):
            xs = np.arange(len(critics)) + j * w
            ax[0].bar(xs, [s[n]["mse_by_critic"][c] for c in critics], w, label=n)
            ax[1].bar(xs, [s[n]["cos_by_critic"][c] for c in critics], w, label=n)
        for a, t in zip(ax, ["MSE vs exact A^pi (lower is better)", "cosine to exact grad J (higher is better)"], strict=True):
            a.set_xticks(np.arange(len(critics)) + 0.4 - w / 2)
            a.set_xticklabels(critics, rotation=15, fontsize=8)
            a.set_title(t)
        ax[0].set_yscale("log")
        ax[0].legend(fontsize=7)
        return [save_figure(fig, Path(out_dir) / "pathways.png")]
