"""Improvement pathways beyond VAPO: advantage estimators proposed from the theory lab.

The theory lab (docs/theory.md, claims 1-2) measures two things about value-based advantage
estimation under sparse terminal reward:

* the critic's error is *systematic* and grows with the distance from the reward
  (claim 1), so the bias that bootstrapping injects into GAE(λ) depends on the critic's
  error profile, not on the answer length as such;
* the variance of the Monte-Carlo part of GAE is bounded by the variance of the outcome
  (with γ = 1 and a 0/1 reward it is p(1−p) at the prompt, whatever the length), so
  "short answers are high-variance, long ones high-bias" (VAPO, Length-Adaptive GAE) holds only through
  the critic's error profile.

Two estimators follow from this and are registered in
:data:`vapo.algos.advantages.ADVANTAGE_ESTIMATORS`, so a trainer config selects them by
name exactly like "gae" or "grpo":

``"gae_error_aware"``
    GAE with one λ per sequence chosen from a grid to minimise an *estimated* MSE of the
    advantages against A^π: a squared-bias term computed from the critic's systematic error
    profile (fitted on the batch as a linear function of the distance from the end) and a
    variance term from the group's outcome variance. Knobs in ``params.extra``:
    ``lambda_grid`` (sequence of floats in [0, 1], default 0, 0.05, ..., 1.0),
    ``min_group_var`` (float ≥ 0, default 0.0: floor for the outcome variance),
    ``noise_var`` (float ≥ 0 or None, default None: the critic's per-state noise variance,
    estimated from the roughness of V̂ along each response when None).

``"gae_mc_anchored"``
    GAE on bias-corrected values: the critic's value at the prompt state is pulled toward
    the leave-one-out mean of the group's Monte-Carlo returns, and the correction is spread
    over the response with a profile that decays to 0 at the last token (where the critic
    sees the answer and is most accurate). λ is ``params.lam_actor`` (``None`` = VAPO's
    length-adaptive 1 − 1/(α·l)). Knobs in ``params.extra``: ``anchor_strength`` κ in
    [0, 1] (default 1.0), ``anchor_profile`` in {"linear", "constant", "prompt"}
    (default "linear").

Two more act on the *values* the advantages are computed from:

``"vine"``
    VinePPO (arXiv 2410.01679): no critic. The trainer estimates V^π by Monte-Carlo at a few
    points of each answer (K continuations each, vapo.train.mc_values); ``inp.values`` holds
    those values filled piecewise-constant from the latest point (:func:`fill_mc_values`) and
    ``inp.mc_points`` marks the points. Knob ``params.extra["vine_credit"]``: "segment"
    (default, VinePPO's own: every token of the segment [p_j, p_{j+1}) gets
    r + V̂(p_{j+1}) − V̂(p_j), :func:`vine_advantages`) or "gae" (GAE with ``lam_actor`` over the
    filled values).

Critic weighted by its quality (EVPO arXiv 2604.19485, V0.5 arXiv 2603.10848)
    :func:`blend_advantages` mixes the critic's advantages with the group-mean baseline's,
    w·A_critic + (1 − w)·(R − mean_g R), with w = :func:`critic_weight` of the critic's
    explained variance against Monte-Carlo values (:func:`ev_against_mc`).

All are pure functions over ``[B, T]`` tensors with a response mask; masked positions hold
0 in every output, as for :func:`vapo.algos.advantages.masked_gae`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vapo.algos.advantages import (
    AdvantageInput,
    AdvantageOutput,
    AdvantageParams,
    dr_grpo_advantages,
    masked_gae,
    register_advantage_estimator,
    resolve_actor_lambda,
    response_lengths,
)
from vapo.algos.groups import group_stats
from vapo.errors import VapoError

DEFAULT_LAMBDA_GRID: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(21))
ANCHOR_PROFILES = ("linear", "constant", "prompt")
VINE_CREDITS = ("segment", "gae")

__all__ = [
    "ANCHOR_PROFILES",
    "DEFAULT_LAMBDA_GRID",
    "VINE_CREDITS",
    "anchor_values",
    "blend_advantages",
    "check_mc_points",
    "critic_weight",
    "ev_against_mc",
    "fill_mc_values",
    "mc_value_targets",
    "vine_advantages",
    "distance_from_end",
    "error_aware_lambda",
    "estimate_noise_var",
    "estimated_gae_mse",
    "fit_error_profile",
    "gae_error_aware",
    "gae_mc_anchored",
    "group_loo_mean",
    "group_variance",
]


# ---------------------------------------------------------------------------------------
# Small helpers over [B, T] / [B]
# ---------------------------------------------------------------------------------------


def _check_inputs(inp: AdvantageInput, name: str) -> None:
    if inp.values is None:
        raise VapoError(
            f"advantage estimator {name!r} needs critic values but AdvantageInput.values is None",
            where=f"vapo.algos.pathways.{name}",
            fix="compute values with the critic (response_values) or choose 'grpo'/'rloo'",
        )
    if inp.values.shape != inp.response_mask.shape or inp.token_rewards.shape != inp.response_mask.shape:
        raise VapoError(
            f"shape mismatch: token_rewards {tuple(inp.token_rewards.shape)}, values "
            f"{tuple(inp.values.shape)}, response_mask {tuple(inp.response_mask.shape)}",
            where=f"vapo.algos.pathways.{name}",
            fix="pass [B, T] tensors of the same shape",
        )
    if inp.group_index is None:
        raise VapoError(
            f"advantage estimator {name!r} needs group_index (responses sharing a prompt)",
            where="AdvantageInput.group_index",
            fix="pass one integer group id (prompt id) per response",
        )
    b = inp.response_mask.shape[0]
    scores = _scores(inp)
    if scores.shape != (b,) or inp.group_index.shape != (b,):
        raise VapoError(
            f"scores {tuple(scores.shape)} and group_index {tuple(inp.group_index.shape)} must be [B]={b}",
            where=f"vapo.algos.pathways.{name}",
            fix="pass one score and one group id per response",
        )


def _scores(inp: AdvantageInput) -> torch.Tensor:
    """[B] outcome scores: inp.scores, or the masked sum of token_rewards when None (as 'grpo')."""
    if inp.scores is not None:
        return inp.scores
    return torch.where(inp.response_mask.bool(), inp.token_rewards, 0.0).sum(-1)


def distance_from_end(response_mask: torch.Tensor) -> torch.Tensor:
    """Number of real tokens from position t to the end of its sequence, inclusive.

    Args:
        response_mask: ``[B, T]`` in {0, 1} (any dtype); real tokens may be anywhere.
    Returns:
        ``[B, T]`` float64: d[i, t] = Σ_{k ≥ t} mask[i, k] at real positions (1 at the last
        real token, l_i at the first), 0 at masked positions.
    """
    m = response_mask.to(torch.float64)
    return torch.flip(torch.cumsum(torch.flip(m, dims=[1]), dim=1), dims=[1]) * m


def group_variance(scores: torch.Tensor, group_index: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """Unbiased within-group variance of the scores, broadcast back to each response.

    Args:
        scores: ``[B]`` float, outcome reward of each response.
        group_index: ``[B]`` int, responses with equal ids share a prompt.
        floor: lower bound on the returned variance.
    Returns:
        ``[B]`` float64 — for groups of size ≥ 2 the sample variance (divisor n − 1) of the
        group's scores; for singleton groups the sample variance of the whole batch
        (0 when B = 1); then clamped below at ``floor``.
    """
    g = group_stats(scores, group_index)
    s = scores.to(torch.float64)
    batch_var = s.var(unbiased=True) if s.numel() > 1 else torch.zeros((), dtype=torch.float64)
    out = torch.where(g.count >= 2, g.var, batch_var.expand_as(s))
    return out.clamp(min=floor)


def group_loo_mean(scores: torch.Tensor, group_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out mean of the group's scores (the RLOO baseline) for each response.

    Args:
        scores: ``[B]`` float; group_index: ``[B]`` int.
    Returns:
        ``(loo_mean [B] float64, has_peers [B] bool)``: loo_mean[i] = mean of the scores of the
        *other* members of i's group; for singleton groups has_peers is False and loo_mean 0.
    """
    g = group_stats(scores, group_index)
    return g.loo_mean, g.count >= 2


