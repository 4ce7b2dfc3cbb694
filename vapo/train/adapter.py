"""Config → algorithm: the one place where config fields become the arguments of the algorithm
functions of vapo.algos (docs/algorithms.md). Training and diagnostics both go through here, so
a run's advantages are computed the same way wherever they are computed.

The defaults live in vapo/config.py only; everything here passes explicit values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from vapo.algos.advantages import (
    AdvantageInput,
    AdvantageOutput,
    AdvantageParams,
    get_advantage_estimator,
    resolve_actor_lambda,
)
from vapo.algos.losses import kl_estimate, masked_whiten
from vapo.algos.shaping import scores_to_token_rewards
from vapo.config import AdvantageConfig, AlgoConfig, Config, PolicyLossConfig


def advantage_params(a: AdvantageConfig) -> AdvantageParams:
    """The estimator's parameters from ``algo.advantage`` (lam_actor "adaptive" → None, which the
    estimators resolve with :func:`actor_lambda`'s formula)."""
    return AdvantageParams(
        gamma=a.gamma, lam_actor=None if a.lam_actor == "adaptive" else float(a.lam_actor),
        lam_critic=a.lam_critic, alpha=a.alpha, eps=a.eps, pass_k=a.pass_k, extra=dict(a.extra),
    )


def actor_lambda(a: AdvantageConfig, lengths: torch.Tensor) -> torch.Tensor:
    """The actor's GAE λ of each response [B] (lengths [B] ≥ 1): the fixed ``lam_actor``, or the
    length-adaptive λ(l) = 1 − 1/(α·l) (docs/algorithms.md, length-adaptive GAE), resolved by
    :func:`vapo.algos.advantages.resolve_actor_lambda` as the estimators resolve it."""
    lam = resolve_actor_lambda(advantage_params(a), lengths)
    if isinstance(lam, torch.Tensor):
        return lam
    dtype = lengths.dtype if lengths.is_floating_point() else torch.float32
    return torch.full(lengths.shape, float(lam), dtype=dtype)


def norm_len(cfg: Config) -> int:
    """T_max of the seq-mean-token-sum-norm aggregation: ``algo.policy_loss.norm_len``, or when
    it is null the longest answer, ``rollout.max_new_tokens``."""
    return cfg.algo.policy_loss.norm_len or cfg.rollout.max_new_tokens


@dataclass(frozen=True)
class LossSettings:
    """What the actor's loss is made of, from ``algo.policy_loss`` and ``algo.kl``: the policy
    loss ``name`` (its own keyword arguments: :func:`policy_loss_kwargs`), the token weights
    (``agg_mode``, ``norm_len``), the positive-example NLL and entropy-bonus coefficients, and the
    KL term of the loss (``kl_coef`` 0 when the KL is off or applied in the reward instead)."""

    name: str
    agg_mode: str
    norm_len: int
    nll_coef: float
    entropy_coef: float
    kl_coef: float
    kl_estimator: str


def loss_settings(cfg: Config) -> LossSettings:
    """The actor loss's settings of ``cfg`` (see :class:`LossSettings`)."""
    pl, kl = cfg.algo.policy_loss, cfg.algo.kl
    return LossSettings(name=pl.name, agg_mode=pl.agg_mode, norm_len=norm_len(cfg), nll_coef=pl.nll_coef,
                        entropy_coef=pl.entropy_coef, kl_coef=0.0 if kl.in_reward else kl.coef,
                        kl_estimator=kl.estimator)


def token_rewards(algo: AlgoConfig, scores: torch.Tensor, response_mask: torch.Tensor,
                  old_logprobs: torch.Tensor | None = None, ref_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] token rewards: each score on its response's last token, minus β·KL per token when
    the KL is applied in the reward (``algo.kl.in_reward``; estimator ``algo.kl.estimator``).

    Args: scores [B]; response_mask [B, T]; old_logprobs, ref_logprobs [B, T] (needed only for
    the in-reward KL).
    """
    rewards = scores_to_token_rewards(scores, response_mask)
    kl = algo.kl
    if kl.coef > 0 and kl.in_reward:
        rewards = rewards - kl.coef * kl_estimate(old_logprobs, ref_logprobs, kl.estimator) * response_mask
    return rewards


def advantage_output(algo: AlgoConfig, rewards: torch.Tensor, response_mask: torch.Tensor, *,
                     values: torch.Tensor | None, scores: torch.Tensor, group_index: torch.Tensor,
                     mc_points: torch.Tensor | None = None) -> AdvantageOutput:
    """The configured estimator's output, its advantages whitened over the batch's tokens when
    ``algo.advantage.whiten``.

    Args: rewards [B, T] token rewards; response_mask [B, T]; values [B, T] or None; scores [B];
    group_index [B]; mc_points [B, T] (the positions of Monte-Carlo values, "vine") or None.
    """
    a = algo.advantage
    out = get_advantage_estimator(a.estimator)(
        AdvantageInput(token_rewards=rewards, response_mask=response_mask, values=values, scores=scores,
                       group_index=group_index, mc_points=mc_points),
        advantage_params(a),
    )
    if a.whiten:
        out = dataclasses.replace(out, advantages=masked_whiten(out.advantages, response_mask) * response_mask)
    return out


def loss_mask(algo: AlgoConfig, response_mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """[B, T] tokens that enter the actor's and the critic's losses: the response mask, without
    truncated responses when ``algo.overlong.filter_truncated``."""
    if algo.overlong.filter_truncated:
        return response_mask * (~truncated).float()[:, None]
    return response_mask


def policy_loss_kwargs(pl: PolicyLossConfig) -> dict:
    """The keyword arguments of the policy loss ``pl.name`` from ``algo.policy_loss`` (besides the
    token weights): the clip range and dual clip for ppo_clip (and any registered loss taking
    them), the covariance options for clip_cov and kl_cov (docs/algorithms.md, covariance-based
    entropy control; config validation refuses the options a loss does not read)."""
    if pl.name == "clip_cov":
        return dict(eps_low=pl.eps_low, eps_high=pl.eps_high, clip_cov_ratio=pl.clip_cov_ratio,
                    clip_cov_lb=pl.clip_cov_lb, clip_cov_ub=pl.clip_cov_ub)
    if pl.name == "kl_cov":
        return dict(kl_cov_ratio=pl.kl_cov_ratio, kl_cov_coef=pl.kl_cov_coef)
    return dict(eps_low=pl.eps_low, eps_high=pl.eps_high, dual_clip_c=pl.dual_clip_c)


__all__ = ["LossSettings", "actor_lambda", "advantage_output", "advantage_params", "loss_mask", "loss_settings", "norm_len",
           "policy_loss_kwargs", "token_rewards"]
