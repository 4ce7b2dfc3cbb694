"""End-to-end trainer tests on a micro config (seconds, CPU)."""

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.config import resolve_config
from vapo.errors import VapoError
from vapo.tasks import ProceduralTask, register_task
from vapo.train import Callback, resume_run, start_run
from vapo.train.batch import Experience, micro_batches
from vapo.train.checkpoint import list_checkpoints
from vapo.train.rundir import AtomicDir, new_run_dir, read_jsonl

TIME_KEYS = ("tokens_per_s", "time_rollout", "time_annotate", "time_actor", "time_critic", "time_iter")


# Small value pretraining and critic probe for the presets with a critic (the others refuse the
# critic's fields: there is no critic to configure).
CRITIC = ["algo.critic.pretrain_steps=2", "algo.critic.pretrain_min_steps=1", "algo.critic.probe_answers=8",
          "algo.critic.probe_continuations=2"]


def micro(tmp_path, preset="vapo", *extra):
    critic = CRITIC if preset in ("ppo", "vc_ppo", "vapo") else []
    return resolve_config(preset, overrides=[
        f"train.runs_dir={tmp_path / 'runs'}", "train.threads=2", "model.size=micro",
        "sft.steps=30", "sft.batch_size=32", "sft.cache=false",
        "rollout.prompts_per_iter=8", "rollout.group_size=4", "rollout.max_new_tokens=48",
        "optim.minibatches=2", *critic, "eval.prompts=8", "eval.samples=2", "train.eval_every=0", *extra,
    ])


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


@pytest.mark.parametrize("preset", ["ppo", "vc_ppo", "grpo", "dr_grpo", "dapo", "vapo"])
def test_every_preset_runs_through_the_same_loop(tmp_path, preset):
    cfg = micro(tmp_path, preset, "train.iterations=1", "train.checkpoint_every=1")
    summary = start_run(cfg, name="r", progress=False)
    run = tmp_path / "runs" / "r"
    m = read_jsonl(run / "metrics.jsonl")
    assert len(m) == 1 and m[0]["iteration"] == 1
    for key in ("reward", "accuracy", "response_length", "entropy", "clipfrac_low", "clipfrac_high", "approx_kl",
                "ratio_mean", "ratio_min", "ratio_max", "actor_steps", "actor_grad_norm", "tokens_per_s", "time_rollout"):
        assert key in m[0], key
    if cfg.algo.critic.enabled:
        assert "explained_variance" in m[0] and "value_loss" in m[0]
        assert (run / "checkpoints" / "critic_init").is_dir()
    assert summary["iterations"] == 1
    assert (run / "config.yaml").is_file() and (run / "plots" / "training.png").is_file()
    assert [s for s, _ in list_checkpoints(run)] == [0, 1]


def test_diagnose_every_logs_diagnostics_into_metrics(tmp_path):
    from vapo.diagnostics.hook import DiagnosticsCallback

    cfg = micro(tmp_path, "vapo", "train.iterations=2", "train.checkpoint_every=0", "diagnose_every=2")
    start_run(cfg, name="d", progress=False, callbacks=[DiagnosticsCallback()])
    m = read_jsonl(tmp_path / "runs" / "d" / "metrics.jsonl")
    assert not any(k.startswith("diag/") for k in m[0])  # iteration 1: not a multiple of 2
    diag = {k: v for k, v in m[1].items() if k.startswith("diag/")}
    assert {"diag/critic_bias", "diag/critic_rmse", "diag/zero_signal_frac", "diag/seconds"} <= set(diag)
    assert sum(v for k, v in diag.items() if k.startswith("diag/weight_share_")) == pytest.approx(1.0)


def test_resume_gives_the_same_next_iteration(tmp_path):
    """Several PPO steps per rollout (2 minibatches × 2 epochs) resume exactly. (This 30-step warm
    start scores 0, so nothing moves the policy here; test_several_steps_per_rollout_start_at_the_
    sampling_policy shows the ratios leaving 1.)"""
    cfg = micro(tmp_path, "vapo", "train.iterations=3", "train.checkpoint_every=2", "optim.ppo_epochs=2")
    start_run(cfg, name="full", progress=False)
    full = _strip(read_jsonl(tmp_path / "runs" / "full" / "metrics.jsonl"))
    assert all(r["actor_steps"] == 4 for r in full)
    # The same run, "killed" after its step-2 checkpoint: drop step 3 and the last metrics line.
    cut = micro(tmp_path, "vapo", "train.iterations=3", "train.checkpoint_every=2", "optim.ppo_epochs=2")
    start_run(cut.model_copy(update={"train": cut.train.model_copy(update={"iterations": 2})}), name="cut", progress=False)
    run = tmp_path / "runs" / "cut"
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "summary.json").unlink()
    resume_run(run, progress=False)
    resumed = _strip(read_jsonl(run / "metrics.jsonl"))
    assert len(resumed) == 3
    assert resumed[2] == full[2]


