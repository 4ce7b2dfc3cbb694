"""The Monte-Carlo value probe: ground truth for the critic (value pretraining's stop rule, the
RL-time ``critic/*`` metrics and the critic section of ``vapo diagnose`` all use it).

With outcome reward only and γ = 1 (the setting of VAPO §2), the value of a prefix state
s_t = (prompt, y_<t) under the policy π is the expected final reward of finishing the response:

    V^π(s_t) = E_{y_≥t ~ π(· | s_t)} [ R(prompt, y) ]                              (VAPO §2)

and the transitions are deterministic (s_{t+1} = s_t + y_t), so the advantage of the token the
response actually took is

    A^π(s_t, y_t) = Q^π(s_t, y_t) − V^π(s_t) = V^π(s_{t+1}) − V^π(s_t),

with V^π(s_T) = R(prompt, y) once the response has ended. :func:`mc_values` estimates V^π(s_t)
by sampling M continuations from s_t with the run's sampling settings and L_max budget (the
continuation may use at most L_max − t tokens), scoring each full response with the task's
verifier (plus the overlong penalty when the run used it) and averaging, through the same
rollout → score function as training (vapo.train.collect.rollout_and_score with prefixes):

    V̂(s_t) = (1/M) Σ_m R(prompt, y_<t ⊕ c_m),    Var[V̂] = s²/M   (s² the sample variance)

All prefixes × M continuations go through a few large batched calls (KV-cached, finished rows
compacted); prefixes are sorted by remaining budget so each call's ``max_new_tokens`` is tight.

The critic probe (:func:`draw_probe`, :func:`critic_quality`): N held-out prompts, one answer each
sampled from π, K = N·|ρ| prefix states at relative positions ρ of each answer, V̂ of each by M
continuations. With γ = 1 and an outcome reward the λ = 1 return of every state of an answer is
that answer's reward R_i, so on the probe's states

    ev            = EV(v, R)     the critic's explained variance of the sampled returns (as in training)
    achievable_ev = EV(V̂, R)    the same figure for the true value function: the ceiling of ev
    ev_vs_mc      = EV(v, V̂),   rmse_vs_mc = sqrt(mean (v − V̂)² − mean σ̂²),   bias = mean (v − V̂)

where EV(p, y) = 1 − Var(y − p)/Var(y). V̂ carries MC noise σ̂² = s²/M that is independent of R
given the state, so EV(V̂, R) and EV(v, V̂) are corrected for it (the noise variance mean σ̂² is
taken out of Var(R − V̂), resp. of Var(V̂ − v) and Var(V̂)), as is the RMSE. 95% CIs are percentile
bootstraps (scipy.stats.bootstrap) over the probe's answers, each answer's states resampled together.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from vapo.models import response_values
from vapo.tasks import sample_problems
from vapo.train.batch import Experience, forward_rows
from vapo.train.collect import RewardSettings, rollout_and_score

Z95 = float(stats.norm.ppf(0.975))  # two-sided 95% normal quantile


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion (scipy.stats.binomtest); (nan, nan)
    when n = 0. ``successes`` is rounded to the nearest count."""
    if n <= 0:
        return (math.nan, math.nan)
    ci = stats.binomtest(int(round(successes)), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


@dataclass
class MCEstimate:
    """Monte-Carlo value estimates of K prefix states.

    mean [K] float64: V̂(s); var_mean [K] float64: the estimated variance of V̂ (s²/M, 0 for
    exact terminal values); lo, hi [K] float64: 95% CI (Wilson for 0/1 rewards, normal otherwise;
    equal to the value when exact); m [K] int64: continuations used (0 = exact terminal value);
    gen_tokens: tokens the continuations generated (their cost).
    """

    mean: np.ndarray
    var_mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    m: np.ndarray
    gen_tokens: int = 0


@torch.no_grad()
def mc_values(policy: Any, tokenizer: Any, task: Any, batch: Experience, rows: np.ndarray, ts: np.ndarray, *,
              continuations: int, settings: RewardSettings, generator: torch.Generator,
              max_rows: int = 2048, on_progress: Callable[[int], None] | None = None) -> MCEstimate:
    """V̂^π(prompt + response[:t]) for each (rows[k], ts[k]) of ``batch``, from ``continuations`` samples.

    Args:
        policy: the HF causal LM whose value is estimated (π); tokenizer, task: the run's.
        batch: responses of π with ``problems`` (only the first ``t`` tokens of each probed row are used).
        rows [K] int, ts [K] int with 0 ≤ t ≤ lengths[row]. t = lengths[row] is the finished
            response: its value is its reward, exactly (no sampling).
        continuations: M ≥ 1 samples per prefix. settings: the run's sampling/reward settings.
        max_rows: at most this many sequences per ``sample`` call.
        on_progress: called with the number of prefixes finished after each call.
    Returns: :class:`MCEstimate` of K values.
    """
    rows, ts = np.asarray(rows, dtype=np.int64), np.asarray(ts, dtype=np.int64)
    K, M = len(rows), int(continuations)
    lengths = batch.lengths.numpy()
    mean, var_mean = np.zeros(K), np.zeros(K)
    lo, hi, m_used = np.zeros(K), np.zeros(K), np.zeros(K, dtype=np.int64)
    binary = True
    # Finished responses: V(s_T) = R, exact.
    done = ts >= lengths[rows]
    mean[done] = batch.scores.numpy()[rows[done]]
    lo[done], hi[done] = mean[done], mean[done]
    todo = np.nonzero(~done)[0]
    budget = settings.max_new_tokens - ts
    todo = todo[np.argsort(budget[todo], kind="stable")]  # similar budgets share a sample() call
    per_call = max(1, max_rows // M)
    all_scores: dict[int, np.ndarray] = {}
    gen_tokens = 0
    for s in range(0, len(todo), per_call):
        ks = todo[s : s + per_call]
        probed = np.repeat(ks, M)
        probs = [batch.problems[rows[k]] for k in probed]
        prefixes = [batch.response_ids[rows[k], : ts[k]] for k in probed]
        out = rollout_and_score(policy, tokenizer, task, probs, settings, generator=generator, prefixes=prefixes)
        gen_tokens += int(out.lengths.sum()) - sum(len(x) for x in prefixes)
        sc = out.scores.double().numpy().reshape(len(ks), M)
        binary &= bool(np.isin(sc, (0.0, 1.0)).all())
        for i, k in enumerate(ks):
            all_scores[int(k)] = sc[i]
        if on_progress is not None:
            on_progress(len(ks))
    for k, sc in all_scores.items():
        mean[k] = sc.mean()
        var_mean[k] = sc.var(ddof=1) / M if M > 1 else 0.25 / M  # M = 1: the Bernoulli worst case
        m_used[k] = M
    for k in all_scores:
        if binary:
            lo[k], hi[k] = wilson(mean[k] * M, M)
        else:
            half = Z95 * np.sqrt(var_mean[k])
            lo[k], hi[k] = mean[k] - half, mean[k] + half
    return MCEstimate(mean=mean, var_mean=var_mean, lo=lo, hi=hi, m=m_used, gen_tokens=gen_tokens)


def probe_positions(lengths: np.ndarray, rows: np.ndarray, rel_positions: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token positions t = ⌊ρ·(l − 1)⌋ at each relative position ρ of each probed row.

    Returns rows_k [K], ts [K] and rel [K] (K = len(rows)·len(rel_positions)); 0 ≤ t < l, so the
    next state s_{t+1} always exists (it is the finished response when t = l − 1).
    """
    rr, tt, rel = [], [], []
    for r in rows.tolist():
        ln = int(lengths[r])
        for rho in rel_positions:
            rr.append(r)
            tt.append(min(int(np.floor(rho * (ln - 1))), ln - 1))
            rel.append(rho)
    return np.asarray(rr, np.int64), np.asarray(tt, np.int64), np.asarray(rel, np.float64)


def spread_rows(lengths: np.ndarray, n: int) -> np.ndarray:
    """``n`` row indices spread evenly over the rows sorted by length (so every length bucket that
    the batch populates is probed), without repeats when n ≤ B."""
    order = np.argsort(lengths, kind="stable")
    if n >= len(order):
        return order
    pick = np.unique(np.round(np.linspace(0, len(order) - 1, n)).astype(np.int64))
    return order[pick]


# --------------------------------------------------------------------------------------------
# The critic probe
# --------------------------------------------------------------------------------------------
@dataclass
class ProbeSet:
    """Probe states of one policy: ``batch`` (N answers, one per held-out prompt), the probed
    states (rows [K], ts [K], rel [K]), their returns R [K] (the answer's reward) and MC values."""

    batch: Experience
    rows: np.ndarray
    ts: np.ndarray
    rel: np.ndarray
    returns: np.ndarray
    mc: MCEstimate


def draw_probe(policy: Any, tokenizer: Any, task: Any, settings: RewardSettings, *, answers: int,
               positions: tuple[float, ...], continuations: int, seed: int, split: str = "heldout",
               max_rows: int = 2048) -> ProbeSet:
    """Sample one answer to each of ``answers`` problems of ``split`` (fixed by ``seed``) with
    ``policy``, and estimate V̂ at the relative ``positions`` of each answer from ``continuations``
    samples. The prompts depend on ``seed`` only; the draws use their own generator (the run's
    random streams are not consumed)."""
    gen = torch.Generator().manual_seed(seed)
    problems = sample_problems(task, random.Random(f"vapo-probe-{seed}-{split}"), answers, split)
    batch = rollout_and_score(policy, tokenizer, task, problems, settings, generator=gen)
    lengths = batch.lengths.numpy()
    rows, ts, rel = probe_positions(lengths, np.arange(len(lengths)), tuple(positions))
    mc = mc_values(policy, tokenizer, task, batch, rows, ts, continuations=continuations, settings=settings,
                   generator=gen, max_rows=max_rows)
    return ProbeSet(batch=batch, rows=rows, ts=ts, rel=rel, returns=batch.scores.double().numpy()[rows], mc=mc)


@torch.no_grad()
def values_at(critic: Any, batch: Experience, rows: np.ndarray, ts: np.ndarray, *, max_tokens: int) -> np.ndarray:
    """The critic's V(prompt + response[:t]) [K] float64 at each (rows[k], ts[k]) of ``batch``
    (vapo.models.response_values over the trainer's micro-batches: values[:, t] is the state
    before token t; ``max_tokens``: the run's optim.micro_batch_tokens). The critic's mode is
    restored afterwards."""
    was_training = critic.training
    critic.eval()
    device = next(critic.parameters()).device
    values, _ = forward_rows(response_values, critic, batch, device=device, max_tokens=max_tokens)
    critic.train(was_training)
    return values.double().numpy()[np.asarray(rows, np.int64), np.asarray(ts, np.int64)]


def critic_at(critic: Any, probe: ProbeSet, *, max_tokens: int) -> np.ndarray:
    """The critic's V(s_k) [K] float64 at each probed state of ``probe``."""
    return values_at(critic, probe.batch, probe.rows, probe.ts, max_tokens=max_tokens)


def _ev(pred: np.ndarray, y: np.ndarray, noise: float = 0.0, noise_in_y: bool = False) -> float:
    """1 − (Var(y − pred) − noise)/(Var(y) − noise·noise_in_y): explained variance with an
    independent noise of variance ``noise`` in ``pred`` (or in ``y``) taken out. NaN when Var(y) = 0."""
    var_y = float(np.var(y)) - (noise if noise_in_y else 0.0)
    if not var_y > 0:
        return math.nan
    return 1.0 - (float(np.var(y - pred)) - noise) / var_y


def _figures(v: np.ndarray, mc: np.ndarray, mc_var: np.ndarray, ret: np.ndarray) -> dict[str, float]:
    noise = float(np.mean(mc_var))
    e = v - mc
    return {
        "ev": _ev(v, ret),
        "achievable_ev": _ev(mc, ret, noise),
        "ev_vs_mc": _ev(v, mc, noise, noise_in_y=True),
        "rmse_vs_mc": float(np.sqrt(max(float(np.mean(e**2)) - noise, 0.0))),
        "bias_vs_mc": float(np.mean(e)),
    }


def _bootstrap(figs: Callable[[np.ndarray], dict[str, float]], n_answers: int, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap 95% CIs (scipy.stats.bootstrap) of every figure, resampling answers."""
    keys = list(figs(np.arange(n_answers)))
    if n_answers < 3:
        return {k: (math.nan, math.nan) for k in keys}

    def stat(idx: np.ndarray) -> np.ndarray:
        f = figs(idx.astype(np.int64))
        return np.array([f[k] for k in keys])

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap((np.arange(n_answers),), stat, n_resamples=n_boot, vectorized=False,
                              method="percentile", rng=np.random.default_rng(seed))
    boots = np.asarray(res.bootstrap_distribution, dtype=np.float64).reshape(len(keys), -1)
    out = {}
    for k, b in zip(keys, boots, strict=True):
        b = b[np.isfinite(b)]
        out[k] = (float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))) if len(b) >= n_boot // 2 else (math.nan, math.nan)
    return out


def critic_quality(values: np.ndarray, probe: ProbeSet, *, n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """The critic's figures on the probe (module docstring): overall, and rmse/bias by relative
    position. With ``n_boot`` > 0 each overall figure is {"value", "lo", "hi"} (95% bootstrap over
    answers); otherwise a float.

    Args: values [K] float: the critic's V at the probe's states (:func:`critic_at`).
    """
    v = np.asarray(values, dtype=np.float64)
    mc, var, ret, rows = probe.mc.mean, probe.mc.var_mean, probe.returns, probe.rows
    by_answer = [np.nonzero(rows == r)[0] for r in range(len(probe.batch))]

    def figs(answers: np.ndarray) -> dict[str, float]:
        k = np.concatenate([by_answer[a] for a in answers])
        return _figures(v[k], mc[k], var[k], ret[k])

    overall = _figures(v, mc, var, ret)
    out: dict[str, Any] = dict(overall)
    if n_boot > 0:
        cis = _bootstrap(figs, len(probe.batch), n_boot, seed)
        out = {k: {"value": overall[k], "lo": cis[k][0], "hi": cis[k][1]} for k in overall}
    out["by_position"] = {}
    for rho in sorted(set(probe.rel.tolist())):
        s = probe.rel == rho
        f = _figures(v[s], mc[s], var[s], ret[s])
        out["by_position"][f"{rho:g}"] = {"rmse_vs_mc": f["rmse_vs_mc"], "bias_vs_mc": f["bias_vs_mc"], "n": int(s.sum())}
    out["n_states"], out["n_answers"] = len(v), len(probe.batch)
    return out


__all__ = ["MCEstimate", "ProbeSet", "critic_at", "critic_quality", "draw_probe", "mc_values", "probe_positions",
           "spread_rows", "values_at", "wilson"]
