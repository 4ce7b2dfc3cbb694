"""Losses and masked reductions: clipped policy loss (clip-higher, dual-clip), the
covariance-based entropy-control losses Clip-Cov and KL-Cov, clipped value loss,
positive-example NLL, KL estimators, entropy, and the loss-aggregation modes.

Formulas, defaults and sources: docs/algorithms.md. Token tensors are ``[B, T]`` with a
``response_mask`` in {0, 1}; every reduction reads only real tokens (masked positions are
selected away with ``torch.where``, so they receive exactly zero gradient even if they hold
inf/NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vapo.algos.catalog import LOSS_AGG_MODES, POLICY_LOSSES
from vapo.errors import VapoError, unknown_name_error

__all__ = [
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "aggregate_loss",
    "entropy_from_logits",
    "explained_variance",
    "get_loss_agg_mode",
    "get_policy_loss",
    "kl_estimate",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss_clip",
    "policy_loss_clip_cov",
    "policy_loss_kl_cov",
    "positive_nll_loss",
    "token_covariance",
    "register_loss_agg_mode",
    "register_policy_loss",
    "token_weights",
    "value_loss",
]


def _check_same_shape(where: str, mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    for name, x in tensors.items():
        if x.shape != mask.shape:
            raise VapoError(f"{name} has shape {tuple(x.shape)} but the mask has {tuple(mask.shape)}",
                            where=where, fix=f"pass {name} with the mask's [B, T] shape")


# --------------------------------------------------------------------------------------------
# Masked reductions
# --------------------------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x over real positions (mask = 1), over all elements or along `dim`.
    x, mask: same shape. Returns a 0-d tensor (dim None) or x reduced along dim."""
    sel = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return sel.sum() if dim is None else sel.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over real positions; 0 where there are none (never NaN)."""
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim)
    return masked_sum(x, mask, dim) / count.clamp_min(1).to(x.dtype)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all real positions (0-d). unbiased=True uses n - 1 (as verl's
    ``masked_var``); with fewer than 2 real positions the variance is 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.bool().sum()
    if unbiased:
        var = torch.where(n > 1, var * n / (n - 1).clamp_min(1), torch.zeros_like(var))
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over real positions (unbiased var); with shift_mean=False
    the mean is added back (scale only). Same shape as x; masked positions hold 0."""
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    white = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        white = white + mean
    return torch.where(mask.bool(), white, torch.zeros((), dtype=white.dtype, device=x.device))


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[target - pred] / Var[target] over real positions (0-d, detached).
    1 = perfect critic, 0 = no better than a constant, < 0 worse. NaN when Var[target] = 0
    (undefined; the CleanRL / Stable-Baselines convention)."""
    pred, target = pred.detach().to(torch.float64), target.detach().to(torch.float64)
    var_t = masked_var(target, mask, unbiased=False)
    var_res = masked_var(target - pred, mask, unbiased=False)
    nan = torch.full_like(var_t, float("nan"))
    return torch.where(var_t > 0, 1 - var_res / var_t.clamp_min(1e-300), nan)


# --------------------------------------------------------------------------------------------
# Loss aggregation (docs/algorithms.md, "Loss aggregation"). token_weights is the single source of truth:
# aggregate_loss and the diagnostics' per-length gradient-weight reports both use it.
# --------------------------------------------------------------------------------------------

AggWeightFn = Callable[..., torch.Tensor]


def register_loss_agg_mode(name: str) -> Callable[[AggWeightFn], AggWeightFn]:
    """Decorator registering ``fn(mask[B,T] float, norm_len, num_tokens, num_seqs) -> [B,T]``
    weights. Taken names raise VapoError."""
    return LOSS_AGG_MODES.register(name)


def get_loss_agg_mode(name: str) -> AggWeightFn:
    """The weight function of aggregation mode `name`; unknown names raise (did-you-mean)."""
    return LOSS_AGG_MODES.get(name)


@register_loss_agg_mode("token-mean")
def _token_mean(m: torch.Tensor, norm_len, num_tokens, num_seqs) -> torch.Tensor:
    # DAPO §3.3 / VAPO: sum_i sum_t L / sum_i l_i -- every token counts equally.
    n = m.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=m.dtype)
    return m / n.clamp_min(1)


@register_loss_agg_mode("seq-mean-token-mean")
def _seq_mean_token_mean(m: torch.Tensor, norm_len, num_tokens, num_seqs) -> torch.Tensor:
    # GRPO (arXiv 2402.03300 eq. 3): (1/G) sum_i (1/l_i) sum_t L -- every sequence counts
    # equally. Zero-length rows have no token mean: they get weight 0 and are not counted
    # in the default number of sequences.
    lengths = m.sum(-1, keepdim=True)
    n = (lengths > 0).sum() if num_seqs is None else torch.as_tensor(num_seqs, dtype=m.dtype)
    return m / lengths.clamp_min(1) / n.clamp_min(1)


@register_loss_agg_mode("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(m: torch.Tensor, norm_len, num_tokens, num_seqs) -> torch.Tensor:
    # Dr. GRPO (arXiv 2503.20783 §3.2): sum_i sum_t L / (B * T_max) with a constant T_max
    # (norm_len, default the padded length T) and B all rows: the normaliser does not
    # depend on the batch's content.
    t_max = m.shape[-1] if norm_len is None else norm_len
    b = m.shape[0] if num_seqs is None else num_seqs
    if t_max <= 0 or b <= 0:
        raise VapoError(f"norm_len and num_seqs must be > 0, got {t_max} and {b}",
                        where="token_weights", fix="pass positive normalisers")
    return m / (float(t_max) * float(b))


def token_weights(mask: torch.Tensor, mode: str, norm_len: int | None = None,
                  num_tokens: int | float | None = None,
                  num_seqs: int | float | None = None,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """The weight each token's loss gets under aggregation `mode`; the loss is
    ``sum(loss_mat * token_weights)``.

    Args:
        mask: [B, T] in {0, 1}.
        mode: "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum-norm" (or registered).
        norm_len: T_max of seq-mean-token-sum-norm (default T).
        num_tokens: token-mean normaliser override (e.g. global token count when micro-batching).
        num_seqs: sequence-count override for the seq-* modes.
        dtype: of the weights (default float32, float64 for a float64 mask).
    Returns:
        [B, T] weights; 0 at masked positions. They sum
        to 1 under the batch's own normalisers (seq-mean-token-sum-norm: sum(l_i)/(B*T_max)).
    """
    fn = get_loss_agg_mode(mode)
    if dtype is None:
        dtype = torch.float64 if mask.dtype == torch.float64 else torch.float32
    m = mask.to(dtype)
    if (m != 0).logical_and(m != 1).any():
        raise VapoError("mask must hold only 0 and 1", where="token_weights",
                        fix="pass response_mask (bool or 0/1)")
    return fn(m, norm_len, num_tokens, num_seqs)


def aggregate_loss(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
                   weights: torch.Tensor | None = None, **agg_kwargs) -> torch.Tensor:
    """Scalar loss = sum_{i,t} loss_mat * token_weights(mask, mode, ...). loss_mat: [B, T];
    masked entries are ignored (and get zero gradient). agg_kwargs: norm_len, num_tokens,
    num_seqs.

    weights: [B, T] precomputed token weights, used instead of ``token_weights`` (``mode`` and
    ``agg_kwargs`` are then ignored). For micro-batching: compute ``token_weights`` once on the
    whole batch and pass each micro-batch its rows; the micro-batch losses then sum to the
    whole batch's loss under any mode."""
    _check_same_shape("aggregate_loss", mask, loss_mat=loss_mat)
    if weights is not None:
        _check_same_shape("aggregate_loss", mask, weights=weights)
        w = weights.to(torch.promote_types(loss_mat.dtype, torch.float32))
    else:
        w = token_weights(mask, mode, **agg_kwargs,
                          dtype=torch.promote_types(loss_mat.dtype, torch.float32))
    return masked_sum(loss_mat * w, mask)


