"""Clip-Cov and KL-Cov (vapo.algos.losses) vs naive float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch
from algos_reference import agg_ref, clip_cov_ref, cov_ref, kl_cov_ref, ppo_clip_ref
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos import (
    get_policy_loss,
    policy_loss_clip,
    policy_loss_clip_cov,
    policy_loss_kl_cov,
    token_covariance,
)
from vapo.errors import VapoError

FAST = settings(max_examples=60, deadline=None)
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def inputs(seed, b, t, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(b, 1, generator=gen)
    mask = torch.rand(b, t, generator=gen) < p
    logp = -torch.rand(b, t, generator=gen, dtype=torch.float64) * 3 * scale
    old = logp + 0.4 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = 2 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    # padding holds garbage: it must not reach any output
    logp = torch.where(mask, logp, torch.full_like(logp, float("nan")))
    return logp, old, adv, mask


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 16))
def test_token_covariance_matches_reference(seed, b, t):
    logp, _, adv, mask = inputs(seed, b, t)
    got = token_covariance(logp, adv, mask)
    ref = torch.tensor(cov_ref(torch.where(mask, logp, 0.0), adv, mask), dtype=torch.float64)
    assert torch.allclose(got, ref, atol=1e-10)
    # its masked mean is the covariance of log pi and A over real tokens
    if mask.sum() > 0:
        x, y = logp[mask], adv[mask]
        cov = ((x - x.mean()) * (y - y.mean())).mean()
        assert math.isclose(float(got[mask].mean()), float(cov), abs_tol=1e-10)


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 16),
       mode=st.sampled_from(MODES), ratio=st.sampled_from([2e-4, 0.05, 0.3, 1.0]),
       band=st.sampled_from([(1.0, 5.0), (-1.0, 1.0), (0.0, 0.5)]))
def test_clip_cov_matches_reference(seed, b, t, mode, ratio, band):
    logp, old, adv, mask = inputs(seed, b, t)
    lp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss_clip_cov(lp, old, adv, mask, eps_low=0.2, eps_high=0.28, clip_cov_ratio=ratio,
                                       clip_cov_lb=band[0], clip_cov_ub=band[1],
                                       generator=torch.Generator().manual_seed(seed), agg_mode=mode)
    ref_mat, n_chosen, n_cand = clip_cov_ref(torch.where(mask, logp, 0.0), old, adv, mask, 0.2, 0.28, ratio,
                                             band[0], band[1], seed)
    assert math.isclose(loss.item(), agg_ref(ref_mat, mask, mode), rel_tol=1e-9, abs_tol=1e-12)
    n_real = int(mask.sum())
    if n_real:
        assert math.isclose(stats["cov_clipfrac"].item(), n_chosen / n_real, abs_tol=1e-12)
        assert math.isclose(stats["cov_band_frac"].item(), n_cand / n_real, abs_tol=1e-12)
        assert n_chosen == min(n_cand, max(1, int(ratio * n_real)))
    loss.backward()
    assert torch.isfinite(lp.grad).all()
    assert (lp.grad[~mask] == 0).all()


def test_clip_cov_detaches_exactly_the_chosen_tokens():
    # one token far outside the band on the high side, one inside: only the inside one is cut
    logp = torch.tensor([[-0.1, -3.0, -1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([[3.0, -3.0, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    cov = token_covariance(logp, adv, mask)
    assert cov[0, 0] > 1 and cov[0, 1] > 1  # both covariance terms are large and positive
    assert cov[0, 0] < cov[0, 1]  # 3.525 and 5.175
    loss, st_ = policy_loss_clip_cov(logp, logp.detach(), adv, mask, eps_low=0.2, eps_high=0.28,
                                     clip_cov_ratio=0.25, clip_cov_lb=1.0, clip_cov_ub=4.0,
                                     generator=torch.Generator().manual_seed(0))
    loss.backward()
    # token 0 (inside the band (1, 4)) lost its gradient, token 1 (above it) kept it
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] != 0
    assert math.isclose(st_["cov_clipfrac"].item(), 0.25)


def test_clip_cov_without_candidates_is_ppo_clip():
    logp, old, adv, mask = inputs(3, 4, 10)
    args = dict(eps_low=0.2, eps_high=0.28, agg_mode="token-mean")
    a, sa = policy_loss_clip_cov(logp, old, adv, mask, clip_cov_ratio=0.5, clip_cov_lb=1e6, clip_cov_ub=1e7, **args)
    b, sb = policy_loss_clip(logp, old, adv, mask, **args)
    assert math.isclose(a.item(), b.item(), rel_tol=1e-12)
    assert sa["cov_clipfrac"].item() == 0.0
    assert math.isclose(sa["cov_mean"].item(), sb["cov_mean"].item(), rel_tol=1e-12)


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 16),
       mode=st.sampled_from(MODES), ratio=st.sampled_from([2e-4, 2e-3, 0.1, 0.5, 1.0]),
       coef=st.sampled_from([0.0, 0.1, 1.0]))
def test_kl_cov_matches_reference(seed, b, t, mode, ratio, coef):
    logp, old, adv, mask = inputs(seed, b, t)
    lp = logp.clone().requires_grad_(True)
    loss, stats = policy_loss_kl_cov(lp, old, adv, mask, kl_cov_ratio=ratio, kl_cov_coef=coef, agg_mode=mode)
    ref_mat, n_top = kl_cov_ref(torch.where(mask, logp, 0.0), old, adv, mask, ratio, coef)
    assert math.isclose(loss.item(), agg_ref(ref_mat, mask, mode), rel_tol=1e-9, abs_tol=1e-12)
    n_real = int(mask.sum())
    if n_real:
        assert math.isclose(stats["cov_klfrac"].item(), n_top / n_real, abs_tol=1e-12)
        ref_abs = sum(abs(float(logp[i, j] - old[i, j])) for i in range(b) for j in range(t) if mask[i, j]) / n_real
        assert math.isclose(stats["kl_abs"].item(), ref_abs, rel_tol=1e-9)
    loss.backward()
    assert torch.isfinite(lp.grad).all()
    assert (lp.grad[~mask] == 0).all()


def test_kl_cov_with_zero_coef_is_the_unclipped_surrogate():
    logp, old, adv, mask = inputs(11, 3, 9)
    loss, _ = policy_loss_kl_cov(logp, old, adv, mask, kl_cov_ratio=0.5, kl_cov_coef=0.0)
    ref = ppo_clip_ref(torch.where(mask, logp, 0.0), old, adv, mask, eps_low=0.999999, eps_high=1e9)
    assert math.isclose(loss.item(), agg_ref(ref, mask, "token-mean"), rel_tol=1e-9)


def test_registry_and_errors():
    assert get_policy_loss("clip_cov") is policy_loss_clip_cov
    assert get_policy_loss("kl_cov") is policy_loss_kl_cov
    logp, old, adv, mask = inputs(0, 2, 5)
    with pytest.raises(VapoError, match="clip_cov_ratio"):
        policy_loss_clip_cov(logp, old, adv, mask, eps_low=0.2, eps_high=0.2, clip_cov_ratio=0.0,
                             clip_cov_lb=1.0, clip_cov_ub=5.0)
    with pytest.raises(VapoError, match="clip_cov_lb < clip_cov_ub"):
        policy_loss_clip_cov(logp, old, adv, mask, eps_low=0.2, eps_high=0.2, clip_cov_ratio=0.1,
                             clip_cov_lb=5.0, clip_cov_ub=1.0)
    with pytest.raises(VapoError, match="kl_cov_ratio"):
        policy_loss_kl_cov(logp, old, adv, mask, kl_cov_ratio=1.5, kl_cov_coef=1.0)
    with pytest.raises(VapoError, match="kl_cov_coef"):
        policy_loss_kl_cov(logp, old, adv, mask, kl_cov_ratio=0.1, kl_cov_coef=-1.0)


def test_empty_mask_gives_zero_loss():
    logp, old, adv, _ = inputs(1, 2, 4)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    for fn, kw in ((policy_loss_clip_cov, dict(eps_low=0.2, eps_high=0.2, clip_cov_ratio=0.1, clip_cov_lb=1.0,
                                                clip_cov_ub=5.0)),
                   (policy_loss_kl_cov, dict(kl_cov_ratio=0.1, kl_cov_coef=1.0))):
        loss, stats = fn(logp, old, adv, mask, **kw)
        assert loss.item() == 0.0
        assert all(torch.isfinite(v) for v in stats.values())
