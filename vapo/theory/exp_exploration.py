"""Claim 5 — exploration under sparse reward (theory lab, docs/theory_part2.md).

Two parts.

A. Zero-signal groups. If a prompt is solved with probability p and G answers are sampled,
   the group's rewards are all equal — zero group-relative advantage, zero gradient — with
   probability p^G + (1 − p)^G. We check this exactly against simulation.

B. Entropy collapse and final success under PPO-style training. A chain token-MDP: prompt k
   has a required length l_k; at each position one of V tokens is correct; the reward is 1
   iff every token is correct (sparse, terminal). The policy is a tabular softmax over
   (prompt, position) — here only optimisation matters. Because the policy does not depend
   on earlier tokens, everything is exact in closed form: p_k = Π_t π(c_t | k, t), and the
   policy entropy per position. We run actual small PPO updates — sampled answers,
   `vapo.algos.policy_loss_clip` (token-mean), group advantages (`vapo.algos.dr_grpo_advantages`)
   or a single-sample baseline, optional `positive_nll_loss` — and compare, at an equal
   budget of sampled answers per step:
     * ε_high = 0.2 vs 0.28 (clip-higher, DAPO §3.1 / VAPO §4),
     * with vs without the positive-example NLL term (μ = 0.1, VAPO §5),
     * group sampling (G answers to each of fewer prompts) vs single samples (one answer to
       each of G× more prompts, baselined by the batch mean — the critic-free option — and
       by the exact value V^π(prompt) = p_k — a perfect critic).
   Fixed seeds; mean ± standard error over seeds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vapo.algos import (
    dr_grpo_advantages,
    grpo_advantages,
    policy_loss_clip,
    policy_loss_clip_cov,
    policy_loss_kl_cov,
    positive_nll_loss,
)
from vapo.algos.advantages import grpo_passk_advantages, passk_advantages
from vapo.algos.exploration import batch_repeat_penalty, historical_bonus
from vapo.theory.framework import Experiment, Verdict, new_figure, register_experiment, save_figure
from vapo.theory.mdp import ChainMDP, make_chain

Z_FORMULA = 4.5
Z_COMPARE = 2.0


# ---------------------------------------------------------------------------------------
# Part A: zero-signal groups
# ---------------------------------------------------------------------------------------


def zero_signal_fraction(p: float | np.ndarray, group_size: int) -> float | np.ndarray:
    """P(all G Bernoulli(p) rewards equal) = p^G + (1 − p)^G (1 for G = 1)."""
    p = np.asarray(p, dtype=np.float64)
    return p**group_size + (1.0 - p) ** group_size


def simulate_zero_signal(p: float, group_size: int, n_groups: int, rng: np.random.Generator) -> float:
    """Fraction of `n_groups` simulated groups of G Bernoulli(p) rewards that are all equal."""
    wins = rng.binomial(group_size, p, size=n_groups)
    return float(np.mean((wins == 0) | (wins == group_size)))


def check_zero_signal(ps, group_sizes, n_groups: int, seed: int) -> dict:
    """Formula vs simulation on a (p, G) grid; returns the table and the worst |z|."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in ps:
        for g in group_sizes:
            f = float(zero_signal_fraction(p, g))
            sim = simulate_zero_signal(p, g, n_groups, rng)
            se = math.sqrt(max(f * (1 - f), 1e-12) / n_groups)
            rows.append({"p": p, "G": g, "formula": f, "simulated": sim, "z": (sim - f) / se})
    return {"rows": rows, "max_abs_z": max(abs(r["z"]) for r in rows), "n_groups": n_groups}


# ---------------------------------------------------------------------------------------
# Part B: the chain token-MDP with a tabular softmax policy
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    name: str
    eps_high: float
    nll_coef: float
    group_size: int
    baseline: str  # "group" (Dr. GRPO: R − group mean), "batch" (R − batch mean), "exact" (R − p_k)


def _sample(logits: torch.Tensor, mdp: ChainMDP, prompts: torch.Tensor, g: torch.Generator):
    """Sample one answer per entry of `prompts` ([B] prompt ids). Returns tokens [B, L],
    mask [B, L] (float64), success [B] bool."""
    probs = torch.softmax(logits[prompts], dim=-1)  # [B, L, V]
    b, L, v = probs.shape
    tokens = torch.multinomial(probs.reshape(-1, v), 1, generator=g).reshape(b, L)
    mask = mdp.mask[prompts]
    success = ((tokens != 0).to(torch.float64) * mask).sum(dim=1) == 0
    return tokens, mask, success


