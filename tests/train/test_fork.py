"""`vapo train --fork`: a new run from another run's checkpoint, with changed RL settings."""

import json

import pytest
from test_trainer import TIME_KEYS, micro  # helpers beside the trainer tests (same folder)
from typer.testing import CliRunner

from vapo.cli import app
from vapo.config import FORKABLE_FIELDS, fork_differences, resolve_config
from vapo.errors import ConfigError, VapoError
from vapo.train import fork_run, start_run
from vapo.train.rundir import read_jsonl


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


@pytest.fixture
def source(tmp_path):
    """A finished 3-iteration vapo run with its step_0 checkpoint (after value pretraining)."""
    cfg = micro(tmp_path, "vapo", "train.iterations=3", "train.checkpoint_every=0")
    start_run(cfg, name="src", progress=False)
    return cfg, tmp_path / "runs" / "src"


def test_a_fork_with_the_same_config_reproduces_the_source(tmp_path, source):
    cfg, src = source
    summary = fork_run(src / "checkpoints" / "step_0", cfg, name="same", progress=False)
    fork = tmp_path / "runs" / "same"
    assert _strip(read_jsonl(fork / "metrics.jsonl")) == _strip(read_jsonl(src / "metrics.jsonl"))
    assert read_jsonl(fork / "eval.jsonl") == read_jsonl(src / "eval.jsonl")
    # the value pretraining it inherits is in its events, so its summary reports the same critic
    assert summary["critic_quality"] == json.loads((src / "summary.json").read_text())["critic_quality"]
    ev = [r for r in read_jsonl(fork / "events.jsonl") if r.get("phase") == "fork"]
    assert len(ev) == 1 and ev[0]["changed"] == [] and ev[0]["iteration"] == 0
    assert (fork / "checkpoints" / "critic_init").is_dir()


def test_a_fork_with_another_lambda_shares_the_start_and_then_differs(tmp_path, source):
    cfg, src = source
    before = (src / "metrics.jsonl").read_text()
    new = cfg.model_copy(deep=True)
    new.algo.advantage.lam_actor = 0.5
    new.algo.policy_loss.entropy_coef = 0.1  # a gradient whatever the rewards (the micro warm start earns ~none)
    fork_run(src / "checkpoints" / "step_0", new, name="lam", progress=False)
    fork = tmp_path / "runs" / "lam"
    a, b = read_jsonl(src / "metrics.jsonl"), read_jsonl(fork / "metrics.jsonl")
    assert [r["iteration"] for r in b] == [1, 2, 3]
    # iteration 1 samples the same answers from the same policy (the checkpoint's streams) ...
    for k in ("reward", "response_length"):
        assert a[0][k] == b[0][k], k
    # ... and updates it otherwise, so iteration 2 samples from another policy
    assert a[0]["actor_grad_norm"] != b[0]["actor_grad_norm"]
    assert a[1]["entropy"] != b[1]["entropy"]
    step0 = [r for r in read_jsonl(fork / "eval.jsonl") if r["iteration"] == 0]
    assert step0 == [r for r in read_jsonl(src / "eval.jsonl") if r["iteration"] == 0]
    assert (src / "metrics.jsonl").read_text() == before  # the source is only read
    ev = next(r for r in read_jsonl(fork / "events.jsonl") if r.get("phase") == "fork")
    assert ev["changed"] == ["algo.advantage.lam_actor: 'adaptive' → 0.5", "algo.policy_loss.entropy_coef: 0.0 → 0.1"]


def test_a_fork_that_changes_the_checkpointed_state_is_refused_and_creates_nothing(tmp_path, source):
    cfg, src = source
    for field, value in (("optim", ("critic_lr", 1e-2)), ("sft", ("steps", 31)), ("rollout", ("group_size", 8))):
        new = cfg.model_copy(deep=True)
        setattr(getattr(new, field), *value)
        with pytest.raises(ConfigError, match=f"{field}.{value[0]}"):
            fork_run(src / "checkpoints" / "step_0", new, name="bad", progress=False)
    new = cfg.model_copy(deep=True)
    new.seed = 1
    with pytest.raises(ConfigError, match="seed"):
        fork_run(src / "checkpoints" / "step_0", new, name="bad", progress=False)
    with pytest.raises(ConfigError, match="above 3"):  # nothing left to run
        fork_run(src / "checkpoints" / "step_3", cfg, name="bad", progress=False)
    with pytest.raises(VapoError, match="not a checkpoint of a run"):
        fork_run(src, cfg, name="bad", progress=False)
    assert not (tmp_path / "runs" / "bad").exists()


def test_forkable_fields_name_real_fields_and_the_rule_splits_changes():
    base = resolve_config("vapo")
    d = base.to_dict()
    for f in FORKABLE_FIELDS:
        node = d
        for part in f.split("."):
            assert part in node, f
            node = node[part]
    other = resolve_config("vapo", overrides=["algo.advantage.alpha=0.05", "optim.actor_lr=2e-4", "train.iterations=7"])
    allowed, refused = fork_differences(base, other)
    assert allowed == ["algo.advantage.alpha: 0.5 → 0.05", "train.iterations: 400 → 7"]
    assert refused == ["optim.actor_lr: 0.0001 → 0.0002"]


def test_cli_fork_starts_from_the_source_config(tmp_path, source):
    _, src = source
    r = CliRunner().invoke(app, ["train", "--fork", str(src / "checkpoints" / "step_0"), "--name", "cli",
                                 "--set", "algo.policy_loss.nll_coef=0.0", "--set", f"train.runs_dir={tmp_path / 'runs'}",
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    fork = tmp_path / "runs" / "cli"
    assert len(read_jsonl(fork / "metrics.jsonl")) == 3
    r = CliRunner().invoke(app, ["train", "--fork", str(src / "checkpoints" / "step_0"), "--name", "cli2",
                                 "--set", "model.size=tiny", "--set", f"train.runs_dir={tmp_path / 'runs'}", "--quiet"])
    assert r.exit_code == 2 and "model.size" in r.output
    assert not (tmp_path / "runs" / "cli2").exists()
    r = CliRunner().invoke(app, ["train", "--fork", str(src / "checkpoints" / "step_0"), "--resume", str(src)])
    assert r.exit_code == 2 and "two different starts" in r.output
