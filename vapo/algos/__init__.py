"""Pure-torch core of vapo: advantage estimators, losses, reward shaping.

Imports only torch (and vapo.errors). Token tensors are [B, T] with a response_mask in {0, 1};
per-sequence tensors are [B]. See docs/contracts.md (section vapo.algos).
"""

from vapo.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInput,
    AdvantageOutput,
    AdvantageParams,
    adaptive_lambda,
    decoupled_gae,
    discounted_reverse_cumsum,
    dr_grpo_advantages,
    get_advantage_estimator,
    grpo_advantages,
    masked_gae,
    masked_gae_reference,
    register_advantage_estimator,
    rloo_advantages,
)
from vapo.algos.groups import GroupStats, group_stats
from vapo.algos.losses import (
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    aggregate_loss,
    entropy_from_logits,
    explained_variance,
    get_loss_agg_mode,
    get_policy_loss,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss_clip,
    policy_loss_clip_cov,
    policy_loss_kl_cov,
    positive_nll_loss,
    register_loss_agg_mode,
    register_policy_loss,
    token_covariance,
    token_weights,
    value_loss,
)
from vapo.algos.shaping import dynamic_sampling_keep, overlong_penalty, scores_to_token_rewards

# Importing the package registers every built-in estimator, so that names in a config
# (e.g. "gae_error_aware") resolve wherever vapo.algos is imported.
from vapo.algos import pathways  # noqa: E402, F401  isort: skip

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "LOSS_AGG_MODES",
    "POLICY_LOSSES",
    "AdvantageInput",
    "AdvantageOutput",
    "AdvantageParams",
    "GroupStats",
    "adaptive_lambda",
    "aggregate_loss",
    "decoupled_gae",
    "discounted_reverse_cumsum",
    "dr_grpo_advantages",
    "dynamic_sampling_keep",
    "entropy_from_logits",
    "explained_variance",
    "get_advantage_estimator",
    "get_loss_agg_mode",
    "get_policy_loss",
    "group_stats",
    "grpo_advantages",
    "kl_estimate",
    "logprobs_from_logits",
    "masked_gae",
    "masked_gae_reference",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "overlong_penalty",
    "policy_loss_clip",
    "policy_loss_clip_cov",
    "policy_loss_kl_cov",
    "positive_nll_loss",
    "register_advantage_estimator",
    "register_loss_agg_mode",
    "register_policy_loss",
    "rloo_advantages",
    "scores_to_token_rewards",
    "token_covariance",
    "token_weights",
    "value_loss",
]
