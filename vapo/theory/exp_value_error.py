"""Claim 1 — value approximation error grows with horizon under sparse reward.

Testbed: fixed-length token MDPs (one prompt per length l, mistakes fatal, initial success
0.5 per prompt), a fixed policy, and a tabular critic initialised as a reward model would be
(exact at the final token, the constant 0 elsewhere — `critics.rm_like_init`). The critic is
fitted by regression on λ-returns from sampled answers (`critics.fit_critic`, targets from
`vapo.algos.masked_gae`): MC (λ = 1) and TD(λ) with λ ∈ {0.95, 0} (λ = 0.95 is PPO's default
critic λ). "Without pretraining" = after a few updates (as many as a handful of RL steps give
the critic); "with pretraining" = after many updates on the fixed policy (VAPO §3.1 value
pretraining, which uses λ = 1). We report the exact error V̂ − V^π, weighted by the exact state
occupancy, by distance from the end and by length.
"""

from __future__ import annotations

import numpy as np

from vapo.theory.critics import fit_critic, rm_like_init
from vapo.theory.framework import (
    Experiment,
    Verdict,
    new_figure,
    register_experiment,
    save_figure,
    verdict_from_flags,
)
from vapo.theory.mdp import init_logits, make_mdp, mistake_prob_for_success, solve

CRITIC_LAMBDAS = {"MC (λ=1)": 1.0, "TD(λ=0.95)": 0.95, "TD(0)": 0.0}


def _bucket_edges(L: int) -> list[int]:
    edges = [0, 1, 4, 16, 64, 256, 1024, 4096]
    return [e for e in edges if e < L] + [L]


