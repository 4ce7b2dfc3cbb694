"""RayVAPOTrainer: verl's RayPPOTrainer with vapo's advantage step.

verl's ``RayPPOTrainer.fit`` computes advantages by calling the module-level
``verl.trainer.ppo.ray_trainer.compute_advantage`` on the driver; its GAE branch is
hard-wired (one lambda, whitened advantages) and registered estimators do not receive the
critic's values. With ``algorithm.adv_estimator=vapo_gae`` this trainer replaces that one
call, for the duration of ``fit``, by `RayVAPOTrainer.compute_advantage`: decoupled GAE over
the critic's values, with the actor's lambda length-adaptive (``vapo.lam_actor: null``) or
fixed, and the critic's targets from ``vapo.lam_critic``. Every other estimator goes to
verl's own function unchanged. (verl's DAPO recipe instead copies the whole ``fit`` loop;
swapping one call keeps every other step of verl's loop as verl ships it.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from verl import DataProto
from verl.trainer.ppo import ray_trainer as _rt
from verl.trainer.ppo.ray_trainer import RayPPOTrainer

from vapo.algos import masked_whiten
from vapo.errors import ConfigError
from vapo.integrations.verl.plugin import VERL_ALPHA, vapo_gae_advantage

VAPO_DEFAULTS = {"lam_actor": None, "lam_critic": 1.0, "alpha": VERL_ALPHA, "whiten": False}


def vapo_settings(config: Any) -> dict[str, Any]:
    """The recipe's ``vapo`` section with defaults filled in; unknown keys and verl settings
    that vapo_gae would not honour are refused."""
    section = dict(config.get("vapo", None) or {})
    unknown = sorted(set(section) - set(VAPO_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in the vapo section", where="vapo",
                          fix=f"use only {sorted(VAPO_DEFAULTS)}")
    algo = config.algorithm
    if algo.get("lam", 1.0) != 1.0:
        raise ConfigError(
            f"algorithm.lam={algo.lam} is not used by vapo_gae", where="algorithm.lam",
            fix="set vapo.lam_actor (null = length-adaptive) and vapo.lam_critic instead")
    if algo.get("use_pf_ppo", False):
        raise ConfigError("algorithm.use_pf_ppo is not supported with vapo_gae",
                          where="algorithm.use_pf_ppo", fix="set it to false")
    return {**VAPO_DEFAULTS, **section}


def vapo_advantage_step(data: DataProto, config: Any) -> DataProto:
    """Write ``advantages`` and ``returns`` ([B, T]) into ``data.batch`` from its
    ``token_level_rewards``, ``values`` and ``response_mask`` (computed from the attention
    mask when absent, as verl does). Advantages are whitened over the batch's response tokens
    only if ``vapo.whiten`` (verl's GAE always whitens; VAPO does not say to)."""
    s = vapo_settings(config)
    if "response_mask" not in data.batch.keys():
        data.batch["response_mask"] = _rt.compute_response_mask(data)
    if "values" not in data.batch.keys():
        raise ConfigError("the batch has no critic values", where="algorithm.adv_estimator=vapo_gae",
                          fix="enable the critic (critic.enable=true)")
    mask = data.batch["response_mask"]
    adv, ret = vapo_gae_advantage(
        token_level_rewards=data.batch["token_level_rewards"], response_mask=mask,
        values=data.batch["values"], gamma=config.algorithm.gamma,
        lam_actor=s["lam_actor"], lam_critic=s["lam_critic"], alpha=s["alpha"])
    if s["whiten"]:
        adv = masked_whiten(adv, mask) * mask
    data.batch["advantages"] = adv
    data.batch["returns"] = ret
    return data


class RayVAPOTrainer(RayPPOTrainer):
    """RayPPOTrainer whose advantage step is `vapo_advantage_step` when
    ``algorithm.adv_estimator == "vapo_gae"``."""

    def compute_advantage(self, data: DataProto, **verl_kwargs: Any) -> DataProto:
        """The advantage step ``fit`` runs. verl_kwargs: those of verl's compute_advantage
        (adv_estimator, gamma, lam, num_repeat, norm_adv_by_std_in_grpo, config)."""
        if self.config.algorithm.adv_estimator == "vapo_gae":
            return vapo_advantage_step(data, self.config)
        return self._verl_compute_advantage(data, **verl_kwargs)

    _verl_compute_advantage = staticmethod(_rt.compute_advantage)

    @contextlib.contextmanager
    def vapo_advantage_hook(self) -> Iterator[None]:
        """Within the block, verl's loop calls `compute_advantage` of this trainer."""
        original = _rt.compute_advantage
        _rt.compute_advantage = self.compute_advantage
        try:
            yield
        finally:
            _rt.compute_advantage = original

    def fit(self) -> None:
        if self.config.algorithm.adv_estimator == "vapo_gae":
            vapo_settings(self.config)  # refuse bad settings before any rollout
            if not self.use_critic:
                raise ConfigError("vapo_gae needs a critic", where="critic.enable",
                                  fix="set critic.enable=true")
        with self.vapo_advantage_hook():
            super().fit()

