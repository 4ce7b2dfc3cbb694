"""The critic probe (vapo.train.probe): MC values of the probe cover the exact ones, its figures
match a naive float64 reference, the noise correction removes the MC noise, value pretraining
stops on the probe's RMSE and keeps the best critic, and the critic gate fields are refused
without a critic."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1] / "diagnostics"))
from toys import L_MAX, FixedDist, ToyTask, true_values_matrix  # noqa: E402

from vapo.config import resolve_config  # noqa: E402
from vapo.errors import ConfigError  # noqa: E402
from vapo.models import build_char_tokenizer  # noqa: E402
from vapo.train.collect import RewardSettings  # noqa: E402
from vapo.train.probe import MCEstimate, ProbeSet, critic_quality, draw_probe  # noqa: E402

SETTINGS = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=L_MAX)


def _probe(rows, rel, returns, mc_mean, mc_var) -> ProbeSet:
    K = len(rows)
    mc = MCEstimate(mean=np.asarray(mc_mean, float), var_mean=np.asarray(mc_var, float), lo=np.zeros(K), hi=np.zeros(K),
                    m=np.ones(K, np.int64))
    return ProbeSet(batch=list(range(int(max(rows)) + 1)), rows=np.asarray(rows), ts=np.zeros(K, np.int64),
                    rel=np.asarray(rel, float), returns=np.asarray(returns, float), mc=mc)


def _naive_ev(pred, y, noise=0.0, noise_in_y=False):
    n = len(y)
    my = sum(y) / n
    var_y = sum((a - my) ** 2 for a in y) / n - (noise if noise_in_y else 0.0)
    r = [a - b for a, b in zip(y, pred, strict=True)]
    mr = sum(r) / n
    return 1.0 - (sum((a - mr) ** 2 for a in r) / n - noise) / var_y


def test_draw_probe_mc_values_cover_the_exact_values():
    tok = build_char_tokenizer()
    policy, task = FixedDist(tok), ToyTask()
    p = draw_probe(policy, tok, task, SETTINGS, answers=40, positions=(0.0, 0.5), continuations=200, seed=1)
    assert len(p.rows) == 80 and set(p.rel.tolist()) == {0.0, 0.5}
    assert np.array_equal(p.returns, p.batch.scores.double().numpy()[p.rows])
    truth = true_values_matrix(p.batch, tok)[torch.from_numpy(p.rows), torch.from_numpy(p.ts)].numpy()
    inside = (p.mc.lo <= truth + 1e-12) & (truth - 1e-12 <= p.mc.hi)
    assert inside.mean() >= 0.85, inside.mean()
    # The true value function reaches the ceiling: ev = achievable_ev (up to the MC noise).
    q = critic_quality(truth, p)
    assert abs(q["ev"] - q["achievable_ev"]) < 0.1, q
    assert q["rmse_vs_mc"] < 0.03 and q["ev_vs_mc"] > 0.9, q
    # A constant critic explains nothing of the returns.
    q0 = critic_quality(np.full(len(truth), p.returns.mean()), p)
    assert abs(q0["ev"]) < 1e-9 and q0["achievable_ev"] > 0.05


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 12), k=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_critic_quality_matches_a_naive_reference(n, k, seed):
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n), k)
    rel = np.tile(np.linspace(0, 0.75, k), n)
    ret = np.repeat(rng.integers(0, 2, n).astype(float), k)
    if ret.std() == 0:
        ret[0] = 1.0 - ret[0]
    mc, var, v = rng.random(n * k), rng.random(n * k) * 0.01, rng.random(n * k)
    q = critic_quality(v, _probe(rows, rel, ret, mc, var))
    noise = sum(var) / len(var)
    assert q["ev"] == pytest.approx(_naive_ev(list(v), list(ret)), abs=1e-9)
    assert q["achievable_ev"] == pytest.approx(_naive_ev(list(mc), list(ret), noise), abs=1e-9)
    if np.var(mc) > noise:
        assert q["ev_vs_mc"] == pytest.approx(_naive_ev(list(v), list(mc), noise, noise_in_y=True), abs=1e-9)
    e = [a - b for a, b in zip(v, mc, strict=True)]
    assert q["rmse_vs_mc"] == pytest.approx(max(sum(x * x for x in e) / len(e) - noise, 0.0) ** 0.5, abs=1e-9)
    assert q["bias_vs_mc"] == pytest.approx(sum(e) / len(e), abs=1e-9)
    for rho, f in q["by_position"].items():
        s = np.isclose(rel, float(rho))
        assert f["n"] == s.sum() and f["bias_vs_mc"] == pytest.approx(float(np.mean(v[s] - mc[s])), abs=1e-9)


def test_noise_correction_recovers_the_true_ceiling():
    rng = np.random.default_rng(0)
    n, M = 20000, 4
    V = rng.random(n)
    R = (rng.random(n) < V).astype(float)
    draws = (rng.random((n, M)) < V[:, None]).astype(float)
    mc, var = draws.mean(1), draws.var(1, ddof=1) / M
    q = critic_quality(V, _probe(np.arange(n), np.zeros(n), R, mc, var))
    true_ev = _naive_ev(list(V), list(R))
    raw = _naive_ev(list(mc), list(R))
    assert abs(q["achievable_ev"] - true_ev) < 0.02 < abs(raw - true_ev), (q["achievable_ev"], true_ev, raw)
    assert q["ev_vs_mc"] == pytest.approx(1.0, abs=0.03) and q["rmse_vs_mc"] < 0.03


def test_bootstrap_intervals_bracket_the_value():
    rng = np.random.default_rng(1)
    n = 60
    rows = np.repeat(np.arange(n), 2)
    V = rng.random(2 * n)
    R = np.repeat((rng.random(n) < 0.5).astype(float), 2)
    q = critic_quality(V + 0.1 * rng.standard_normal(2 * n), _probe(rows, np.tile([0.0, 0.5], n), R, V, np.zeros(2 * n)),
                       n_boot=200)
    for key in ("ev", "achievable_ev", "ev_vs_mc", "rmse_vs_mc", "bias_vs_mc"):
        f = q[key]
        assert f["lo"] <= f["value"] <= f["hi"] and f["hi"] > f["lo"], (key, f)


@pytest.mark.parametrize("field", ["algo.critic.pretrain_steps=5", "algo.critic.probe_every=5"])
def test_critic_gate_fields_are_refused_without_a_critic(field, tmp_path):
    with pytest.raises(ConfigError, match=field.split("=")[0].replace(".", r"\.") + ".*needs a critic"):
        resolve_config("grpo", overrides=[field])
    from typer.testing import CliRunner

    from vapo.cli import app

    r = CliRunner().invoke(app, ["train", "--preset", "grpo", "--set", field, "--set", f"train.runs_dir={tmp_path / 'runs'}"])
    assert r.exit_code == 2 and not (tmp_path / "runs").exists(), r.output


def test_probe_positions_must_lie_in_the_answer():
    with pytest.raises(ConfigError, match="probe_positions"):
        resolve_config("vapo", overrides=["algo.critic.probe_positions=[0.5, 1.0]"])


def test_value_pretraining_stops_on_the_probe_rmse_and_keeps_the_best_critic(tmp_path, monkeypatch):
    from vapo.train.trainer import Trainer
    from vapo.train.ui import StopFlag, progress_ui

    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))
    cfg = resolve_config("vapo", overrides=[
        "train.threads=1", "model.size=micro", "sft.steps=0", "rollout.prompts_per_iter=4", "rollout.group_size=2",
        "rollout.max_new_tokens=16", "algo.critic.pretrain_steps=10", "algo.critic.pretrain_min_steps=1",
        "algo.critic.pretrain_patience=2", "algo.critic.pretrain_tol=0.0", "algo.critic.pretrain_epochs=2",
        "algo.critic.pretrain_minibatch_size=4", "optim.critic_lr=1e-2",
        "algo.critic.head_init=random"])
    tr = Trainer(cfg, tmp_path / "run", progress=False)
    (tmp_path / "run").mkdir()
    with progress_ui(False) as ui:
        tr.build(ui)
        scripted = iter([0.5, 0.4, 0.3, 0.35, 0.36, 0.2, 0.1])  # rounds 0..4; a stop after round 4; selection probe
        states, opt_states, probes_seen = [], [], []

        def fake_probe(probe, n_boot=0):
            probes_seen.append((probe, n_boot))
            states.append({k: v.clone() for k, v in tr.critic.state_dict().items()})
            opt_states.append(copy.deepcopy(tr.critic_opt.state_dict()))
            if n_boot:
                return {"rmse_vs_mc": "final"}
            return {"ev": 0.0, "achievable_ev": 0.0, "ev_vs_mc": 0.0, "rmse_vs_mc": next(scripted)}

        monkeypatch.setattr(tr, "draw_probe", lambda seed_offset=0: f"probe+{seed_offset}")
        monkeypatch.setattr(tr, "probe_critic", fake_probe)
        hist = tr.pretrain_value(ui, StopFlag())
    rounds = [r for r in hist if r["phase"] == "value_pretrain"]
    assert [r["step"] for r in rounds] == [0, 1, 2, 3, 4]
    assert [r["gradient_steps"] for r in rounds] == [0, 4, 8, 12, 16]  # 2 epochs × 8 answers / 4
    end = hist[-1]["critic_quality"]
    assert end["kept_round"] == 2 and end["pretrain_steps"]["value"] == 8 and end["pretrain_rounds"] == 4
    kept, final = states[2], states[-1]  # the probe call after round 2, and the final one
    assert all(torch.equal(kept[k], final[k]) for k in kept)
    assert not all(torch.equal(states[4][k], final[k]) for k in kept)  # round 4's critic was discarded
    # the kept critic's Adam moments come back with it (round 4's moments are discarded too)
    step_of = lambda st: [float(v["step"]) for v in st["state"].values()]  # noqa: E731
    assert step_of(opt_states[-1]) == step_of(opt_states[2]) != step_of(opt_states[4])
    exp_avg = lambda st: [v["exp_avg"] for v in st["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(exp_avg(opt_states[-1]), exp_avg(opt_states[2]), strict=True))
    # rounds and the selection figures use the selecting probe; the reported figures a fresh one
    assert [p for p, _ in probes_seen[:-1]] == ["probe+0"] * 6 and probes_seen[-1][0] != "probe+0"
    assert probes_seen[-1][1] > 0 and end["selection_probe"]["rmse_vs_mc"] == 0.2
