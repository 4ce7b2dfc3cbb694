"""Exploration in the training loop: outcome-exploration shaping and its checkpointed history,
the covariance losses and pass@k options through the one loop, the exploration metrics."""

from __future__ import annotations

import math

import pytest
import torch

from vapo.config import flat_keys, resolve_config
from vapo.errors import ConfigError, VapoError
from vapo.tasks.base import Problem
from vapo.train import exploration as ex
from vapo.train import resume_run, start_run
from vapo.train.batch import Experience
from vapo.train.rundir import read_jsonl

TIME_KEYS = ("tokens_per_s", "time_rollout", "time_annotate", "time_actor", "time_critic", "time_iter")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))


def micro(tmp_path, preset, *extra):
    return resolve_config(preset, overrides=[
        f"train.runs_dir={tmp_path / 'runs'}", "train.threads=2", "model.size=micro",
        "sft.steps=30", "sft.batch_size=32", "sft.cache=false",
        "rollout.prompts_per_iter=8", "rollout.group_size=4", "rollout.max_new_tokens=48",
        "optim.minibatches=2", "eval.prompts=8", "eval.samples=2", "train.eval_every=0", *extra,
    ])


def _strip(rows):
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in rows]


# ------------------------------------------------------------------ the explorer on a hand-made batch