# --------------------------------------------------------------------------------------------
# Policy loss: PPO clip with clip-higher and optional dual-clip
# --------------------------------------------------------------------------------------------

PolicyLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator registering a policy loss ``fn(logprobs, old_logprobs, advantages,
    response_mask, **kwargs) -> (loss, stats)``. Taken names raise VapoError."""
    return POLICY_LOSSES.register(name)


def get_policy_loss(name: str) -> PolicyLossFn:
    """The policy loss registered as `name`; unknown names raise (did-you-mean)."""
    return POLICY_LOSSES.get(name)


def _masked_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mask, adv, log_ratio, ratio) [B, T] of a PPO-style policy loss: the mask as bool, the
    detached advantages and log ρ = log π − log π_old with padding set to 0, and ρ = exp(log ρ).
    Padding may hold anything (even inf): it is selected away before exp, so the gradient reaching
    masked positions is exactly 0, not 0 * inf."""
    mask = response_mask.bool()
    adv = torch.where(mask, advantages.detach(), torch.zeros_like(logprobs))
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    return mask, adv, log_ratio, torch.exp(log_ratio)


@register_policy_loss("ppo_clip")
def policy_loss_clip(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.28,
    dual_clip_c: float | None = None,
    agg_mode: str = "token-mean",
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with clip-higher (PPO §3, DAPO §3.1; docs/algorithms.md,
    "Clipped policy loss"):

        rho_t = exp(logpi(o_t) - logpi_old(o_t))
        L_t   = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)

    Dual-clip (Ye et al. 2020, arXiv 1912.09729 eq. 5), for A_t < 0 only: the loss is capped
    at -c A_t, i.e. L_t = min(L_t, -c A_t), as verl's ``compute_policy_loss``
    (``clip_pg_losses2 = min(-A*c, max(pg_losses1, pg_losses2))``). In objective form this is
    max(J_t, c A_t) (docs/algorithms.md, "Clipped policy loss"). c must be > 1.

    Args:
        logprobs: [B, T] log pi_theta of the sampled tokens (carries the gradient).
        old_logprobs, advantages: [B, T] (treated as constants).
        response_mask: [B, T] in {0, 1}.
        eps_low, eps_high: clip range [1 - eps_low, 1 + eps_high].
        dual_clip_c: None (off) or c > 1.
        agg_mode, agg_kwargs: see `token_weights`.
    Returns:
        (loss 0-d, stats): stats are detached 0-d tensors (masked means over real tokens):
        clipfrac_low = mean[A<0 & rho<1-eps_low], clipfrac_high = mean[A>0 & rho>1+eps_high],
        dual_clipfrac = mean[A<0 & dual clip active], approx_kl = mean k3 of rho
        ((rho - 1) - log rho, an estimate of KL(pi_old || pi)), ratio_mean, ratio_max.
    """
    where = "policy_loss_clip"
    _check_same_shape(where, response_mask, logprobs=logprobs, old_logprobs=old_logprobs,
                      advantages=advantages)
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise VapoError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}",
                        where=where, fix="use e.g. eps_low=0.2, eps_high=0.28")
    if dual_clip_c is not None and not dual_clip_c > 1:
        raise VapoError(f"dual_clip_c must be > 1, got {dual_clip_c}", where=where,
                        fix="use dual_clip_c=3.0 or None to disable")
    mask, adv, log_ratio, ratio = _masked_ratio(logprobs, old_logprobs, advantages, response_mask)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss_mat = torch.maximum(unclipped, clipped)
    neg = adv < 0
    dual_active = torch.zeros_like(mask)
    if dual_clip_c is not None:
        cap = -adv * dual_clip_c
        dual_active = neg & (loss_mat > cap)
        loss_mat = torch.where(neg, torch.minimum(loss_mat, cap), loss_mat)
    loss = aggregate_loss(loss_mat, response_mask, agg_mode, **agg_kwargs)

    with torch.no_grad():
        r = ratio.detach()
        stats = {
            "clipfrac_low": masked_mean((neg & (r < 1 - eps_low)).to(r.dtype), mask),
            "clipfrac_high": masked_mean(((adv > 0) & (r > 1 + eps_high)).to(r.dtype), mask),
            "dual_clipfrac": masked_mean(dual_active.to(r.dtype), mask),
            "approx_kl": masked_mean((r - 1) - log_ratio.detach(), mask),
            "ratio_mean": masked_mean(r, mask),
            "ratio_max": _masked_max(r, mask),
            **_covariance_stats(logprobs, adv, mask),
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# Covariance-based entropy control: Clip-Cov and KL-Cov (arXiv 2505.22617), as verl's
# loss_mode=clip_cov / kl_cov (docs/algorithms.md, "Covariance-based entropy control")
# --------------------------------------------------------------------------------------------


def _masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Largest x over real positions (0-d); 0 when there are none."""
    if not mask.any():
        return torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(mask, x, torch.full_like(x, -torch.inf)).max()


