"""vapo's estimators and policy loss with verl's signatures, registered in verl's registries.

verl (``verl/trainer/ppo/core_algos.py``) keeps two registries:

- ``ADV_ESTIMATOR_REGISTRY`` via ``register_adv_est(name)``. ``ray_trainer.compute_advantage``
  calls a registered estimator as ``fn(token_level_rewards=[B, T], response_mask=[B, T],
  config=<algorithm config>, index=<[B] uids>?, reward_baselines=<[B]>?)`` and expects
  ``(advantages [B, T], returns [B, T])``. It never passes the critic's values (its own GAE is
  a hard-wired branch), so ``vapo_gae`` is called with values by the recipe's trainer
  (``recipe/vapo_ray_trainer.py``) and refuses to run without them.
- ``POLICY_LOSS_REGISTRY`` via ``register_policy_loss(name)``. The actor calls
  ``fn(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config=<ActorConfig>,
  rollout_is_weights)`` and expects ``(loss 0-d, {metric name: float})``.

Names are prefixed ``vapo_`` (or are ``vapo``) so that they never collide with verl's own.
Importing verl happens inside `register`, never at ``import vapo``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vapo.algos import AdvantageInput, AdvantageParams, get_advantage_estimator, get_policy_loss
from vapo.errors import VapoError

# α of the length-adaptive λ under verl: the paper's 0.05, for the answers of hundreds to thousands
# of tokens that verl trains on. vapo's own default (algo.advantage.alpha, vapo/config.py) is 0.5,
# chosen for its built-in tasks' ~20-token answers; docs/verl.md says why the two differ.
VERL_ALPHA = 0.05


def group_ids(index: Any, device: torch.device | None = None) -> torch.Tensor:
    """verl's ``index`` (a [B] numpy array of prompt uids, usually strings) -> [B] int64 group
    ids, equal ids for equal uids."""
    _, inverse = np.unique(np.asarray(index), return_inverse=True)
    return torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=device)


# --------------------------------------------------------------------------------------------
# Advantage estimators
# --------------------------------------------------------------------------------------------


def vapo_gae_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam_actor: float | None = None,
    lam_critic: float = 1.0,
    alpha: float = VERL_ALPHA,
    **unused: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled GAE (actor lambda != critic lambda) with VAPO's length-adaptive actor lambda.

    Args:
        token_level_rewards: [B, T]. response_mask: [B, T] in {0, 1}.
        config: verl's algorithm config (unused: parameters come as arguments).
        values: [B, T] critic values V(s_t). Required.
        gamma: discount. lam_actor: actor lambda, None -> 1 - 1/(alpha * length) per response.
        lam_critic: lambda of the critic's targets (1.0: Monte-Carlo returns). alpha: > 0.
        unused: keys verl adds for other estimators (``index``, ``reward_baselines``).
    Returns:
        (advantages from lam_actor, returns from lam_critic): [B, T], 0 at masked positions.
    """
    if values is None:
        raise VapoError(
            "the 'vapo_gae' advantage estimator needs the critic's values, and verl's "
            "compute_advantage does not pass them to registered estimators",
            where="algorithm.adv_estimator=vapo_gae",
            fix="train with the vapo recipe's trainer (python -m vapo.integrations.verl.recipe."
                "main_vapo), which calls vapo_gae with the values; or use verl's 'gae'",
        )
    out = get_advantage_estimator("gae")(
        AdvantageInput(token_rewards=token_level_rewards, response_mask=response_mask,
                       values=values),
        AdvantageParams(gamma=gamma, lam_actor=lam_actor, lam_critic=lam_critic, alpha=alpha),
    )
    return out.advantages, out.returns


