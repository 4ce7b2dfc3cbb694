"""VAPO training entry point for verl: verl's PPO entry point with RayVAPOTrainer.

    python -m vapo.integrations.verl.recipe.main_vapo data.train_files=... actor_rollout_ref.model.path=...

Hydra composes config/vapo_trainer.yaml on top of verl's own ppo_trainer.yaml; overrides on the
command line work as with ``verl.trainer.main_ppo``.
"""

from __future__ import annotations

import hydra
import ray
from verl.trainer import main_ppo_v0
from verl.trainer.main_ppo import run_ppo
from verl.utils.device import auto_set_device

from vapo.errors import ConfigError
from vapo.integrations.verl.recipe.vapo_ray_trainer import RayVAPOTrainer, vapo_settings

# verl declares its TaskRunner as a Ray actor (@ray.remote), which cannot be subclassed; its
# plain class is kept by Ray as __ray_actor_class__.
_VerlTaskRunner = getattr(main_ppo_v0.TaskRunner, "__ray_actor_class__", main_ppo_v0.TaskRunner)


class VAPOTaskRunner(_VerlTaskRunner):
    """verl's (v0) TaskRunner building a RayVAPOTrainer instead of a RayPPOTrainer.

    ``TaskRunner.run`` names the trainer class through its module's global ``RayPPOTrainer``;
    this runner is a Ray actor (its own process), where that name is bound to RayVAPOTrainer
    before the stock ``run`` executes. Everything else is verl's code as shipped."""

    def run(self, config):
        main_ppo_v0.RayPPOTrainer = RayVAPOTrainer
        return super().run(config)


@hydra.main(config_path="config", config_name="vapo_trainer", version_base=None)
def main(config) -> None:
    auto_set_device(config)
    if config.trainer.get("use_v1", False):
        raise ConfigError("the VAPO recipe runs on verl's RayPPOTrainer (the v0 trainer)",
                          where="trainer.use_v1", fix="set trainer.use_v1=false")
    if config.algorithm.adv_estimator == "vapo_gae":
        vapo_settings(config)  # refuse bad vapo settings before starting Ray
    run_ppo(config, task_runner_class=ray.remote(num_cpus=1)(VAPOTaskRunner))


if __name__ == "__main__":
    main()
