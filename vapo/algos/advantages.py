"""Advantage estimators: masked GAE, length-adaptive and decoupled GAE, group advantages.

Notation (docs/algorithms.md, "Notation"): a batch holds ``B`` responses padded to ``T``
tokens; ``response_mask[i, t] = 1`` for real tokens. ``V[i, t]`` is the critic's value of the
state *before* token ``t``; the state after the last real token is terminal (value 0).

Every function here is pure torch: no I/O, no models, no global state except the estimator
registry at the bottom. Masked positions hold exactly 0 in every output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from vapo.algos.catalog import (
    ADVANTAGE_ESTIMATORS,
    ESTIMATOR_EXTRAS,
    check_extra,
    register_advantage_estimator,
)
from vapo.algos.groups import group_stats
from vapo.errors import VapoError

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "ESTIMATOR_EXTRAS",
    "AdvantageInput",
    "AdvantageOutput",
    "AdvantageParams",
    "adaptive_lambda",
    "check_extra",
    "decoupled_gae",
    "discounted_reverse_cumsum",
    "dr_grpo_advantages",
    "get_advantage_estimator",
    "grpo_advantages",
    "grpo_passk_advantages",
    "masked_gae",
    "masked_gae_reference",
    "passk_advantages",
    "passk_credit",
    "register_advantage_estimator",
    "resolve_actor_lambda",
    "response_lengths",
    "rloo_advantages",
]

# Tokens per chunk of the chunked scan in `discounted_reverse_cumsum`, chosen by measurement
# (benchmarks/bench_algos.py, 2 CPU threads, [512, 8192]): K = 16 and 32 are within noise of
# each other (~10-17 ms), 64 is ~3x and 128 ~6x slower (the in-chunk matmuls cost B*T*K).
_CHUNK = 32


# --------------------------------------------------------------------------------------------
# Input checks (bad input is a VapoError saying what, where and how to fix it)
# --------------------------------------------------------------------------------------------


def _check_2d(name: str, x: torch.Tensor, where: str, shape: torch.Size | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise VapoError(f"{name} must be a torch.Tensor, got {type(x).__name__}", where=where,
                        fix=f"pass {name} as a [B, T] tensor")
    if x.dim() != 2:
        raise VapoError(f"{name} must be 2-D [B, T], got shape {tuple(x.shape)}", where=where,
                        fix=f"reshape {name} to [batch, response_tokens]")
    if shape is not None and x.shape != shape:
        raise VapoError(f"{name} has shape {tuple(x.shape)} but response_mask has {tuple(shape)}",
                        where=where, fix="all [B, T] inputs must share the response_mask's shape")


def _per_sequence(name: str, v: float | torch.Tensor, batch: int, where: str,
                  dtype: torch.dtype, device: torch.device, low: float = 0.0,
                  high: float = 1.0) -> torch.Tensor:
    """A float or a [B] tensor, checked to lie in [low, high], as a [B] tensor of `dtype`."""
    t = torch.as_tensor(v, dtype=dtype, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise VapoError(f"{name} must be a float or a [B]={batch} tensor, got shape {tuple(t.shape)}",
                        where=where, fix=f"pass one {name} per sequence, or a single float")
    if not bool(((t >= low) & (t <= high)).all()):
        raise VapoError(f"{name} must lie in [{low}, {high}], got min {t.min().item():.4g} "
                        f"max {t.max().item():.4g}", where=where, fix=f"clamp {name} to [{low}, {high}]")
    return t


def _check_group_inputs(scores: torch.Tensor, group_index: torch.Tensor,
                        response_mask: torch.Tensor, where: str) -> None:
    _check_2d("response_mask", response_mask, where)
    b = response_mask.shape[0]
    for name, x in (("scores", scores), ("group_index", group_index)):
        if not isinstance(x, torch.Tensor) or x.shape != (b,):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise VapoError(f"{name} must be a [B]={b} tensor, got {shape}", where=where,
                            fix=f"pass one {name} entry per response")
    if group_index.is_floating_point() or group_index.is_complex():
        raise VapoError("group_index must hold integers (one group id per response)", where=where,
                        fix="pass group_index as an integer tensor, e.g. prompt ids")


# --------------------------------------------------------------------------------------------
# The linear recurrence y_t = x_t + c * y_{t+1}, fast
# --------------------------------------------------------------------------------------------


def _decay_matrix(c: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """D[b, t, j] = c_b^(j - t) for j >= t, else 0.  c: [B] -> [B, k, k] (upper triangular)."""
    idx = torch.arange(k, device=c.device, dtype=c.dtype)
    expo = idx[None, :] - idx[:, None]  # j - t
    upper = expo >= 0
    # torch.pow(0, 0) = 1, so c = 0 (pure one-step TD) gives the identity, as it must.
    d = torch.pow(c[:, None, None], expo.clamp_min(0)[None])
    return (d * upper[None]).to(dtype)


def discounted_reverse_cumsum(x: torch.Tensor, c: torch.Tensor, chunk: int = _CHUNK) -> torch.Tensor:
    """y_t = sum_{k >= t} c^(k - t) x_k along the last axis, one decay c per row.

    Solves the GAE recursion ``y_t = x_t + c y_{t+1}`` (``y_T = 0``) without a Python loop
    over T. The sequence is cut into chunks of ``chunk`` tokens:

    1. inside each chunk, ``local = x_chunk @ D^T`` with the per-row decay matrix
       ``D[t, j] = c^(j-t)`` (one batched matmul for all chunks);
    2. the value at each chunk's start, ``S_n = local_n[0] + c^K S_{n+1}``, is the same
       recursion on the N = T/K chunk heads with decay ``c^K``: solved recursively, in float64;
    3. ``y[n, t] = local[n, t] + c^(K - t) S_{n+1}``.

    Cost O(B T K) flops in matmuls, depth O(log_K T). Float32 inputs keep float32 in-chunk
    sums (error ~ K ulp of the chunk sums) and float64 carries; float64 inputs are exact to
    float64 rounding.

    Args:
        x: [B, T] float tensor.
        c: [B] decays in [0, 1] (any float dtype; used in float64 for the carries).
        chunk: tokens per chunk K.
    Returns:
        [B, T] tensor of x's dtype.
    """
    b, t = x.shape
    c = c.to(torch.float64)
    if t <= chunk:  # one chunk: a single [t, t] matmul per row
        return torch.bmm(_decay_matrix(c, t, x.dtype), x.unsqueeze(-1)).squeeze(-1)
    n = -(-t // chunk)
    pad = n * chunk - t
    xc = (F.pad(x, (0, pad)) if pad else x).reshape(b, n, chunk)  # zeros after the end: no effect
    local = torch.bmm(xc, _decay_matrix(c, chunk, x.dtype).transpose(1, 2))  # [B, N, K]
    heads = local[:, :, 0].to(torch.float64)
    starts = discounted_reverse_cumsum(heads, c**chunk, chunk)  # S_n, [B, N], float64
    carry_in = F.pad(starts[:, 1:], (0, 1))  # S_{n+1}; 0 after the last chunk
    expo = torch.arange(chunk, 0, -1, device=x.device, dtype=torch.float64)  # K - t
    tail = torch.pow(c[:, None], expo[None])  # [B, K] = c^(K - t)
    if x.dtype == torch.float64:
        y = local + carry_in[:, :, None] * tail[:, None, :]
    else:
        y = torch.addcmul(local, carry_in.to(x.dtype)[:, :, None], tail.to(x.dtype)[:, None, :])
    return y.reshape(b, n * chunk)[:, :t]


def _compaction_index(mask: torch.Tensor) -> torch.Tensor | None:
    """Destination index [B, T] that moves each row's real tokens to the left, in order, and
    its padding to the right; None when the mask is already right-padded (the common case).

    Position t goes to (number of real tokens before t) if real, else to
    (row length + number of padding positions before t): a permutation of 0..T-1 per row,
    computed with one cumsum (O(B T), no sort)."""
    if mask.shape[1] < 2 or bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return None
    # Counting in float32 is exact up to 2^24 tokens per row and much faster than int64 cumsum.
    real = mask.to(torch.float32)
    before_real = torch.cumsum(real, dim=1).sub_(real)
    before_pad = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float32) - before_real
    dest = torch.where(mask, before_real, before_pad.add_(real.sum(1, keepdim=True)))
    return dest.to(torch.int64)


# --------------------------------------------------------------------------------------------
# GAE (Schulman et al. 2016, eq. 11-16), masked, per-sequence gamma and lambda
# --------------------------------------------------------------------------------------------


def masked_gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float | torch.Tensor = 1.0,
    lam: float | torch.Tensor = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the real tokens of each response.

        delta_t = r_t + gamma * V_{t+1} - V_t        (V after the last real token := 0)
        A_t     = delta_t + gamma * lam * A_{t+1}     (GAE, Schulman et al. 2016 eq. 16)
        R_t     = A_t + V_t                           (critic target)

    "t+1" means the next *real* token of the same row: masked positions are skipped by the
    recursion (rewards and values there are ignored, never bootstrapped through), exactly as
    verl's ``compute_gae_advantage_return`` carries ``nextvalues``/``lastgaelam`` through
    them. So left-, middle- and right-padding all work.

    Implementation: masks that are not right-padded are compacted to the left (a cumsum
    index, no sort), then the recursion is solved by the chunked scan `discounted_reverse_cumsum`
    (batched matmuls instead of a loop over T) and scattered back. `masked_gae_reference`
    is the same computation as a readable loop.

    Args:
        token_rewards: [B, T] float, reward of each token (outcome tasks: score on the last one).
        values: [B, T] float, V(s_t), the value before token t.
        response_mask: [B, T] bool/int/float in {0, 1}.
        gamma: discount, float or [B] tensor in [0, 1].
        lam: GAE lambda, float or [B] tensor in [0, 1] (one per sequence, e.g. `adaptive_lambda`).
    Returns:
        (advantages, returns): [B, T] each, dtype of `values` (computed in float32 at least);
        exactly 0 at masked positions.
    """
    where = "masked_gae"
    _check_2d("response_mask", response_mask, where)
    _check_2d("token_rewards", token_rewards, where, response_mask.shape)
    _check_2d("values", values, where, response_mask.shape)
    out_dtype = values.dtype
    dtype = torch.promote_types(torch.promote_types(values.dtype, token_rewards.dtype), torch.float32)
    b, _ = response_mask.shape
    g = _per_sequence("gamma", gamma, b, where, torch.float64, values.device)
    lm = _per_sequence("lam", lam, b, where, torch.float64, values.device)

    mask = response_mask.bool()
    # Padding may hold anything: zero it (rewards and values there are ignored).
    r = torch.where(mask, token_rewards.to(dtype), 0.0)
    v = torch.where(mask, values.to(dtype), 0.0)
    dest = _compaction_index(mask)
    if dest is not None:  # real tokens first; then "next real token" = next position
        r = torch.zeros_like(r).scatter_(1, dest, r)
        v = torch.zeros_like(v).scatter_(1, dest, v)

    # From here every row is right-padded with r = v = 0 on the padding, so the padding
    # needs no masking: V_{t+1} = 0 at and after the terminal state (F.pad), delta = 0 on
    # the padding, hence A = sum of future deltas = 0 and R = A + V = 0 there too.
    v_next = F.pad(v[:, 1:], (0, 1))
    delta = torch.addcmul(r, g.to(dtype)[:, None], v_next).sub_(v)  # r + gamma V' - V
    adv = discounted_reverse_cumsum(delta, g * lm)  # A_t = delta_t + gamma lam A_{t+1}
    ret = adv + v

    if dest is not None:  # undo the compaction
        adv, ret = adv.gather(1, dest), ret.gather(1, dest)
    return adv.to(out_dtype), ret.to(out_dtype)


