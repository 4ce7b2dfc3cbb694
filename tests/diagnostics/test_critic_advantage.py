"""Critic error and advantage quality against exactly known values (fixed-distribution policy)."""

import numpy as np
import pytest
import torch
from toys import L_MAX, FixedDist, ToyTask, true_values_matrix

from vapo.config import AdvantageConfig
from vapo.diagnostics.advantage import advantage_report, estimator_advantages
from vapo.diagnostics.advantage import finding as adv_finding
from vapo.diagnostics.common import (
    bucket_labels,
    bucket_of,
    generate_batch,
    length_edges,
)
from vapo.diagnostics.critic import critic_error_report, finding
from vapo.diagnostics.mc import mc_values, probe_positions, spread_rows
from vapo.models import build_char_tokenizer
from vapo.train.collect import RewardSettings

SETTINGS = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=L_MAX)
EDGES = length_edges(L_MAX)
LABELS = bucket_labels(EDGES)


@pytest.fixture(scope="module")
def probed():
    """MC values at prefixes (t) and their successors (t + 1) of fresh toy responses, and the truth."""
    tok = build_char_tokenizer()
    policy, task = FixedDist(tok), ToyTask()
    batch = generate_batch(policy, tok, task, SETTINGS, n_prompts=40, group_size=4, seed=5)
    lengths = batch.lengths.numpy()
    rows, ts, rel = probe_positions(lengths, spread_rows(lengths, 80), (0.0, 0.5))
    K = len(rows)
    mc = mc_values(policy, tok, task, batch, np.concatenate([rows, rows]), np.concatenate([ts, ts + 1]),
                   continuations=48, settings=SETTINGS, generator=torch.Generator().manual_seed(1), max_rows=8000)
    truth = true_values_matrix(batch, tok)
    return batch, truth, rows, ts, rel, K, mc


@pytest.mark.parametrize("planted", [0.15, -0.1])
def test_planted_critic_bias_is_reported_with_its_sign_and_size(probed, planted):
    batch, truth, rows, ts, rel, K, mc = probed
    v_true = truth[torch.from_numpy(rows), torch.from_numpy(ts)].numpy()
    v_critic = v_true + planted
    rep = critic_error_report(v_critic, mc.mean[:K], mc.var_mean[:K], rel, bucket_of(batch.lengths.numpy()[rows], EDGES), LABELS)
    b = rep["overall"]["bias"]
    assert b["lo"] <= planted <= b["hi"], b
    assert np.sign(b["lo"]) == np.sign(b["hi"]) == np.sign(planted)  # significant, right sign
    r = rep["overall"]["rmse"]
    assert abs(r["value"] - abs(planted)) < 0.05, r  # the MC noise is removed from the RMSE
    assert ("over" if planted > 0 else "under") + "estimates" in finding(rep)


def test_exact_critic_has_no_bias_and_full_explained_variance(probed):
    batch, truth, rows, ts, rel, K, mc = probed
    v_true = truth[torch.from_numpy(rows), torch.from_numpy(ts)].numpy()
    rep = critic_error_report(v_true, mc.mean[:K], mc.var_mean[:K], rel, bucket_of(batch.lengths.numpy()[rows], EDGES), LABELS)
    b = rep["overall"]["bias"]
    assert b["lo"] <= 0 <= b["hi"]
    assert rep["overall"]["rmse"]["value"] < 0.04
    assert "bias not significant" in finding(rep)


def test_gae_with_the_exact_critic_is_best_at_lambda_0(probed):
    """With V = V^π exactly, GAE(λ=0) = V(s_{t+1}) − V(s_t) = A^π: no bias, zero MSE, and the best λ."""
    batch, truth, rows, ts, rel, K, mc = probed
    advs = estimator_advantages(batch, truth.float(), AdvantageConfig(gamma=1.0, alpha=0.5))
    a_mc, noise = mc.mean[K:] - mc.mean[:K], mc.var_mean[K:] + mc.var_mean[:K]
    rep = advantage_report(advs, rows, ts, a_mc, noise, bucket_of(batch.lengths.numpy()[rows], EDGES), LABELS)
    e0 = rep["estimators"]["λ=0"]["all"]
    assert e0["bias"]["lo"] <= 0 <= e0["bias"]["hi"]
    assert e0["mse"]["lo"] <= 0 <= e0["mse"]["hi"], e0["mse"]
    assert e0["correlation"]["value"] > 0.5
    assert rep["best_lambda"]["all"]["estimator"] in ("λ=0", "λ=0.5")
    # λ = 1 uses the sampled return: unbiased too, but noisier than λ = 0.
    e1 = rep["estimators"]["λ=1"]["all"]
    assert e1["mse"]["value"] > e0["mse"]["value"]
    # Group estimators are computed without a critic.
    assert {"grpo", "dr_grpo", "rloo"} <= set(rep["estimators"])


def test_critic_free_reports_group_estimators_only(probed):
    batch, truth, rows, ts, rel, K, mc = probed
    advs = estimator_advantages(batch, None, AdvantageConfig(gamma=1.0, alpha=0.5))
    assert set(advs) == {"grpo", "dr_grpo", "rloo"}


@pytest.mark.parametrize("estimator", ["gae_mc_anchored", "gae_error_aware"])
def test_the_runs_value_pathway_is_compared_beside_gae(probed, estimator):
    """A run trained with a value pathway has its own estimator in the table, computed by the
    registry on the same critic values, rewards and groups; "gae" runs and critic-free runs do not."""
    from vapo.algos.advantages import AdvantageInput, get_advantage_estimator
    from vapo.algos.shaping import scores_to_token_rewards
    from vapo.train.adapter import advantage_params

    batch, truth, rows, ts, rel, K, mc = probed
    cfg = AdvantageConfig(gamma=1.0, alpha=0.5, estimator=estimator)
    values = truth.float() * 0.5 + 0.1  # a biased critic, so the pathway has something to change
    advs = estimator_advantages(batch, values, cfg)
    mask = batch.response_mask.double()
    direct = get_advantage_estimator(estimator)(AdvantageInput(
        token_rewards=scores_to_token_rewards(batch.scores.double(), mask), response_mask=mask,
        values=values.double() * mask, scores=batch.scores.double(), group_index=batch.group_index),
        advantage_params(cfg)).advantages.double()
    assert torch.equal(advs[f"run: {estimator}"], direct)
    assert not torch.allclose(direct, advs["adaptive"])  # not a copy of plain GAE
    a_mc, noise = mc.mean[K:] - mc.mean[:K], mc.var_mean[K:] + mc.var_mean[:K]
    rep = advantage_report(advs, rows, ts, a_mc, noise, bucket_of(batch.lengths.numpy()[rows], EDGES), LABELS)
    assert np.isfinite(rep["estimators"][f"run: {estimator}"]["all"]["mse"]["value"])
    assert f"{estimator} MSE " in adv_finding(rep, has_critic=True)
    assert not any(k.startswith("run:") for k in estimator_advantages(batch, values, AdvantageConfig(gamma=1.0, alpha=0.5)))
    assert set(estimator_advantages(batch, None, cfg)) == {"grpo", "dr_grpo", "rloo"}
