"""Claim 2 — adaptive λ: the bias–variance trade-off of GAE(λ) and its optimum.

Testbed: fixed-length token MDPs, one prompt per length l (mistakes fatal, initial success 0.5
for every l: with γ = 1 and a 0/1 reward the return's variance p(1−p) is the same at every
length). Critics: exact, and reward-model-like critics with an error level κ — V̂ = V +
κ(1 − e^{−d/16})(c − V) + frozen noise (accurate near the end, the prior c far away:
`critics.controlled_critic(profile="rm_like")`), the profile claim 1 measures for TD-trained
critics. For every l, κ and λ on a grid we compute *exactly* (`gae_exact.gae_moments`) the
per-token squared bias, variance and MSE of GAE(λ) against A^π, and the expected policy-gradient
estimate, then:

* λ*(l, κ) = argmin_λ MSE;
* VAPO's rule λ = 1 − 1/(αl) (`vapo.algos.adaptive_lambda`) with the best-fit α and the paper's
  α = 0.05, and fixed λ = 0.95, by excess MSE over λ* (normalised by the MSE of λ = 1) and by the
  cosine between the expected estimated gradient and the exact ∇J;
* the premise "short answers → high variance, long → high bias" at λ = 0.95;
* credit localisation on critical-token MDPs (one token decides success): the share of |Â| on
  the critical token under GAE(λ), the adaptive rule and GRPO group advantages (simulated).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from vapo.algos import adaptive_lambda, grpo_advantages, masked_gae
from vapo.theory.critics import controlled_critic
from vapo.theory.framework import Experiment, Verdict, new_figure, register_experiment, save_figure
from vapo.theory.gae_exact import cosine, gae_moments
from vapo.theory.mdp import init_logits, make_mdp, mistake_prob_for_success, sample, solve

LAM_GRID = np.concatenate([1.0 - 10.0 ** -np.linspace(0.0, 4.0, 33), [1.0]])
ALPHA_GRID = np.logspace(-3, 0.5, 36)
SCALE = 16.0


def _rule_lambdas(lengths: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Rows of λ per prompt [R, K]: the grid, every α of VAPO's rule, fixed 0.95; and row names."""
    lt = torch.as_tensor(lengths, dtype=torch.float64)
    rows = [np.full(len(lengths), x) for x in LAM_GRID]
    rows += [adaptive_lambda(lt, float(a)).numpy() for a in ALPHA_GRID]
    rows.append(np.full(len(lengths), 0.95))
    names = [f"grid:{x}" for x in LAM_GRID] + [f"alpha:{a}" for a in ALPHA_GRID] + ["fixed:0.95"]
    return np.stack(rows), names


def _analyse(lengths, critic_conditions, draws: int, seed: int) -> dict:
    """Exact MSE/bias²/variance/cosine for every rule row, prompt (length) and critic condition."""
    mdp = make_mdp(lengths, fixed_length=True)
    z = init_logits(mdp, mistake_prob_for_success(mdp, 0.5))
    sol = solve(mdp, z)
    lam_rows, names = _rule_lambdas(np.asarray(lengths))
    rng = np.random.default_rng(seed)
    out = {}
    for cname, (level, noise) in critic_conditions.items():
        acc = None
        for _ in range(draws if noise > 0 else 1):
            vh = controlled_critic(mdp, sol.V, "rm_like", level, scale=SCALE, noise_std=noise, rng=rng)
            g = gae_moments(mdp, sol, vh, lam_rows)
            # cosine of each row's expected update (per prompt, summed over prompts) to ∇J
            cos = [cosine(g.grad_logits[r], sol.grad_logits) for r in range(len(names))]
            res = np.stack([g.mse_k, g.bias2_k, g.var_k]) * mdp.n_prompts  # undo ρ_k = 1/K
            part = (res, np.array(cos))
            acc = part if acc is None else (acc[0] + part[0], acc[1] + part[1])
        n = draws if noise > 0 else 1
        mse, b2, var = acc[0] / n
        out[cname] = {"mse": mse, "bias2": b2, "var": var, "cos": acc[1] / n}
    return {"names": names, "per_critic": out}


