"""vapo inside verl: importing this package registers vapo's advantage estimators and policy
loss in verl's registries (``verl.trainer.ppo.core_algos``).

verl loads external code by module name, not through package entry points: either
``VERL_USE_EXTERNAL_MODULES=vapo.integrations.verl`` (imported by ``import verl``, in every
process where that variable is set) or ``actor_rollout_ref.model.external_lib=vapo.integrations.verl``
(imported by verl's actor/critic workers). The recipe in ``recipe/`` does both. See docs/verl.md.
"""

from vapo.integrations.verl.plugin import (
    ADVANTAGE_ESTIMATORS,
    POLICY_LOSSES,
    register,
)

register()

__all__ = ["ADVANTAGE_ESTIMATORS", "POLICY_LOSSES", "register"]
