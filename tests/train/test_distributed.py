"""Data-parallel training (vapo.train.distributed): 2 processes (gloo, CPU, FSDP2) against 1 process
on the same global batch, and a resume on a different number of processes.

Both runs use ``dist.rollout_streams=2``, so they draw the same prompts and the same answers; every
process runs in a spawned child (the same code path for 1 and 2 processes). Only the float32
order of summation differs (each process sums its micro-batches, the reduce-scatter adds the two
partial sums), so the tolerances are float32 ones:

* the gradients of the first four optimizer steps (critic pretraining, iteration 1's critic and
  actor, iteration 2's critic), coordinate by coordinate: atol 1e-6 (gradients are O(1));
* losses, statistics and gradient norms of both iterations: rtol 1e-5 (measured ≤ 1.4e-7);
* the weights after each iteration: atol 1e-6 (measured ≤ 1.2e-7).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from vapo.config import resolve_config
from vapo.train.rundir import read_jsonl

LOSSES = ("policy_loss", "value_loss", "kl", "entropy", "actor_grad_norm", "critic_grad_norm", "approx_kl",
          "ratio_min", "ratio_max", "critic/rmse_vs_mc", "critic/ev")
SAME = ("reward", "response_length", "tokens", "truncated_frac", "advantage_abs", "lambda_actor_mean")


def _overrides(runs: Path) -> list[str]:
    return [
        f"train.runs_dir={runs}", "train.threads=1", "model.size=micro",
        "sft.steps=10", "sft.cache=true", "rollout.prompts_per_iter=4", "rollout.group_size=4",
        "rollout.max_new_tokens=24", "algo.critic.pretrain_steps=1",
        "algo.critic.pretrain_min_steps=1", "algo.critic.probe_answers=8", "algo.critic.probe_continuations=2",
        "eval.prompts=2", "eval.samples=1", "train.iterations=2",
        "train.checkpoint_every=1", "dist.rollout_streams=2",
        # a reward with variance (overlong penalty), the reference policy (KL loss) and a batch-wide
        # statistic (whitening): each has to be global for the runs to match
        "algo.overlong.enabled=true", "algo.overlong.cache_len=16", "algo.kl.coef=0.05", "algo.advantage.whiten=true",
        # two PPO steps per rollout (the second one's ratios differ from 1: ratio_min / ratio_max are
        # reduced over processes) and the critic probe during RL (rank 0's, broadcast) every iteration
        "optim.minibatches=2", "algo.critic.probe_every=1",
        # Adam moves a weight by ~lr whatever the size of its gradient, so where a gradient is near 0
        # its float32 summation-order difference between 1 and 2 processes shows up as up to ~lr × that
        # relative difference in the weight: the 1e-6 weight bound below is for steps of 1e-3
        "optim.critic_lr=1e-3",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, runs: str, cache: str, name: str, resume: bool) -> None:
    """One process of a run: torchrun's environment, then start_run / resume_run as `vapo train`
    does; the first two gradients (critic pretraining step, then each clip) are recorded."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), VAPO_CACHE_DIR=cache, OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from vapo.train import distributed, resume_run, start_run

    grads: list[dict[str, torch.Tensor]] = []
    clip = distributed.Dist.clip_grad_norm

    def recording_clip(self, model, max_norm):
        if len(grads) < 4:  # the pretraining step, iteration 1's two critic steps and first actor step
            grads.append({n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
                          for n, p in model.named_parameters() if p.grad is not None})
        return clip(self, model, max_norm)

    distributed.Dist.clip_grad_norm = recording_clip
    if resume:
        resume_run(Path(runs) / name, progress=False)
    else:
        start_run(resolve_config("vapo", overrides=_overrides(Path(runs))), name=name, progress=False)
    if rank == 0:
        torch.save(grads, Path(runs) / f"{name}.grads.pt")


def _run(tmp: Path, name: str, world: int, resume: bool = False) -> None:
    mp.start_processes(_worker, args=(world, _free_port(), str(tmp / "runs"), str(tmp / "cache"), name, resume),
                       nprocs=world, start_method="spawn")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    _run(tmp, "one", 1)
    _run(tmp, "two", 2)
    return tmp / "runs"


def _weights(run: Path, step: int, model: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / f"step_{step}" / model / "model.safetensors"))