def _summaries(lengths, an: dict) -> dict:
    """λ*, excess MSE of each rule family, best α, best fixed λ, premise statistics."""
    names = an["names"]
    n_grid, n_alpha = len(LAM_GRID), len(ALPHA_GRID)
    i_fixed = names.index("fixed:0.95")
    i_paper = n_grid + int(np.argmin(np.abs(ALPHA_GRID - 0.05)))
    out = {}
    for cname, r in an["per_critic"].items():
        mse = r["mse"]  # [rows, K]
        best = mse.min(0)
        scale = mse[n_grid - 1]  # λ = 1 (MC advantages): the natural MSE scale per length
        excess = (mse - best) / scale  # [rows, K]
        mean_ex = excess.mean(1)
        i_best_fixed = int(np.argmin(mean_ex[:n_grid]))
        i_best_alpha = n_grid + int(np.argmin(mean_ex[n_grid:n_grid + n_alpha]))
        lam_star = LAM_GRID[np.argmin(mse[:n_grid], axis=0)]
        rho = spearmanr(lengths, lam_star).statistic if np.ptp(lam_star) > 0 else float("nan")
        rv = spearmanr(lengths, r["var"][i_fixed]).statistic
        rb = spearmanr(lengths, r["bias2"][i_fixed]).statistic if np.ptp(r["bias2"][i_fixed]) > 1e-15 else float("nan")
        out[cname] = {
            "lambda_star": lam_star.tolist(), "spearman_l_lambda_star": float(rho),
            "best_fixed_lambda": float(LAM_GRID[i_best_fixed]), "excess_best_fixed": float(mean_ex[i_best_fixed]),
            "best_alpha": float(ALPHA_GRID[i_best_alpha - n_grid]), "excess_best_alpha": float(mean_ex[i_best_alpha]),
            "excess_paper_alpha_0.05": float(mean_ex[i_paper]), "excess_fixed_0.95": float(mean_ex[i_fixed]),
            "cos_best_fixed": float(r["cos"][i_best_fixed]), "cos_best_alpha": float(r["cos"][i_best_alpha]),
            "cos_paper_alpha_0.05": float(r["cos"][i_paper]), "cos_fixed_0.95": float(r["cos"][i_fixed]),
            "cos_lambda_1": float(r["cos"][n_grid - 1]),
            "premise_at_0.95": {"var_by_length": r["var"][i_fixed].tolist(),
                                "bias2_by_length": r["bias2"][i_fixed].tolist(),
                                "spearman_l_var": float(rv), "spearman_l_bias2": float(rb)},
            "excess_by_alpha": mean_ex[n_grid:n_grid + n_alpha].tolist(),
            "mse_by_lambda": mse[:n_grid].tolist(),
        }
    return out