@register_experiment("value_error")
class ValueError_(Experiment):
    claim = "Value approximation error grows with horizon under sparse reward (theory.md claim 1)."
    hypothesis = (
        "A critic initialised like a reward model and trained by TD(lambda<1) keeps its initial "
        "bias far from the reward: the occupancy-weighted |V_hat - V| grows with the distance from "
        "the end and with the answer length; value pretraining with MC targets (lambda=1, VAPO) "
        "removes most of the initial bias at every length.")
    decision_rule = (
        "grows: for TD(0) without pretraining at the longest length, |bias| in the farthest distance "
        "bucket > 2x that in the nearest non-zero bucket, AND mean |bias| over states at the longest "
        "length > 1.5x that at the shortest. pretrain_removes: after pretraining with MC targets the "
        "mean |bias| is < 0.5x its initial value at every length. supported if both, refuted if "
        "neither, inconclusive otherwise.")

    def sizes(self, quick: bool) -> dict:
        if quick:
            return dict(lengths=[8, 48], batch=16, few=4, pretrain=20, lr=0.3, success=0.5)
        return dict(lengths=[16, 64, 256, 1024], batch=32, few=4, pretrain=80, lr=0.25, success=0.5)

    def compute(self, sizes: dict, seed: int) -> dict:
        rng = np.random.default_rng(seed)
        out: dict = {"lengths": sizes["lengths"], "critics": {}}
        for n in sizes["lengths"]:
            mdp = make_mdp([n], fixed_length=True)
            z = init_logits(mdp, mistake_prob_for_success(mdp, sizes["success"]))
            sol = solve(mdp, z)
            init = rm_like_init(mdp, sol.V, prior=0.0)
            w = sol.d[:, :-1]  # occupancy of non-terminal states [1, L, M1]
            dist = np.broadcast_to(mdp.distance_to_end[:, :-1, None], w.shape)
            edges = _bucket_edges(n)
            fitted = fit_critic(mdp, z, init, list(CRITIC_LAMBDAS.values()), sizes["pretrain"], sizes["batch"],
                                sizes["lr"], rng, checkpoints=(sizes["few"], sizes["pretrain"]))
            for name, lam in CRITIC_LAMBDAS.items():
                snaps = fitted[lam]
                row = {}
                for stage, it in (("init", 0), ("few_updates", sizes["few"]), ("pretrained", sizes["pretrain"])):
                    err = np.abs(snaps[it][:, :-1] - sol.V[:, :-1])
                    by_d = []
                    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                        sel = (dist >= lo) & (dist < hi)
                        by_d.append(float((w * err)[sel].sum() / max(w[sel].sum(), 1e-300)))
                    row[stage] = {"mean_abs_bias": float((w * err).sum() / w.sum()),
                                  "rmse": float(np.sqrt((w * err**2).sum() / w.sum())),
                                  "abs_bias_by_distance": by_d}
                row["distance_edges"] = edges
                out["critics"].setdefault(name, {})[str(n)] = row
        return out

    def decide(self, results: dict) -> Verdict:
        ls = [str(x) for x in results["lengths"]]
        td0 = results["critics"]["TD(0)"]
        far = td0[ls[-1]]["few_updates"]["abs_bias_by_distance"]
        near = far[1]  # bucket [1, 4): the nearest non-terminal states
        farthest = far[-1]
        mean_long = td0[ls[-1]]["few_updates"]["mean_abs_bias"]
        mean_short = td0[ls[0]]["few_updates"]["mean_abs_bias"]
        mc = results["critics"]["MC (λ=1)"]
        ratios = {lk: mc[lk]["pretrained"]["mean_abs_bias"] / max(mc[lk]["init"]["mean_abs_bias"], 1e-300)
                  for lk in ls}
        grows = farthest > 2 * near and mean_long > 1.5 * mean_short
        removes = all(r < 0.5 for r in ratios.values())
        status = verdict_from_flags({"grows": grows, "pretrain_removes": removes})
        numbers = {"td0_bias_near": near, "td0_bias_farthest": farthest, "td0_mean_bias_shortest": mean_short,
                   "td0_mean_bias_longest": mean_long, "mc_pretrain_bias_ratio": ratios,
                   "grows": grows, "pretrain_removes": removes}
        line = (f"value_error: {status} — TD(0) after few updates at l={ls[-1]}: |bias| {near:.3f} near the end "
                f"-> {farthest:.3f} farthest; mean |bias| l={ls[0]} {mean_short:.3f} -> l={ls[-1]} {mean_long:.3f}; "
                f"MC pretraining leaves {max(ratios.values()):.2f}x of the initial bias (worst length)")
        return Verdict(status, line, numbers)

    def plot(self, results: dict, out_dir):
        fig, ax = new_figure(3, 1)
        ls = [str(x) for x in results["lengths"]]
        for name, per_l in results["critics"].items():
            row = per_l[ls[-1]]
            e = row["distance_edges"]
            ax[0, 0].plot(e[:-1], row["few_updates"]["abs_bias_by_distance"], "o-", label=f"{name}, few updates")
            ax[0, 1].plot(e[:-1], row["pretrained"]["abs_bias_by_distance"], "o-", label=f"{name}, pretrained")
            for stage, style in (("few_updates", "o-"), ("pretrained", "s--")):
                ax[0, 2].plot([int(x) for x in ls], [per_l[x][stage]["mean_abs_bias"] for x in ls], style,
                              label=f"{name}, {stage}")
        ax[0, 2].plot([int(x) for x in ls], [results["critics"]["TD(0)"][x]["init"]["mean_abs_bias"] for x in ls],
                      "k:", label="init (RM-like)")
        for a, t in zip(ax[0, :2], ("few updates", "pretrained"), strict=True):
            a.set(xscale="symlog", xlabel="distance from the end (tokens, bucket start)",
                  ylabel="occupancy-weighted |V_hat - V|", title=f"l={ls[-1]}: {t}")
            a.legend(fontsize=7)
        ax[0, 2].set(xscale="log", xlabel="answer length l", ylabel="mean |V_hat - V|", title="error vs length")
        ax[0, 2].legend(fontsize=6)
        return [save_figure(fig, out_dir / "value_error.png")]
