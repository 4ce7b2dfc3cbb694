"""Pure-torch core of vapo: advantage estimators, losses, reward shaping.

Imports only torch (and vapo.errors). Token tensors are [B, T] with a response_mask in {0, 1};
per-sequence tensors are [B]. See docs/contracts.md (section vapo.algos).

The registries and the estimators' typed knobs (vapo.algos.catalog) load without torch, so that
vapo.config can check a config's names before torch is imported; every other name of this package
is imported from its module on first access (PEP 562), and each built-in estimator's module on its
first lookup by name.
"""

from __future__ import annotations

import importlib
from typing import Any

from vapo.algos.catalog import (
    ADVANTAGE_ESTIMATORS,
    ESTIMATOR_EXTRAS,
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    check_extra,
    register_advantage_estimator,
)

_LAZY = {
    "AdvantageInput": "vapo.algos.advantages",
    "AdvantageOutput": "vapo.algos.advantages",
    "AdvantageParams": "vapo.algos.advantages",
    "adaptive_lambda": "vapo.algos.advantages",
    "decoupled_gae": "vapo.algos.advantages",
    "discounted_reverse_cumsum": "vapo.algos.advantages",
    "dr_grpo_advantages": "vapo.algos.advantages",
    "get_advantage_estimator": "vapo.algos.advantages",
    "grpo_advantages": "vapo.algos.advantages",
    "masked_gae": "vapo.algos.advantages",
    "masked_gae_reference": "vapo.algos.advantages",
    "resolve_actor_lambda": "vapo.algos.advantages",
    "response_lengths": "vapo.algos.advantages",
    "rloo_advantages": "vapo.algos.advantages",
    "aggregate_loss": "vapo.algos.losses",
    "entropy_from_logits": "vapo.algos.losses",
    "explained_variance": "vapo.algos.losses",
    "get_loss_agg_mode": "vapo.algos.losses",
    "get_policy_loss": "vapo.algos.losses",
    "kl_estimate": "vapo.algos.losses",
    "logprobs_from_logits": "vapo.algos.losses",
    "masked_mean": "vapo.algos.losses",
    "masked_sum": "vapo.algos.losses",
    "masked_var": "vapo.algos.losses",
    "masked_whiten": "vapo.algos.losses",
    "policy_loss_clip": "vapo.algos.losses",
    "policy_loss_clip_cov": "vapo.algos.losses",
    "policy_loss_kl_cov": "vapo.algos.losses",
    "positive_nll_loss": "vapo.algos.losses",
    "register_loss_agg_mode": "vapo.algos.losses",
    "register_policy_loss": "vapo.algos.losses",
    "token_covariance": "vapo.algos.losses",
    "token_weights": "vapo.algos.losses",
    "value_loss": "vapo.algos.losses",
    "dynamic_sampling_keep": "vapo.algos.shaping",
    "overlong_penalty": "vapo.algos.shaping",
    "scores_to_token_rewards": "vapo.algos.shaping",
    "zero_signal_fraction": "vapo.algos.shaping",
    "GroupStats": "vapo.algos.groups",
    "group_stats": "vapo.algos.groups",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vapo.algos' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["ADVANTAGE_ESTIMATORS", "ESTIMATOR_EXTRAS", "LOSS_AGG_MODES", "POLICY_LOSSES", "check_extra",
           "register_advantage_estimator", *_LAZY]
