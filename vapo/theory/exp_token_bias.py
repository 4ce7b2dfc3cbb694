"""Claim 3 — token-level optimisation bias of the loss aggregation modes.

Testbed: a free-length token MDP (prompts with heterogeneous required lengths, the policy
chooses when to END, mistakes fatal), tabular softmax policy. With outcome advantages
Â = R − b_k (b_k = V^π(prompt), the infinite-group baseline) every token of an answer of
length L gets loss weight w(L) from `vapo.algos.token_weights`, so the expected update is

    g_w = E[ w(L) (R − b_k) Σ_t ∇ log π(a_t | s_t) ] = Σ_{s,a} d(s) π(a|s) u_w(s, a) ∇ log π(a|s),
    u_w(s, a) = E[w(L)(R − b_k) | s, a]        (exact, `mdp.backward_values`).

* seq-mean-token-sum-norm: w = 1/T_max (constant) ⇒ g ∝ ∇J (unbiased for the per-sequence J);
* seq-mean-token-mean: w = 1/L ⇒ g = ∇E[(R − b)/L] with b fixed: a length-weighted objective;
* token-mean with B sequences: w = 1/Σ_j L_j depends on the batch; per sequence
  w_B(L) = B·E_S[1/(L + S)], S = sum of the B−1 other lengths (exact, by convolving the exact
  length distribution); B → ∞ gives 1/E[L] ⇒ unbiased; B = 1 equals seq-mean-token-mean.

We report the cosine of each g to the exact ∇J, the share of gradient weight per length bucket
(correct vs wrong answers), and the drift of the length distributions of correct and wrong
answers over exact normalised-gradient training steps in each mode.
"""

from __future__ import annotations

import numpy as np
import torch

from vapo.algos import token_weights
from vapo.theory.framework import Experiment, Verdict, new_figure, register_experiment, save_figure
from vapo.theory.gae_exact import cosine
from vapo.theory.mdp import END, backward_values, init_logits, make_mdp, solve


def per_length_weights(L: int, mode: str) -> np.ndarray:
    """w(n) for n = 0..L of a single-sequence batch under `mode` (vapo.algos.token_weights on a
    triangle of masks, one row per length n, each its own batch of one: num_seqs=1)."""
    mask = (torch.arange(L)[None, :] < torch.arange(1, L + 1)[:, None]).to(torch.float64)
    w = token_weights(mask, mode, norm_len=L, num_seqs=1)[:, 0].numpy()
    return np.concatenate([[0.0], w])


def token_mean_weights(length_pmf: np.ndarray, batch: int | None) -> np.ndarray:
    """w_B(n) = B·E_S[1/(n + S)], S ~ sum of B−1 iid lengths from `length_pmf` [L+1];
    batch None: the B → ∞ limit 1/E[L]. token-mean = 1/(total tokens), DAPO §3.3."""
    L = length_pmf.size - 1
    n = np.arange(L + 1, dtype=np.float64)
    if batch is None:
        return np.full(L + 1, 1.0 / float((length_pmf * n).sum()))
    dist = np.array([1.0])
    for _ in range(batch - 1):
        dist = np.convolve(dist, length_pmf)
    s = np.arange(dist.size, dtype=np.float64)
    w = np.array([batch * (dist / np.maximum(k + s, 1.0)).sum() for k in n])
    return w


def expected_update(mdp, sol, w: np.ndarray) -> np.ndarray:
    """g_w in logit space [K, L, M1, 3] for per-length weights w [L+1] (module docstring)."""
    L = mdp.max_len
    b = sol.J_k[:, None, None]
    end_value = w[1:][None, :, None] * (mdp.end_reward - b)  # END at t: length t+1
    trunc = w[L] * (0.0 - sol.J_k[:, None]) * np.ones((1, mdp.n_m))
    _, u = backward_values(mdp, sol.pi, end_value, trunc)
    centred = u - (sol.pi * u).sum(-1, keepdims=True)
    return sol.d[:, :-1, :, None] * sol.pi * centred