def _token_logprobs(logits: torch.Tensor, prompts: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor):
    logp = torch.log_softmax(logits[prompts], dim=-1)
    return logp.gather(-1, tokens[..., None]).squeeze(-1) * mask


def train_ppo(mdp: ChainMDP, cond: Condition, *, steps: int, budget: int, lr: float,
              inner_epochs: int, seed: int) -> dict:
    """PPO on the chain MDP with `budget` sampled answers per step; returns the exact success
    (mean over prompts) and entropy curves."""
    g = torch.Generator().manual_seed(seed)
    theta = mdp.init_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    k = mdp.lengths.shape[0]
    n_prompts = budget // cond.group_size
    succ_curve, ent_curve = [], []
    for _ in range(steps):
        with torch.no_grad():
            prompts = torch.randint(0, k, (n_prompts,), generator=g).repeat_interleave(cond.group_size)
            tokens, mask, success = _sample(theta, mdp, prompts, g)
            old_lp = _token_logprobs(theta, prompts, tokens, mask)
            r = success.to(torch.float64)
            if cond.baseline == "group":
                adv = dr_grpo_advantages(r, prompts, mask)
            elif cond.baseline == "batch":
                adv = (r - r.mean())[:, None] * mask
            else:
                adv = (r - mdp.success(theta)[prompts])[:, None] * mask
        for _ in range(inner_epochs):
            lp = _token_logprobs(theta, prompts, tokens, mask)
            loss, _ = policy_loss_clip(lp, old_lp, adv, mask, eps_low=0.2, eps_high=cond.eps_high,
                                       agg_mode="token-mean")
            if cond.nll_coef > 0:
                loss = loss + cond.nll_coef * positive_nll_loss(lp, mask, success)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            succ_curve.append(float(mdp.success(theta).mean()))
            ent_curve.append(mdp.entropy(theta))
    return {"success": succ_curve, "entropy": ent_curve}