# ---------------------------------------------------------------------------------------
# Pathway A: critic-error-aware λ
# ---------------------------------------------------------------------------------------


def fit_error_profile(
    values: torch.Tensor, returns_mc: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """Fit the critic's systematic error as a linear function of the distance from the end.

    With γ = 1 the Monte-Carlo return G_t is an unbiased sample of V^π(s_t), so the residual
    V̂_t − G_t is an unbiased (noisy) sample of the critic's error e_t = V̂_t − V^π(s_t).
    Claim 1 of the theory lab finds e grows with the distance d from the reward, so we pool
    the residuals of the whole batch and fit e(d) = a + b·d by least squares (2 parameters:
    robust to the outcome noise of a small batch, which a per-position mean is not).

    Args:
        values: ``[B, T]`` critic values V̂ (state before token t); masked entries ignored.
        returns_mc: ``[B, T]`` Monte-Carlo returns G_t = Σ_{k≥t} r_k; masked entries ignored.
        response_mask: ``[B, T]`` in {0, 1}.
    Returns:
        ``[B, T]`` float64: the fitted error ê = a + b·d at real positions, 0 at masked ones.
        With fewer than 2 distinct distances in the batch, b = 0 (a constant offset).
    """
    m = response_mask.to(torch.float64)
    d = distance_from_end(response_mask)
    res = (values.to(torch.float64) - returns_mc.to(torch.float64)) * m
    n = m.sum()
    if n == 0:
        return torch.zeros_like(m)
    d_mean = d.sum() / n
    r_mean = res.sum() / n
    sxx = (((d - d_mean) ** 2) * m).sum()
    sxy = (((d - d_mean) * (res - r_mean)) * m).sum()
    slope = sxy / sxx if sxx > 1e-12 else torch.zeros((), dtype=torch.float64)
    intercept = r_mean - slope * d_mean
    return (intercept + slope * d) * m


def estimated_gae_mse(
    error_profile: torch.Tensor,
    outcome_var: torch.Tensor,
    response_mask: torch.Tensor,
    lam: float,
    noise_var: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """Estimated per-sequence MSE of GAE(λ) advantages against A^π (γ = 1, terminal reward).

    Write the critic as V̂ = V^π + e. With deterministic transitions and reward only at the
    end, GAE(λ) with V̂ decomposes (GAE paper, Schulman et al. 2016, eq. 16; γ = 1) as

        A_t^λ = A^π(s_t, a_t)                       (δ_t of the true V)
              + Σ_{k≥1} λ^k δ^π_{t+k}               (zero-mean noise: future sampling)
              + Σ_{k≥0} λ^k (e_{t+k+1} − e_{t+k})   (critic-error term, e after the end = 0).

    Split the critic error into a smooth part ê (the fitted profile) and independent
    per-state noise η of variance ε². The smooth part's contribution is exactly the GAE of zero
    rewards on the values ê: c_t(λ) = masked_gae(0, ê, mask, 1, λ). The noise part,
    −η_t + (1−λ) Σ_{k=1}^{n_t−1} λ^{k−1} η_{t+k}, has variance
    ε² · (1 + (1−λ)² Σ_{k=0}^{n_t−2} λ^{2k}). The true-V TD errors are martingale increments
    whose variances sum to the outcome variance σ²; spreading σ² evenly over the l tokens
    gives a sampling variance σ²/l · Σ_{k=1}^{n_t−1} λ^{2k}; n_t = distance from the end.
    Short of noise (ε² = 0), a smooth error favours small λ and so does σ²; critic noise
    favours large λ: this is the trade-off the estimator resolves per sequence.

    Args:
        error_profile: ``[B, T]`` estimated smooth critic error ê (0 at masked positions).
        outcome_var: ``[B]`` estimated outcome variance σ² for each sequence's prompt.
        response_mask: ``[B, T]`` in {0, 1}.
        lam: λ in [0, 1].
        noise_var: ε², float or 0-d tensor (≥ 0).
    Returns:
        ``[B]`` float64: Σ_t mask·(c_t(λ)² + σ²/l · Σ_{k=1}^{n_t−1} λ^{2k}
        + ε² (1 + (1−λ)² Σ_{k=0}^{n_t−2} λ^{2k})).
    """
    m = response_mask.to(torch.float64)
    zeros = torch.zeros_like(m)
    c, _ = masked_gae(zeros, error_profile.to(torch.float64), m, gamma=1.0, lam=float(lam))
    c = c.to(torch.float64)
    n_t = distance_from_end(response_mask)
    lengths = m.sum(dim=1).clamp(min=1)
    lam2 = float(lam) ** 2
    n_minus_1 = (n_t - 1).clamp(min=0)
    if lam2 >= 1.0:
        geo0 = n_minus_1  # Σ_{k=0}^{n-2} λ^{2k} at λ = 1
    else:
        lam2_t = torch.tensor(lam2, dtype=torch.float64)
        geo0 = (1.0 - torch.pow(lam2_t, n_minus_1)) / (1.0 - lam2)  # Σ_{k=0}^{n-2} λ^{2k}
    geo1 = lam2 * geo0  # Σ_{k=1}^{n-1} λ^{2k}
    var_t = outcome_var.to(torch.float64)[:, None] / lengths[:, None] * geo1
    eps2 = torch.as_tensor(noise_var, dtype=torch.float64)
    noise_t = eps2 * (1.0 + (1.0 - float(lam)) ** 2 * geo0)
    return ((c * c + var_t + noise_t) * m).sum(dim=1)


def estimate_noise_var(
    values: torch.Tensor,
    token_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    error_profile: torch.Tensor,
    outcome_var: torch.Tensor,
) -> torch.Tensor:
    """Estimate the variance ε² of the critic's per-state noise from the roughness of V̂.

    The TD(0) errors of the critic, δ̂_t = r_t + V̂_{t+1} − V̂_t (V̂ after the end = 0), are
    δ^π_t + (ê_{t+1} − ê_t) + (η_{t+1} − η_t). Their squares summed over a sequence have
    expectation σ² (martingale increments of the true V sum to the outcome variance)
    + Σ_t (ê_{t+1} − ê_t)² + ε² (2l − 1). Pooled over the batch:

        ε̂² = max(0, (Σ_i Σ_t δ̂² − Σ_i σ_i² − Σ_i Σ_t (Δê)²) / Σ_i (2 l_i − 1)).

    Args:
        values, token_rewards, response_mask, error_profile: ``[B, T]`` (masked entries ignored).
        outcome_var: ``[B]`` σ² per sequence.
    Returns:
        0-d float64 tensor ε̂² ≥ 0 (0 for an empty batch).
    """
    m = response_mask.to(torch.float64)
    zeros = torch.zeros_like(m)
    delta_hat, _ = masked_gae(token_rewards.to(torch.float64), values.to(torch.float64), m, gamma=1.0, lam=0.0)
    delta_smooth, _ = masked_gae(zeros, error_profile.to(torch.float64), m, gamma=1.0, lam=0.0)
    lengths = m.sum(dim=1)
    real = lengths > 0
    denom = (2.0 * lengths - 1.0)[real].sum()
    if denom <= 0:
        return torch.zeros((), dtype=torch.float64)
    num = (delta_hat.to(torch.float64) ** 2 * m).sum() - outcome_var.to(torch.float64)[real].sum()
    num = num - (delta_smooth.to(torch.float64) ** 2 * m).sum()
    return (num / denom).clamp(min=0.0)


def error_aware_lambda(
    values: torch.Tensor,
    token_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    scores: torch.Tensor,
    group_index: torch.Tensor,
    lambda_grid: Sequence[float] = DEFAULT_LAMBDA_GRID,
    min_group_var: float = 0.0,
    noise_var: float | None = None,
) -> torch.Tensor:
    """Per-sequence λ that minimises the estimated MSE of GAE(λ) (theory lab pathway A).

    Steps: (1) Monte-Carlo returns G_t from the rewards; (2) critic error profile
    ê(d) = a + b·d fitted on the batch residuals V̂ − G (:func:`fit_error_profile`);
    (3) outcome variance σ² per group (:func:`group_variance`); (4) critic noise ε²
    (:func:`estimate_noise_var`, unless given); (5) for each λ on the grid,
    :func:`estimated_gae_mse`; (6) argmin per sequence (ties → the larger λ).

    Args:
        values, token_rewards, response_mask: ``[B, T]``; scores, group_index: ``[B]``.
        lambda_grid: candidate λ values in [0, 1].
        min_group_var: floor on σ².
        noise_var: known critic noise variance ε² (None = estimate it from the batch).
    Returns:
        ``[B]`` float64 λ per sequence (rows with no real token get the grid's largest λ).
    """
    grid = sorted(float(x) for x in lambda_grid)
    if not grid or grid[0] < 0.0 or grid[-1] > 1.0:
        raise VapoError(
            f"lambda_grid must be a non-empty list of values in [0, 1], got {list(lambda_grid)!r}",
            where="AdvantageParams.extra['lambda_grid']",
            fix="e.g. [0.0, 0.5, 0.9, 0.95, 0.99, 1.0]",
        )
    m = response_mask.to(torch.float64)
    g_mc, _ = masked_gae(token_rewards.to(torch.float64), torch.zeros_like(m), m, gamma=1.0, lam=1.0)
    e_hat = fit_error_profile(values, g_mc, response_mask)
    sigma2 = group_variance(scores, group_index, floor=min_group_var)
    if noise_var is None:
        noise_var = estimate_noise_var(values, token_rewards, response_mask, e_hat, sigma2)
    mse = torch.stack(
        [estimated_gae_mse(e_hat, sigma2, response_mask, lam, noise_var) for lam in grid], dim=1
    )
    # argmin with ties broken toward the larger λ: flip, argmin (first), map back.
    k_rev = torch.argmin(torch.flip(mse, dims=[1]), dim=1)
    idx = len(grid) - 1 - k_rev
    return torch.tensor(grid, dtype=torch.float64)[idx]


@register_advantage_estimator("gae_error_aware")  # its extra knobs: vapo.algos.catalog
def gae_error_aware(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """GAE with a per-sequence, critic-error-aware λ (registered as "gae_error_aware").

    Advantages: masked GAE with λ_i = :func:`error_aware_lambda` (per sequence, ``[B]``);
    returns (critic targets): masked GAE with ``params.lam_critic`` (docs/algorithms.md, "Decoupled GAE"),
    γ = ``params.gamma``. ``params.lam_actor`` is ignored (λ is chosen per sequence).
    Extra knobs: ``params.extra["lambda_grid"]``, ``params.extra["min_group_var"]``,
    ``params.extra["noise_var"]`` (None = estimate ε² from the batch).

    Shapes: advantages, returns ``[B, T]`` in the values' dtype; 0 at masked positions.
    """
    _check_inputs(inp, "gae_error_aware")
    extra = params.extra or {}
    lam = error_aware_lambda(
        inp.values,
        inp.token_rewards,
        inp.response_mask,
        _scores(inp),
        inp.group_index,
        lambda_grid=extra.get("lambda_grid", DEFAULT_LAMBDA_GRID),
        min_group_var=float(extra.get("min_group_var", 0.0)),
        noise_var=None if extra.get("noise_var") is None else float(extra["noise_var"]),
    ).to(inp.values.dtype)
    adv, _ = masked_gae(inp.token_rewards, inp.values, inp.response_mask, gamma=params.gamma, lam=lam)
    _, ret = masked_gae(
        inp.token_rewards, inp.values, inp.response_mask, gamma=params.gamma, lam=params.lam_critic
    )
    return AdvantageOutput(advantages=adv, returns=ret, lam_actor=lam)


# ---------------------------------------------------------------------------------------
# Pathway B: Monte-Carlo-anchored values
# ---------------------------------------------------------------------------------------


def anchor_values(
    values: torch.Tensor,
    response_mask: torch.Tensor,
    scores: torch.Tensor,
    group_index: torch.Tensor,
    strength: float = 1.0,
    profile: str = "linear",
) -> torch.Tensor:
    """Bias-correct the critic by anchoring its prompt-state value to the group's MC returns.

    For response i in group g with first real position t0 and length l_i, the anchor is the
    leave-one-out mean of the group's scores, R̄_{−i} (an unbiased sample of V^π(prompt) that
    is independent of response i's own outcome, with γ = 1 and outcome rewards). The offset
    Δ_i = κ · (R̄_{−i} − V̂_{i,t0}) is added to the values with weight w_t:

        "linear":   w_t = n_t / l_i  (1 at the prompt state, 1/l_i at the last token;
                    the critic's error grows with the distance from the reward, claim 1)
        "constant": w_t = 1          (a constant shift: cancels in every δ except the last)
        "prompt":   w_t = 1 at t0, 0 elsewhere

    where n_t is the distance from the end (:func:`distance_from_end`).

    Args:
        values: ``[B, T]`` critic values; masked entries ignored.
        response_mask: ``[B, T]`` in {0, 1}; scores: ``[B]``; group_index: ``[B]``.
        strength: κ in [0, 1] (0 = no change).
        profile: one of :data:`ANCHOR_PROFILES`.
    Returns:
        ``[B, T]`` in values' dtype: the anchored values, 0 at masked positions. Responses in
        singleton groups (no peers) and empty rows are returned unchanged (times the mask).
    """
    if profile not in ANCHOR_PROFILES:
        raise VapoError(
            f"unknown anchor_profile {profile!r}",
            where="AdvantageParams.extra['anchor_profile']",
            fix=f"use one of: {', '.join(ANCHOR_PROFILES)}",
        )
    if not 0.0 <= float(strength) <= 1.0:
        raise VapoError(
            f"anchor_strength must be in [0, 1], got {strength!r}",
            where="AdvantageParams.extra['anchor_strength']",
            fix="use 1.0 for a full anchor, 0.0 to disable",
        )
    m = response_mask.to(torch.float64)
    v = values.to(torch.float64)
    n_t = distance_from_end(response_mask)
    lengths = m.sum(dim=1)
    first = n_t == lengths[:, None]  # the first real position of each row
    first = first & (m > 0)
    v0 = (v * first).sum(dim=1)
    loo, has_peers = group_loo_mean(scores, group_index)
    delta = float(strength) * (loo - v0) * (has_peers & (lengths > 0))
    if profile == "linear":
        w = n_t / lengths.clamp(min=1)[:, None]
    elif profile == "constant":
        w = m
    else:
        w = first.to(torch.float64)
    return ((v + delta[:, None] * w) * m).to(values.dtype)


@register_advantage_estimator("gae_mc_anchored")  # its extra knobs: vapo.algos.catalog
def gae_mc_anchored(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """GAE on MC-anchored values (registered as "gae_mc_anchored").

    Values are corrected by :func:`anchor_values` (knobs ``params.extra["anchor_strength"]``,
    ``params.extra["anchor_profile"]``), then advantages = masked GAE with λ =
    ``params.lam_actor`` (``None`` → :func:`adaptive_lambda` of the lengths with
    ``params.alpha``), returns = masked GAE with ``params.lam_critic`` on the same values.

    Shapes: advantages, returns ``[B, T]`` in the values' dtype; 0 at masked positions.
    """
    _check_inputs(inp, "gae_mc_anchored")
    extra = params.extra or {}
    v = anchor_values(
        inp.values,
        inp.response_mask,
        _scores(inp),
        inp.group_index,
        strength=float(extra.get("anchor_strength", 1.0)),
        profile=str(extra.get("anchor_profile", "linear")),
    )
    lam = resolve_actor_lambda(params, response_lengths(inp.response_mask))
    adv, _ = masked_gae(inp.token_rewards, v, inp.response_mask, gamma=params.gamma, lam=lam)
    _, ret = masked_gae(inp.token_rewards, v, inp.response_mask, gamma=params.gamma, lam=params.lam_critic)
    return AdvantageOutput(advantages=adv, returns=ret)


# ---------------------------------------------------------------------------------------
# Pathway C: Monte-Carlo values at a few points of each answer (VinePPO)
# ---------------------------------------------------------------------------------------


def check_mc_points(point_mask: torch.Tensor, response_mask: torch.Tensor, where: str = "mc_points") -> None:
    """Raise a VapoError unless ``point_mask`` marks real positions only and every non-empty
    row has a point at its first real position (the prompt state, so that every token has a
    latest point at or before it).

    Args:
        point_mask: ``[B, T]`` bool/int/float in {0, 1}: positions t whose state value V^π(s_t)
            was estimated by Monte-Carlo.
        response_mask: ``[B, T]`` in {0, 1}.
    """
    if not isinstance(point_mask, torch.Tensor) or point_mask.shape != response_mask.shape:
        shape = tuple(point_mask.shape) if isinstance(point_mask, torch.Tensor) else type(point_mask).__name__
        raise VapoError(f"mc_points has shape {shape}, response_mask {tuple(response_mask.shape)}", where=where,
                        fix="pass a [B, T] mask of the Monte-Carlo points, shaped like response_mask")
    pm, m = point_mask.bool(), response_mask.bool()
    if bool((pm & ~m).any()):
        raise VapoError("a Monte-Carlo point lies on a masked (padding) position", where=where,
                        fix="place points at real response positions only")
    n_t = distance_from_end(response_mask)
    first = (n_t == m.sum(dim=1, keepdim=True).to(n_t.dtype)) & m
    if bool((first & ~pm).any()):
        raise VapoError("a response has no Monte-Carlo point at its first real position", where=where,
                        fix="always estimate the value of the prompt state (t = 0) as one of the points")


def _point_links(point_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each position t: ``prev`` = the latest point ≤ t (−1 if none) and ``nxt`` = the first
    point ≥ t (T if none), both ``[B, T]`` long."""
    b, t_len = point_mask.shape
    pos = torch.arange(t_len, device=point_mask.device).expand(b, t_len)
    pm = point_mask.bool()
    prev = torch.cummax(torch.where(pm, pos, -1), dim=1).values
    nxt = torch.flip(torch.cummin(torch.flip(torch.where(pm, pos, t_len), dims=[1]), dim=1).values, dims=[1])
    return prev, nxt


def _padded(x: torch.Tensor) -> torch.Tensor:
    """[B, T] → [B, T + 1] with a 0 column at index T (the terminal state: value 0, no reward left)."""
    return torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)


def fill_mc_values(values: torch.Tensor, point_mask: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Values between Monte-Carlo points: piecewise-constant from the latest point (VinePPO gives
    every token of a reasoning step the value of the step's first state).

    Args:
        values: ``[B, T]`` float; only the entries at points are read (V̂ of those states).
        point_mask: ``[B, T]`` in {0, 1}, checked by :func:`check_mc_points`.
        response_mask: ``[B, T]`` in {0, 1}.
    Returns:
        ``[B, T]`` in values' dtype: out[i, t] = values[i, p] for the latest point p ≤ t of row i
        (so out = values at every point), 0 at masked positions.
    """
    check_mc_points(point_mask, response_mask, "fill_mc_values")
    prev, _ = _point_links(point_mask)
    v = _padded(torch.where(point_mask.bool(), values, 0.0))
    return torch.where(response_mask.bool(), v.gather(1, prev.clamp(min=0)), 0.0)


def _reward_to_go(token_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T + 1] float64: W_t = Σ_{k ≥ t} r_k over real tokens, W_T = 0."""
    r = torch.where(response_mask.bool(), token_rewards.to(torch.float64), 0.0)
    return _padded(torch.flip(torch.cumsum(torch.flip(r, dims=[1]), dim=1), dims=[1]))


def mc_value_targets(token_rewards: torch.Tensor, values: torch.Tensor, point_mask: torch.Tensor,
                     response_mask: torch.Tensor) -> torch.Tensor:
    """Regression targets for the critic from Monte-Carlo points (γ = 1): the return up to the
    first point at or after t, bootstrapped there on its Monte-Carlo value,

        y_t = Σ_{t ≤ k < q} r_k + V̂(s_q),   q = the first point ≥ t  (after the last point: the
              end of the answer, V = 0, so y_t is the Monte-Carlo return G_t),

    so y_t = V̂(s_t) at a point. With on-policy answers and unbiased V̂, E[y_t | s_t] = V^π(s_t)
    (the path from t to q is a sample of π), and y has the variance of the reward-to-go up to q
    plus V̂'s sampling noise, not that of the final outcome.

    Args:
        token_rewards: ``[B, T]`` rewards (masked entries ignored).
        values: ``[B, T]`` float; only the entries at points are read.
        point_mask, response_mask: ``[B, T]`` in {0, 1} (:func:`check_mc_points`).
    Returns:
        ``[B, T]`` in values' dtype, 0 at masked positions.
    """
    check_mc_points(point_mask, response_mask, "mc_value_targets")
    _, nxt = _point_links(point_mask)
    w = _reward_to_go(token_rewards, response_mask)
    v = _padded(torch.where(point_mask.bool(), values.to(torch.float64), 0.0))
    y = w[:, :-1] - w.gather(1, nxt) + v.gather(1, nxt)
    return torch.where(response_mask.bool(), y, 0.0).to(values.dtype)


def vine_advantages(token_rewards: torch.Tensor, values: torch.Tensor, point_mask: torch.Tensor,
                    response_mask: torch.Tensor) -> torch.Tensor:
    """VinePPO's credit (arXiv 2410.01679, eq. 6-7; its step advantage r + V̂(s_{j+1}) − V̂(s_j)):
    the points p_0 < p_1 < ... cut each answer into segments, and every token t of the segment
    [p_j, p_{j+1}) gets

        A_t = Σ_{p_j ≤ k < p_{j+1}} r_k + V̂(s_{p_{j+1}}) − V̂(s_{p_j}),

    with V̂ after the end = 0 (the last segment's A is its rewards, i.e. the outcome, minus V̂ of
    its first state). Equal to one-step TD over segments (GAE with λ = 0 at segment level).

    Args, shapes: as :func:`mc_value_targets`. Returns ``[B, T]`` in values' dtype, 0 at masked positions.
    """
    check_mc_points(point_mask, response_mask, "vine_advantages")
    prev, nxt = _point_links(point_mask)
    t_len = point_mask.shape[1]
    nxt_strict = torch.cat([nxt[:, 1:], torch.full_like(nxt[:, :1], t_len)], dim=1)  # first point > t
    w = _reward_to_go(token_rewards, response_mask)
    v = _padded(torch.where(point_mask.bool(), values.to(torch.float64), 0.0))
    seg = w[:, :-1] - w.gather(1, nxt_strict) + v.gather(1, nxt_strict) - v[:, :-1]  # valid at points
    adv = _padded(torch.where(point_mask.bool(), seg, 0.0)).gather(1, prev.clamp(min=0))
    return torch.where(response_mask.bool(), adv, 0.0).to(values.dtype)


@register_advantage_estimator("vine")  # its extra knobs: vapo.algos.catalog
def vine(inp: AdvantageInput, params: AdvantageParams) -> AdvantageOutput:
    """Monte-Carlo values instead of a critic (registered as "vine"; VinePPO).

    ``inp.values``: ``[B, T]`` Monte-Carlo values, read at ``inp.mc_points`` (``[B, T]``, a point
    at each answer's first position). ``params.extra["vine_credit"]``: "segment" →
    :func:`vine_advantages`; "gae" → masked GAE (γ = ``params.gamma``, λ = ``params.lam_actor``,
    None → length-adaptive) over :func:`fill_mc_values`. Returns: advantages ``[B, T]``; no
    critic returns (None).
    """
    credit = str((params.extra or {}).get("vine_credit", "segment"))
    if credit not in VINE_CREDITS:
        raise VapoError(f"unknown vine_credit {credit!r}", where="algo.advantage.extra.vine_credit",
                        fix=f"use one of: {', '.join(VINE_CREDITS)}")
    points = getattr(inp, "mc_points", None)
    if inp.values is None or points is None:
        raise VapoError("the 'vine' estimator needs Monte-Carlo values and their points (AdvantageInput.values, "
                        ".mc_points)", where="vapo.algos.pathways.vine",
                        fix="let the trainer draw them (algo.mc_values), or choose 'gae'/'grpo'")
    if credit == "segment":
        if float(params.gamma) != 1.0:
            raise VapoError(f"vine_credit 'segment' assumes γ = 1, got {params.gamma}", where="algo.advantage.gamma",
                            fix="set algo.advantage.gamma=1.0 (Monte-Carlo values are undiscounted)")
        return AdvantageOutput(vine_advantages(inp.token_rewards, inp.values, points, inp.response_mask), None)
    v = fill_mc_values(inp.values, points, inp.response_mask)
    lam = resolve_actor_lambda(params, response_lengths(inp.response_mask))
    adv, _ = masked_gae(inp.token_rewards, v, inp.response_mask, gamma=params.gamma, lam=lam)
    return AdvantageOutput(adv, None)


# ---------------------------------------------------------------------------------------
# Pathway D: the critic weighted by its measured quality (EVPO, V0.5)
# ---------------------------------------------------------------------------------------


def ev_against_mc(pred: torch.Tensor, mc: torch.Tensor, mc_var: torch.Tensor) -> torch.Tensor:
    """Explained variance of Monte-Carlo values by the critic, corrected for the MC noise:

        EV = 1 − (Var(V̂ − v) − σ̄²) / (Var(V̂) − σ̄²),   σ̄² = mean of the MC estimates' variances,

    (population variances; the noise of V̂ is independent of v given the state, so σ̄² is taken out
    of both), the same figure as ``ev_vs_mc`` of vapo.train.probe.

    Args:
        pred: ``[K]`` the critic's values at K states; mc: ``[K]`` their Monte-Carlo values V̂;
        mc_var: ``[K]`` ≥ 0, the variance of each V̂ (s²/K continuations).
    Returns:
        0-d float64 tensor; NaN when Var(V̂) ≤ σ̄² (no variance left to explain) or K = 0.
    """
    p, y, s2 = (x.to(torch.float64).reshape(-1) for x in (pred, mc, mc_var))
    if not (p.shape == y.shape == s2.shape):
        raise VapoError(f"pred {tuple(p.shape)}, mc {tuple(y.shape)} and mc_var {tuple(s2.shape)} must be [K] each",
                        where="vapo.algos.pathways.ev_against_mc", fix="pass one entry per Monte-Carlo state")
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    if p.numel() == 0:
        return nan
    noise = s2.mean()
    var_y = y.var(unbiased=False) - noise
    if not bool(var_y > 0):
        return nan
    return 1.0 - ((y - p).var(unbiased=False) - noise) / var_y


def critic_weight(ev: float | torch.Tensor) -> float:
    """The critic's weight w = clamp(EV, 0, 1); NaN (nothing measured or nothing to explain) → 0,
    i.e. the group-mean baseline."""
    x = float(ev)
    return 0.0 if x != x else min(max(x, 0.0), 1.0)


def blend_advantages(critic_advantages: torch.Tensor, scores: torch.Tensor, group_index: torch.Tensor,
                     response_mask: torch.Tensor, weight: float) -> torch.Tensor:
    """w·A_critic + (1 − w)·(R − mean_g R): a useless critic (w = 0) leaves Dr. GRPO's group-mean
    baseline (no std division, so both terms are in reward units), a perfect one (w = 1) leaves
    the critic's advantages unchanged.

    Args:
        critic_advantages: ``[B, T]`` advantages from the critic (e.g. VAPO's GAE).
        scores: ``[B]`` outcome rewards; group_index: ``[B]`` int group ids; response_mask: ``[B, T]``.
        weight: w in [0, 1].
    Returns:
        ``[B, T]`` in critic_advantages' dtype, 0 at masked positions.
    """
    w = float(weight)
    if not 0.0 <= w <= 1.0:
        raise VapoError(f"blend weight must be in [0, 1], got {weight!r}", where="vapo.algos.pathways.blend_advantages",
                        fix="clamp it with critic_weight()")
    base = dr_grpo_advantages(scores, group_index, response_mask).to(torch.float64)
    out = w * critic_advantages.to(torch.float64) + (1.0 - w) * base
    return torch.where(response_mask.bool(), out, 0.0).to(critic_advantages.dtype)