def weight_shares(sol, w: np.ndarray, edges: list[int]) -> dict:
    """Share of total gradient weight Σ P(L)·L·w(L) per length bucket, for correct/wrong answers."""
    n = np.arange(w.size)
    pc, pw = sol.length_pmf_correct.sum(0), sol.length_pmf_wrong.sum(0)
    tot = ((pc + pw) * n * w).sum()
    out = {"correct": [], "wrong": []}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (n >= lo) & (n < hi)
        out["correct"].append(float((pc * n * w)[sel].sum() / tot))
        out["wrong"].append(float((pw * n * w)[sel].sum() / tot))
    return out


@register_experiment("token_bias")
class TokenBias(Experiment):
    claim = "Token-level loss aggregation biases the policy update by answer length (theory.md claim 3)."
    hypothesis = (
        "seq-mean-token-sum-norm's expected update is parallel to the exact grad J; seq-mean-token-mean's "
        "is not (1/L weighting) and drifts wrong answers longer than the unbiased mode does; token-mean "
        "is unbiased only for large batches and biased at small batch sizes.")
    decision_rule = (
        "sanity: cos(sum-norm, grad J) > 0.9999 (else inconclusive). stm_biased: cos(seq-mean-token-mean) "
        "< 0.99 AND over the training steps the mean wrong-answer length grows more under "
        "seq-mean-token-mean than under sum-norm by > 5% of its initial value. small_batch: cos(token-mean, "
        "B=1) < cos(token-mean, B=inf) - 0.001 AND cos(B=inf) > 0.9999. supported if sanity and both, "
        "refuted if sanity and neither, inconclusive otherwise.")

    def sizes(self, quick: bool) -> dict:
        if quick:
            return dict(required=[4, 8, 12], max_len=24, batches=[1, 2, 4, 16], steps=8, step_size=2.0,
                        mistake=0.02)
        return dict(required=[16, 32, 64, 128, 192, 256], max_len=512, batches=[1, 2, 4, 8, 16, 64], steps=40,
                    step_size=2.0, mistake=0.01)

    def _modes(self, sol, sizes, batches) -> dict[str, np.ndarray]:
        L = sizes["max_len"]
        pmf = sol.length_pmf.sum(0)
        modes = {"seq-mean-token-sum-norm": per_length_weights(L, "seq-mean-token-sum-norm"),
                 "seq-mean-token-mean": per_length_weights(L, "seq-mean-token-mean")}
        for b in batches:
            modes[f"token-mean B={b}"] = token_mean_weights(pmf, b)
        modes["token-mean B=inf"] = token_mean_weights(pmf, None)
        return modes

    def compute(self, sizes: dict, seed: int) -> dict:
        req = np.asarray(sizes["required"])
        mdp = make_mdp(req, max_len=sizes["max_len"])
        z0 = init_logits(mdp, sizes["mistake"], 1.0 / req)
        sol = solve(mdp, z0)
        modes = self._modes(sol, sizes, sizes["batches"])
        L = sizes["max_len"]
        edges = [1, L // 8, L // 4, L // 2, L + 1]
        cos, shares = {}, {}
        for name, w in modes.items():
            cos[name] = cosine(expected_update(mdp, sol, w), sol.grad_logits)
            shares[name] = weight_shares(sol, w, edges)
        drift = {}
        for name in ("seq-mean-token-sum-norm", "seq-mean-token-mean", "token-mean B=4", "token-mean B=inf"):
            z = z0.copy()
            curve = {"J": [], "mean_len_correct": [], "mean_len_wrong": []}
            for _ in range(sizes["steps"] + 1):
                s = solve(mdp, z)
                curve["J"].append(s.J)
                curve["mean_len_correct"].append(s.mean_length(True))
                curve["mean_len_wrong"].append(s.mean_length(False))
                w = self._modes(s, sizes, [4])[name] if name.startswith("token-mean") else modes[name]
                g = expected_update(mdp, s, w)
                z = z + sizes["step_size"] * g / max(np.linalg.norm(g), 1e-300)  # normalised ascent step
            drift[name] = curve
        return {"required": req, "initial_success": sol.J, "mean_len_correct_0": sol.mean_length(True),
                "mean_len_wrong_0": sol.mean_length(False), "cos_to_grad_J": cos, "length_edges": edges,
                "weight_share": shares, "drift": drift, "batches": sizes["batches"],
                "END_index": END}

    def decide(self, results: dict) -> Verdict:
        c = results["cos_to_grad_J"]
        d = results["drift"]
        sanity = c["seq-mean-token-sum-norm"] > 0.9999
        grow = {k: d[k]["mean_len_wrong"][-1] - d[k]["mean_len_wrong"][0] for k in d}
        w0 = results["mean_len_wrong_0"]
        stm_biased = c["seq-mean-token-mean"] < 0.99 and grow["seq-mean-token-mean"] - grow["seq-mean-token-sum-norm"] > 0.05 * w0
        b1 = c["token-mean B=1"]
        small_batch = b1 < c["token-mean B=inf"] - 0.001 and c["token-mean B=inf"] > 0.9999
        if not sanity:
            status = "inconclusive"
        else:
            status = "supported" if stm_biased and small_batch else "refuted" if not (stm_biased or small_batch) else "inconclusive"
        numbers = {"cos": c, "wrong_len_growth": grow, "wrong_len_0": w0, "sanity": sanity,
                   "stm_biased": stm_biased, "small_batch_biased": small_batch}
        cb = ", ".join(f"B={b} {c[f'token-mean B={b}']:.4f}" for b in results["batches"])
        line = (f"token_bias: {status} — cos to ∇J: sum-norm {c['seq-mean-token-sum-norm']:.4f}, seq-mean-token-mean "
                f"{c['seq-mean-token-mean']:.4f}, token-mean {cb}, B=∞ {c['token-mean B=inf']:.4f}; wrong-answer mean "
                f"length {w0:.1f} grows by {grow['seq-mean-token-mean']:+.1f} (seq-mean-token-mean) vs "
                f"{grow['seq-mean-token-sum-norm']:+.1f} (sum-norm), {grow['token-mean B=4']:+.1f} (token-mean B=4)")
        return Verdict(status, line, numbers)

    def plot(self, results: dict, out_dir):
        fig, ax = new_figure(3, 1)
        c = results["cos_to_grad_J"]
        bs = results["batches"]
        ax[0, 0].plot(bs, [c[f"token-mean B={b}"] for b in bs], "o-", label="token-mean (batch B)")
        ax[0, 0].axhline(c["token-mean B=inf"], color="C0", ls=":", label="token-mean B=∞")
        ax[0, 0].axhline(c["seq-mean-token-mean"], color="C1", label="seq-mean-token-mean")
        ax[0, 0].axhline(c["seq-mean-token-sum-norm"], color="C2", ls="--", label="seq-mean-token-sum-norm")
        ax[0, 0].set(xscale="log", xlabel="batch size B", ylabel="cos(expected update, ∇J)", title="angle to ∇J")
        ax[0, 0].legend(fontsize=7)
        e = results["length_edges"]
        names = ["seq-mean-token-sum-norm", "seq-mean-token-mean", "token-mean B=1", "token-mean B=inf"]
        x = np.arange(len(e) - 1)
        for j, n in enumerate(names):
            s = results["weight_share"][n]
            ax[0, 1].bar(x + 0.2 * j, s["correct"], 0.2, color=f"C{j}", label=f"{n} correct")
            ax[0, 1].bar(x + 0.2 * j, s["wrong"], 0.2, bottom=s["correct"], color=f"C{j}", alpha=0.4)
        ax[0, 1].set_xticks(x + 0.3)
        ax[0, 1].set_xticklabels([f"[{a},{b})" for a, b in zip(e[:-1], e[1:], strict=True)], fontsize=7)
        ax[0, 1].set(ylabel="share of gradient weight (dark: correct)", title="weight per length bucket")
        ax[0, 1].legend(fontsize=6)
        for j, (n, d) in enumerate(results["drift"].items()):
            ax[0, 2].plot(d["mean_len_correct"], color=f"C{j}", label=f"{n} correct")
            ax[0, 2].plot(d["mean_len_wrong"], color=f"C{j}", ls="--", label=f"{n} wrong")
        ax[0, 2].set(xlabel="exact training step", ylabel="mean length", title="length drift")
        ax[0, 2].legend(fontsize=6)
        return [save_figure(fig, out_dir / "token_bias.png")]