def masked_gae_reference(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float | torch.Tensor = 1.0,
    lam: float | torch.Tensor = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_gae` as the usual reverse loop over T, vectorised over B (verl's
    ``compute_gae_advantage_return`` with per-sequence gamma/lambda). Same contract and
    outputs; O(T) Python steps. Kept as the readable definition and the benchmark baseline."""
    where = "masked_gae_reference"
    _check_2d("response_mask", response_mask, where)
    b, t_len = response_mask.shape
    g = _per_sequence("gamma", gamma, b, where, values.dtype, values.device)
    lm = _per_sequence("lam", lam, b, where, values.dtype, values.device)
    m = response_mask.to(values.dtype)
    next_value = torch.zeros(b, dtype=values.dtype, device=values.device)
    last_adv = torch.zeros_like(next_value)
    adv = torch.zeros_like(values)
    for t in reversed(range(t_len)):
        delta = token_rewards[:, t] + g * next_value - values[:, t]
        a = delta + g * lm * last_adv
        # At a masked position keep the carries unchanged: the recursion skips it.
        next_value = m[:, t] * values[:, t] + (1 - m[:, t]) * next_value
        last_adv = m[:, t] * a + (1 - m[:, t]) * last_adv
        adv[:, t] = last_adv
    adv = adv * m
    return adv, (adv + values) * m


# --------------------------------------------------------------------------------------------
# Length-adaptive and decoupled GAE (docs/algorithms.md, "Length-adaptive λ", "Decoupled GAE")
# --------------------------------------------------------------------------------------------


def adaptive_lambda(lengths: torch.Tensor, alpha: float) -> torch.Tensor:
    """Length-adaptive GAE lambda (VAPO, Length-Adaptive GAE; docs/algorithms.md,
    "Length-adaptive λ"): lambda(l) = 1 - 1 / (alpha * l).

    The effective horizon sum_t lambda^t = 1/(1 - lambda) = alpha * l grows with length.
    For l <= 1/alpha the formula gives lambda <= 0; the paper is silent there, so we clamp to
    0: very short answers get pure one-step TD advantages (A_t = delta_t). Lengths must be
    >= 1 (a zero-length response has no tokens and no advantage; pass it through the mask).

    Args:
        lengths: [B] int or float, response lengths in tokens (>= 1).
        alpha: horizon per token, > 0 (paper: 0.05).
    Returns:
        [B] float32 (float64 if `lengths` is float64) lambdas in [0, 1).
    """
    where = "adaptive_lambda"
    if not isinstance(lengths, torch.Tensor) or lengths.dim() != 1:
        raise VapoError("lengths must be a 1-D [B] tensor", where=where,
                        fix="pass response_mask.sum(-1)")
    if not alpha > 0:
        raise VapoError(f"alpha must be > 0, got {alpha}", where=where,
                        fix="use a positive alpha (paper: 0.05)")
    if lengths.numel() and bool((lengths < 1).any()):
        raise VapoError(f"lengths must be >= 1, got min {lengths.min().item()}", where=where,
                        fix="drop or mask out zero-length responses before computing lambda")
    dtype = lengths.dtype if lengths.dtype == torch.float64 else torch.float32
    lam = 1.0 - 1.0 / (alpha * lengths.to(dtype))
    return lam.clamp(min=0.0)


def decoupled_gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float | torch.Tensor = 1.0,
    lam_actor: float | torch.Tensor = 0.95,
    lam_critic: float | torch.Tensor = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled GAE (VC-PPO and VAPO, Decoupled-GAE; docs/algorithms.md, "Decoupled GAE"):
    two GAE passes over the same TD errors.

    The actor's advantages use ``lam_actor`` (< 1: lower variance); the critic's targets use
    ``lam_critic`` (1.0: unbiased Monte-Carlo targets, so the reward does not decay as
    lambda^(T-t) over long answers).

    Args: as `masked_gae`; lam_actor, lam_critic: float or [B] in [0, 1].
    Returns:
        (advantages from lam_actor, returns from lam_critic): [B, T] each, 0 at masked positions.
    """
    adv, _ = masked_gae(token_rewards, values, response_mask, gamma, lam_actor)
    _, ret = masked_gae(token_rewards, values, response_mask, gamma, lam_critic)
    return adv, ret


# --------------------------------------------------------------------------------------------
# Group advantages (critic-free baselines)
# --------------------------------------------------------------------------------------------


def _broadcast(adv_seq: torch.Tensor, response_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.where(response_mask.bool(), adv_seq.to(dtype)[:, None], 0.0)


def _out_dtype(scores: torch.Tensor) -> torch.dtype:
    return scores.dtype if scores.is_floating_point() else torch.float32


def grpo_advantages(scores: torch.Tensor, group_index: torch.Tensor, response_mask: torch.Tensor,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantages (DeepSeekMath arXiv 2402.03300 §4.1.2; docs/algorithms.md,
    "Group advantages"):
    A_i = (R_i - mean_g R) / (std_g R + eps), broadcast to every real token of response i.

    std is the *unbiased* (n - 1) group standard deviation, as ``torch.std`` in GRPO's
    reference implementations (verl, TRL). Groups of size 1 or with all-equal scores get 0.

    Args:
        scores: [B] float, one scalar reward per response.
        group_index: [B] int, group id (e.g. prompt id); arbitrary, unsorted integers.
        response_mask: [B, T] in {0, 1}.
        eps: added to the std.
    Returns:
        [B, T] advantages (dtype of scores, float32 for integer scores); 0 at masked positions.
    """
    _check_group_inputs(scores, group_index, response_mask, "grpo_advantages")
    g = group_stats(scores, group_index)
    adv = torch.where(g.all_equal, 0.0, (scores.to(torch.float64) - g.mean) / (g.std + eps))
    return _broadcast(adv, response_mask, _out_dtype(scores))


def dr_grpo_advantages(scores: torch.Tensor, group_index: torch.Tensor,
                       response_mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dr. GRPO advantages (arXiv 2503.20783 §3.2; docs/algorithms.md, "Group advantages"): A_i = R_i - mean_g R (no std division),
    broadcast to tokens. Groups of size 1 or with all-equal scores get 0. `eps` is unused
    (kept for a uniform signature). Shapes as `grpo_advantages`."""
    _check_group_inputs(scores, group_index, response_mask, "dr_grpo_advantages")
    g = group_stats(scores, group_index)
    adv = torch.where(g.all_equal, 0.0, scores.to(torch.float64) - g.mean)
    return _broadcast(adv, response_mask, _out_dtype(scores))


def rloo_advantages(scores: torch.Tensor, group_index: torch.Tensor,
                    response_mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, arXiv 2402.14740 §3; docs/algorithms.md,
    "Group advantages"):
    A_i = R_i - mean_{j != i, j in g} R_j = n/(n-1) (R_i - mean_g R), broadcast to tokens.
    Groups of size 1 (no other sample for a baseline) or with all-equal scores get 0.
    `eps` is unused. Shapes as `grpo_advantages`."""
    _check_group_inputs(scores, group_index, response_mask, "rloo_advantages")
    g = group_stats(scores, group_index)
    loo = g.count / (g.count - 1).clamp_min(1)
    adv = torch.where(g.all_equal, 0.0, loo * (scores.to(torch.float64) - g.mean))
    return _broadcast(adv, response_mask, _out_dtype(scores))


# --------------------------------------------------------------------------------------------
# Pass@k-aware group advantages (docs/algorithms.md, "Pass@k-aware advantages")
# --------------------------------------------------------------------------------------------


def _groups(group_index: torch.Tensor) -> list[torch.Tensor]:
    """Row indices of each group, groups in increasing id order, rows in batch order."""
    _, inv = torch.unique(group_index, return_inverse=True)
    n = int(inv.max().item()) + 1 if inv.numel() else 0
    return [torch.nonzero(inv == g).squeeze(1) for g in range(n)]


def grpo_passk_advantages(scores: torch.Tensor, group_index: torch.Tensor,
                          response_mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """verl's ``grpo_passk`` (``compute_grpo_passk_outcome_advantage``, which cites arXiv
    2503.19595): in each group only the best response gets a non-zero advantage,

        A_{i*} = (R_max - R_second_max) / (std_g R + eps),   A_i = 0 for every other i,

    with i* the position ``torch.topk`` returns for the maximum and std the unbiased group
    standard deviation (verl's default norm_adv_by_std_in_grpo=True). A group whose two best
    scores tie gives every member 0. Groups need at least 2 responses (as verl).

    Args: as `grpo_advantages`. Returns [B, T] advantages, 0 at masked positions.
    """
    where = "grpo_passk_advantages"
    _check_group_inputs(scores, group_index, response_mask, where)
    s = scores.to(torch.float64)
    adv = torch.zeros_like(s)
    for rows in _groups(group_index):
        if len(rows) < 2:
            raise VapoError(f"grpo_passk needs at least 2 responses per group, got {len(rows)} for group "
                            f"{int(group_index[rows[0]])}", where=where,
                            fix="sample rollout.group_size >= 2 answers per prompt")
        r = s[rows]
        top, top_idx = torch.topk(r, 2)
        adv[rows[top_idx[0]]] = (top[0] - top[1]) / (r.std() + eps)
    return _broadcast(adv, response_mask, _out_dtype(scores))


def _f64(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64)


def _check_binary(scores: torch.Tensor, where: str) -> None:
    if not bool(((scores == 0) | (scores == 1)).all()):
        raise VapoError("pass@k advantages need 0/1 scores (pass or fail), got values outside {0, 1}",
                        where=where, fix="turn off reward shaping (algo.overlong, algo.exploration bonuses) "
                                         "with this estimator, or use grpo_passk")


def _check_k(k: int | None, n: int, where: str) -> int:
    if k is None or isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise VapoError(f"pass@k needs an integer k >= 1, got {k!r}", where=where,
                        fix="set algo.advantage.pass_k (e.g. 4)")
    if k > n:
        raise VapoError(f"pass@{k} needs at least k={k} responses per group, got a group of {n}",
                        where=where, fix=f"set algo.advantage.pass_k <= rollout.group_size ({n})")
    return k


def passk_credit(correct: torch.Tensor, group_index: torch.Tensor, k: int) -> torch.Tensor:
    """Each response's pass@k credit in its group of n responses with c correct: the mean,
    over the k-subsets of the group that contain it, of the subset's pass@k reward
    (1 if any member is correct):

        correct response:    1
        incorrect response:  1 - C(n-c-1, k-1) / C(n-1, k-1)

    Their group mean is the group's unbiased pass@k, 1 - C(n-c, k) / C(n, k) (Chen et al. 2021
    eq. 1). With k = 1 the credit is the 0/1 correctness itself.

    Args: correct [B] bool (or 0/1); group_index [B] int; k >= 1, at most every group's size.
    Returns: [B] float64 credits in [0, 1].
    """
    where = "passk_credit"
    if not (isinstance(correct, torch.Tensor) and correct.dim() == 1 and isinstance(group_index, torch.Tensor)
            and group_index.shape == correct.shape):
        raise VapoError("correct and group_index must be 1-D [B] tensors of the same length", where=where,
                        fix="pass one flag and one group id per response")
    c_all = correct.to(torch.float64)
    _check_binary(c_all, where)
    out = torch.ones_like(c_all)
    for rows in _groups(group_index):
        n = len(rows)
        kk = _check_k(k, n, where)
        c = int(c_all[rows].sum())
        wrong_credit = 1.0 - math.comb(n - c - 1, kk - 1) / math.comb(n - 1, kk - 1) if c < n else 1.0
        out[rows] = torch.where(c_all[rows] > 0, _f64(1.0), _f64(wrong_credit))
    return out


def passk_advantages(scores: torch.Tensor, group_index: torch.Tensor, response_mask: torch.Tensor,
                     k: int, eps: float = 1e-6) -> torch.Tensor:
    """Pass@k training with the analytic advantage (arXiv 2508.10751 §3.3; the authors'
    ``passk_adv.py``). A group of n responses with c correct (0/1 scores) has the pass@k
    reward mean rho = 1 - C(n-c, k)/C(n, k) and standard deviation sigma = sqrt(rho (1 - rho))
    over its k-subsets; then

        A_correct   = (1 - rho) / (sigma + eps)
        A_incorrect = (1 - rho - C(n-c-1, k-1) / C(n-1, k-1)) / (sigma + eps)

    i.e. (`passk_credit` - rho) / (sigma + eps). All-correct and all-wrong groups get 0.
    With k = 1 this is GRPO's advantage with the population standard deviation.

    Args: as `grpo_advantages`, plus k (1 <= k <= every group's size). Scores must be 0/1.
    Returns: [B, T] advantages, 0 at masked positions.
    """
    where = "passk_advantages"
    _check_group_inputs(scores, group_index, response_mask, where)
    s = scores.to(torch.float64)
    _check_binary(s, where)
    adv = torch.zeros_like(s)
    for rows in _groups(group_index):
        n = len(rows)
        kk = _check_k(k, n, where)
        c = int(s[rows].sum())
        rho = 1.0 - math.comb(n - c, kk) / math.comb(n, kk)
        sigma = math.sqrt(rho * (1.0 - rho))
        if sigma == 0.0:
            continue
        wrong = 1.0 - rho - (math.comb(n - c - 1, kk - 1) / math.comb(n - 1, kk - 1) if c < n else 0.0)
        adv[rows] = torch.where(s[rows] > 0, _f64((1.0 - rho) / (sigma + eps)), _f64(wrong / (sigma + eps)))
    return _broadcast(adv, response_mask, _out_dtype(scores))


# --------------------------------------------------------------------------------------------
# Registry: estimators are looked up by name (a preset is data; a new estimator is one function)
# --------------------------------------------------------------------------------------------


@dataclass
class AdvantageInput:
    """Everything an estimator may read. Shapes: [B, T] token tensors, [B] per-sequence.

    token_rewards: [B, T] token rewards (outcome score on the last real token, plus shaping).
    response_mask: [B, T] in {0, 1}.
    values: [B, T] critic values V(s_t), or None for critic-free estimators.
    scores: [B] scalar reward per response (group estimators); None -> the masked sum of
        token_rewards (as verl's GRPO does).
    group_index: [B] int group id per response (group estimators).
    mc_points: [B, T] in {0, 1}, the positions whose ``values`` are Monte-Carlo estimates
        (the "vine" estimator, vapo.algos.pathways), or None.
    """

    token_rewards: torch.Tensor
    response_mask: torch.Tensor
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    group_index: torch.Tensor | None = None
    mc_points: torch.Tensor | None = None


@dataclass(kw_only=True)
class AdvantageParams:
    """Estimator hyperparameters.

    gamma: discount (1.0 for LLM RL). lam_actor: GAE lambda of the actor, or None for the
    length-adaptive lambda 1 - 1/(alpha*l) (VAPO). lam_critic: GAE lambda of the critic's
    targets (1.0 = Monte-Carlo, VC-PPO). alpha: adaptive-lambda horizon per token.
    eps: std epsilon of GRPO. pass_k: k of the ``passk`` estimator (None: unset; its one
    default is the config's). extra: free-form options for user-registered estimators.
    lam_actor and alpha have no default here: their one default is the config's
    (vapo.config.AdvantageConfig), passed by vapo.train.adapter.advantage_params.
    """

    gamma: float = 1.0
    lam_actor: float | None
    lam_critic: float = 1.0
    alpha: float
    eps: float = 1e-6
    pass_k: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AdvantageOutput:
    """advantages: [B, T], 0 at masked positions. returns: [B, T] critic targets (0 at masked
    positions), or None for critic-free estimators. lam_actor: [B] the λ of each sequence's
    advantages when the estimator chose it itself (gae_error_aware), else None."""

    advantages: torch.Tensor
    returns: torch.Tensor | None = None
    lam_actor: torch.Tensor | None = None


AdvantageEstimator = Callable[[AdvantageInput, AdvantageParams], AdvantageOutput]
# ADVANTAGE_ESTIMATORS, ESTIMATOR_EXTRAS, register_advantage_estimator and check_extra live in
# vapo.algos.catalog (no torch), so that a config can check names and knobs before torch loads.


def response_lengths(response_mask: torch.Tensor) -> torch.Tensor:
    """[B] lengths of the rows of ``response_mask`` [B, T]; an empty row counts as 1 (it has no
    token for λ to act on). float64 for a float64 mask (so the float64 path's adaptive λ is
    exact), float32 otherwise."""
    dtype = torch.float64 if response_mask.dtype == torch.float64 else torch.float32
    return response_mask.to(dtype).sum(-1).clamp_min(1.0)


def resolve_actor_lambda(params: AdvantageParams, lengths: torch.Tensor) -> float | torch.Tensor:
    """The actor's GAE λ: ``params.lam_actor``, or when it is None the length-adaptive
    λ(l) = 1 − 1/(α·l) of each response (``lengths`` [B] ≥ 1, e.g. :func:`response_lengths`;
    [B] float32, float64 for float64 lengths). The one place "adaptive" turns into numbers, for
    the estimators, the trainer's logged λ and the diagnostics."""
    if params.lam_actor is not None:
        return params.lam_actor
    return adaptive_lambda(lengths, params.alpha)


def get_advantage_estimator(name: str) -> AdvantageEstimator:
    """The estimator registered as `name`; unknown names raise with a did-you-mean hint."""
    return ADVANTAGE_ESTIMATORS.get(name)


@register_advantage_estimator("gae")
def _gae_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """Decoupled GAE; lam_actor None -> adaptive_lambda(lengths, alpha) (VAPO)."""
    if inp.values is None:
        raise VapoError("the 'gae' estimator needs critic values, got values=None",
                        where="AdvantageInput.values",
                        fix="pass the critic's [B, T] values, or use a critic-free estimator "
                            "(grpo, dr_grpo, rloo)")
    lam_actor = resolve_actor_lambda(params, response_lengths(inp.response_mask))
    adv, ret = decoupled_gae(inp.token_rewards, inp.values, inp.response_mask,
                             params.gamma, lam_actor, params.lam_critic)
    return AdvantageOutput(adv, ret)


def _group_estimator(fn: Callable[..., torch.Tensor]) -> AdvantageEstimator:
    def estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
        if inp.group_index is None:
            raise VapoError(f"the {fn.__name__} estimator needs group_index, got None",
                            where="AdvantageInput.group_index",
                            fix="pass one integer group id (prompt id) per response")
        scores = inp.scores
        if scores is None:
            scores = torch.where(inp.response_mask.bool(), inp.token_rewards, 0.0).sum(-1)
        return AdvantageOutput(fn(scores, inp.group_index, inp.response_mask, params.eps), None)

    estimator.__doc__ = fn.__doc__
    return estimator


register_advantage_estimator("grpo")(_group_estimator(grpo_advantages))
register_advantage_estimator("dr_grpo")(_group_estimator(dr_grpo_advantages))
register_advantage_estimator("rloo")(_group_estimator(rloo_advantages))
register_advantage_estimator("grpo_passk")(_group_estimator(grpo_passk_advantages))


@register_advantage_estimator("passk")
def _passk_estimator(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """Pass@k training with the analytic advantage (`passk_advantages`), k = params.pass_k."""
    def fn(scores, group_index, response_mask, eps):
        return passk_advantages(scores, group_index, response_mask, params.pass_k, eps)

    fn.__name__ = "passk_advantages"
    return _group_estimator(fn)(inp, params)
