"""DP ground truth of the token MDP vs brute-force enumeration, gradients vs finite
differences, sampling vs exact distributions, GAE moments vs closed forms and simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos import masked_gae
from vapo.theory.critics import controlled_critic
from vapo.theory.gae_exact import gae_moments
from vapo.theory.mdp import (
    END,
    MISTAKE,
    LogLinearPolicy,
    action_probs,
    init_logits,
    loglinear_features,
    make_mdp,
    objective,
    sample,
    solve,
)


def _rand_mdp(seed: int, fixed: bool = False, critical: bool = False, tol: int = 0, L: int = 5):
    rng = np.random.default_rng(seed)
    req = rng.integers(1, L + 1, size=3)
    crit = [int(rng.integers(0, r)) for r in req] if critical else None
    mdp = make_mdp(req, max_len=L, tolerance=tol, fixed_length=fixed, critical=crit)
    z = rng.normal(size=(3, L, mdp.n_m, 3))
    return mdp, z


def _enumerate(mdp, pi, k, t, m):
    """All continuations from state (k, t, m): list of (prob, reward, final length)."""
    out = []

    def rec(t, m, p):
        if t == mdp.max_len:
            out.append((p, 0.0, t))
            return
        for a in range(3):
            pa = pi[k, t, m, a]
            if pa == 0:
                continue
            if a == END:
                out.append((p * pa, float(t + 1 >= mdp.required[k] and m <= mdp.tolerance), t + 1))
            elif a == MISTAKE:
                rec(t + 1, min(m + int(mdp.counts[k, t]), mdp.n_m - 1), p * pa)
            else:
                rec(t + 1, m, p * pa)

    rec(t, m, 1.0)
    return out


@pytest.mark.parametrize("seed,fixed,critical,tol", [(0, False, False, 0), (1, True, False, 0),
                                                    (2, False, True, 0), (3, False, False, 1),
                                                    (4, True, True, 1)])
def test_dp_equals_brute_force_enumeration(seed, fixed, critical, tol):
    mdp, z = _rand_mdp(seed, fixed, critical, tol)
    sol = solve(mdp, z)
    pi = sol.pi
    for k in range(3):
        for t in range(mdp.max_len):
            for m in range(mdp.n_m):
                v = sum(p * r for p, r, _ in _enumerate(mdp, pi, k, t, m))
                assert abs(v - sol.V[k, t, m]) < 1e-10
    # J and the joint (length, correct) distribution from the prompt states
    J = 0.0
    pmf_c = np.zeros_like(sol.length_pmf_correct)
    pmf_w = np.zeros_like(sol.length_pmf_wrong)
    for k in range(3):
        for p, r, n in _enumerate(mdp, pi, k, 0, 0):
            J += mdp.prompt_probs[k] * p * r
            (pmf_c if r > 0 else pmf_w)[k, n] += mdp.prompt_probs[k] * p
    assert abs(J - sol.J) < 1e-10
    np.testing.assert_allclose(sol.length_pmf_correct, pmf_c, atol=1e-10, rtol=0)
    np.testing.assert_allclose(sol.length_pmf_wrong, pmf_w, atol=1e-10, rtol=0)
    # Q = E[R | s, a] and A = Q − V
    for k in range(3):
        for t in range(mdp.max_len - 1):
            for a in range(3):
                if not mdp.allowed[k, t, a]:
                    continue
                pi_a = np.zeros_like(pi)
                pi_a[...] = pi
                pi_a[k, t, 0] = np.eye(3)[a]
                q = sum(p * r for p, r, _ in _enumerate(mdp, pi_a, k, t, 0))
                assert abs(q - sol.Q[k, t, 0, a]) < 1e-10
                assert abs(sol.A[k, t, 0, a] - (q - sol.V[k, t, 0])) < 1e-10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_gradient_equals_finite_differences(seed):
    mdp, z = _rand_mdp(seed, fixed=seed == 1, tol=seed % 2)
    g = solve(mdp, z).grad_logits
    rng = np.random.default_rng(seed)
    eps = 1e-6
    for _ in range(25):
        idx = tuple(int(rng.integers(0, n)) for n in z.shape)
        e = np.zeros_like(z)
        e[idx] = eps
        fd = (objective(mdp, z + e) - objective(mdp, z - e)) / (2 * eps)
        assert abs(fd - g[idx]) < 1e-8
    # log-linear policy: chain rule through the shared features
    phi = loglinear_features(mdp)
    pol = LogLinearPolicy(phi, rng.normal(size=phi.shape[-1]) * 0.3)
    gth = pol.grad(solve(mdp, pol.logits()).grad_logits)
    for i in range(phi.shape[-1]):
        e = np.zeros(phi.shape[-1])
        e[i] = eps
        fd = (objective(mdp, pol.logits(pol.theta + e)) - objective(mdp, pol.logits(pol.theta - e))) / (2 * eps)
        assert abs(fd - gth[i]) < 1e-8


def test_long_horizon_is_fast_and_normalised():
    import time

    mdp = make_mdp([200, 800, 1500], max_len=2000, tolerance=1)
    z = init_logits(mdp, 0.001, 0.001)
    t0 = time.perf_counter()
    sol = solve(mdp, z)
    assert time.perf_counter() - t0 < 5.0
    assert abs(sol.length_pmf.sum() - 1.0) < 1e-10
    assert 0 < sol.J < 1


def test_sampling_matches_exact_distributions():
    mdp, z = _rand_mdp(5, tol=1)
    sol = solve(mdp, z)
    tr = sample(mdp, z, 40_000, np.random.default_rng(0))
    se = np.sqrt(sol.J * (1 - sol.J) / 40_000)
    assert abs(tr.success.mean() - sol.J) < 4.5 * se
    pmf = sol.length_pmf.sum(0)
    emp = np.bincount(tr.lengths, minlength=pmf.size) / 40_000
    assert np.abs(emp - pmf).max() < 4.5 * np.sqrt(0.25 / 40_000)
    # rewards sit on the last real token, the mask covers exactly `lengths` tokens
    assert np.all(tr.mask.sum(1) == tr.lengths)
    assert np.all(tr.token_rewards.sum(1) == tr.success)
    # MC check of V at the prompt state via the sampled returns
    assert np.allclose(tr.gather(sol.V)[:, 0], sol.V[tr.prompts, 0, 0])


@given(seed=st.integers(0, 10_000), lam=st.floats(0.0, 1.0), fixed=st.booleans())
@settings(max_examples=20, deadline=None)
def test_gae_closed_forms(seed, lam, fixed):
    mdp, z = _rand_mdp(seed, fixed=fixed, L=6)
    sol = solve(mdp, z)
    allowed = mdp.allowed[:, :, None, :] & (sol.pi > 0)
    # exact critic: unbiased for every λ
    g = gae_moments(mdp, sol, sol.V, lam)
    assert np.abs(g.bias[0][allowed]).max() < 1e-10
    rng = np.random.default_rng(seed)
    vhat = sol.V + rng.normal(size=sol.V.shape) * 0.2
    e = vhat.copy()
    e[:, -1] = 0.0
    e = e - sol.V  # critic error, 0 at the terminal column
    g0 = gae_moments(mdp, sol, vhat, 0.0)
    g1 = gae_moments(mdp, sol, vhat, 1.0)
    K, L, M1 = mdp.n_prompts, mdp.max_len, mdp.n_m
    nm = mdp.next_m
    for k in range(K):
        for t in range(L):
            for m in range(M1):
                for a in range(3):
                    if not allowed[k, t, m, a]:
                        continue
                    e_next = 0.0 if a == END else e[k, t + 1, nm[k, t, m] if a == MISTAKE else m]
                    # λ = 0: bias = e(s') − e(s), no variance
                    assert abs(g0.bias[0, k, t, m, a] - (e_next - e[k, t, m])) < 1e-10
                    assert g0.var[0, k, t, m, a] < 1e-20
                    # λ = 1: Â = R − V̂(s): bias = −e(s)
                    assert abs(g1.bias[0, k, t, m, a] + e[k, t, m]) < 1e-10


def test_gae_moments_match_simulation_with_vapo_algos():
    mdp = make_mdp([6, 12], fixed_length=False, tolerance=0)
    z = init_logits(mdp, 0.05, 0.08)
    sol = solve(mdp, z)
    vhat = controlled_critic(mdp, sol.V, "distance", 0.2, scale=4.0, noise_std=0.05,
                             rng=np.random.default_rng(1))
    lam = 0.8
    g = gae_moments(mdp, sol, vhat, lam)
    tr = sample(mdp, z, 25_000, np.random.default_rng(2))
    tt = tr.torch()
    adv, _ = masked_gae(tt["token_rewards"], torch.from_numpy(tr.gather(vhat)), tt["response_mask"], 1.0, lam)
    err = adv.numpy() - tr.gather_sa(sol.A)
    m = tr.mask > 0
    # per-token MSE (pooled over prompts, weighted by tokens) vs the exact value
    tokens = sol.d[:, :-1].sum((1, 2))
    exact = float((g.mse_k[0] * tokens).sum() / tokens.sum())
    sim = float((err[m] ** 2).mean())
    se = float((err[m] ** 2).std() / np.sqrt(m.sum() / 10))  # conservative: tokens are correlated
    assert abs(sim - exact) < 4 * se
    # conditional mean at the first token of prompt 0 (state (0, 0, 0), action STEP)
    sel = (tr.prompts == 0) & (tr.actions[:, 0] == 0)
    a0 = adv.numpy()[sel, 0]
    assert abs(a0.mean() - g.mean[0, 0, 0, 0, 0]) < 4.5 * a0.std() / np.sqrt(sel.sum())


def test_bad_input_errors():
    from vapo.errors import VapoError

    with pytest.raises(VapoError):
        make_mdp([0, 3])
    with pytest.raises(VapoError):
        make_mdp([3, 4], max_len=2)
    with pytest.raises(VapoError):
        make_mdp([3, 4], critical=[5, 1])
    with pytest.raises(VapoError):
        controlled_critic(make_mdp([3]), np.zeros((1, 7, 2)), "rm-like")


def test_masked_actions_have_zero_probability():
    mdp = make_mdp([3, 5], fixed_length=True)
    pi = action_probs(mdp, np.zeros((2, 5, 2, 3)))
    assert pi[0, 2, :, END].min() == 1.0 and pi[0, 1, :, END].max() == 0.0
