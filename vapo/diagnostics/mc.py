"""Monte-Carlo ground truth for values and advantages.

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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vapo.diagnostics.common import Z95, wilson
from vapo.train.batch import Experience
from vapo.train.collect import RewardSettings, rollout_and_score


@dataclass
class MCEstimate:
    """Monte-Carlo value estimates of K prefix states.

    mean [K] float64: V̂(s); var_mean [K] float64: the estimated variance of V̂ (s²/M, 0 for
    exact terminal values); lo, hi [K] float64: 95% CI (Wilson for 0/1 rewards, normal otherwise;
    equal to the value when exact); m [K] int64: continuations used (0 = exact terminal value).
    """

    mean: np.ndarray
    var_mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    m: np.ndarray


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
    for s in range(0, len(todo), per_call):
        ks = todo[s : s + per_call]
        probed = np.repeat(ks, M)
        probs = [batch.problems[rows[k]] for k in probed]
        prefixes = [batch.response_ids[rows[k], : ts[k]] for k in probed]
        out = rollout_and_score(policy, tokenizer, task, probs, settings, generator=generator, prefixes=prefixes)
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
    return MCEstimate(mean=mean, var_mean=var_mean, lo=lo, hi=hi, m=m_used)


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