def test_resume_is_exact_with_one_step_per_iteration(tmp_path):
    """Resume also reproduces the single-step path (fused critic forward, no old-log-prob pass);
    the test above covers several steps per iteration (2 minibatches × 2 epochs). The old policy
    is the current one: every ratio is exactly 1 and nothing clips."""
    cfg = micro(tmp_path, "vapo", "train.iterations=2", "train.checkpoint_every=1", "optim.minibatches=1")
    start_run(cfg, name="full", progress=False)
    full = _strip(read_jsonl(tmp_path / "runs" / "full" / "metrics.jsonl"))
    for r in full:
        assert r["actor_steps"] == 1 and r["ratio_min"] == r["ratio_max"] == 1.0
        assert r["clipfrac_low"] == r["clipfrac_high"] == r["approx_kl"] == 0.0
    cut = cfg.model_copy(update={"train": cfg.train.model_copy(update={"iterations": 1})})
    start_run(cut, name="cut", progress=False)
    run = tmp_path / "runs" / "cut"
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "summary.json").unlink()
    resume_run(run, progress=False)
    assert _strip(read_jsonl(run / "metrics.jsonl"))[1] == full[1]


def test_fused_critic_step_equals_a_fresh_forward(tmp_path):
    """With one critic step per iteration, update_critic backpropagates through the values that
    annotate() computed; the step must equal the one from a separate forward pass."""
    from vapo.train.trainer import Trainer
    from vapo.train.ui import quiet_ui

    cfg = micro(tmp_path, "vapo", "optim.minibatches=1", "sft.cache=true")
    fused, plain = Trainer(cfg, tmp_path / "a"), Trainer(cfg, tmp_path / "b")
    for t in (fused, plain):
        t.run_dir.mkdir()
        t.build(quiet_ui())
        torch.nn.init.normal_(t.critic.value_head.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    assert fused.single_step
    exp = fused.collect()[0]
    exp.scores = (torch.arange(len(exp.scores)) % 3 == 0).float()  # a 30-step warm start is rarely right
    import copy

    exp2 = copy.deepcopy(exp)
    before = [p.detach().clone() for p in fused.critic.parameters()]
    exp, graphs = fused.annotate(exp)
    assert graphs is not None and all(v.requires_grad for _, v in graphs)
    st_f = fused.update_critic(exp, graphs)
    exp2, _ = plain.annotate(exp2)
    st_p = plain.update_critic(exp2)  # no graphs: a separate forward pass
    assert st_f["value_loss"] == pytest.approx(st_p["value_loss"], rel=1e-5)
    for a, b in zip(fused.critic.parameters(), plain.critic.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(fused.critic.parameters(), before, strict=True))  # it stepped


class _Seven(ProceduralTask):
    """The easiest possible task, written as a user would (see vapo.tasks): whatever the digits,
    the answer is 7 ("4817=" -> "#### 7"). Its sloppy teacher answers a random other digit half of
    the time, so the warm start is right about half of the time and RL has one decision to fix."""

    name = "test_seven"
    train_sizes, long_sizes = (2, 4), (5, 5)

    def generate(self, rng, size):
        return "".join(rng.choice("0123456789") for _ in range(size)) + "=", "7", "#### 7", {}

    def slipped_solution(self, problem, rng, slip):
        return "#### " + rng.choice("01234568") if rng.random() < slip else problem.solution


register_task("test_seven")(_Seven)


def test_reward_improves_on_an_easy_task(tmp_path):
    """Fails if learning is broken: RL must make the warm start better than its sloppy teacher.

    The warm start imitates a teacher that gives the right answer only half of the time; accuracy on fixed training prompts (same prompts and sampling seed before and after, 512
    answers) must rise by 15 points in 30 iterations of the default preset.
    """
    from vapo.train.evaluate import evaluate_split

    cfg = micro(tmp_path, "vapo", "task.name=test_seven", "train.iterations=30",
                "train.checkpoint_every=0", "rollout.prompts_per_iter=32", "rollout.group_size=8", "optim.minibatches=1",
                "sft.steps=150", "sft.teacher_slip=0.5",
                "rollout.max_new_tokens=8", "optim.actor_lr=3e-4")
    box = {}

    def acc(trainer):
        return evaluate_split(trainer.policy, trainer.tokenizer, trainer.task, "train", prompts=128, samples=4,
                              temperature=1.0, top_p=1.0, max_new_tokens=8, seed=7)["accuracy"]

    class Measure(Callback):
        def on_loop_start(self, trainer):
            box["before"] = acc(trainer)

        def on_loop_end(self, trainer):
            box["after"] = acc(trainer)

    start_run(cfg, name="learn", progress=False, callbacks=[Measure()])
    assert box["after"] > box["before"] + 0.15, box


def test_new_run_never_overwrites(tmp_path):
    a = new_run_dir(tmp_path, None, "x")
    b = new_run_dir(tmp_path, None, "x")
    assert a.name == "x" and b.name == "x-2"
    with pytest.raises(VapoError, match="already exists"):
        new_run_dir(tmp_path, "x", "x")


def test_atomic_dir_leaves_old_copy_on_failure(tmp_path):
    final = tmp_path / "ck"
    with AtomicDir(final) as d:
        (d / "a").write_text("1")
    with pytest.raises(RuntimeError), AtomicDir(final) as d:
        (d / "a").write_text("2")
        raise RuntimeError("killed")
    assert (final / "a").read_text() == "1" and (final / "COMPLETE").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_torn_metrics_line_is_skipped(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"iteration": 1}) + "\n" + '{"iteration": 2, "rew')
    assert read_jsonl(p) == [{"iteration": 1}]


