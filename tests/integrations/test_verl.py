"""vapo inside verl, through verl's own code (CPU): the plug-in loads through verl's
"verl.plugins" entry point, verl's registries return vapo's functions, and on a DataProto batch
RayVAPOTrainer's advantage step (run through verl's module-level compute_advantage, as fit runs
it) equals vapo.algos on the same tensors, and verl's GAE when lambda_actor = lambda_critic.

verl lives in an environment of its own (bin/test-verl); elsewhere this module is skipped with the
reason, except under VAPO_REQUIRE_VERL=1 (set by bin/test-verl and CI), where it fails instead."""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st


def _import_verl():
    """verl, or a skip with the reason; under VAPO_REQUIRE_VERL=1 (bin/test-verl, CI) a failure."""
    try:
        import verl
    except ImportError as e:
        why = (f"verl is not installed ({e}): it needs its own environment, which bin/test-verl builds "
               "(verl pins transformers < 5.11; docs/verl.md)")
        if os.environ.get("VAPO_REQUIRE_VERL") == "1":
            pytest.fail(f"VAPO_REQUIRE_VERL=1 but {why}", pytrace=False)
        pytest.skip(why, allow_module_level=True)
    return verl


verl = _import_verl()

from verl import DataProto  # noqa: E402
from verl.trainer.ppo import core_algos, ray_trainer  # noqa: E402

import vapo.integrations.verl as vapo_verl  # noqa: E402
from vapo.algos import (  # noqa: E402
    adaptive_lambda,
    decoupled_gae,
    grpo_advantages,
    masked_whiten,
    policy_loss_clip,
)
from vapo.errors import ConfigError, VapoError  # noqa: E402
from vapo.integrations.verl.plugin import vapo_gae_advantage, vapo_policy_loss  # noqa: E402
from vapo.integrations.verl.recipe.vapo_ray_trainer import RayVAPOTrainer  # noqa: E402

RECIPE_CONFIG = Path(vapo_verl.__file__).parent / "recipe" / "config"


def recipe_config(*overrides: str):
    """The recipe's YAML composed on top of verl's ppo_trainer.yaml, as main_vapo does."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(RECIPE_CONFIG), version_base=None):
        return compose(config_name="vapo_trainer",
                       overrides=["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4", *overrides])


BASE = recipe_config()


def with_values(config, values: dict):
    """A copy of `config` with existing keys set (composing anew is slow for property tests)."""
    from omegaconf import OmegaConf

    cfg = copy.deepcopy(config)
    for key, value in values.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def trainer_with(config) -> RayVAPOTrainer:
    """A RayVAPOTrainer holding only its config (no Ray workers): enough for the advantage step."""
    t = object.__new__(RayVAPOTrainer)
    t.config = config
    return t


def random_batch(b: int, t: int, seed: int, prompt_len: int = 3) -> DataProto:
    """A verl rollout batch: right-padded responses with lengths 1..t, the outcome score on the
    last response token, critic values everywhere (junk on the padding)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = t  # one full-length row
    resp_mask = (torch.arange(t)[None] < lengths[:, None]).long()
    rewards = torch.zeros(b, t)
    rewards[torch.arange(b), lengths - 1] = torch.randint(0, 2, (b,), generator=g).float()
    values = torch.randn(b, t, generator=g)
    attention = torch.cat([torch.ones(b, prompt_len, dtype=torch.long), resp_mask], 1)
    return DataProto.from_dict(
        tensors={"responses": torch.randint(0, 50, (b, t), generator=g), "attention_mask": attention,
                 "token_level_rewards": rewards, "values": values},
        non_tensors={"uid": np.array([f"p{i // 2}" for i in range(b)], dtype=object)},
    )


def verl_step(data: DataProto, config) -> DataProto:
    """verl's advantage call exactly as RayPPOTrainer.fit makes it."""
    a = config.algorithm
    return ray_trainer.compute_advantage(data, adv_estimator=a.adv_estimator, gamma=a.gamma, lam=a.lam,
                                         num_repeat=1, norm_adv_by_std_in_grpo=True, config=a)


# ------------------------------------------------------------------------- loading, registries


def test_plugin_loads_through_verl_entry_point():
    """A fresh `import verl` registers vapo's names (and does not with entry points disabled:
    then nothing else could have registered them)."""
    code = ("import verl\nfrom verl.trainer.ppo import core_algos as c\n"
            "print(sorted(k for k in c.ADV_ESTIMATOR_REGISTRY if k.startswith('vapo')),"
            " 'vapo' in c.POLICY_LOSS_REGISTRY)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}

    def run(**extra: str) -> str:
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True,
                             text=True, timeout=240, cwd=Path(__file__).parent)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    assert run() == "['vapo_dr_grpo', 'vapo_gae', 'vapo_grpo', 'vapo_rloo'] True", (
        "the 'verl.plugins' entry point did not register vapo: is vapo installed (pip install -e .)?")
    assert run(VERL_USE_EXTERNAL_PLUGINS="none") == "[] False"
    # verl's other route, used in its workers (model.external_lib / VERL_USE_EXTERNAL_MODULES):
    assert run(VERL_USE_EXTERNAL_PLUGINS="none",
               VERL_USE_EXTERNAL_MODULES="vapo.integrations.verl").endswith("True")


