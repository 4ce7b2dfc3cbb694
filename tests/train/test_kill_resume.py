"""A killed run loses nothing: real `vapo train` processes are SIGKILLed at random moments (between
iterations, during a checkpoint write, before the first checkpoint), resumed each time, and the
final metrics.jsonl equals that of an uninterrupted run of the same seed (timings aside): the same
numbers, every iteration exactly once, at most the iterations since the last checkpoint redone."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vapo.train.rundir import read_jsonl

TIME_KEYS = {"tokens_per_s", "time_rollout", "time_annotate", "time_actor", "time_critic", "time_iter"}
ITERS = 5
# As small as a run gets while keeping every piece a resume must restore: actor and critic with
# their AdamW and schedules, the three random streams, metrics and eval lines.
ARGS = ["train.threads=1", "model.size=micro", "sft.steps=8", "sft.cache=true", "rollout.prompts_per_iter=2",
        "rollout.group_size=4", "rollout.max_new_tokens=16", "optim.minibatches=1", "algo.critic.pretrain_steps=1",
        "algo.critic.pretrain_min_steps=1", "eval.prompts=2", "eval.samples=1", "train.eval_every=2",
        "train.checkpoint_every=1", "train.keep_checkpoints=2", f"train.iterations={ITERS}"]
CLI = [sys.executable, "-c", "from vapo.cli import main; main()", "train", "--quiet"]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "VAPO_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}


def _start(tmp_path: Path, name: str, resume: bool, env: dict[str, str]) -> subprocess.Popen:
    runs = tmp_path / "runs"
    if resume:
        cmd = [*CLI, "--resume", str(runs / name)]
    else:
        cmd = [*CLI, "--name", name, "--set", f"train.runs_dir={runs}"]
        for a in ARGS:
            cmd += ["--set", a]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


def _steps(run: Path) -> list[int]:
    ck = run / "checkpoints"
    return sorted(int(p.name[5:]) for p in ck.glob("step_*") if (p / "COMPLETE").is_file()) if ck.is_dir() else []


def _writing(run: Path) -> bool:
    ck = run / "checkpoints"
    return ck.is_dir() and any(p.name.startswith(".tmp-step_") for p in ck.iterdir())


def _kill_when(proc: subprocess.Popen, cond, timeout: float = 90.0) -> bool:
    """SIGKILL ``proc`` as soon as ``cond()`` holds; False if it exited first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if cond():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the run neither reached the kill point nor finished")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    proc = _start(tmp, "ref", False, _env(tmp))
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    rows = read_jsonl(tmp / "runs" / "ref" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(1, ITERS + 1))
    evals = read_jsonl(tmp / "runs" / "ref" / "eval.jsonl")
    assert [e["iteration"] for e in evals] == [0, 0, 2, 2, 4, 4, 5, 5]
    return tmp, _strip(rows), evals


def test_sigkill_at_random_moments_then_resume_is_exact(reference):
    tmp, ref, ref_evals = reference
    run = tmp / "runs" / "k"
    rng = random.Random(int(os.environ.get("VAPO_KILL_SEED", "0")))
    env = _env(tmp)
    # For the kill during a checkpoint write, the writer pauses between files (a test hook).
    slow = _env(tmp, VAPO_CHECKPOINT_PAUSE="0.3")
    metrics = run / "metrics.jsonl"
    plan = [("iteration", rng.randint(1, 2)), ("checkpoint write", None), ("iteration", rng.randint(3, 4))]
    log, redone, resume = [], 0, False
    for kind, n in plan:
        proc = _start(tmp, "k", resume, env if kind == "iteration" else slow)
        if kind == "iteration":  # after n metric lines, plus a random fraction of an iteration
            delay = rng.uniform(0.0, 0.5)
            t_hit: list[float] = []

            def cond(n=n, delay=delay, t_hit=t_hit):
                if len(read_jsonl(metrics)) >= n:
                    t_hit.append(t_hit[0] if t_hit else time.time())
                    return time.time() - t_hit[0] >= delay
                return False
        else:
            def cond():
                return _writing(run) and len(_steps(run)) >= 1
        killed = _kill_when(proc, cond)
        assert killed, f"the run finished before the kill point ({kind})"
        done = len(read_jsonl(metrics))
        last = _steps(run)[-1] if _steps(run) else None
        log.append((kind, done, last))
        if last is not None:
            redone += done - last
        resume = True
    proc = _start(tmp, "k", True, env)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    rows = read_jsonl(metrics)
    assert [r["iteration"] for r in rows] == list(range(1, ITERS + 1)), log  # none duplicated, none missing
    assert _strip(rows) == ref, log  # identical numbers
    assert read_jsonl(run / "eval.jsonl") == ref_evals, log  # evaluations too, each exactly once
    assert redone <= len(plan), (redone, log)  # checkpoint every iteration: at most one redone per kill
    print(f"kills (kind, metric lines at kill, last checkpoint): {log}; iterations redone: {redone}")


def test_a_checkpoint_killed_mid_write_is_never_taken_for_a_good_one(reference):
    """A kill during a checkpoint write leaves a checkpoint set in which every step_N verifies."""
    from vapo.train.checkpoint import list_checkpoints, verify_checkpoint

    tmp, _, _ = reference
    run = tmp / "runs" / "w"
    env = _env(tmp, VAPO_CHECKPOINT_PAUSE="0.3")
    proc = _start(tmp, "w", False, env)
    assert _kill_when(proc, lambda: _writing(run) and len(_steps(run)) >= 1), "no checkpoint write was caught"
    for _, path in list_checkpoints(run, finished=False):
        verify_checkpoint(path)


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_over(reference):
    tmp, ref, _ = reference
    run = tmp / "runs" / "early"
    proc = _start(tmp, "early", False, _env(tmp))
    assert _kill_when(proc, lambda: (run / "config.yaml").is_file())
    assert not _steps(run)
    proc = _start(tmp, "early", True, _env(tmp))
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert _strip(read_jsonl(run / "metrics.jsonl")) == ref
