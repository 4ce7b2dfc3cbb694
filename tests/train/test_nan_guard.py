"""NaN/Inf in a real run: the update is skipped (the weights and the optimizer state stay as they
were), logged with the offending statistics, and after ``train.max_bad_updates`` consecutive skips
the run stops with a checkpoint, a message that says what diverged, and exit 2.

The fault is injected through the public extension point: a registered advantage estimator (GRPO's
advantages, with one NaN put in on chosen calls; the trainer calls it once per RL iteration)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from vapo.algos.advantages import get_advantage_estimator, register_advantage_estimator
from vapo.config import resolve_config
from vapo.train import start_run
from vapo.train.checkpoint import load_state
from vapo.train.rundir import read_jsonl

CALLS = {"n": 0}


@register_advantage_estimator("test_nan_grpo", extra={"nan_from": (int,), "nan_calls": (list,)})
def _nan_grpo(inp, params):
    """GRPO's advantages; on the calls listed in ``extra.nan_calls`` (1-based), or on every call
    from ``extra.nan_from`` on, the first token of the first response gets a NaN."""
    CALLS["n"] += 1
    out = get_advantage_estimator("grpo")(inp, params)
    if CALLS["n"] in params.extra.get("nan_calls", []) or CALLS["n"] >= params.extra.get("nan_from", math.inf):
        out.advantages = out.advantages.clone()
        out.advantages[0, 0] = float("nan")
    return out


def _cfg(tmp_path, *extra):
    return resolve_config("grpo", overrides=[
        f"train.runs_dir={tmp_path / 'runs'}", "train.threads=1", "model.size=micro", "sft.steps=8", "sft.cache=true",
        "rollout.prompts_per_iter=2", "rollout.group_size=4", "rollout.max_new_tokens=16", "optim.minibatches=1",
        "eval.prompts=2", "eval.samples=1", "train.eval_every=0", "algo.advantage.estimator=test_nan_grpo",
        "algo.advantage.whiten=false", *extra,
    ])


@pytest.fixture(autouse=True)
def _fresh(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nan-cache"))  # one warm start for the module
    CALLS["n"] = 0


def _policy(run, step):
    return load_file(run / "checkpoints" / f"step_{step}" / "policy" / "model.safetensors")


def test_one_nan_skips_that_update_and_the_run_goes_on(tmp_path):
    cfg = _cfg(tmp_path, "train.iterations=3", "train.checkpoint_every=1", "train.keep_checkpoints=0",
               "algo.advantage.extra={nan_calls: [2]}")
    start_run(cfg, name="one", progress=False)
    run = tmp_path / "runs" / "one"
    m = read_jsonl(run / "metrics.jsonl")
    assert [r["iteration"] for r in m] == [1, 2, 3]
    assert [r["actor_skipped_frac"] for r in m] == [0.0, 1.0, 0.0]
    assert all(r["reward_faults"] == 0 and "reward_faults_timeout" in r for r in m)  # the verifier's counters, every line
    # The skipped step changed nothing: weights and AdamW state of step_2 are those of step_1 ...
    w1, w2 = _policy(run, 1), _policy(run, 2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    s1, s2 = load_state(run / "checkpoints" / "step_1"), load_state(run / "checkpoints" / "step_2")
    for k, st in s1["actor_opt"]["state"].items():
        assert torch.equal(st["exp_avg"], s2["actor_opt"]["state"][k]["exp_avg"])
        assert torch.equal(st["step"], s2["actor_opt"]["state"][k]["step"])
    assert s1["actor_sched"]["last_epoch"] == s2["actor_sched"]["last_epoch"]
    # ... and the next finite update is taken (AdamW counts its steps: 1, 1, 2).
    s3 = load_state(run / "checkpoints" / "step_3")
    steps = [float(next(iter(s["actor_opt"]["state"].values()))["step"]) for s in (s1, s2, s3)]
    assert steps == [1.0, 1.0, 2.0] and s3["actor_sched"]["last_epoch"] == s1["actor_sched"]["last_epoch"] + 1
    skips = [e for e in read_jsonl(run / "events.jsonl") if e.get("phase") == "skipped_update"]
    assert len(skips) == 1 and skips[0]["iteration"] == 2 and skips[0]["where"] == "actor update"
    assert any(d.startswith("advantages: 1 NaN, 0 +Inf, 0 -Inf of ") for d in skips[0]["nonfinite"]), skips
    assert any(d.startswith("actor_loss: 1 NaN") for d in skips[0]["nonfinite"]), skips


def test_consecutive_skips_stop_the_run_with_a_checkpoint_and_exit_2(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vapo.cli import app

    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    sets = ["train.threads=1", "model.size=micro", "sft.steps=8", "rollout.prompts_per_iter=2", "rollout.group_size=4",
            "rollout.max_new_tokens=16", "optim.minibatches=1", "eval.prompts=2", "eval.samples=1",
            "train.eval_every=0", "train.checkpoint_every=0", "train.iterations=6", "train.max_bad_updates=2",
            "algo.advantage.estimator=test_nan_grpo", "algo.advantage.whiten=false", "algo.advantage.extra={nan_from: 2}",
            f"train.runs_dir={runs}"]
    args = ["train", "--preset", "grpo", "--quiet", "--name", "div"]
    for s in sets:
        args += ["--set", s]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    out = " ".join(res.output.split())
    assert "training diverged: 2 consecutive updates skipped for NaN/Inf" in out, out
    assert "iteration 3 (actor update): actor_loss: 1 NaN" in out and "advantages: 1 NaN" in out, out
    run = runs / "div"
    assert f"checkpoint {run / 'checkpoints' / 'step_2'}" in out, out
    # Iterations 1 (finite) and 2 (skipped) were logged; the 3rd, the second skip in a row, stopped the run.
    assert [r["actor_skipped_frac"] for r in read_jsonl(run / "metrics.jsonl")] == [0.0, 1.0]
    events = read_jsonl(run / "events.jsonl")
    assert [e["iteration"] for e in events if e.get("phase") == "skipped_update"] == [2, 3]
    assert [e["iteration"] for e in events if e.get("phase") == "diverged"] == [2]
    # The checkpoint written on the way out verifies and holds finite weights (the skipped steps were not applied).
    assert load_state(run / "checkpoints" / "step_2")["iteration"] == 2
    w1 = _policy(run, 2)
    assert all(torch.isfinite(v).all() for v in w1.values())
    assert not (run / "summary.json").exists()
