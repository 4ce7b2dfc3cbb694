"""Claim 4 — generalisation to unseen prompts and to longer answers (docs/theory_part2.md).

A tabular policy cannot generalise by construction (an unseen prompt's parameters are never
trained), so this experiment uses a *log-linear* softmax policy whose features are shared
across prompts (docs/theory.md, "Testbed"):

    π(a | k, t) ∝ exp θ·φ(k, t, a),   φ(k, t, a) = [x_k ⊗ e_a,  (t/L0)·e_a,  e_a]

on a chain token-MDP: prompt k has a feature vector x_k ∈ R^d and a required length l_k; at
position t the correct token is c_k(t) = argmax_a [(A x_k)_a + (t/L0)·b_a] for a hidden rule
(A, b) — realisable by the policy class; the reward is 1 iff every token is correct. The
policy does not depend on earlier tokens, so the success probability is exact:
p_k = Π_{t<l_k} π(c_k(t) | k, t), and so is V^π on the correct path,
V^π(k, t) = Π_{u≥t} π(c_k(u) | k, u) (0 after a mistake).

We train by exact policy-gradient ascent on J = mean_{k ∈ train} p_k (Adam), with training
prompts of lengths in [2, L0]; then report
  * the train–test success gap on unseen prompts of the same lengths vs the number of
    training prompts N;
  * success vs answer length on unseen prompts for lengths beyond the training range
    (length extrapolation);
  * the error of a linear critic V̂(k,t) = w·[x_k, t/L0, (l_k − t)/L0, 1] fitted by least squares
    to the exact V^π on the training prompts' correct-path states, measured on training and on
    unseen prompts — and its rank correlation with the policy's train–test gap.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from vapo.theory.framework import (
    Experiment,
    Verdict,
    fmt,
    new_figure,
    register_experiment,
    save_figure,
)
from vapo.theory.mdp import LogLinearChain, make_loglinear_chain

L0 = 6  # training length scale: train lengths in [2, L0]


def train_policy(train: LogLinearChain, steps: int, lr: float) -> torch.Tensor:
    """Exact policy-gradient ascent on J = mean_k p_k from θ = 0 (uniform policy)."""
    theta = torch.zeros(train.phi.shape[-1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    for _ in range(steps):
        loss = -train.success(theta).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return theta.detach()


def critic_errors(theta: torch.Tensor, train: LogLinearChain, test: LogLinearChain) -> tuple[float, float]:
    """Least-squares linear critic fitted to exact V^π on training states; RMSE (train, test)."""
    def design(p: LogLinearChain):
        m = p.mask.bool()
        return p.critic_features()[m], p.values(theta)[m]

    xtr, ytr = design(train)
    xte, yte = design(test)
    w = torch.linalg.lstsq(xtr, ytr[:, None], rcond=None).solution.squeeze(-1)
    rm = lambda x, y: float(torch.sqrt(((x @ w - y) ** 2).mean()))  # noqa: E731
    return rm(xtr, ytr), rm(xte, yte)


def spearman(a, b) -> float:
    """Spearman rank correlation (scipy); NaN when either input is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def evidence(res: dict) -> dict:
    """The numbers the decision rule reads."""
    ns = [str(n) for n in res["sizes"]["n_train"]]
    lens = [str(lt) for lt in res["sizes"]["test_lengths"]]
    return {
        "gap_small_n": res["by_n"][ns[0]]["gap"], "gap_small_n_se": res["by_n"][ns[0]]["gap_se"],
        "gap_large_n": res["by_n"][ns[-1]]["gap"],
        "success_at_L0": res["by_length_at_max_n"][str(res["L0"])],
        "success_at_longest": res["by_length_at_max_n"][lens[-1]],
    }


def rule(ev: dict) -> tuple[str, dict]:
    """The decision rule as code on the deciding numbers. Returns (status, the two sub-calls)."""
    prompt_ok = ev["gap_small_n"] > 2 * ev["gap_small_n_se"] and ev["gap_large_n"] < 0.5 * ev["gap_small_n"]
    length_ok = ev["success_at_L0"] - ev["success_at_longest"] > 0.1
    verdict = "supported" if prompt_ok and length_ok else "refuted" if not (prompt_ok or length_ok) else "inconclusive"
    return verdict, {"prompt_ok": bool(prompt_ok), "length_ok": bool(length_ok)}