def _credit_localisation(lengths, conditions, n_groups: int, group: int, seed: int) -> dict:
    """Share of Σ|Â| that lands on the critical token (simulated, float64 through vapo.algos)."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in lengths:
        mdp = make_mdp([n], fixed_length=True, critical=[n // 2])
        z = init_logits(mdp, 0.3)  # mistakes everywhere, only the critical one matters: p = 0.7
        sol = solve(mdp, z)
        tr = sample(mdp, z, np.zeros(n_groups * group, dtype=np.int64), rng)
        tt = tr.torch()
        crit = np.zeros_like(tr.mask)
        crit[:, n // 2] = 1.0
        row = {}

        def share(adv: np.ndarray, mask=tr.mask, crit=crit) -> float:
            a = np.abs(adv) * mask
            return float((a * crit).sum() / max(a.sum(), 1e-300))

        row["exact A"] = share(tr.gather_sa(sol.A))
        gidx = torch.as_tensor(np.repeat(np.arange(n_groups), group))
        row["GRPO"] = share(grpo_advantages(tt["scores"], gidx, tt["response_mask"]).numpy())
        lams = {"λ=0": 0.0, "λ=0.95": 0.95, "λ=1": 1.0,
                "adaptive α=0.05": float(adaptive_lambda(torch.tensor([float(n)]), 0.05))}
        for cname, (level, noise) in conditions.items():
            vh = controlled_critic(mdp, sol.V, "rm_like", level, scale=SCALE, noise_std=noise, rng=rng)
            vals = torch.from_numpy(tr.gather(vh))
            for lname, lam in lams.items():
                adv, _ = masked_gae(tt["token_rewards"], vals, tt["response_mask"], 1.0, lam)
                row[f"GAE {lname}, {cname}"] = share(adv.numpy())
        out[str(n)] = row
    return out


@register_experiment("adaptive_lambda")
class AdaptiveLambda(Experiment):
    claim = "Adaptive lambda = 1 - 1/(alpha*l) tracks the length-dependent optimum of GAE's bias-variance trade-off (theory.md claim 2)."
    hypothesis = (
        "For critics with error (reward-model-like profile), the MSE-optimal lambda*(l) rises with the "
        "answer length l, and VAPO's length-adaptive rule (best-fit alpha) has lower excess MSE over a "
        "mix of lengths than the best single fixed lambda.")
    decision_rule = (
        "rises: Spearman(l, lambda*) >= 0.8 for a majority of the critic-error levels > 0. beats: "
        "for every error level > 0, the mean (over lengths) excess MSE of the adaptive rule with the "
        "best-fit alpha is below that of the best fixed lambda (excess = (MSE - MSE*)/MSE(lambda=1)). "
        "supported if both, refuted if neither, inconclusive otherwise. Reported, not decisive: paper "
        "alpha = 0.05 and lambda = 0.95, gradient cosines, the short/long premise, credit localisation.")

    def sizes(self, quick: bool) -> dict:
        if quick:
            return dict(lengths=[8, 16, 32, 64], tiny_lengths=[20, 50, 100, 150],
                        critics={"exact": (0.0, 0.0), "rm0.3": (0.3, 0.02), "rm0.6": (0.6, 0.03)},
                        draws=1, credit_lengths=[16, 48], n_groups=32, group=8)
        return dict(lengths=[8, 16, 32, 64, 128, 256, 512, 1024], tiny_lengths=[20, 30, 50, 80, 110, 150],
                    critics={"exact": (0.0, 0.0), "rm0.1": (0.1, 0.01), "rm0.3": (0.3, 0.02),
                             "rm0.6": (0.6, 0.03)},
                    draws=2, credit_lengths=[64, 512], n_groups=64, group=8)

    def compute(self, sizes: dict, seed: int) -> dict:
        lengths = sizes["lengths"]
        crit = {k: tuple(v) for k, v in sizes["critics"].items()}
        an = _analyse(lengths, crit, sizes["draws"], seed)
        summ = _summaries(lengths, an)
        noisy = {k: v for k, v in crit.items() if v[0] > 0}
        tiny = _summaries(sizes["tiny_lengths"], _analyse(sizes["tiny_lengths"], noisy, sizes["draws"], seed + 1))
        ex = np.mean([tiny[c]["excess_by_alpha"] for c in noisy], axis=0)
        credit = _credit_localisation(sizes["credit_lengths"], {"exact": (0.0, 0.0), **noisy},
                                      sizes["n_groups"], sizes["group"], seed + 2)
        return {"lengths": lengths, "lambda_grid": LAM_GRID, "alpha_grid": ALPHA_GRID, "summary": summ,
                "recommended_alpha_tiny": float(ALPHA_GRID[int(np.argmin(ex))]),
                "tiny_lengths": sizes["tiny_lengths"], "tiny_excess_by_alpha": ex,
                "credit_localisation": credit}

    def decide(self, results: dict) -> Verdict:
        s = {k: v for k, v in results["summary"].items() if k != "exact"}
        rho = {k: v["spearman_l_lambda_star"] for k, v in s.items()}
        rises_n = sum(1 for r in rho.values() if r is not None and r >= 0.8)
        rises = rises_n * 2 > len(s)
        beats_each = {k: v["excess_best_alpha"] < v["excess_best_fixed"] for k, v in s.items()}
        beats = all(beats_each.values())
        status = "supported" if rises and beats else "refuted" if not (rises or beats) else "inconclusive"
        worst = max(s, key=lambda k: s[k]["excess_best_alpha"] - s[k]["excess_best_fixed"])
        w = s[worst]
        numbers = {"spearman_l_lambda_star": rho, "adaptive_beats_fixed": beats_each, "rises": rises,
                   "beats": beats, **{f"{k}:{m}": v[m] for k, v in s.items() for m in
                                     ("best_alpha", "excess_best_alpha", "best_fixed_lambda", "excess_best_fixed",
                                      "excess_paper_alpha_0.05", "excess_fixed_0.95")},
                   "recommended_alpha_tiny": results["recommended_alpha_tiny"]}
        line = (f"adaptive_lambda: {status} — Spearman(l, λ*) per error level "
                f"{ {k: round(r, 2) if r is not None else None for k, r in rho.items()} }; at {worst}: excess MSE "
                f"best α={w['best_alpha']:.3g} {w['excess_best_alpha']:.3f}, paper α=0.05 "
                f"{w['excess_paper_alpha_0.05']:.3f}, best fixed λ={w['best_fixed_lambda']:.3g} "
                f"{w['excess_best_fixed']:.3f}, λ=0.95 {w['excess_fixed_0.95']:.3f}; "
                f"recommended α for l∈[20,150]: {results['recommended_alpha_tiny']:.3g}")
        return Verdict(status, line, numbers)

    def plot(self, results: dict, out_dir):
        fig, ax = new_figure(4, 1)
        ls = results["lengths"]
        lam = np.asarray(results["lambda_grid"])
        for c, v in results["summary"].items():
            ax[0, 0].plot(ls, v["lambda_star"], "o-", label=c)
            ax[0, 1].plot(results["alpha_grid"], v["excess_by_alpha"], label=c)
            p = v["premise_at_0.95"]
            ax[0, 2].plot(ls, p["var_by_length"], "o-", label=f"{c} variance")
            ax[0, 2].plot(ls, p["bias2_by_length"], "s--", label=f"{c} bias²")
        ax[0, 0].plot(ls, 1 - 1 / (0.05 * np.asarray(ls, float)).clip(1e-9), "k:", label="1-1/(0.05 l)")
        ax[0, 0].set(xscale="log", ylim=(-0.05, 1.02), xlabel="length l", ylabel="λ* (exact MSE)", title="optimal λ")
        ax[0, 1].axvline(0.05, color="k", ls=":")
        ax[0, 1].set(xscale="log", yscale="log", xlabel="α", ylabel="mean excess MSE / MSE(λ=1)",
                     title="VAPO rule vs α")
        ax[0, 2].set(xscale="log", yscale="log", xlabel="length l", ylabel="per token", title="λ=0.95: premise")
        cl = results["credit_localisation"]
        lk = list(cl)[-1]
        keys = list(cl[lk])
        ax[0, 3].barh(range(len(keys)), [cl[lk][k] for k in keys])
        ax[0, 3].set_yticks(range(len(keys)))
        ax[0, 3].set_yticklabels(keys, fontsize=5)
        ax[0, 3].set(xlabel="share of |advantage| on the critical token", title=f"credit localisation, l={lk}")
        for a in ax[0, :3]:
            a.legend(fontsize=6)
        _ = lam
        return [save_figure(fig, out_dir / "adaptive_lambda.png")]
