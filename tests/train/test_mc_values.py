"""Monte-Carlo values of training answers and the critic schedule in the one training loop
(vapo.train.mc_values, the pathway presets of vapo/presets/pathways)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vapo.algos.pathways import mc_value_targets, vine_advantages
from vapo.config import PRESET_DIR, flat_keys, resolve_config
from vapo.errors import ConfigError
from vapo.train import start_run
from vapo.train.mc_values import CriticControl, point_positions
from vapo.train.probe import MCEstimate
from vapo.train.rundir import read_jsonl

PATHWAYS = sorted(p.stem for p in (PRESET_DIR / "pathways").glob("*.yaml"))
SMALL_MC = ["algo.mc_values.points=2", "algo.mc_values.continuations=2"]


def micro(tmp_path, preset, *extra):
    critic = [] if preset == "vine" else ["algo.critic.pretrain_steps=2", "algo.critic.pretrain_min_steps=1",
                                          "algo.critic.probe_answers=8", "algo.critic.probe_continuations=2"]
    return resolve_config(preset, overrides=[
        f"train.runs_dir={tmp_path / 'runs'}", "train.threads=1", "model.size=micro", "sft.steps=30", "sft.batch_size=32",
        "rollout.prompts_per_iter=4", "rollout.group_size=4", "rollout.max_new_tokens=24", "optim.minibatches=2",
        *critic, "eval.prompts=8", "eval.samples=2", "train.eval_every=0", *extra])


@pytest.fixture(scope="module")
def _shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache(_shared_cache, monkeypatch):
    monkeypatch.setenv("VAPO_CACHE_DIR", str(_shared_cache))  # one 30-step warm start for the whole module


def test_points_even_and_at_line_starts():
    rows, ts = point_positions(np.array([8, 3, 1, 0]), 4, "even")
    assert rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 2] and ts.tolist() == [0, 2, 4, 6, 0, 1, 2, 0]
    nl = 9
    ids = torch.tensor([[1, nl, 2, nl, 3, nl, 4, nl, 5, 6], [1, 2, 3, 0, 0, 0, 0, 0, 0, 0]])
    rows, ts = point_positions(np.array([10, 3]), 3, "lines", ids, {nl})
    # Line starts of row 0: 2, 4, 6, 8; two of them spread evenly (the first and the last), plus t = 0.
    assert rows.tolist() == [0, 0, 0, 1] and ts.tolist() == [0, 2, 8, 0]
    rows, ts = point_positions(np.array([10]), 9, "lines", ids[:1], {nl})
    assert ts.tolist() == [0, 2, 4, 6, 8]  # fewer lines than points: all of them


def test_line_starts_with_the_built_in_tokenizer():
    from vapo.models.tokenizer import build_char_tokenizer
    from vapo.train.mc_values import newline_token_ids

    tok = build_char_tokenizer()
    text = "40:3+7=0\n39:0+7=7\n#### 7"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    nl = newline_token_ids(tok, ids)
    assert [tok.decode([i]) for i in nl] == ["\n"]
    _, ts = point_positions(np.array([ids.shape[1]]), 4, "lines", ids, nl)
    assert ts.tolist() == [0, text.index("39"), text.index("####")]  # t = 0 and the two line starts


# The fields each pathway preset changes relative to `vapo` (everything else must be equal).
EXPECTED = {
    "vine": {"algo.advantage.estimator": "vine", "algo.advantage.extra.vine_credit": "segment",
             "algo.critic.enabled": False, "algo.critic.pretrain_steps": 0, "algo.critic.probe_every": 0},
    "vapo_mc_critic": {"algo.mc_values.pretrain_targets": True},
    "vapo_ev_blend": {"algo.critic.blend": "ev"},
    "vapo_mc_anchored": {"algo.advantage.estimator": "gae_mc_anchored", "algo.advantage.extra.anchor_strength": 1.0,
                         "algo.advantage.extra.anchor_profile": "linear"},
    "vapo_error_aware": {"algo.advantage.estimator": "gae_error_aware"},
    "vapo_surprise_history": {"algo.critic.surprise_history": True},
    "vapo_surprise_mc_critic": {"algo.critic.surprise_history": True, "algo.mc_values.pretrain_targets": True},
    "vapo_critic_schedule": {"algo.critic.steps_per_actor_step": 2, "algo.critic.warmup_ev": 0.5,
                             "algo.critic.warmup_max_iters": 5, "algo.critic.ev_every": 1},
    "vapo_surprise_mc_error_aware": {"algo.critic.surprise_history": True, "algo.mc_values.pretrain_targets": True,
                                     "algo.advantage.estimator": "gae_error_aware"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_pathway_preset_differs_from_vapo_only_in_its_pathway(name):
    assert PATHWAYS == sorted(EXPECTED)
    vapo = flat_keys(resolve_config("vapo").to_dict())
    c = resolve_config(name)
    got = flat_keys(c.to_dict())
    diff = {k: got[k] for k in got if got[k] != vapo.get(k) and k != "preset"}
    assert all(k in got or vapo[k] == {} for k in vapo)  # an empty mapping (extra: {}) flattens to itself
    assert diff == EXPECTED[name]
    assert c.preset == name


def test_example_grids_resolve_every_cell():
    """What `vapo compare` checks before any cell starts (vapo.compare.grid.load_grid), for both grids."""
    from pathlib import Path

    from vapo.compare.grid import load_grid

    root = Path(__file__).resolve().parents[2] / "examples"
    for grid in ("pathways.yaml", "pathways_long.yaml"):
        for quick in (False, True):
            g = load_grid(root / grid, quick=quick)
            assert [v.name for v in g.variants] == ["grpo", "vapo", *sorted(EXPECTED, key=list(EXPECTED).index)]
            assert len(g.cells) == len(g.variants) * len(g.seeds)
        assert load_grid(root / grid).seeds == [0, 1, 2, 3, 4]
    assert load_grid(root / "pathways_long.yaml").cells[0].config.task.name == "repeat_add"


def test_pathway_options_are_refused_where_they_cannot_act():
    with pytest.raises(ConfigError, match="in place of a critic"):
        resolve_config("vine", overrides=["algo.critic.enabled=true"])
    with pytest.raises(ConfigError, match="needs a critic"):
        resolve_config("grpo", overrides=["algo.critic.blend=ev"])
    with pytest.raises(ConfigError, match="needs a critic"):
        resolve_config("grpo", overrides=["algo.mc_values.rl_targets=true"])
    with pytest.raises(ConfigError, match="undiscounted"):
        resolve_config("vine", overrides=["algo.advantage.gamma=0.9"])
    with pytest.raises(ConfigError, match="whiten"):
        resolve_config("vapo_ev_blend", overrides=["algo.advantage.whiten=true"])
    with pytest.raises(ConfigError):
        resolve_config("vapo", overrides=["algo.mc_values.placement=steps"])
    with pytest.raises(ConfigError, match="needs a critic"):
        resolve_config("grpo", overrides=["algo.critic.surprise_history=true"])
    with pytest.raises(ConfigError, match="surprise_input is false"):
        resolve_config("vapo_surprise_history", overrides=["algo.critic.surprise_input=false"])


def _fake_mc(monkeypatch):
    """Monte-Carlo values that are a known function of (row, t), with a known token cost."""
    import vapo.train.mc_values as mod

    def fake(policy, tokenizer, task, batch, rows, ts, *, continuations, settings, generator, max_rows=2048):
        mean = (np.asarray(rows) % 3) / 3 + np.asarray(ts) / 100
        k = len(rows)
        return MCEstimate(mean=mean, var_mean=np.full(k, 0.01), lo=mean, hi=mean, m=np.full(k, continuations),
                          gen_tokens=7 * k * continuations)

    monkeypatch.setattr(mod, "mc_values", fake)


def test_vine_advantages_and_mc_targets_in_the_loop(tmp_path, monkeypatch):
    """The trainer's vine advantages and the critic's MC targets are the pure functions of the drawn values."""
    from vapo.train.trainer import Trainer
    from vapo.train.ui import quiet_ui

    _fake_mc(monkeypatch)
    for preset, extra in (("vine", []), ("vapo", ["algo.mc_values.rl_targets=true"])):
        cfg = micro(tmp_path, preset, *SMALL_MC, "algo.mc_values.continuations=3", *extra)
        run = tmp_path / f"run-{preset}"
        run.mkdir()
        t = Trainer(cfg, run)
        t.build(quiet_ui())
        exp, _ = t.collect()
        mc = t.draw_mc_values(exp)
        assert mc is not None and mc.estimate.gen_tokens == 7 * 3 * len(mc.rows)
        assert mc.point_mask.sum() == len(mc.rows) and bool(mc.point_mask[:, 0].all())
        want = torch.as_tensor((mc.rows % 3) / 3 + mc.ts / 100, dtype=torch.float32)
        assert torch.allclose(mc.values[torch.as_tensor(mc.rows), torch.as_tensor(mc.ts)], want)
        exp, _ = t.forward_passes(exp)
        exp = t.advantages(exp, mc)
        if preset == "vine":
            ref = vine_advantages(exp.token_rewards, mc.values, mc.point_mask, exp.response_mask)
            assert torch.allclose(exp.advantages, ref) and exp.returns is None
        else:
            ref = mc_value_targets(exp.token_rewards, mc.values, mc.point_mask, exp.response_mask)
            assert torch.allclose(exp.returns, ref)
    # Without a use for them, no draw.
    assert Trainer(micro(tmp_path, "vapo"), tmp_path).draw_mc_values(exp) is None


@pytest.mark.parametrize("preset", PATHWAYS)
def test_pathway_presets_run_through_the_one_loop(tmp_path, preset, monkeypatch):
    from vapo.train.trainer import Trainer

    cfg = micro(tmp_path, preset, *SMALL_MC, "train.iterations=2", "train.checkpoint_every=0")
    epochs, real = [], Trainer.update_critic

    def spy(self, exp, graphs=None, **kw):
        if kw.get("minibatch_size") is None:  # RL updates (value pretraining passes minibatch_size)
            epochs.append(kw.get("epochs"))
        return real(self, exp, graphs, **kw)

    monkeypatch.setattr(Trainer, "update_critic", spy)
    start_run(cfg, name="r", progress=False)
    if cfg.algo.critic.enabled:  # critic steps per actor step: k passes of the PPO schedule
        assert epochs == [cfg.optim.ppo_epochs * cfg.algo.critic.steps_per_actor_step] * 2
    else:
        assert epochs == []
    m = read_jsonl(tmp_path / "runs" / "r" / "metrics.jsonl")
    assert [r["iteration"] for r in m] == [1, 2]
    for r in m:
        assert r["extra_gen_tokens"] == r.get("mc_gen_tokens", 0) + r.get("ev_probe_gen_tokens", 0)
    if preset == "vine":
        assert all(r["mc_gen_tokens"] > 0 and r["mc_points"] >= 4 * 4 for r in m)
        assert "value_loss" not in m[0]
    if preset == "vapo_ev_blend":
        assert all(0.0 <= r["critic_weight"] <= 1.0 for r in m)
        assert m[0]["ev_probe_gen_tokens"] > 0  # measured at the first iteration, then every ev_every
        assert m[1]["extra_gen_tokens"] == 0 and m[1]["critic_ev_age"] == 1
    if preset == "vapo_critic_schedule":  # the warm-up runs until the EV target or its cap
        for r in m:
            reached = r["critic_ev_vs_mc"] >= cfg.algo.critic.warmup_ev
            assert r["critic_warmup"] == float(not reached) and (r["actor_steps"] == 0) == (not reached)
    if preset == "vapo_mc_critic":
        ev = [e for e in read_jsonl(tmp_path / "runs" / "r" / "events.jsonl") if e.get("phase") == "value_pretrain_mc"]
        assert ev and all(e["mc_gen_tokens"] > 0 for e in ev)


def test_critic_control_warmup_stops_on_ev_or_cap_and_blends(monkeypatch):
    cfg = resolve_config("vapo_critic_schedule", overrides=["algo.critic.warmup_max_iters=3", "algo.critic.blend=ev"])

    class Mc:
        def __init__(self, ev):
            self.ev = ev

        def critic_ev(self, values):
            return self.ev

    class T:
        def __init__(self):
            self.cfg, self.iteration = cfg, 0

    class E:
        def __init__(self):
            self.values = torch.zeros(4, 2)
            self.advantages = torch.ones(4, 2)
            self.scores = torch.tensor([1.0, 0.0, 1.0, 1.0])
            self.group_index = torch.tensor([0, 0, 1, 1])
            self.response_mask = torch.ones(4, 2)

    c, t = CriticControl(), T()
    seen = []
    for it, ev in enumerate([0.1, float("nan"), 0.2, 0.9, 0.1]):
        t.iteration = it
        e = E()
        only, m = c.step(t, e, Mc(ev))
        seen.append(only)
        w = 0.0 if math.isnan(ev) else ev
        assert m["critic_weight"] == w
        # w·1 + (1 − w)·(R − group mean): group 0 → ±0.5, group 1 → 0.
        assert torch.allclose(e.advantages[:, 0], torch.tensor([w + (1 - w) * 0.5, w - (1 - w) * 0.5, w, w]))
    assert seen == [True, True, True, False, False]  # the cap (3 iterations) ends it before EV 0.9 is seen
    c2 = CriticControl()
    assert c2.step(t, E(), Mc(0.6))[0] is False and c2.warmup_done  # 0.6 ≥ warmup_ev 0.5 at once
    c3 = CriticControl()
    c3.load_state_dict(c.state_dict())
    assert c3 == c