def test_verl_registries_return_vapo_functions():
    for name, fn in vapo_verl.ADVANTAGE_ESTIMATORS.items():
        assert core_algos.get_adv_estimator_fn(name) is fn
    assert core_algos.get_policy_loss_fn("vapo") is vapo_policy_loss
    vapo_verl.register()  # idempotent: registering the same functions again is accepted
    assert core_algos.get_adv_estimator_fn("vapo_gae") is vapo_gae_advantage


# ------------------------------------------------------------------------- advantage estimators


def test_registered_vapo_gae_refuses_without_values():
    """verl's compute_advantage does not pass values to registered estimators: a clear error."""
    data = random_batch(4, 6, seed=0)
    cfg = recipe_config()
    with pytest.raises(VapoError, match="needs the critic's values"):
        verl_step(data, cfg)


def test_vapo_grpo_through_verl_compute_advantage_equals_vapo_algos():
    data = random_batch(8, 5, seed=1)
    cfg = recipe_config("algorithm.adv_estimator=vapo_grpo")
    scores = data.batch["token_level_rewards"].sum(-1)
    mask = ray_trainer.compute_response_mask(data)
    out = verl_step(data, cfg)
    group = torch.tensor([i // 2 for i in range(8)])
    expected = grpo_advantages(scores, group, mask, 1e-6)
    torch.testing.assert_close(out.batch["advantages"], expected)


# ------------------------------------------------------------------------- trainer advantage step


def test_trainer_step_equals_vapo_algos_adaptive_lambda():
    cfg = recipe_config()
    data = random_batch(6, 9, seed=2)
    rewards, values = data.batch["token_level_rewards"].clone(), data.batch["values"].clone()
    t = trainer_with(cfg)
    original = ray_trainer.compute_advantage
    with t.vapo_advantage_hook():
        out = verl_step(data, cfg)  # the call fit makes, now routed to the trainer
    assert ray_trainer.compute_advantage is original  # restored after the block
    mask = ray_trainer.compute_response_mask(data)
    lam = adaptive_lambda(mask.sum(-1).float(), 0.05)
    adv, ret = decoupled_gae(rewards, values, mask, 1.0, lam, 1.0)
    torch.testing.assert_close(out.batch["advantages"], adv)
    torch.testing.assert_close(out.batch["returns"], ret)
    # lambda_critic = 1, gamma = 1: the critic's target is the outcome score on every real token.
    score = rewards.sum(-1, keepdim=True).expand_as(ret)
    torch.testing.assert_close(out.batch["returns"][mask.bool()], score[mask.bool()])


def test_trainer_passes_other_estimators_to_verl():
    cfg = recipe_config("algorithm.adv_estimator=gae", "algorithm.lam=0.9")
    a = verl_step(random_batch(4, 5, seed=3), cfg)
    with trainer_with(cfg).vapo_advantage_hook():
        b = verl_step(random_batch(4, 5, seed=3), cfg)
    torch.testing.assert_close(a.batch["advantages"], b.batch["advantages"])


@settings(max_examples=25, deadline=None)
@given(b=st.integers(2, 7), t=st.integers(1, 12), lam=st.floats(0.0, 1.0), seed=st.integers(0, 10_000),
       whiten=st.booleans())
def test_trainer_step_equals_verl_gae_when_lambdas_are_equal(b, t, lam, seed, whiten):
    """lambda_actor = lambda_critic = lam: decoupled GAE is verl's GAE. verl always whitens its
    advantages; without whitening, vapo's equal verl's returns - values. Compared on real tokens
    (verl leaves carried values on the padding)."""
    data = random_batch(b, t, seed)
    if int(ray_trainer.compute_response_mask(data).sum()) < 2:
        return  # verl's whitening needs two tokens
    ours_cfg = with_values(BASE, {"vapo.lam_actor": lam, "vapo.lam_critic": lam, "vapo.whiten": whiten})
    verl_cfg = with_values(BASE, {"algorithm.adv_estimator": "gae", "algorithm.lam": lam})
    ref = verl_step(random_batch(b, t, seed), verl_cfg)
    ref_adv, ref_ret = ref.batch["advantages"], ref.batch["returns"]
    with trainer_with(ours_cfg).vapo_advantage_hook():
        out = verl_step(data, ours_cfg)
    m = ray_trainer.compute_response_mask(data).bool()
    torch.testing.assert_close(out.batch["returns"][m], ref_ret[m], atol=1e-5, rtol=1e-5)
    if whiten:
        torch.testing.assert_close(out.batch["advantages"][m], ref_adv[m], atol=1e-4, rtol=1e-4)
    else:
        torch.testing.assert_close(out.batch["advantages"][m], (ref_ret - data.batch["values"])[m],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(masked_whiten(out.batch["advantages"], m)[m], ref_adv[m],
                                   atol=1e-4, rtol=1e-4)


def test_trainer_refuses_settings_it_would_not_honour():
    data = random_batch(4, 5, seed=4)
    for overrides, match in [(["algorithm.lam=0.95"], "algorithm.lam"),
                             (["algorithm.use_pf_ppo=true"], "use_pf_ppo"),
                             (["+vapo.lam=0.9"], "unknown key")]:
        cfg = recipe_config(*overrides)
        with trainer_with(cfg).vapo_advantage_hook(), pytest.raises(ConfigError, match=match):
            verl_step(data, cfg)


# ------------------------------------------------------------------------- policy loss


def actor_config(*overrides: str):
    from verl.utils.config import omega_conf_to_dataclass

    return omega_conf_to_dataclass(recipe_config(*overrides).actor_rollout_ref.actor)


def loss_inputs(seed: int, b: int = 6, t: int = 8):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) * 3
    new = (old + 0.4 * torch.randn(b, t, generator=g)).requires_grad_(True)
    adv = torch.randn(b, t, generator=g) * 2
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()
    return old, new, adv, mask


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
@pytest.mark.parametrize("batch_info", [{}, {"dp_size": 2, "batch_num_tokens": 40, "global_batch_size": 12}])
def test_vapo_loss_equals_verl_vanilla_and_vapo_algos(agg, batch_info):
    """verl's vanilla loss has the same clip-higher + dual-clip math: both losses and their
    gradients agree under every aggregation mode and verl's global-batch normalisation."""
    cfg = actor_config(f"actor_rollout_ref.actor.loss_agg_mode={agg}")
    cfg.global_batch_info.update(batch_info)
    old, new, adv, mask = loss_inputs(5)
    ours, metrics = core_algos.get_policy_loss_fn("vapo")(old, new, adv, mask, agg, cfg, None)
    (g_ours,) = torch.autograd.grad(ours, new)
    ref, ref_metrics = core_algos.get_policy_loss_fn("vanilla")(old, new, adv, mask, agg, cfg, None)
    (g_ref,) = torch.autograd.grad(ref, new)
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_ours, g_ref)
    assert metrics["actor/pg_clipfrac_lower"] == pytest.approx(ref_metrics["actor/pg_clipfrac_lower"], abs=1e-6)
    if agg == "token-mean" and not batch_info:
        own, _ = policy_loss_clip(new, old, adv, mask, eps_low=0.2, eps_high=0.28, dual_clip_c=3.0)
        torch.testing.assert_close(ours, own)


def test_vapo_loss_applies_rollout_is_weights_as_verl():
    cfg = actor_config()
    old, new, adv, mask = loss_inputs(6)
    w = torch.rand(old.shape, generator=torch.Generator().manual_seed(7)) + 0.5
    ours, _ = vapo_policy_loss(old, new, adv, mask, "token-mean", cfg, w)
    ref, _ = core_algos.get_policy_loss_fn("vanilla")(old, new, adv, mask, "token-mean", cfg, w)
    torch.testing.assert_close(ours, ref)
    plain, _ = vapo_policy_loss(old, new, adv, mask, "token-mean", cfg, None)
    assert not torch.allclose(ours, plain)


def test_run_script_overrides_compose_on_the_recipe_config():
    """Every key the run script sets exists in the composed config (a typo would fail here)."""
    import re

    script = (RECIPE_CONFIG.parent / "run_vapo_qwen2.5_0.5b_gsm8k.sh").read_text()
    keys = re.findall(r"^\s+([a-z_][\w.]*)=", script, flags=re.M)
    assert "actor_rollout_ref.model.path" in keys and len(keys) > 10
    cfg = recipe_config(*[f"{k}=1" for k in keys if k != "trainer.logger"])
    assert cfg.actor_rollout_ref.model.path == 1


def test_main_refuses_bad_settings_before_starting_ray():
    """main_vapo.main checks the config before run_ppo starts Ray (hydra passes a given config
    straight through)."""
    import ray

    from vapo.integrations.verl.recipe import main_vapo

    assert issubclass(main_vapo.VAPOTaskRunner, main_vapo.main_ppo_v0.TaskRunner.__ray_actor_class__)
    assert main_vapo.VAPOTaskRunner.run is not main_vapo.main_ppo_v0.TaskRunner.__ray_actor_class__.run
    for overrides, match in [(["trainer.use_v1=true"], "use_v1"), (["algorithm.lam=0.9"], "algorithm.lam"),
                             (["vapo.alpha_typo=1"], "unknown key")]:
        ov = [o if not o.startswith("vapo.alpha_typo") else "+" + o for o in overrides]
        with pytest.raises(ConfigError, match=match):
            main_vapo.main(recipe_config(*ov))
    assert not ray.is_initialized()