def test_resume_rejects_other_options(tmp_path):
    from typer.testing import CliRunner

    from vapo.cli import app

    r = CliRunner().invoke(app, ["train", "--resume", str(tmp_path), "--seed", "3"])
    assert r.exit_code == 2 and "cannot change it" in r.output
    assert torch.get_num_threads() >= 1


def test_ctrl_c_checkpoints_and_the_run_resumes(tmp_path):
    """SIGINT during RL: the CLI finishes the iteration, checkpoints, exits 0; --resume completes it."""
    import signal
    import subprocess
    import sys
    import time

    runs = tmp_path / "runs"
    env = {**os.environ, "VAPO_CACHE_DIR": str(tmp_path / "cache")}
    args = [f"train.runs_dir={runs}", "train.threads=1", "model.size=micro", "sft.steps=20", "sft.cache=false",
            "rollout.prompts_per_iter=4", "rollout.group_size=4", "rollout.max_new_tokens=24", "optim.minibatches=1",
            "algo.critic.pretrain_steps=1", "algo.critic.pretrain_min_steps=1", "algo.critic.probe_answers=8",
            "algo.critic.probe_continuations=2", "eval.prompts=4", "eval.samples=1",
            "train.eval_every=0", "train.checkpoint_every=0", "train.iterations=10000"]
    cmd = [sys.executable, "-c", "from vapo.cli import main; main()", "train", "--name", "int"]
    for a in args:
        cmd += ["--set", a]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = runs / "int" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not metrics.is_file() or len(read_jsonl(metrics)) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-2000:]
    assert "interrupted" in out
    done = len(read_jsonl(metrics))
    assert [s for s, _ in list_checkpoints(runs / "int")][-1] == done
    events = [e["phase"] for e in read_jsonl(runs / "int" / "events.jsonl")]
    assert "interrupted" in events
    # Continue to a few more iterations than were done: edit the target, then resume.
    cfg_path = runs / "int" / "config.yaml"
    cfg_path.write_text(cfg_path.read_text().replace("iterations: 10000", f"iterations: {done + 2}"))
    res = subprocess.run([sys.executable, "-c", "from vapo.cli import main; main()", "train", "--resume", str(runs / "int")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert [r["iteration"] for r in read_jsonl(metrics)] == list(range(1, done + 3))


def _one_batch_trainer(tmp_path, preset, *extra):
    """A built trainer (cached 30-step warm start) and one annotated batch with mixed rewards."""
    from vapo.train.trainer import Trainer
    from vapo.train.ui import quiet_ui

    cfg = micro(tmp_path, preset, "sft.cache=true", "optim.minibatches=1", "rollout.max_new_tokens=40", *extra)
    run = tmp_path / f"run-{len(list(tmp_path.iterdir()))}"
    run.mkdir()
    t = Trainer(cfg, run)
    t.build(quiet_ui())
    if t.uses_critic:
        torch.nn.init.normal_(t.critic.value_head.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    return t


def _grads_of_one_step(trainer, exp, which):
    """Run update_actor / update_critic on ``exp`` but capture the gradient instead of stepping."""
    model = trainer.policy if which == "actor" else trainer.critic
    opt = trainer.actor_opt if which == "actor" else trainer.critic_opt
    box = {}
    opt.step = lambda *a, **k: box.setdefault("g", [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                                                     for p in model.parameters()])
    stats = trainer.update_actor(exp) if which == "actor" else trainer.update_critic(exp)
    return box["g"], stats


@pytest.mark.parametrize("preset,agg", [("vapo", "token-mean"), ("grpo", "seq-mean-token-mean"),
                                        ("dr_grpo", "seq-mean-token-sum-norm"), ("vapo", "seq-mean-token-mean")])
def test_micro_batched_step_equals_one_pass(tmp_path, preset, agg):
    """Accumulating over length-sorted micro-batches gives the gradient and loss terms of one pass
    over the whole minibatch, for every aggregation mode, with NLL (vapo) and KL (grpo) terms."""
    import copy

    t = _one_batch_trainer(tmp_path, preset, f"algo.policy_loss.agg_mode={agg}")
    exp = t.collect()[0]
    exp.scores = (torch.arange(len(exp.scores)) % 3 == 0).float()
    exp.correct = exp.scores.bool()
    exp, _ = t.annotate(exp)  # the fused critic graphs are not used: the actor step is tested
    results = {}
    for budget in (10**9, 64):  # one micro-batch vs. many
        tt = copy.deepcopy(t)
        tt.cfg = t.cfg.model_copy(update={"optim": t.cfg.optim.model_copy(update={"micro_batch_tokens": budget})})
        n_micro = len(micro_batches(exp, budget))
        results[budget] = (n_micro, *_grads_of_one_step(tt, copy.deepcopy(exp), "actor"))
    (n1, g1, s1), (n2, g2, s2) = results[10**9], results[64]
    assert n1 == 1 and n2 > 3
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    for k in ("policy_loss", "entropy", "nll_loss", "kl", "clipfrac_low", "approx_kl"):
        if k in s1:
            assert s2[k] == pytest.approx(s1[k], rel=1e-4, abs=1e-7), k


def test_micro_batched_critic_step_equals_one_pass(tmp_path):
    import copy

    t = _one_batch_trainer(tmp_path, "vapo", "optim.minibatches=2")  # several minibatches: no fused path
    exp = t.collect()[0]
    exp.scores = (torch.arange(len(exp.scores)) % 3 == 0).float()
    exp, _ = t.annotate(exp)
    out = []
    for budget in (10**9, 64):
        tt = copy.deepcopy(t)
        tt.cfg = t.cfg.model_copy(update={"optim": t.cfg.optim.model_copy(update={"micro_batch_tokens": budget, "minibatches": 1})})
        out.append(_grads_of_one_step(tt, copy.deepcopy(exp), "critic"))
    for a, b in zip(out[0][0], out[1][0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert out[1][1]["value_loss"] == pytest.approx(out[0][1]["value_loss"], rel=1e-5)


@settings(max_examples=50, deadline=None)
@given(plens=st.lists(st.integers(1, 12), min_size=1, max_size=40), data=st.data(), budget=st.integers(1, 200))
def test_micro_batches_partition_rows_within_budget(plens, data, budget):
    n = len(plens)
    lens = data.draw(st.lists(st.integers(1, 30), min_size=n, max_size=n))
    P, T = max(plens), max(lens)
    pm = torch.tensor([[0] * (P - p) + [1] * p for p in plens])
    rm = torch.tensor([[1] * r + [0] * (T - r) for r in lens]).float()
    z = torch.zeros(n)
    exp = Experience(prompt_ids=pm.clone(), prompt_mask=pm, response_ids=rm.long(), response_mask=rm,
                     lengths=torch.tensor(lens), truncated=z.bool(), scores=z, correct=z.bool(), sizes=z.long(),
                     group_index=torch.arange(n))
    groups = micro_batches(exp, budget)
    assert sorted(torch.cat(groups).tolist()) == list(range(n))
    for g in groups:
        u = exp.select(g)
        assert len(g) == 1 or len(g) * (u.prompt_ids.shape[1] + u.response_ids.shape[1]) <= budget
        assert u.prompt_ids.shape[1] == max(plens[i] for i in g.tolist())


def test_several_steps_per_rollout_start_at_the_sampling_policy(tmp_path, monkeypatch):
    """minibatches × ppo_epochs optimizer steps; the first step's ratios are 1 (the sampler's
    log-probs are the current policy's, to float32 rounding), later steps' ratios are not, and
    the iteration's statistics are the mean over steps and the extremes of the ratio."""
    import vapo.train.trainer as trainer_mod

    t = _one_batch_trainer(tmp_path, "vapo", "optim.minibatches=4", "optim.ppo_epochs=2")
    assert not t.single_step
    exp = t.collect()[0]
    exp.scores = (torch.arange(len(exp.scores)) % 3 == 0).float()
    exp.correct = exp.scores.bool()
    exp, _ = t.annotate(exp)
    assert exp.old_logprobs is not None
    calls = []  # (optimizer steps taken so far, |ratio - 1| max, stats) per micro-batch
    real_loss = trainer_mod.get_policy_loss(t.cfg.algo.policy_loss.name)

    def spy(name):
        def fn(logp, old, *a, **k):
            loss, st_ = real_loss(logp, old, *a, **k)
            m = a[1].bool()
            calls.append((t.actor_sched.last_epoch, float(((logp.detach() - old).exp() - 1)[m].abs().max()), st_))
            return loss, st_
        return fn

    monkeypatch.setattr(trainer_mod, "get_policy_loss", spy)
    start = t.actor_sched.last_epoch
    stats = t.update_actor(exp)
    assert stats["actor_steps"] == 8 and t.actor_sched.last_epoch - start == 8
    first = [dev for step, dev, _ in calls if step == start]
    later = [dev for step, dev, _ in calls if step > start]
    assert first and max(first) < 1e-4
    assert later and max(later) > 1e-3
    assert stats["ratio_max"] == pytest.approx(max(float(s["ratio_max"]) for *_, s in calls))
    assert stats["ratio_min"] < 1 < stats["ratio_max"] and stats["approx_kl"] > 0


def test_the_logged_lambda_is_the_one_the_estimator_used(tmp_path):
    """gae_error_aware chooses each answer's λ and ignores lam_actor ("adaptive" by default): the
    metrics log the chosen λ (mean, min), not the adaptive formula's."""
    from vapo.algos.pathways import error_aware_lambda
    from vapo.train import adapter

    seen = {}

    class Grab(Callback):
        def on_iteration_end(self, trainer, exp, metrics):
            seen["exp"], seen["m"], seen["cfg"] = exp, dict(metrics), trainer.cfg

    cfg = micro(tmp_path, "vapo", "train.iterations=1", "algo.advantage.estimator=gae_error_aware")
    start_run(cfg, name="ea", progress=False, callbacks=[Grab()])
    exp, m = seen["exp"], seen["m"]
    want = error_aware_lambda(exp.values, exp.token_rewards, exp.response_mask, exp.scores, exp.group_index)
    assert torch.allclose(exp.lam_actor, want.to(exp.lam_actor.dtype))
    assert m["lambda_actor_mean"] == pytest.approx(float(want.float().mean()))
    assert m["lambda_actor_min"] == pytest.approx(float(want.min()))
    adaptive = adapter.actor_lambda(cfg.algo.advantage, exp.lengths.float())
    assert m["lambda_actor_mean"] != pytest.approx(float(adaptive.mean()))
    out = adapter.advantage_output(cfg.algo, exp.token_rewards, exp.response_mask, values=exp.values,
                                   scores=exp.scores, group_index=exp.group_index)
    assert torch.equal(out.advantages, exp.advantages) and torch.equal(out.lam_actor, exp.lam_actor)


def test_the_actors_minibatches_do_not_depend_on_the_critics_schedule(tmp_path, monkeypatch):
    """Actor and critic shuffle with their own generators: two critic passes per actor step
    instead of one leave the actor's minibatch order of every iteration unchanged."""
    from vapo.train.trainer import Trainer

    orig = Trainer._minibatches
    seen: dict[int, list[list[int]]] = {}

    def spy(self, n, gen):
        parts = orig(self, n, gen)
        if gen is self.shuffle_gen:
            seen.setdefault(self.k, []).append([p.tolist() for p in parts])
        return parts

    monkeypatch.setattr(Trainer, "_minibatches", spy)
    for k in (1, 2):
        monkeypatch.setattr(Trainer, "k", k, raising=False)
        cfg = micro(tmp_path, "vapo", "train.iterations=3", "train.checkpoint_every=0",
                    f"algo.critic.steps_per_actor_step={k}")
        start_run(cfg, name=f"c{k}", progress=False)
    assert len(seen[1]) == 3 and seen[1] == seen[2]