def test_two_processes_match_one_on_the_same_global_batch(runs):
    one, two = read_jsonl(runs / "one" / "metrics.jsonl"), read_jsonl(runs / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 2
    # the same global batch: the rollout streams give both runs the same prompts and answers
    for k in SAME:
        assert one[0][k] == pytest.approx(two[0][k], rel=1e-6), k
    # iteration 1: losses, statistics and gradient norms equal up to float32 summation order (an
    # absolute 1e-6: a loss near 0, e.g. the policy loss of whitened advantages, is a sum of O(1)
    # terms that cancel, so its float32 error is absolute, not relative)
    for k in LOSSES:
        assert two[0][k] == pytest.approx(one[0][k], rel=1e-5, abs=1e-6), (k, one[0][k], two[0][k])
    # the gradients of the first steps, coordinate by coordinate
    g1, g2 = torch.load(runs / "one.grads.pt"), torch.load(runs / "two.grads.pt")
    assert len(g1) == len(g2) == 4
    for a, b in zip(g1, g2, strict=True):
        assert a.keys() == b.keys()
        for n in a:
            torch.testing.assert_close(b[n], a[n], rtol=0, atol=1e-6, msg=n)
    # the updated weights after each iteration
    for step in (1, 2):
        for model in ("policy", "critic"):
            w1, w2 = _weights(runs / "one", step, model), _weights(runs / "two", step, model)
            assert w1.keys() == w2.keys()
            assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= 1e-6, (step, model)
    # iteration 2, sampled by the updated weights: the same batch, the same losses
    for k in SAME:
        assert one[1][k] == pytest.approx(two[1][k], rel=1e-6), k
    for k in LOSSES:
        assert two[1][k] == pytest.approx(one[1][k], rel=1e-5, abs=1e-6), (k, one[1][k], two[1][k])


def test_rank_zero_alone_writes_the_run_directory(runs):
    two = runs / "two"
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["one", "two"]
    assert [json.loads(x)["iteration"] for x in (two / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert {p.name for p in (two / "checkpoints").iterdir()} == {"critic_init", "step_0", "step_1", "step_2"}
    assert not list((two / "checkpoints").glob(".tmp-*"))
    cfg = (two / "config.yaml").read_text()
    assert "rollout_streams: 2" in cfg
    # the checkpoint is in the one-process format: the same keys as the 1-process run's
    s1 = torch.load(runs / "one" / "checkpoints" / "step_1" / "trainer_state.pt", weights_only=False)
    s2 = torch.load(two / "checkpoints" / "step_1" / "trainer_state.pt", weights_only=False)
    assert s1.keys() == s2.keys() and len(s2["streams"]) == 2
    assert s1["actor_opt"]["state"].keys() == s2["actor_opt"]["state"].keys()
    assert s1["actor_opt"]["param_groups"][0]["params"] == s2["actor_opt"]["param_groups"][0]["params"]


def test_a_two_process_checkpoint_resumes_on_one_process(runs, tmp_path):
    """The step-1 checkpoint of the 2-process run, resumed by 1 process, gives iteration 2 of the
    2-process run (float32 tolerance: the optimizer state, the rollout streams and the shuffling
    stream all come back)."""
    cut = tmp_path / "runs" / "cut"
    shutil.copytree(runs / "two", cut)
    shutil.rmtree(cut / "checkpoints" / "step_2")
    (cut / "summary.json").unlink()
    _run(tmp_path, "cut", 1, resume=True)
    full, resumed = read_jsonl(runs / "two" / "metrics.jsonl"), read_jsonl(cut / "metrics.jsonl")
    assert [r["iteration"] for r in resumed] == [1, 2]
    for k in SAME:
        assert resumed[1][k] == pytest.approx(full[1][k], rel=1e-6), k
    for k in LOSSES:
        assert resumed[1][k] == pytest.approx(full[1][k], rel=1e-5, abs=1e-6), (k, full[1][k], resumed[1][k])
    w_full, w_resumed = _weights(runs / "two", 2, "policy"), _weights(cut, 2, "policy")
    assert max(float((w_full[k] - w_resumed[k]).abs().max()) for k in w_full) <= 1e-6


def test_bad_process_counts_are_refused_before_anything_is_created(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from vapo.cli import app

    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    base = ["train", "--quiet", "--set", f"train.runs_dir={runs}"]
    r = CliRunner().invoke(app, [*base, "--nproc", "0"])
    assert r.exit_code == 2 and "--nproc" in r.output
    # a bad config fails once, here, before torchrun starts any process
    r = CliRunner().invoke(app, [*base, "--nproc", "2", "--set", "rollout.group_size=0"])
    assert r.exit_code == 2 and "rollout.group_size" in r.output
    # streams that do not split the prompts: refused before the run directory exists
    r = CliRunner().invoke(app, [*base, "--set", "dist.rollout_streams=3", "--set", "rollout.prompts_per_iter=4"])
    assert r.exit_code == 2 and "rollout_streams" in r.output
    assert not runs.exists() or not any(runs.iterdir())