CONDITIONS = (
    Condition("eps0.20", 0.20, 0.0, 8, "group"),
    Condition("eps0.28", 0.28, 0.0, 8, "group"),
    Condition("eps0.28+nll", 0.28, 0.1, 8, "group"),
    Condition("single-batch", 0.28, 0.0, 1, "batch"),
    Condition("single-exactV", 0.28, 0.0, 1, "exact"),
)


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Difference a − b (per-seed paired) with its standard error and the 3-way call."""
    d = a - b
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("inf")
    mean = float(d.mean())
    if mean > Z_COMPARE * se:
        call = "supported"
    elif mean < -Z_COMPARE * se:
        call = "refuted"
    else:
        call = "inconclusive"
    return {"diff": mean, "se": se, "call": call}


def rule(formula_max_abs_z: float, calls: list[str]) -> str:
    """The decision rule as code: part-A worst |z| and the 3 part-B calls."""
    if formula_max_abs_z > Z_FORMULA or sum(c == "refuted" for c in calls) * 2 > len(calls):
        return "refuted"
    if sum(c == "supported" for c in calls) >= 2:
        return "supported"
    return "inconclusive"


def summarize(res: dict) -> dict:
    """Headline numbers (mean ± stderr over seeds) per condition."""
    out = {}
    for name, r in res["runs"].items():
        s, e = np.array(r["final_success"]), np.array(r["final_entropy"])
        n = len(s)
        out[name] = {
            "success": float(s.mean()), "success_se": float(s.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
            "entropy": float(e.mean()), "entropy_se": float(e.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        }
    return out


@register_experiment("exploration")
class Exploration(Experiment):
    claim = "Clip-higher, the positive-example NLL and group sampling help exploration under sparse reward (theory_part2.md claim 5)."
    hypothesis = (
        "(A) the fraction of zero-signal groups is p^G + (1-p)^G; (B) under sparse reward, "
        "clip-higher (eps_high 0.28 vs 0.2) slows entropy collapse and does not lower final "
        "success; the positive-example NLL term raises final success; group sampling beats "
        "single samples at an equal sample budget."
    )
    decision_rule = (
        "Part A holds if every (p, G) cell's simulated zero-signal fraction is within 4.5 binomial "
        "standard errors of the formula. Each part-B comparison is 'supported' if the difference "
        "(in the claimed direction) exceeds 2 standard errors of the difference over seeds, "
        "'refuted' if it exceeds 2 SE in the opposite direction, else 'inconclusive'. "
        "Verdict: refuted if part A fails or a majority of the 3 part-B comparisons is refuted; "
        "supported if part A holds and at least 2 of the 3 part-B comparisons are supported; "
        "otherwise inconclusive."
    )

    def sizes(self, quick: bool) -> dict:
        if quick:
            return dict(ps=[0.05, 0.5], group_sizes=[1, 4], n_groups=4000, n_prompts=16, max_len=6,
                        vocab=4, steps=15, budget=32, seeds=[0, 1, 2], inner_epochs=4, lr=0.3)
        return dict(ps=[0.01, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99], group_sizes=[1, 2, 4, 8, 16],
                    n_groups=50_000, n_prompts=64, max_len=12, vocab=4, steps=120, budget=64,
                    seeds=list(range(8)), inner_epochs=4, lr=0.3)

    def compute(self, sz: dict, seed: int) -> dict:
        """Run both parts; return a JSON-able dict of evidence (no verdict)."""
        part_a = check_zero_signal(sz["ps"], sz["group_sizes"], sz["n_groups"], seed)
        mdp = make_chain(sz["n_prompts"], sz["max_len"], sz["vocab"], (0.01, 0.5), seed)
        runs: dict[str, dict] = {}
        for cond in CONDITIONS:
            per_seed = [
                train_ppo(mdp, cond, steps=sz["steps"], budget=sz["budget"], lr=sz["lr"],
                          inner_epochs=sz["inner_epochs"], seed=1000 * seed + s)
                for s in sz["seeds"]
            ]
            succ = np.array([r["success"] for r in per_seed])  # [S, steps]
            ent = np.array([r["entropy"] for r in per_seed])
            runs[cond.name] = {
                "condition": asdict(cond),
                "final_success": succ[:, -1].tolist(),
                "final_entropy": ent[:, -1].tolist(),
                "success_mean_curve": succ.mean(0).tolist(),
                "entropy_mean_curve": ent.mean(0).tolist(),
            }
        fs = {k: np.array(v["final_success"]) for k, v in runs.items()}
        fe = {k: np.array(v["final_entropy"]) for k, v in runs.items()}
        comparisons = {
            "clip_higher_entropy": _compare(fe["eps0.28"], fe["eps0.20"]),
            "clip_higher_success": _compare(fs["eps0.28"], fs["eps0.20"]),
            "nll_success": _compare(fs["eps0.28+nll"], fs["eps0.28"]),
            "nll_entropy": _compare(fe["eps0.28+nll"], fe["eps0.28"]),
            "group_vs_single_batch": _compare(fs["eps0.28"], fs["single-batch"]),
            "group_vs_single_exactV": _compare(fs["eps0.28"], fs["single-exactV"]),
        }
        # Clip-higher counts as supported only if entropy is higher AND success is not lower.
        ch = comparisons["clip_higher_entropy"]["call"]
        if ch == "supported" and comparisons["clip_higher_success"]["call"] == "refuted":
            ch = "refuted"
        calls = {"clip_higher": ch, "nll": comparisons["nll_success"]["call"],
                 "group_sampling": comparisons["group_vs_single_batch"]["call"]}
        return {
            "sizes": sz,
            "seed": seed,
            "initial_success": float(mdp.success(mdp.init_logits).mean()),
            "initial_entropy": mdp.entropy(mdp.init_logits),
            "zero_signal": part_a,
            "runs": runs,
            "comparisons": comparisons,
            "calls": calls,
        }

    def decide(self, results: dict) -> Verdict:
        z = results["zero_signal"]["max_abs_z"]
        status = rule(z, list(results["calls"].values()))
        summ = summarize(results)
        line = (f"exploration: {status} — zero-signal formula max|z|={z:.2f}; "
                f"calls {results['calls']}; final success eps0.20 {summ['eps0.20']['success']:.3f} vs "
                f"eps0.28 {summ['eps0.28']['success']:.3f} vs +nll {summ['eps0.28+nll']['success']:.3f} vs "
                f"single {summ['single-batch']['success']:.3f}")
        return Verdict(status, line, {"zero_signal_max_abs_z": z, "calls": results["calls"],
                                      "summary": summ})

    def plot(self, results: dict, out_dir: Path) -> list[Path]:
        """Zero-signal formula vs simulation, and success/entropy curves per condition."""
        fig, ax = new_figure(3, 1, size=(4.7, 4.0))
        ax = ax[0]
        rows = results["zero_signal"]["rows"]
        for g in sorted({r["G"] for r in rows}):
            sel = [r for r in rows if r["G"] == g]
            ax[0].plot([r["p"] for r in sel], [r["formula"] for r in sel], "-", label=f"G={g}")
            ax[0].plot([r["p"] for r in sel], [r["simulated"] for r in sel], "k.", ms=4)
        ax[0].set(xlabel="success probability p", ylabel="zero-signal fraction",
                  title="p^G + (1-p)^G (lines) vs simulation (dots)")
        ax[0].legend(fontsize=7)
        for name, r in results["runs"].items():
            ax[1].plot(r["success_mean_curve"], label=name)
            ax[2].plot(r["entropy_mean_curve"], label=name)
        ax[1].set(xlabel="PPO step", ylabel="exact success (mean over prompts)", title="success")
        ax[2].set(xlabel="PPO step", ylabel="mean policy entropy (nats)", title="entropy")
        ax[1].legend(fontsize=7)
        return [save_figure(fig, Path(out_dir) / "exploration.png")]


# ---------------------------------------------------------------------------------------
# The exploration mechanisms of docs/exploration.md on the same chain MDP
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mechanism:
    """One training condition: a base (``group``: GRPO z-score advantages; ``exactV``: token TD
    advantages V(s_{t+1}) − V(s_t) of the exact value, a perfect critic) and a mechanism."""

    name: str
    base: str  # "group" | "exactV"
    mechanism: str  # "none" | "clip_cov" | "kl_cov" | "grpo_passk" | "passk" | "history" | "batch"


MECHANISMS = (
    Mechanism("group", "group", "none"),
    Mechanism("group+clip_cov", "group", "clip_cov"),
    Mechanism("group+kl_cov", "group", "kl_cov"),
    Mechanism("group+grpo_passk", "group", "grpo_passk"),
    Mechanism("group+passk", "group", "passk"),
    Mechanism("group+history", "group", "history"),
    Mechanism("group+batch", "group", "batch"),
    Mechanism("exactV", "exactV", "none"),
    Mechanism("exactV+clip_cov", "exactV", "clip_cov"),
    Mechanism("exactV+kl_cov", "exactV", "kl_cov"),
)
PASS_K = 8  # the pass@k the mechanisms are judged on (with pass@1)
MIN_EFFECT = 0.01  # a difference smaller than this counts as no effect, however small its SE (a ceiling)


def chain_answers(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The chain MDP's "final answer": the position of the first wrong token within the mask, or
    the padded length L when there is none (so every correct answer is one outcome). [B] int64."""
    wrong = (tokens != 0) & mask.bool()
    L = tokens.shape[1]
    pos = torch.where(wrong, torch.arange(L)[None, :], L)
    return pos.min(dim=1).values


