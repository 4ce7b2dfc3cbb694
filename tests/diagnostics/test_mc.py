"""The Monte-Carlo probe recovers values that are known exactly (a fixed-distribution policy)."""

import numpy as np
import pytest
import torch
from toys import L_MAX, FixedDist, ToyTask, true_value, true_values_matrix

from vapo.diagnostics.common import (
    bootstrap_ci,
    bucket_of,
    corr_ci,
    generate_batch,
    length_edges,
    wilson,
)
from vapo.diagnostics.mc import mc_values, probe_positions, spread_rows
from vapo.models import build_char_tokenizer
from vapo.train.collect import RewardSettings

SETTINGS = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=L_MAX)


@pytest.fixture(scope="module")
def toy():
    tok = build_char_tokenizer()
    policy, task = FixedDist(tok), ToyTask()
    batch = generate_batch(policy, tok, task, SETTINGS, n_prompts=24, group_size=2, seed=3)
    return tok, policy, task, batch


def test_batch_rewards_match_the_verifier(toy):
    tok, _, _, batch = toy
    texts = [tok.decode(batch.response_ids[i, : batch.lengths[i]].tolist(), skip_special_tokens=True) for i in range(len(batch.lengths))]
    assert [float("a" in t) for t in texts] == batch.scores.tolist()
    assert int(batch.lengths.max()) <= L_MAX


def test_mc_values_cover_the_exact_values(toy):
    tok, policy, task, batch = toy
    lengths = batch.lengths.numpy()
    rows = np.arange(len(lengths))
    rows, ts = rows, np.zeros(len(rows), dtype=np.int64)
    # Prefix states at t = 0 (value depends on nothing but L_max) and at t = l − 1 (depends on the prefix).
    rows2, ts2, _ = probe_positions(lengths, rows, (1.0,))
    rows, ts = np.concatenate([rows, rows2]), np.concatenate([ts, ts2])
    M = 200
    mc = mc_values(policy, tok, task, batch, rows, ts, continuations=M, settings=SETTINGS,
                   generator=torch.Generator().manual_seed(0), max_rows=4000)
    truth = true_values_matrix(batch, tok)[torch.from_numpy(rows), torch.from_numpy(ts)].numpy()
    inside = (mc.lo <= truth + 1e-12) & (truth - 1e-12 <= mc.hi)
    assert inside.mean() >= 0.85, (inside.mean(), truth[~inside], mc.mean[~inside])
    # The t = 0 states all share V = pa(1 − pb^L)/(1 − pb): the pooled estimate is tight.
    v0 = true_value("", 0)
    pooled = mc.mean[: len(lengths)].mean()
    assert abs(pooled - v0) < 4 * np.sqrt(v0 * (1 - v0) / (M * len(lengths))), (pooled, v0)
    # The budget matters: with one token left the value is pa, not the t = 0 value.
    late = (ts == L_MAX - 1) & (truth < 1)
    if late.any():
        assert abs(mc.mean[late].mean() - 0.15) < 0.1


def test_finished_response_is_exact(toy):
    tok, policy, task, batch = toy
    rows = np.arange(4)
    ts = batch.lengths.numpy()[rows]
    mc = mc_values(policy, tok, task, batch, rows, ts, continuations=8, settings=SETTINGS,
                   generator=torch.Generator().manual_seed(0))
    assert mc.mean.tolist() == batch.scores[:4].tolist()
    assert (mc.var_mean == 0).all() and (mc.m == 0).all()


def test_wilson_interval_against_known_values():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (3, 7), (17, 40), (99, 100)])
def test_wilson_interval_matches_the_formula(k, n):
    z = 1.959963984540054
    p = k / n
    den = 1 + z * z / n
    mid, half = (p + z * z / (2 * n)) / den, z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(max(0.0, mid - half), abs=1e-9) and hi == pytest.approx(min(1.0, mid + half), abs=1e-9)


def test_correlation_interval_is_fisher_z_and_bootstrap_brackets_the_value():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x + rng.normal(size=50)
    r = float(np.corrcoef(x, y)[0, 1])
    z, se = np.arctanh(r), 1 / np.sqrt(50 - 3)
    d = corr_ci(x, y)
    assert d["value"] == pytest.approx(r, abs=1e-12)
    assert d["lo"] == pytest.approx(np.tanh(z - 1.959963984540054 * se), abs=1e-9)
    assert d["hi"] == pytest.approx(np.tanh(z + 1.959963984540054 * se), abs=1e-9)
    assert np.isnan(corr_ci(x, np.ones(50))["value"])
    b = bootstrap_ci(np.mean, x, n_boot=400, seed=1)
    assert b["value"] == pytest.approx(x.mean()) and b["lo"] < b["value"] < b["hi"]
    assert b["hi"] - b["lo"] == pytest.approx(2 * 1.96 * x.std(ddof=1) / np.sqrt(50), rel=0.3)


def test_spread_rows_and_buckets():
    lengths = np.array([5, 1, 9, 3, 7])
    assert spread_rows(lengths, 3).tolist() == [1, 0, 2]
    assert spread_rows(lengths, 10).tolist() == [1, 3, 0, 4, 2]
    edges = length_edges(8)
    assert edges == [0, 2, 4, 6, 8]
    assert bucket_of(np.array([1, 2, 3, 8, 9]), edges).tolist() == [0, 0, 1, 3, 3]