def _batch(prompts, scores, correct, group_size):
    b = len(scores)
    return Experience(
        prompt_ids=torch.zeros(b, 1, dtype=torch.long), prompt_mask=torch.ones(b, 1, dtype=torch.long),
        response_ids=torch.zeros(b, 2, dtype=torch.long), response_mask=torch.ones(b, 2),
        lengths=torch.full((b,), 2), truncated=torch.zeros(b, dtype=torch.bool),
        scores=torch.tensor(scores, dtype=torch.float32), correct=torch.tensor(correct),
        sizes=torch.ones(b, dtype=torch.long), group_index=torch.arange(b // group_size).repeat_interleave(group_size),
        problems=[Problem(p, "1", "", 1, "train") for p in prompts for _ in range(group_size)],
    )


def test_explorer_shapes_rewards_and_its_history_round_trips(monkeypatch, tmp_path):
    cfg = resolve_config("grpo", overrides=["algo.exploration.history_coef=0.5", "algo.exploration.batch_coef=0.2"])
    answers = iter([["1", "1", "2", ex.NO_ANSWER, "7", "7", "7", "7"], ["1", "3", "3", "3"]])
    monkeypatch.setattr(ex, "final_answers", lambda exp, tok: next(answers))
    e = ex.OutcomeExplorer(cfg)
    b1 = _batch(["x", "y"], [1, 1, 0, 0, 0, 0, 0, 0], [True, True, False, False] + [False] * 4, 4)
    m = e.apply(b1, None)
    # x: answers 1,1,2,none; y: 7 x4. history counts N and repeats m within the group of 4
    n_hist = [2, 2, 1, 1, 4, 4, 4, 4]
    same = [2, 2, 1, 1, 4, 4, 4, 4]
    task = [1, 1, 0, 0, 0, 0, 0, 0]
    want = [t + 0.5 / math.sqrt(n) - 0.2 * (s - 1) / 4 for t, n, s in zip(task, n_hist, same, strict=True)]
    assert torch.allclose(b1.scores.double(), torch.tensor(want, dtype=torch.float64), atol=1e-6)
    assert m["distinct_answers"] == 2.0 and m["distinct_answers_min"] == 1.0 and m["no_answer_frac"] == 1 / 8
    assert m["task_reward"] == 0.25 and m["explore_revisit_frac"] == 0.0
    # the state survives torch.save / torch.load(weights_only=True) and continues the counts
    path = tmp_path / "s.pt"
    torch.save(e.state_dict(), path)
    e2 = ex.OutcomeExplorer(cfg)
    e2.load_state_dict(torch.load(path, weights_only=True))
    b2 = _batch(["x"], [1, 0, 0, 0], [True, False, False, False], 4)
    m2 = e2.apply(b2, None)
    assert m2["explore_revisit_frac"] == 1.0
    # x's history: "1" seen 3 times now, "3" 3 times (all in this batch)
    want2 = [1 + 0.5 / math.sqrt(3), 0.5 / math.sqrt(3) - 0.2 * 2 / 4, 0.5 / math.sqrt(3) - 0.2 * 2 / 4,
             0.5 / math.sqrt(3) - 0.2 * 2 / 4]
    assert torch.allclose(b2.scores.double(), torch.tensor(want2, dtype=torch.float64), atol=1e-6)
    assert e2.state_dict()["history"]["x"] == {"1": 3, "2": 1, ex.NO_ANSWER: 1, "3": 3}


def test_passk_credit_replaces_correctness_and_keeps_other_shaping(monkeypatch):
    cfg = resolve_config("grpo", overrides=["algo.exploration.passk_credit=true", "algo.advantage.pass_k=2"])
    monkeypatch.setattr(ex, "final_answers", lambda exp, tok: ["1", "2", "3", "4"])
    b = _batch(["x"], [1.0, -0.25, 0.0, 0.0], [True, False, False, False], 4)  # -0.25: an overlong penalty
    ex.OutcomeExplorer(cfg).apply(b, None)
    wrong = 1 - 2 / 3  # n=4, c=1, k=2: 1 - C(2,1)/C(3,1)
    assert torch.allclose(b.scores, torch.tensor([1.0, wrong - 0.25, wrong, wrong]))


def test_a_checkpoint_without_history_is_refused_when_the_history_matters():
    cfg = resolve_config("grpo", overrides=["algo.exploration.history_coef=0.1"])
    with pytest.raises(VapoError, match="no final-answer history"):
        ex.OutcomeExplorer(cfg).load_state_dict(None)
    ex.OutcomeExplorer(resolve_config("grpo")).load_state_dict(None)  # no history needed: fine


def test_entropy_by_position_names_and_counts():
    ent = torch.arange(8.0)[None]
    out = ex.entropy_by_position(ent, torch.ones(1, 8))
    assert list(out) == ["entropy_q1", "entropy_q2", "entropy_q3", "entropy_q4"]
    assert [s / n for s, n in out.values()] == [0.5, 2.5, 4.5, 6.5]


# ------------------------------------------------------------------ config refusals


@pytest.mark.parametrize("overrides, match", [
    (["algo.policy_loss.clip_cov_ratio=0.01"], "only acts with algo.policy_loss.name=clip_cov"),
    (["algo.policy_loss.kl_cov_coef=0.5"], "only acts with algo.policy_loss.name=kl_cov"),
    (["algo.policy_loss.name=clip_cov", "algo.policy_loss.dual_clip_c=3"], "no dual clip"),
    (["algo.policy_loss.name=clip_cov", "algo.policy_loss.clip_cov_lb=6"], "must be below"),
    (["algo.advantage.pass_k=2"], "only acts with"),
    (["algo.exploration.passk_credit=true", "algo.advantage.pass_k=9"], "exceeds rollout.group_size"),
    (["algo.advantage.estimator=passk", "algo.exploration.batch_coef=0.1"], "needs 0/1 rewards"),
    (["algo.advantage.estimator=passk", "algo.overlong.enabled=true"], "needs 0/1 rewards"),
    (["algo.advantage.estimator=grpo_passk", "rollout.group_size=1", "optim.minibatches=1"], "at least 2 answers"),
    (["algo.exploration.history_coef=-1"], "history_coef"),
])
def test_config_refuses_what_it_cannot_honour(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config("grpo", overrides=overrides)


# ------------------------------------------------------------------ through the training loop


def test_resume_is_exact_with_exploration_state(tmp_path):
    """clip_cov draws its tokens from the global generator and the history bonus reads the
    checkpointed answer counts: the resumed iteration equals the uninterrupted one."""
    opts = ["train.iterations=2", "train.checkpoint_every=1", "algo.policy_loss.name=clip_cov",
            "algo.policy_loss.clip_cov_ratio=0.05", "algo.exploration.history_coef=0.1",
            "algo.exploration.batch_coef=0.1"]
    cfg = micro(tmp_path, "grpo", *opts)
    start_run(cfg, name="full", progress=False)
    full = _strip(read_jsonl(tmp_path / "runs" / "full" / "metrics.jsonl"))
    for key in ("cov_mean", "cov_max", "cov_clipfrac", "cov_band_frac", "distinct_answers", "explore_history_bonus",
                "explore_batch_penalty", "task_reward", "entropy_q1", "entropy_q4"):
        assert key in full[1], key
    assert full[1]["explore_history_prompts"] > full[0]["explore_history_prompts"]
    cut = cfg.model_copy(update={"train": cfg.train.model_copy(update={"iterations": 1})})
    start_run(cut, name="cut", progress=False)
    run = tmp_path / "runs" / "cut"
    (run / "config.yaml").write_text(cfg.to_yaml())
    (run / "summary.json").unlink()
    resume_run(run, progress=False)
    assert _strip(read_jsonl(run / "metrics.jsonl"))[1] == full[1]


@pytest.mark.parametrize("preset, extra", [
    ("grpo", ["algo.policy_loss.name=kl_cov", "algo.advantage.estimator=grpo_passk"]),
    ("grpo", ["algo.advantage.estimator=passk", "algo.advantage.pass_k=2"]),
    ("vapo", ["algo.exploration.passk_credit=true", "algo.advantage.pass_k=2", "algo.critic.pretrain_steps=0",
              "algo.critic.probe_every=0"]),
])
def test_mechanisms_run_through_the_one_loop(tmp_path, preset, extra):
    cfg = micro(tmp_path, preset, "train.iterations=1", *extra)
    start_run(cfg, name="r", progress=False)
    m = read_jsonl(tmp_path / "runs" / "r" / "metrics.jsonl")[0]
    assert math.isfinite(m["actor_grad_norm"]) and "distinct_answers" in m and "cov_mean" in m
    if cfg.algo.policy_loss.name == "kl_cov":
        assert "cov_klfrac" in m and "kl_abs" in m
    if cfg.algo.exploration.passk_credit:
        assert "passk_credit_mean" in m


def test_exploration_presets_are_their_base_plus_what_they_set():
    import yaml

    from vapo.config import PRESET_DIR

    files = sorted((PRESET_DIR / "exploration").glob("*.yaml"))
    assert {p.stem for p in files} == {f"{b}_{m}" for b in ("vapo", "grpo")
                                        for m in ("clip_cov", "kl_cov", "outcome_history", "outcome_batch")} | {
        "vapo_passk", "grpo_passk", "grpo_passk_analytic"}
    for path in files:
        raw = yaml.safe_load(path.read_text())
        base = raw.pop("base")
        assert base in ("vapo", "grpo") and path.stem.startswith(base)
        got = flat_keys(resolve_config(path.stem).to_dict())
        want = flat_keys(resolve_config(base).to_dict())
        changed = {k for k in got if got[k] != want[k]} - {"preset"}
        assert changed <= set(flat_keys(raw)), (path.stem, changed)
        assert changed, f"{path.stem} changes nothing"
