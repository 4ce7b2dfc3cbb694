"""`vapo diagnose` end to end on micro run directories (with and without a critic)."""

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
import typer
from typer.testing import CliRunner

from vapo.diagnostics.cli import diagnose_command
from vapo.diagnostics.hook import during_training
from vapo.diagnostics.report import SECTIONS
from vapo.diagnostics.run import Budget, diagnose
from vapo.errors import VapoError


def _finite_or_none(x):
    if isinstance(x, dict):
        return all(_finite_or_none(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite_or_none(v) for v in x)
    return not isinstance(x, float) or math.isfinite(x)


def test_every_section_is_written(micro_runs):
    run, result = micro_runs["vapo"]
    out = run / "diagnostics" / "step_2"
    data = json.loads((out / "diagnostics.json").read_text())
    assert _finite_or_none(data)
    for key, _, _ in SECTIONS:
        assert data[key]["finding"], key
    assert data["step"] == 2 and data["has_critic"]
    crit = data["critic"]
    assert set(crit["current"]["by_position"]) == {"0", "0.25", "0.5", "0.75"}
    # The micro critics' heads output their bias: 0.1 before pretraining (init), then 0.1·(step+1).
    pre = crit["pretraining"]
    assert pre["before"]["overall"]["mean_critic"] != pre["after"]["overall"]["mean_critic"]
    assert len(crit["probes"]["v_mc"]) == len(crit["probes"]["v_critic"]) == 16
    assert {"λ=0", "λ=0.95", "λ=1", "adaptive", "grpo"} <= set(data["advantage"]["estimators"])
    w = data["weighting"]["shares"]["modes"]
    for mode, shares in w.items():
        assert sum(shares.values()) == pytest.approx(1.0), mode
    assert set(data["generalisation"]["checkpoints"]) == {"0", "2"}
    assert set(data["exploration"]["pass_at_k"]) == {"1", "2", "3", "4"}
    assert data["timings"]["total"] > 0
    assert (out / "report.html").stat().st_size > 10_000


def test_critic_free_run_does_not_crash(micro_runs):
    run, result = micro_runs["grpo"]
    assert not result["has_critic"]
    assert "no critic in this run" in result["critic"]["finding"]
    assert "no critic in this run" in result["advantage"]["finding"]
    assert set(result["advantage"]["estimators"]) == {"grpo", "dr_grpo", "rloo"}
    html = (run / "diagnostics" / "step_2" / "report.html").read_text()
    assert "No critic in this run" in html


def test_bad_inputs_are_vapo_errors(micro_runs, tmp_path):
    run, _ = micro_runs["vapo"]
    with pytest.raises(VapoError, match="does not exist"):
        diagnose(tmp_path / "nope", budget=Budget.quick(), progress=False)
    with pytest.raises(VapoError, match="use one of: 0, 2"):
        diagnose(run, step=7, budget=Budget.quick(), progress=False)
    with pytest.raises(VapoError, match="continuations must be a positive integer"):
        diagnose(run, budget=Budget(continuations=0), progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(VapoError, match="no complete checkpoint"):
        diagnose(tmp_path / "empty", budget=Budget.quick(), progress=False)


def test_cli_prints_one_finding_per_section(micro_runs, tmp_path):
    run, _ = micro_runs["grpo"]
    app = typer.Typer()
    app.command()(diagnose_command)
    res = CliRunner().invoke(app, [str(run), "--quick", "--quiet", "--step", "0", "--out", str(tmp_path / "d"),
                                   "--continuations", "2"])
    assert res.exit_code == 0, res.output
    for _, title, _ in SECTIONS:
        assert title in res.output
    data = json.loads((tmp_path / "d" / "diagnostics.json").read_text())
    assert data["step"] == 0 and data["budget"]["continuations"] == 2 and data["budget"]["prefixes"] == 16


def test_training_hook_returns_flat_metrics_and_leaves_rng_alone(micro_runs):
    from vapo.config import load_config_file
    from vapo.diagnostics.common import generate_batch
    from vapo.models import Critic, load_policy_and_tokenizer
    from vapo.tasks import get_task
    from vapo.train.collect import RewardSettings

    run, _ = micro_runs["vapo"]
    cfg = load_config_file(run / "config.yaml")
    policy, tok = load_policy_and_tokenizer(run / "checkpoints" / "step_2" / "policy")
    critic = Critic.from_pretrained(run / "checkpoints" / "step_2" / "critic")
    task = get_task(cfg.task.name, **cfg.task.kwargs)
    trainer = SimpleNamespace(cfg=cfg, policy=policy.train(), critic=critic.train(), tokenizer=tok, task=task, iteration=3,
                              uses_critic=True)
    exp = generate_batch(policy, tok, task, RewardSettings.from_config(cfg), n_prompts=2, group_size=4, seed=0)
    torch.manual_seed(123)
    state, py_state = torch.get_rng_state(), random.getstate()
    m = during_training(trainer, exp)
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state
    assert policy.training and critic.training
    assert all(isinstance(v, float) for v in m.values())
    shares = [v for k, v in m.items() if k.startswith("diag/weight_share_")]
    assert sum(shares) == pytest.approx(1.0)
    # The critic's head outputs a constant 0.3 and every micro-run answer is wrong (V^π = 0 at this size).
    assert {"diag/critic_bias", "diag/critic_rmse", "diag/zero_signal_frac", "diag/seconds"} <= set(m)
    assert m["diag/critic_bias"] == pytest.approx(0.3 - m["diag/mc_value_mean"], abs=1e-5)


def test_diagnostics_callback_fires_every_diagnose_every_iterations(micro_runs):
    from vapo.config import load_config_file
    from vapo.diagnostics.common import generate_batch
    from vapo.diagnostics.hook import DiagnosticsCallback
    from vapo.models import load_policy_and_tokenizer
    from vapo.tasks import get_task
    from vapo.train.collect import RewardSettings

    run, _ = micro_runs["vapo"]
    cfg = load_config_file(run / "config.yaml").model_copy(update={"diagnose_every": 2})
    policy, tok = load_policy_and_tokenizer(run / "checkpoints" / "step_2" / "policy")
    task = get_task(cfg.task.name, **cfg.task.kwargs)
    exp = generate_batch(policy, tok, task, RewardSettings.from_config(cfg), n_prompts=2, group_size=2, seed=0)
    cb = DiagnosticsCallback()
    assert "diagnose_every" in cb.handles
    rows = {}
    for it in (1, 2, 3, 4):
        trainer = SimpleNamespace(cfg=cfg, policy=policy, critic=None, tokenizer=tok, task=task, iteration=it, uses_critic=False)
        rows[it] = {"iteration": it}
        cb.on_iteration_end(trainer, exp, rows[it])
    assert [any(k.startswith("diag/") for k in rows[it]) for it in (1, 2, 3, 4)] == [False, True, False, True]
