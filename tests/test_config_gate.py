"""vapo/config.py is the one gate: registry names and estimator knobs are refused when the config
resolves, through the command line with exit 2 and before any run directory exists."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from vapo.algos import (
    ADVANTAGE_ESTIMATORS,
    ESTIMATOR_EXTRAS,
    POLICY_LOSSES,
    AdvantageOutput,
    register_advantage_estimator,
)
from vapo.cli import app
from vapo.config import resolve_config
from vapo.errors import ConfigError

TYPOS = [
    ("algo.advantage.estimator=gea", "gae"),
    ("algo.policy_loss.name=ppo_clp", "ppo_clip"),
    ("algo.policy_loss.agg_mode=token_mean", "token-mean"),
    ("task.name=rewrite_summ", "rewrite_sum"),
    ("logging.sinks=[jsonl, tensorbord]", "tensorboard"),
    ("algo.advantage.extra={lambda_grd: [0.5]}", None),
]


@pytest.mark.parametrize("override, suggestion", TYPOS)
def test_cli_refuses_a_typo_before_the_run_directory(tmp_path, monkeypatch, override, suggestion):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["train", "--set", override, "--set", "train.iterations=1"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    if suggestion is not None:
        assert f'Did you mean "{suggestion}"' in r.output
    assert list(tmp_path.iterdir()) == []  # no runs/ directory, nothing written


def test_a_preset_typo_is_refused_with_a_suggestion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["train", "--preset", "vapo_no_clip_hihger"])
    assert r.exit_code == 2 and 'Did you mean "vapo_no_clip_higher"' in r.output
    assert list(tmp_path.iterdir()) == []


def test_estimator_knobs_are_checked_by_name_and_type():
    est = ["--set", "algo.advantage.estimator=gae_error_aware"]
    ok = resolve_config(overrides=[est[1], "algo.advantage.extra={lambda_grid: [0.5, 1.0], noise_var: null}"])
    assert ok.algo.advantage.extra["lambda_grid"] == [0.5, 1.0]
    with pytest.raises(ConfigError, match='Did you mean "min_group_var"'):
        resolve_config(overrides=[est[1], "algo.advantage.extra={min_grup_var: 0.1}"])
    with pytest.raises(ConfigError, match="must be int or float"):
        resolve_config(overrides=[est[1], "algo.advantage.extra={min_group_var: lots}"])
    with pytest.raises(ConfigError, match="must be int or float"):  # a bool is not a number here
        resolve_config(overrides=[est[1], "algo.advantage.extra={min_group_var: true}"])
    with pytest.raises(ConfigError, match="knobs of gae: none"):
        resolve_config(overrides=["algo.advantage.extra={lambda_grid: [0.5]}"])


def test_names_are_read_from_the_registries_as_they_are_now():
    """A plug-in's estimator (and its declared knob) resolves; once removed, it is refused."""
    name = "test_gate_tmp_estimator"
    override = [f"algo.advantage.estimator={name}", "algo.advantage.extra={scale: 2}"]
    with pytest.raises(ConfigError, match="unknown advantage estimator"):
        resolve_config(overrides=override)

    @register_advantage_estimator(name, extra={"scale": (int, float)})
    def _est(inp, params):  # pragma: no cover - never called
        return AdvantageOutput(torch.zeros_like(inp.token_rewards))

    try:
        assert resolve_config(overrides=override).algo.advantage.estimator == name
    finally:
        ADVANTAGE_ESTIMATORS.pop(name)
        ESTIMATOR_EXTRAS.pop(name, None)
    with pytest.raises(ConfigError, match="unknown advantage estimator"):
        resolve_config(overrides=override)
    assert "ppo_clip" in POLICY_LOSSES


def test_transformers_510_beside_kernels_015_is_refused_before_work(monkeypatch):
    import vapo.compat as compat

    versions = {"transformers": "5.10.4", "kernels": "0.19.1"}
    monkeypatch.setattr(compat.metadata, "version", lambda name: versions[name])
    with pytest.raises(ConfigError, match="every model load fails") as e:
        resolve_config()
    assert "kernels<0.15" in str(e.value)
    versions["kernels"] = "0.14.2"
    assert compat.kernels_conflict() is None
    versions.update(transformers="5.25.0", kernels="0.19.1")
    assert compat.kernels_conflict() is None


def test_answers_certain_to_truncate_are_warned_before_work(capsys):
    import random
    from pathlib import Path

    from vapo.models import validate_model
    from vapo.tasks import task_from_config

    long_cot = Path(__file__).resolve().parents[1] / "examples" / "long_cot.yaml"
    cfg = resolve_config(config_file=long_cot, overrides=["rollout.max_new_tokens=100"])
    validate_model(cfg, task_from_config(cfg.task))
    err = capsys.readouterr().err
    assert "[vapo] warning: rollout.max_new_tokens=100 is shorter than" in err and "most answers" in err
    cfg = resolve_config(config_file=long_cot)
    validate_model(cfg, task_from_config(cfg.task))
    assert "warning" not in capsys.readouterr().err
    default = resolve_config()
    validate_model(default, task_from_config(default.task))
    assert "warning" not in capsys.readouterr().err
    # a budget between the median and the longest demonstration: only the longest are named
    task = task_from_config(cfg.task)
    lens = sorted(len(task.sample(random.Random(i), "train").solution) for i in range(64))
    mid = resolve_config(config_file=long_cot, overrides=[f"rollout.max_new_tokens={lens[-8]}"])
    validate_model(mid, task)
    err = capsys.readouterr().err
    assert f"[vapo] warning: rollout.max_new_tokens={lens[-8]}" in err and "answers that long" in err