def _critic_free(vapo_name: str):
    def estimator(
        token_level_rewards: torch.Tensor,
        response_mask: torch.Tensor,
        config: Any = None,
        index: Any = None,
        **unused: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            raise VapoError(
                f"the 'vapo_{vapo_name}' estimator needs the prompt uids (verl's 'uid' column)",
                where=f"algorithm.adv_estimator=vapo_{vapo_name}",
                fix="keep verl's default, which adds a uid per prompt before rollout")
        out = get_advantage_estimator(vapo_name)(
            AdvantageInput(token_rewards=token_level_rewards, response_mask=response_mask,
                           group_index=group_ids(index, token_level_rewards.device)),
            AdvantageParams(lam_actor=None, alpha=VERL_ALPHA),  # λ and α are unused by group estimators
        )
        # verl's critic-free estimators return the advantages as "returns" too.
        return out.advantages, out.advantages

    estimator.__name__ = f"vapo_{vapo_name}_advantage"
    estimator.__doc__ = (
        f"vapo's '{vapo_name}' group advantage with verl's signature: "
        "(token_level_rewards [B, T], response_mask [B, T], config, index [B] uids) -> "
        "(advantages [B, T], advantages)."
    )
    return estimator


ADVANTAGE_ESTIMATORS = {
    "vapo_gae": vapo_gae_advantage,
    "vapo_grpo": _critic_free("grpo"),
    "vapo_dr_grpo": _critic_free("dr_grpo"),
    "vapo_rloo": _critic_free("rloo"),
}


# --------------------------------------------------------------------------------------------
# Policy loss
# --------------------------------------------------------------------------------------------


def _verl_token_weights(response_mask: torch.Tensor, loss_agg_mode: str,
                        global_batch_info: dict, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] per-token weights w such that verl's ``agg_loss(L, mask, mode, **info)`` equals
    sum(w * L). agg_loss is linear in L, so w is its gradient: computing it this way keeps
    verl's normalisation across micro-batches and data-parallel ranks (dp_size,
    batch_num_tokens, global_batch_size) exactly, for every mode verl has."""
    from verl.trainer.ppo.core_algos import agg_loss  # optional extra: vapo[verl]

    probe = torch.zeros(response_mask.shape, dtype=dtype, device=response_mask.device,
                        requires_grad=True)
    with torch.enable_grad():
        (w,) = torch.autograd.grad(
            agg_loss(loss_mat=probe, loss_mask=response_mask, loss_agg_mode=loss_agg_mode,
                     **global_batch_info), probe)
    return w


def vapo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """vapo's PPO clip with clip-higher and dual-clip (``vapo.algos.policy_loss_clip``) as a
    verl policy loss (``actor_rollout_ref.actor.policy_loss.loss_mode=vapo``).

    Reads from verl's ActorConfig: ``clip_ratio_low``/``clip_ratio_high`` (each defaulting to
    ``clip_ratio``, as in verl), ``clip_ratio_c`` (dual clip, verl's default 3.0),
    ``global_batch_info`` (aggregation across micro-batches and ranks, see
    `_verl_token_weights`). ``rollout_is_weights`` [B, T], when verl computes them, multiply
    each token's loss as in verl's vanilla loss.

    Args: [B, T] tensors as named; loss_agg_mode: one of verl's modes.
    Returns:
        (loss 0-d, metrics): actor/pg_clipfrac (clipped low or high), actor/pg_clipfrac_lower
        (dual clip active), actor/ppo_kl (k3 estimate), actor/ratio_mean, actor/ratio_max.
    """
    if config is None:
        raise VapoError("the 'vapo' policy loss needs verl's actor config", where="vapo_policy_loss",
                        fix="call it through verl's actor, which passes config=ActorConfig")
    clip = config.clip_ratio
    eps_low = config.clip_ratio_low if config.clip_ratio_low is not None else clip
    eps_high = config.clip_ratio_high if config.clip_ratio_high is not None else clip
    dual_clip_c = config.get("clip_ratio_c", 3.0)
    info = dict(getattr(config, "global_batch_info", None) or {})
    weights = _verl_token_weights(response_mask, loss_agg_mode, info,
                                  torch.promote_types(log_prob.dtype, torch.float32))
    if rollout_is_weights is not None:
        weights = weights * rollout_is_weights.detach()
    loss, stats = get_policy_loss("ppo_clip")(
        log_prob, old_log_prob, advantages, response_mask,
        eps_low=eps_low, eps_high=eps_high, dual_clip_c=dual_clip_c, weights=weights)
    metrics = {
        "actor/pg_clipfrac": float(stats["clipfrac_low"] + stats["clipfrac_high"]),
        "actor/pg_clipfrac_lower": float(stats["dual_clipfrac"]),
        "actor/ppo_kl": float(stats["approx_kl"]),
        "actor/ratio_mean": float(stats["ratio_mean"]),
        "actor/ratio_max": float(stats["ratio_max"]),
    }
    return loss, metrics


POLICY_LOSSES = {"vapo": vapo_policy_loss}


def register() -> None:
    """Put `ADVANTAGE_ESTIMATORS` and `POLICY_LOSSES` into verl's registries (idempotent).

    Raises ImportError with the install command when verl is absent."""
    try:
        from verl.trainer.ppo import core_algos  # optional extra: vapo[verl]
    except ImportError as e:
        raise ImportError(f"vapo.integrations.verl needs verl: pip install 'vapo[verl]' ({e})") from e
    for name, fn in ADVANTAGE_ESTIMATORS.items():
        core_algos.register_adv_est(name)(fn)  # same fn again: verl accepts it
    for name, fn in POLICY_LOSSES.items():
        core_algos.register_policy_loss(name)(fn)
