"""Pathway estimators (vapo.algos.pathways) against float64 loop references + properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos.advantages import AdvantageInput, AdvantageParams, get_advantage_estimator
from vapo.algos.pathways import (
    DEFAULT_LAMBDA_GRID,
    anchor_values,
    distance_from_end,
    error_aware_lambda,
    estimate_noise_var,
    estimated_gae_mse,
    fit_error_profile,
)
from vapo.errors import VapoError

# ------------------------------------------------------------------ loop references


def ref_gae_row(r, v, lam):
    """GAE(γ=1) over one sequence's real tokens (lists), V after the end = 0."""
    n = len(r)
    adv = [0.0] * n
    nxt_a, nxt_v = 0.0, 0.0
    for t in reversed(range(n)):
        delta = r[t] + nxt_v - v[t]
        nxt_a = delta + lam * nxt_a
        adv[t] = nxt_a
        nxt_v = v[t]
    return adv, [a + b for a, b in zip(adv, v, strict=True)]


def rows(mask):
    return [[t for t in range(mask.shape[1]) if mask[i, t] > 0] for i in range(mask.shape[0])]


def ref_error_fit(values, rewards, mask):
    xs, ys = [], []
    for i, idx in enumerate(rows(mask)):
        r = [float(rewards[i, t]) for t in idx]
        g = [sum(r[k:]) for k in range(len(r))]
        for k, t in enumerate(idx):
            xs.append(len(idx) - k)
            ys.append(float(values[i, t]) - g[k])
    if not xs:
        return 0.0, 0.0
    xm, ym = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - xm) ** 2 for x in xs)
    sxy = sum((x - xm) * (y - ym) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx if sxx > 1e-12 else 0.0
    return ym - b * xm, b


def ref_group_var(scores, groups):
    out = []
    s = [float(x) for x in scores]
    for i in range(len(s)):
        members = [s[j] for j in range(len(s)) if groups[j] == groups[i]]
        if len(members) >= 2:
            out.append(float(np.var(members, ddof=1)))
        else:
            out.append(float(np.var(s, ddof=1)) if len(s) > 1 else 0.0)
    return out


def ref_mse(a, b, sigma2, mask, lam, eps2=0.0):
    out = []
    for i, idx in enumerate(rows(mask)):
        n = len(idx)
        e = [a + b * (n - k) for k in range(n)]
        c, _ = ref_gae_row([0.0] * n, e, lam)
        tot = 0.0
        for k in range(n):
            nt = n - k
            geo = sum(lam ** (2 * j) for j in range(1, nt))
            noise = 1.0 + sum(((1 - lam) * lam ** (j - 1)) ** 2 for j in range(1, nt))
            tot += c[k] ** 2 + sigma2[i] / n * geo + eps2 * noise
        out.append(tot)
    return out


def ref_noise_var(values, rewards, mask, a, b, sigma2):
    num, den = 0.0, 0.0
    for i, idx in enumerate(rows(mask)):
        n = len(idx)
        if n == 0:
            continue
        v = [float(values[i, t]) for t in idx] + [0.0]
        e = [a + b * (n - k) for k in range(n)] + [0.0]
        for k, t in enumerate(idx):
            num += (float(rewards[i, t]) + v[k + 1] - v[k]) ** 2 - (e[k + 1] - e[k]) ** 2
        num -= sigma2[i]
        den += 2 * n - 1
    return max(0.0, num / den) if den > 0 else 0.0


def ref_anchor(values, mask, scores, groups, strength, profile):
    out = np.zeros(values.shape)
    for i, idx in enumerate(rows(mask)):
        peers = [float(scores[j]) for j in range(len(scores)) if groups[j] == groups[i] and j != i]
        n = len(idx)
        delta = strength * (sum(peers) / len(peers) - float(values[i, idx[0]])) if peers and n else 0.0
        for k, t in enumerate(idx):
            w = {"linear": (n - k) / n, "constant": 1.0, "prompt": 1.0 if k == 0 else 0.0}[profile]
            out[i, t] = float(values[i, t]) + delta * w
    return out


# ------------------------------------------------------------------ random batches


@st.composite
def batches(draw, max_b=6, max_t=12):
    b = draw(st.integers(1, max_b))
    t = draw(st.integers(1, max_t))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, t))
    for i in range(b):
        n = int(rng.integers(0, t + 1))
        start = int(rng.integers(0, t - n + 1)) if draw(st.booleans()) else 0  # left/middle pad
        mask[i, start : start + n] = 1
    scores = rng.integers(0, 2, size=b).astype(float)
    rewards = np.zeros((b, t))
    for i, idx in enumerate(rows(mask)):
        if idx:
            rewards[i, idx[-1]] = scores[i]
    values = rng.normal(0.5, 0.5, size=(b, t)) * mask
    groups = rng.integers(0, max(1, b // 2), size=b)
    return (
        torch.tensor(values),
        torch.tensor(rewards),
        torch.tensor(mask),
        torch.tensor(scores),
        torch.tensor(groups),
    )


# ------------------------------------------------------------------ tests


@settings(max_examples=40, deadline=None)
@given(batches())
def test_error_fit_and_mse_match_loop_reference(batch):
    values, rewards, mask, scores, groups = batch
    a, b = ref_error_fit(values, rewards, mask)
    g_mc = torch.tensor([[sum(rewards[i, k] for k in range(t, mask.shape[1])) for t in range(mask.shape[1])] for i in range(mask.shape[0])], dtype=torch.float64)
    e_hat = fit_error_profile(values, g_mc * mask, mask)
    d = distance_from_end(mask)
    np.testing.assert_allclose(e_hat.numpy(), ((a + b * d) * mask).numpy(), atol=1e-9)
    sigma2 = ref_group_var(scores, groups.tolist())
    eps2 = ref_noise_var(values, rewards, mask, a, b, sigma2)
    got_eps2 = estimate_noise_var(values, rewards, mask, e_hat, torch.tensor(sigma2, dtype=torch.float64))
    assert math.isclose(float(got_eps2), eps2, rel_tol=1e-9, abs_tol=1e-9)
    for lam in (0.0, 0.5, 0.93, 1.0):
        got = estimated_gae_mse(e_hat, torch.tensor(sigma2, dtype=torch.float64), mask, lam, eps2).numpy()
        np.testing.assert_allclose(got, ref_mse(a, b, sigma2, mask, lam, eps2), rtol=1e-9, atol=1e-9)


@settings(max_examples=40, deadline=None)
@given(batches())
def test_error_aware_lambda_is_argmin_of_reference_mse(batch):
    values, rewards, mask, scores, groups = batch
    lam = error_aware_lambda(values, rewards, mask, scores, groups).numpy()
    a, b = ref_error_fit(values, rewards, mask)
    sigma2 = ref_group_var(scores, groups.tolist())
    eps2 = ref_noise_var(values, rewards, mask, a, b, sigma2)
    table = np.array([ref_mse(a, b, sigma2, mask, x, eps2) for x in DEFAULT_LAMBDA_GRID]).T  # [B, K]
    for i in range(len(lam)):
        k = DEFAULT_LAMBDA_GRID.index(round(float(lam[i]), 2))
        assert table[i, k] <= table[i].min() + 1e-9 * (1 + abs(table[i].min()))


@settings(max_examples=40, deadline=None)
@given(batches(), st.sampled_from(["linear", "constant", "prompt"]), st.floats(0.0, 1.0))
def test_anchor_values_match_loop_reference(batch, profile, strength):
    values, rewards, mask, scores, groups = batch
    got = anchor_values(values, mask, scores, groups, strength=strength, profile=profile)
    want = ref_anchor(values, mask, scores, groups.tolist(), strength, profile)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(batches(), st.sampled_from([None, 0.0, 0.9, 1.0]))
def test_mc_anchored_estimator_matches_reference_gae(batch, lam_actor):
    values, rewards, mask, scores, groups = batch
    params = AdvantageParams(lam_actor=lam_actor, lam_critic=1.0, alpha=0.2, extra={"anchor_profile": "linear"})
    out = get_advantage_estimator("gae_mc_anchored")(
        AdvantageInput(token_rewards=rewards, response_mask=mask, values=values, scores=scores, group_index=groups),
        params,
    )
    anchored = ref_anchor(values, mask, scores, groups.tolist(), 1.0, "linear")
    for i, idx in enumerate(rows(mask)):
        n = len(idx)
        lam = max(0.0, 1.0 - 1.0 / (0.2 * n)) if lam_actor is None and n else (lam_actor or 0.0)
        adv, _ = ref_gae_row([float(rewards[i, t]) for t in idx], [anchored[i, t] for t in idx], lam)
        _, ret = ref_gae_row([float(rewards[i, t]) for t in idx], [anchored[i, t] for t in idx], 1.0)
        np.testing.assert_allclose(out.advantages[i, idx].numpy(), adv, atol=1e-9)
        np.testing.assert_allclose(out.returns[i, idx].numpy(), ret, atol=1e-9)
    assert torch.all(out.advantages[mask == 0] == 0) and torch.all(out.returns[mask == 0] == 0)


@settings(max_examples=30, deadline=None)
@given(batches())
def test_error_aware_estimator_uses_chosen_lambda_and_zeroes_padding(batch):
    values, rewards, mask, scores, groups = batch
    inp = AdvantageInput(token_rewards=rewards, response_mask=mask, values=values, scores=scores, group_index=groups)
    out = get_advantage_estimator("gae_error_aware")(inp, AdvantageParams(lam_actor=None, lam_critic=1.0, alpha=0.05))
    lam = error_aware_lambda(values, rewards, mask, scores, groups)
    for i, idx in enumerate(rows(mask)):
        adv, _ = ref_gae_row([float(rewards[i, t]) for t in idx], [float(values[i, t]) for t in idx], float(lam[i]))
        np.testing.assert_allclose(out.advantages[i, idx].numpy(), adv, atol=1e-9)
    assert torch.all(out.advantages[mask == 0] == 0) and torch.all(out.returns[mask == 0] == 0)


def test_error_aware_lambda_limits():
    """Exact critic + noisy outcomes → λ = 0; noisy critic + no outcome noise → λ = 1."""
    mask = torch.ones(4, 6, dtype=torch.float64)
    rewards = torch.zeros(4, 6, dtype=torch.float64)
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    rewards[:, -1] = scores
    groups = torch.tensor([0, 0, 1, 1])
    values_exact = rewards.flip(1).cumsum(1).flip(1)  # V̂ = MC return → zero residual
    lam = error_aware_lambda(values_exact, rewards, mask, scores, groups)
    assert torch.all(lam == 0.0)
    ones = torch.ones(4, dtype=torch.float64)
    rewards1 = torch.zeros(4, 6, dtype=torch.float64)
    rewards1[:, -1] = 1.0
    noisy = 1.0 + 0.3 * torch.tensor([1.0, -1.0]).repeat(3).expand(4, 6).to(torch.float64)
    lam1 = error_aware_lambda(noisy, rewards1, mask, ones, groups)
    assert torch.all(lam1 == 1.0)
    # the same with the noise variance given instead of estimated
    lam2 = error_aware_lambda(values_exact, rewards, mask, scores, groups, noise_var=10.0)
    assert torch.all(lam2 >= 0.9)


def test_mc_anchored_fixes_a_constant_prompt_bias():
    """A critic off by a constant at every state: anchoring removes the prompt-state error."""
    mask = torch.ones(4, 5, dtype=torch.float64)
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0])
    v = torch.full((4, 5), 0.9, dtype=torch.float64)
    anchored = anchor_values(v, mask, scores, groups, profile="prompt")
    loo = torch.tensor([1 / 3, 1 / 3, 2 / 3, 2 / 3], dtype=torch.float64)
    assert torch.allclose(anchored[:, 0], loo)
    assert math.isclose(float(anchored[:, 0].mean()), 0.5)


def test_bad_inputs_raise_vapo_errors():
    mask = torch.ones(2, 3)
    inp = AdvantageInput(token_rewards=torch.zeros(2, 3), response_mask=mask, values=None,
                         scores=torch.zeros(2), group_index=torch.zeros(2, dtype=torch.long))
    with pytest.raises(VapoError):
        get_advantage_estimator("gae_error_aware")(inp, AdvantageParams(lam_actor=None, alpha=0.05))
    with pytest.raises(VapoError):
        anchor_values(torch.zeros(2, 3), mask, torch.zeros(2), torch.zeros(2), profile="bogus")
    with pytest.raises(VapoError):
        error_aware_lambda(torch.zeros(2, 3), torch.zeros(2, 3), mask, torch.zeros(2), torch.zeros(2), lambda_grid=[1.5])
