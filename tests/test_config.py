import pytest
import yaml
from typer.testing import CliRunner

from vapo.cli import app
from vapo.config import (
    PRESETS,
    Config,
    describe_fields,
    load_config_file,
    resolve_config,
    validate_config,
)
from vapo.errors import ConfigError

# The values in the spec's preset table (shared/spec/algorithms.md).
SPEC = {
    #          est        λa          λc    critic pretrain agg                        ε_low ε_high nll  dyn    kl
    "ppo": ("gae", 0.95, 0.95, True, 0, "token-mean", 0.2, 0.2, 0.0, False, 0.0),
    "vc_ppo": ("gae", 0.95, 1.0, True, 50, "token-mean", 0.2, 0.2, 0.0, False, 0.0),
    "grpo": ("grpo", None, None, False, 0, "seq-mean-token-mean", 0.2, 0.2, 0.0, False, 0.04),
    "dr_grpo": ("dr_grpo", None, None, False, 0, "seq-mean-token-sum-norm", 0.2, 0.2, 0.0, False, 0.0),
    "dapo": ("grpo", None, None, False, 0, "token-mean", 0.2, 0.28, 0.0, True, 0.0),
    "vapo": ("gae", "adaptive", 1.0, True, 50, "token-mean", 0.2, 0.28, 0.1, False, 0.0),
}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_values_match_spec(name):
    c = resolve_config(name)
    est, la, lc, critic, pre, agg, el, eh, nll, dyn, kl = SPEC[name]
    a = c.algo
    assert a.advantage.estimator == est
    if la is not None:
        assert a.advantage.lam_actor == la and a.advantage.lam_critic == lc
    assert a.critic.enabled is critic and a.critic.pretrain_steps == pre
    assert a.policy_loss.agg_mode == agg
    assert (a.policy_loss.eps_low, a.policy_loss.eps_high) == (el, eh)
    assert a.policy_loss.nll_coef == nll
    assert a.dynamic_sampling.enabled is dyn
    assert a.kl.coef == kl
    assert c.preset == name
    if name == "grpo":
        assert a.kl.estimator == "k3"
    if name == "ppo":
        assert a.critic.value_clip == 0.2


@pytest.mark.parametrize("name", PRESETS)
def test_preset_round_trips_through_yaml(name, tmp_path):
    c = resolve_config(name)
    p = tmp_path / "c.yaml"
    p.write_text(c.to_yaml())
    assert load_config_file(p) == c
    assert yaml.safe_load(c.to_yaml()) == c.to_dict()


def test_switching_preset_leaves_no_residue():
    """A preset fixes every algorithm field, so grpo → vapo gives exactly the vapo preset."""
    via_file = resolve_config("vapo", overrides=None)
    assert resolve_config("vapo").algo == via_file.algo
    assert resolve_config("grpo").algo != via_file.algo


def test_overrides_parse_types():
    c = resolve_config("vapo", overrides=["optim.actor_lr=1e-3", "algo.critic.value_clip=null", "algo.kl.in_reward=true",
                                          "task.kwargs.path=x.jsonl"])
    assert c.optim.actor_lr == 1e-3 and c.algo.critic.value_clip is None and c.algo.kl.in_reward is True
    assert c.task.kwargs == {"path": "x.jsonl"}


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match='Did you mean "actor_lr"'):
        resolve_config("vapo", overrides=["optim.actr_lr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'algo.policy_los'"):
        validate_config({"algo": {"policy_los": {}}})


def test_out_of_range_states_range():
    with pytest.raises(ConfigError, match=r"allowed: ≥ 0.0, ≤ 1.0"):
        resolve_config("vapo", overrides=["algo.advantage.gamma=1.5"])
    with pytest.raises(ConfigError, match="must be 'adaptive' or a number in"):
        resolve_config("vapo", overrides=["algo.advantage.lam_actor=-0.1"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        resolve_config("vapo", overrides=["optim.actor_lr"])


def test_user_file_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  actor_lr: [1,\n")
    with pytest.raises(ConfigError, match=f"{p}:"):
        resolve_config(config_file=p)
    p.write_text("optim:\n  critc_lr: 1\n")
    with pytest.raises(ConfigError, match=str(p)):
        resolve_config(config_file=p)


def test_user_file_preset_and_values(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("preset: dapo\noptim:\n  actor_lr: 0.01\n")
    c = resolve_config(config_file=p)
    assert c.preset == "dapo" and c.algo.dynamic_sampling.enabled and c.optim.actor_lr == 0.01


def test_every_field_is_described():
    rows = describe_fields()
    assert len(rows) > 40
    missing = [k for k, _, d in rows if not d]
    assert not missing, f"fields without a description: {missing}"


def test_defaults_are_valid():
    assert validate_config(Config().to_dict()) == Config()


def test_cli_prints_config_error_without_traceback():
    r = CliRunner().invoke(app, ["train", "--set", "optim.actr_lr=1"])
    assert r.exit_code == 2
    assert "Did you mean" in r.output and "Traceback" not in r.output


def test_cli_help_lists_commands():
    r = CliRunner().invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("train", "eval", "theory", "diagnose"):
        assert cmd in r.output
    r = CliRunner().invoke(app, ["train", "--help"])
    assert "optim.actor_lr" in r.output and "algo.advantage.alpha" in r.output