@register_experiment("generalization")
class Generalization(Experiment):
    claim = "A policy trained on few prompts generalises to unseen prompts and to longer answers (theory_part2.md claim 4)."
    hypothesis = (
        "A log-linear policy trained on N prompts generalises to unseen prompts with a train-test "
        "success gap that shrinks as N grows, while success on unseen longer answers falls with "
        "the extrapolation length (per-token errors compound); the critic's error on unseen "
        "prompts tracks the policy's gap."
    )
    decision_rule = (
        "prompt_ok: mean gap at the largest N < 0.5 x mean gap at the smallest N, and the gap at "
        "the smallest N exceeds 2 standard errors (a gap exists to shrink). length_ok: test success "
        "at the longest length is below test success at the training length scale L0 by > 0.1 "
        "(absolute). Verdict: supported if both; refuted if neither; inconclusive otherwise. "
        "The critic relation (Spearman rho of critic test RMSE vs policy gap over (N, seed)) is "
        "reported as evidence, not part of the verdict."
    )

    def sizes(self, quick: bool) -> dict:
        if quick:
            return dict(n_train=[2, 32], n_test=64, test_lengths=[L0, 24], seeds=[0, 1, 2], steps=150,
                        lr=0.1, vocab=3, d=6)
        return dict(n_train=[2, 4, 8, 16, 32, 64, 128], n_test=256, test_lengths=[2, 4, L0, 9, 12, 18, 24, 36, 48],
                    seeds=list(range(6)), steps=400, lr=0.1, vocab=3, d=6)

    def compute(self, sz: dict, seed: int) -> dict:
        """Train per (seed, N); exact success, gaps, length extrapolation, critic errors (no verdict)."""
        max_len = max(sz["test_lengths"] + [L0])
        rows = []
        for s in sz["seeds"]:
            g = torch.Generator().manual_seed(10_000 * seed + s)
            rule_a = torch.randn(sz["vocab"], sz["d"], generator=g, dtype=torch.float64)
            rule_b = torch.randn(sz["vocab"], generator=g, dtype=torch.float64)
            test_same = make_loglinear_chain(sz["n_test"], (2, L0), rule_a, rule_b, sz["vocab"], sz["d"], max_len, L0, g)
            test_len = {lt: make_loglinear_chain(sz["n_test"], lt, rule_a, rule_b, sz["vocab"], sz["d"], max_len, L0, g)
                        for lt in sz["test_lengths"]}
            for n in sz["n_train"]:
                train = make_loglinear_chain(n, (2, L0), rule_a, rule_b, sz["vocab"], sz["d"], max_len, L0, g)
                theta = train_policy(train, sz["steps"], sz["lr"])
                tr = float(train.success(theta).mean())
                te = float(test_same.success(theta).mean())
                c_tr, c_te = critic_errors(theta, train, test_same)
                rows.append({
                    "seed": s, "n_train": n, "train_success": tr, "test_success": te, "gap": tr - te,
                    "critic_rmse_train": c_tr, "critic_rmse_test": c_te,
                    "test_success_by_length": {str(lt): float(p.success(theta).mean()) for lt, p in test_len.items()},
                })
        ns = sz["n_train"]
        by_n = {}
        for n in ns:
            sel = [r for r in rows if r["n_train"] == n]
            gaps = np.array([r["gap"] for r in sel])
            by_n[str(n)] = {
                "gap": float(gaps.mean()), "gap_se": float(gaps.std(ddof=1) / math.sqrt(len(gaps))),
                "train_success": float(np.mean([r["train_success"] for r in sel])),
                "test_success": float(np.mean([r["test_success"] for r in sel])),
                "critic_rmse_train": float(np.mean([r["critic_rmse_train"] for r in sel])),
                "critic_rmse_test": float(np.mean([r["critic_rmse_test"] for r in sel])),
            }
        big = [r for r in rows if r["n_train"] == ns[-1]]
        by_len = {str(lt): float(np.mean([r["test_success_by_length"][str(lt)] for r in big]))
                  for lt in sz["test_lengths"]}
        rho = spearman([r["critic_rmse_test"] for r in rows], [r["gap"] for r in rows])
        return {"sizes": sz, "seed": seed, "L0": L0, "rows": rows, "by_n": by_n,
                "by_length_at_max_n": by_len, "spearman_critic_test_rmse_vs_gap": rho}

    def decide(self, results: dict) -> Verdict:
        ev = evidence(results)
        status, calls = rule(ev)
        sz = results["sizes"]
        line = (f"generalization: {status} — gap {ev['gap_small_n']:.3f}±{ev['gap_small_n_se']:.3f} at N="
                f"{sz['n_train'][0]} -> {ev['gap_large_n']:.3f} at N={sz['n_train'][-1]}; "
                f"unseen-prompt success at l={results['L0']}: {ev['success_at_L0']:.3f}, at l="
                f"{sz['test_lengths'][-1]}: {ev['success_at_longest']:.3f}; critic-RMSE/gap "
                f"Spearman {fmt(results['spearman_critic_test_rmse_vs_gap'], '.2f')}")
        return Verdict(status, line, {**ev, **calls})

    def plot(self, results: dict, out_dir: Path) -> list[Path]:
        fig, ax = new_figure(3, 1, size=(4.7, 4.0))
        ax = ax[0]
        ns = results["sizes"]["n_train"]
        bn = results["by_n"]
        ax[0].plot(ns, [bn[str(n)]["train_success"] for n in ns], "o-", label="train prompts")
        ax[0].plot(ns, [bn[str(n)]["test_success"] for n in ns], "s-", label="unseen prompts")
        ax[0].set(xscale="log", xlabel="number of training prompts N", ylabel="exact success", title="prompt generalisation")
        ax[0].legend()
        lens = results["sizes"]["test_lengths"]
        ax[1].plot(lens, [results["by_length_at_max_n"][str(lt)] for lt in lens], "o-")
        ax[1].axvspan(2, results["L0"], alpha=0.15, label="training lengths")
        ax[1].set(xlabel="answer length (unseen prompts)", ylabel="exact success",
                  title=f"length extrapolation (N={ns[-1]})")
        ax[1].legend()
        ax[2].scatter([r["critic_rmse_test"] for r in results["rows"]], [r["gap"] for r in results["rows"]],
                      c=np.log2([r["n_train"] for r in results["rows"]]), cmap="viridis")
        ax[2].set(xlabel="critic RMSE on unseen prompts", ylabel="policy train-test gap",
                  title=f"Spearman rho = {fmt(results['spearman_critic_test_rmse_vs_gap'], '.2f')}")
        return [save_figure(fig, Path(out_dir) / "generalization.png")]