def exact_pass_at_k(mdp: ChainMDP, logits: torch.Tensor, k: int) -> float:
    """Mean over prompts of 1 − (1 − p_k)^k (exact)."""
    p = mdp.success(logits)
    return float((1.0 - (1.0 - p) ** k).mean())


def train_mechanism(mdp: ChainMDP, mech: Mechanism, *, steps: int, budget: int, group_size: int, lr: float,
                    inner_epochs: int, cov_ratio: float, bonus: float, pass_k: int, seed: int) -> dict:
    """PPO (ε 0.2 / 0.28, token-mean) on the chain MDP under ``mech``; exact pass@1, pass@8 and
    entropy after every step."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # clip_cov draws from the global generator, as in training
    theta = mdp.init_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    n_prompts = budget // group_size
    history: dict[tuple[int, int], int] = {}
    curves: dict[str, list[float]] = {"pass1": [], f"pass{PASS_K}": [], "entropy": []}
    for _ in range(steps):
        with torch.no_grad():
            prompts = torch.randint(0, mdp.lengths.shape[0], (n_prompts,), generator=g).repeat_interleave(group_size)
            tokens, mask, success = _sample(theta, mdp, prompts, g)
            old_lp = _token_logprobs(theta, prompts, tokens, mask)
            r = success.to(torch.float64)
            answers = chain_answers(tokens, mask)
            if mech.mechanism == "history":
                for key in zip(prompts.tolist(), answers.tolist(), strict=True):
                    history[key] = history.get(key, 0) + 1
                counts = torch.tensor([history[key] for key in zip(prompts.tolist(), answers.tolist(), strict=True)])
                r = r + historical_bonus(counts, bonus)
            elif mech.mechanism == "batch":
                r = r + batch_repeat_penalty(answers, prompts, bonus)
            if mech.base == "exactV":
                v = mdp.values(theta)[prompts]  # [B, L+1] on the correct path
                ok_before = torch.cumprod(torch.cat([torch.ones(len(prompts), 1, dtype=torch.bool),
                                                     (tokens == 0)[:, :-1]], dim=1), dim=1).bool()
                L = tokens.shape[1]
                v_t = v[:, :L] * ok_before
                v_next = torch.where(tokens == 0, v[:, 1 : L + 1], torch.zeros_like(v_t)) * ok_before
                last = (torch.arange(L)[None, :] == (mdp.lengths[prompts] - 1)[:, None]) & ok_before
                v_next = torch.where(last, r[:, None].expand(-1, L), v_next)  # terminal: the reward
                adv = (v_next - v_t) * mask
            elif mech.mechanism == "grpo_passk":
                adv = grpo_passk_advantages(r, prompts, mask)
            elif mech.mechanism == "passk":
                adv = passk_advantages(r, prompts, mask, pass_k)
            else:
                adv = grpo_advantages(r, prompts, mask)
        for _ in range(inner_epochs):
            lp = _token_logprobs(theta, prompts, tokens, mask)
            if mech.mechanism == "clip_cov":
                loss, _ = policy_loss_clip_cov(lp, old_lp, adv, mask, eps_low=0.2, eps_high=0.28,
                                               clip_cov_ratio=cov_ratio, clip_cov_lb=1.0, clip_cov_ub=5.0)
            elif mech.mechanism == "kl_cov":
                loss, _ = policy_loss_kl_cov(lp, old_lp, adv, mask, kl_cov_ratio=cov_ratio, kl_cov_coef=1.0)
            else:
                loss, _ = policy_loss_clip(lp, old_lp, adv, mask, eps_low=0.2, eps_high=0.28)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            curves["pass1"].append(exact_pass_at_k(mdp, theta, 1))
            curves[f"pass{PASS_K}"].append(exact_pass_at_k(mdp, theta, PASS_K))
            curves["entropy"].append(mdp.entropy(theta))
    return curves


def _moved(d: dict) -> str:
    """The paired comparison's call ('supported' / 'refuted' / 'inconclusive'), with differences
    below MIN_EFFECT counted as inconclusive."""
    return d["call"] if abs(d["diff"]) >= MIN_EFFECT else "inconclusive"


def mechanism_call(d_pass1: dict, d_passk: dict) -> str:
    """'helps': pass@8 up by > 2 SE (and by >= MIN_EFFECT) and pass@1 not down so; 'hurts': pass@8
    or pass@1 down by > 2 SE and >= MIN_EFFECT; otherwise 'no effect'."""
    if _moved(d_passk) == "refuted" or _moved(d_pass1) == "refuted":
        return "hurts"
    if _moved(d_passk) == "supported":
        return "helps"
    return "no effect"


def mechanisms_rule(calls: dict[str, str]) -> str:
    """Supported if at least half of the mechanisms help; refuted if more than half hurt."""
    n = len(calls)
    if sum(c == "hurts" for c in calls.values()) * 2 > n:
        return "refuted"
    if sum(c == "helps" for c in calls.values()) * 2 >= n:
        return "supported"
    return "inconclusive"


@register_experiment("exploration_mechanisms")
class ExplorationMechanisms(Experiment):
    claim = ("Covariance-based entropy control (Clip-Cov, KL-Cov), pass@k-aware advantages and outcome-based "
             "exploration bonuses raise pass@8 without lowering pass@1 (docs/exploration.md).")
    hypothesis = (
        "On the chain MDP with sparse terminal reward and G = 8 answers per prompt, each mechanism, compared "
        "with the same base without it (GRPO z-score advantages; or exact-value TD advantages, a perfect critic, "
        "for the two losses), ends with a higher exact pass@8 and an exact pass@1 that is not lower."
    )
    decision_rule = (
        "Per mechanism, paired differences over seeds of the final exact pass@1 and pass@8 against its base "
        "(a difference counts only if it exceeds 2 SE and 0.01): 'helps' if pass@8 is higher and pass@1 not "
        "lower; 'hurts' if either is lower; else 'no effect'. Verdict: refuted if more than half of the mechanisms "
        "hurt, supported if at least half help, otherwise inconclusive."
    )

    def sizes(self, quick: bool) -> dict:
        if quick:
            return dict(n_prompts=16, max_len=6, vocab=4, steps=12, budget=32, group_size=8, seeds=[0, 1, 2],
                        inner_epochs=2, lr=0.3, cov_ratio=0.02, bonus=0.1, pass_k=4)
        return dict(n_prompts=64, max_len=12, vocab=4, steps=120, budget=64, group_size=8, seeds=list(range(8)),
                    inner_epochs=4, lr=0.3, cov_ratio=0.02, bonus=0.1, pass_k=4)

    def compute(self, sz: dict, seed: int) -> dict:
        mdp = make_chain(sz["n_prompts"], sz["max_len"], sz["vocab"], (0.01, 0.5), seed)
        runs: dict[str, dict] = {}
        for mech in MECHANISMS:
            per_seed = [train_mechanism(mdp, mech, steps=sz["steps"], budget=sz["budget"], group_size=sz["group_size"],
                                        lr=sz["lr"], inner_epochs=sz["inner_epochs"], cov_ratio=sz["cov_ratio"],
                                        bonus=sz["bonus"], pass_k=sz["pass_k"], seed=1000 * seed + s)
                        for s in sz["seeds"]]
            runs[mech.name] = {"mechanism": asdict(mech)}
            for key in ("pass1", f"pass{PASS_K}", "entropy"):
                arr = np.array([r[key] for r in per_seed])
                runs[mech.name][f"final_{key}"] = arr[:, -1].tolist()
                runs[mech.name][f"{key}_mean_curve"] = arr.mean(0).tolist()
        comparisons = {}
        for mech in MECHANISMS:
            if mech.mechanism == "none":
                continue
            a, b = runs[mech.name], runs[mech.base]
            comparisons[mech.name] = {key: _compare(np.array(a[f"final_{key}"]), np.array(b[f"final_{key}"]))
                                      for key in ("pass1", f"pass{PASS_K}", "entropy")}
        return {"sizes": sz, "seed": seed, "pass_k_judged": PASS_K,
                "initial_pass1": exact_pass_at_k(mdp, mdp.init_logits, 1),
                f"initial_pass{PASS_K}": exact_pass_at_k(mdp, mdp.init_logits, PASS_K),
                "initial_entropy": mdp.entropy(mdp.init_logits), "runs": runs, "comparisons": comparisons}

    def decide(self, results: dict) -> Verdict:
        k = results["pass_k_judged"]
        comp = results["comparisons"]
        calls = {name: mechanism_call(d["pass1"], d[f"pass{k}"]) for name, d in comp.items()}
        status = mechanisms_rule(calls)
        parts = [f"{name} {c} (Δpass@1 {comp[name]['pass1']['diff']:+.3f}, Δpass@{k} {comp[name][f'pass{k}']['diff']:+.3f})"
                 for name, c in calls.items()]
        return Verdict(status, "exploration_mechanisms: " + status + " — " + "; ".join(parts), {"calls": calls})

    def plot(self, results: dict, out_dir: Path) -> list[Path]:
        """pass@1, pass@8 and entropy curves per condition."""
        k = results["pass_k_judged"]
        fig, ax = new_figure(3, 1, size=(4.7, 4.0))
        ax = ax[0]
        for name, r in results["runs"].items():
            style = "-" if r["mechanism"]["base"] == "group" else "--"
            ax[0].plot(r["pass1_mean_curve"], style, label=name)
            ax[1].plot(r[f"pass{k}_mean_curve"], style, label=name)
            ax[2].plot(r["entropy_mean_curve"], style, label=name)
        ax[0].set(xlabel="PPO step", ylabel="exact pass@1", title="pass@1")
        ax[1].set(xlabel="PPO step", ylabel=f"exact pass@{k}", title=f"pass@{k}")
        ax[2].set(xlabel="PPO step", ylabel="mean policy entropy (nats)", title="entropy")
        ax[0].legend(fontsize=6)
        return [save_figure(fig, Path(out_dir) / "exploration_mechanisms.png")]