def token_covariance(logprobs: torch.Tensor, advantages: torch.Tensor,
                     response_mask: torch.Tensor) -> torch.Tensor:
    """Each real token's contribution to the covariance of log-probability and advantage over
    the batch's real tokens (arXiv 2505.22617 eq. 11; verl's ``cov_all``):

        Cov_i = (log pi(y_i) - mean_j log pi(y_j)) * (A_i - mean_j A_j)

    The means run over the real tokens of the whole [B, T] input; the masked mean of Cov_i is
    the covariance itself. Detached. logprobs, advantages, response_mask: [B, T].
    Returns [B, T] (dtype of logprobs), 0 at masked positions."""
    mask = response_mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    lp = torch.where(mask, logprobs.detach(), zero)
    adv = torch.where(mask, advantages.detach().to(logprobs.dtype), zero)
    cov = (adv - masked_mean(adv, mask)) * (lp - masked_mean(lp, mask))
    return torch.where(mask, cov, zero)


def _covariance_stats(logprobs: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """cov_mean: the covariance of log pi and A over the real tokens; cov_max: its largest token
    term (every policy loss reports both, so entropy control can be compared with and without)."""
    cov = token_covariance(logprobs, adv, mask)
    return {"cov_mean": masked_mean(cov, mask), "cov_max": _masked_max(cov, mask)}


def _check_cov_fraction(name: str, value: float, where: str) -> None:
    if not 0 < value <= 1:
        raise VapoError(f"{name} must be in (0, 1], got {value}", where=where,
                        fix=f"use e.g. {name}=0.0002 (verl's default)")


@register_policy_loss("clip_cov")
def policy_loss_clip_cov(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    clip_cov_ratio: float,
    clip_cov_lb: float,
    clip_cov_ub: float,
    generator: torch.Generator | None = None,
    agg_mode: str = "token-mean",
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clip-Cov (arXiv 2505.22617 §4; verl ``compute_policy_loss_clip_cov``): the PPO clipped
    surrogate (clip-higher, no dual clip), with the policy-gradient term of a few
    high-covariance tokens removed.

    Candidates: real tokens that the ratio clip leaves unclipped and whose covariance term
    (:func:`token_covariance`) lies strictly inside (clip_cov_lb, clip_cov_ub). Of these,
    n = min(#candidates, max(1, floor(clip_cov_ratio * #real tokens))) are drawn uniformly
    at random (``torch.randperm`` over the candidates in row-major order, from ``generator``
    or the global generator, as verl) and their loss term is multiplied by 0 (no gradient).

    Args:
        logprobs: [B, T] (carries the gradient). old_logprobs, advantages: [B, T] constants.
        response_mask: [B, T]. eps_low, eps_high: the ratio clip range.
        clip_cov_ratio: fraction of real tokens to detach, in (0, 1] (verl: 2e-4).
        clip_cov_lb, clip_cov_ub: the covariance band (verl: 1, 5).
        generator: torch.Generator for the random draw (None: the global one).
        agg_mode, agg_kwargs: see `token_weights`.
    Returns:
        (loss, stats): the ppo_clip statistics (dual_clipfrac 0) plus cov_clipfrac (fraction
        of real tokens detached; verl's pg_clipfrac here) and cov_band_frac (fraction of real
        tokens that were candidates).
    """
    where = "policy_loss_clip_cov"
    _check_same_shape(where, response_mask, logprobs=logprobs, old_logprobs=old_logprobs,
                      advantages=advantages)
    if not (0 <= eps_low < 1 and eps_high >= 0):
        raise VapoError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}",
                        where=where, fix="use e.g. eps_low=0.2, eps_high=0.28")
    _check_cov_fraction("clip_cov_ratio", clip_cov_ratio, where)
    if not clip_cov_lb < clip_cov_ub:
        raise VapoError(f"need clip_cov_lb < clip_cov_ub, got {clip_cov_lb} and {clip_cov_ub}",
                        where=where, fix="use e.g. clip_cov_lb=1.0, clip_cov_ub=5.0 (verl's defaults)")
    mask, adv, log_ratio, ratio = _masked_ratio(logprobs, old_logprobs, advantages, response_mask)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    with torch.no_grad():
        cov = token_covariance(logprobs, adv, mask)
        clip_by_origin = (clipped > unclipped) & mask
        band = mask & ~clip_by_origin & (cov > clip_cov_lb) & (cov < clip_cov_ub)
        n_clip = max(int(clip_cov_ratio * int(mask.sum())), 1)
        idx = torch.nonzero(band)  # row-major, as verl
        if len(idx):
            perm = torch.randperm(len(idx), generator=generator)
            idx = idx[perm[: min(n_clip, len(idx))].to(idx.device)]
        keep = torch.ones_like(logprobs)
        keep[idx[:, 0], idx[:, 1]] = 0
    loss_mat = torch.maximum(unclipped, clipped) * keep
    loss = aggregate_loss(loss_mat, response_mask, agg_mode, **agg_kwargs)

    with torch.no_grad():
        r = ratio.detach()
        stats = {
            "clipfrac_low": masked_mean(((adv < 0) & (r < 1 - eps_low)).to(r.dtype), mask),
            "clipfrac_high": masked_mean(((adv > 0) & (r > 1 + eps_high)).to(r.dtype), mask),
            "dual_clipfrac": torch.zeros((), dtype=r.dtype, device=r.device),
            "approx_kl": masked_mean((r - 1) - log_ratio.detach(), mask),
            "ratio_mean": masked_mean(r, mask),
            "ratio_max": _masked_max(r, mask),
            "cov_mean": masked_mean(cov, mask),
            "cov_max": _masked_max(cov, mask),
            "cov_clipfrac": masked_mean((keep == 0).to(r.dtype), mask),
            "cov_band_frac": masked_mean(band.to(r.dtype), mask),
        }
    return loss, stats


@register_policy_loss("kl_cov")
def policy_loss_kl_cov(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    kl_cov_ratio: float,
    kl_cov_coef: float,
    agg_mode: str = "token-mean",
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL-Cov (arXiv 2505.22617 §4; verl ``compute_policy_loss_kl_cov``): the *unclipped*
    policy-gradient surrogate -rho_t A_t on every real token, plus a penalty
    kl_cov_coef * |log rho_t| on the k = max(1, floor(kl_cov_ratio * #real tokens)) tokens
    with the largest covariance term (:func:`token_covariance`):

        L_t = -rho_t A_t + [t in top-k] * beta * |log pi(o_t) - log pi_old(o_t)|

    As in verl there is no ratio clip in this mode (the penalty takes its place).

    Args:
        logprobs: [B, T] (carries the gradient). old_logprobs, advantages: [B, T] constants.
        response_mask: [B, T]. kl_cov_ratio: fraction of real tokens penalised, in (0, 1]
        (verl: 2e-4; the paper also uses 2e-3). kl_cov_coef: beta >= 0 (verl's ppo_kl_coef, 1).
        agg_mode, agg_kwargs: see `token_weights`.
    Returns:
        (loss, stats): approx_kl, ratio_mean, ratio_max, cov_mean, cov_max, cov_klfrac
        (fraction of real tokens penalised), kl_abs (masked mean |log rho|, verl's ppo_kl here);
        clipfrac_low / clipfrac_high / dual_clipfrac are 0 (no clipping).
    """
    where = "policy_loss_kl_cov"
    _check_same_shape(where, response_mask, logprobs=logprobs, old_logprobs=old_logprobs,
                      advantages=advantages)
    _check_cov_fraction("kl_cov_ratio", kl_cov_ratio, where)
    if not kl_cov_coef >= 0:
        raise VapoError(f"kl_cov_coef must be >= 0, got {kl_cov_coef}", where=where,
                        fix="use kl_cov_coef=1.0 (verl's ppo_kl_coef)")
    mask, adv, log_ratio, ratio = _masked_ratio(logprobs, old_logprobs, advantages, response_mask)
    pg = -adv * ratio
    with torch.no_grad():
        cov = token_covariance(logprobs, adv, mask)
        flat_real = torch.nonzero(mask.reshape(-1)).squeeze(-1)
        selected = torch.zeros(mask.numel(), dtype=torch.bool, device=mask.device)
        if len(flat_real):
            k = max(1, int(len(flat_real) * kl_cov_ratio))
            top = torch.topk(cov.reshape(-1)[flat_real], k, largest=True).indices
            selected[flat_real[top]] = True
        selected = selected.reshape(mask.shape)
    loss_mat = torch.where(selected, pg + kl_cov_coef * log_ratio.abs(), pg)
    loss = aggregate_loss(loss_mat, response_mask, agg_mode, **agg_kwargs)

    with torch.no_grad():
        r = ratio.detach()
        zero = torch.zeros((), dtype=r.dtype, device=r.device)
        stats = {
            "clipfrac_low": zero,
            "clipfrac_high": zero,
            "dual_clipfrac": zero,
            "approx_kl": masked_mean((r - 1) - log_ratio.detach(), mask),
            "ratio_mean": masked_mean(r, mask),
            "ratio_max": _masked_max(r, mask),
            "cov_mean": masked_mean(cov, mask),
            "cov_max": _masked_max(cov, mask),
            "cov_klfrac": masked_mean(selected.to(r.dtype), mask),
            "kl_abs": masked_mean(log_ratio.detach().abs(), mask),
        }
    return loss, stats


# --------------------------------------------------------------------------------------------
# Value loss, positive-example NLL, KL estimators
# --------------------------------------------------------------------------------------------


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float | None = None,
    agg_mode: str = "token-mean",
    **agg_kwargs,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Critic loss (docs/algorithms.md, "Value loss"):

        clip_eps None: 1/2 (V - R)^2
        otherwise:     1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)

    Args:
        values: [B, T] current predictions (carry the gradient).
        old_values: [B, T] predictions at rollout time. returns: [B, T] targets.
        response_mask: [B, T]. clip_eps: None or > 0. agg_mode, agg_kwargs: see `token_weights`.
    Returns:
        (loss 0-d, stats): detached 0-d tensors vf_clipfrac (fraction of real tokens where the
        clipped term is the larger), vpred_mean, value_mse (masked mean of (V - R)^2).
    """
    where = "value_loss"
    _check_same_shape(where, response_mask, values=values, old_values=old_values, returns=returns)
    if clip_eps is not None and not clip_eps > 0:
        raise VapoError(f"clip_eps must be > 0 or None, got {clip_eps}", where=where,
                        fix="use clip_eps=0.2, or None for no value clipping")
    mask = response_mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    ret = torch.where(mask, returns.detach(), zero)
    values = torch.where(mask, values, zero)  # padding gets exactly zero gradient
    err = (values - ret) ** 2
    clipfrac = torch.zeros((), dtype=values.dtype)
    if clip_eps is None:
        loss_mat = 0.5 * err
    else:
        v_old = torch.where(mask, old_values.detach(), zero)
        v_clip = v_old + torch.clamp(values - v_old, -clip_eps, clip_eps)
        err_clip = (v_clip - ret) ** 2
        loss_mat = 0.5 * torch.maximum(err, err_clip)
        clipfrac = masked_mean((err_clip > err).to(err.dtype), mask).detach()
    loss = aggregate_loss(loss_mat, response_mask, agg_mode, **agg_kwargs)
    stats = {
        "vf_clipfrac": clipfrac,
        "vpred_mean": masked_mean(values.detach(), mask),
        "value_mse": masked_mean(err.detach(), mask),
    }
    return loss, stats


def positive_nll_loss(logprobs: torch.Tensor, response_mask: torch.Tensor,
                      correct: torch.Tensor, num_tokens: int | float | None = None) -> torch.Tensor:
    """Positive-example LM loss (VAPO, Positive Example LM Loss; docs/algorithms.md,
    "Positive-example NLL"):

        L_NLL = -(1 / sum_{i in C} l_i) sum_{i in C} sum_t log pi(o_{i,t})

    over the correct responses C (a token-mean over correct answers).

    Args:
        logprobs: [B, T] log pi_theta of the sampled tokens. response_mask: [B, T].
        correct: [B] bool, which responses are correct.
        num_tokens: override of the normaliser sum_{i in C} l_i (the whole batch's count when
            micro-batching).
    Returns:
        0-d tensor; 0 (still attached to the graph, zero gradient) when no correct response
        has a token.
    """
    where = "positive_nll_loss"
    _check_same_shape(where, response_mask, logprobs=logprobs)
    if not isinstance(correct, torch.Tensor) or correct.shape != (logprobs.shape[0],):
        raise VapoError(f"correct must be a [B]={logprobs.shape[0]} bool tensor", where=where,
                        fix="pass one bool per response")
    sel = response_mask.bool() & correct.bool()[:, None]
    n = sel.sum() if num_tokens is None else torch.as_tensor(num_tokens)
    if n == 0:
        return (logprobs * 0).sum()
    return -masked_sum(logprobs, sel) / n.to(logprobs.dtype)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from samples of pi (Schulman 2020,
    "Approximating KL divergence"; docs/algorithms.md, "KL estimators"):

        k1 = log pi - log pi_ref
        k2 = 1/2 (log pi - log pi_ref)^2
        k3 = pi_ref/pi - log(pi_ref/pi) - 1        (GRPO's, >= 0, unbiased)

    For k3 the log-ratio is clamped to [-20, 20] (as verl) so exp cannot overflow.

    Args:
        logprobs, ref_logprobs: [B, T] (or any equal shapes). kind: "k1" | "k2" | "k3".
    Returns:
        tensor of the same shape (no masking: apply the mask in the reduction).
    """
    if logprobs.shape != ref_logprobs.shape:
        raise VapoError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs "
                        f"{tuple(ref_logprobs.shape)} differ in shape", where="kl_estimate",
                        fix="pass tensors of the same [B, T] shape")
    diff = logprobs - ref_logprobs
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff**2
    if kind == "k3":
        log_r = torch.clamp(-diff, -20.0, 20.0)  # log(pi_ref / pi)
        return torch.exp(log_r) - log_r - 1
    raise unknown_name_error("KL estimator", kind, ["k1", "k2", "k3"], where="kl_estimate")


# --------------------------------------------------------------------------------------------
# Logits helpers
# --------------------------------------------------------------------------------------------


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis: H = logsumexp(z) - sum softmax(z) z
    (the softmax computed once). logits: [..., V] -> [...], dtype of logits."""
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] = z[label] - logsumexp(z), without materialising the
    full log-softmax. logits: [B, T, V]; labels: [B, T] int64 -> [B, T]."""
    if logits.shape[:-1] != labels.shape:
        raise VapoError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}",
                        where="logprobs_from_logits", fix="labels must be logits.shape[:-1]")
    picked = logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)
