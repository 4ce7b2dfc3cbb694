"""vapo.algos.advantages vs naive float64 loops, plus the invariants of docs/algorithms.md."""

from __future__ import annotations

import math

import pytest
import torch
from algos_reference import gae_ref, group_ref
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos import (
    ADVANTAGE_ESTIMATORS,
    AdvantageInput,
    AdvantageParams,
    adaptive_lambda,
    decoupled_gae,
    discounted_reverse_cumsum,
    dr_grpo_advantages,
    get_advantage_estimator,
    grpo_advantages,
    masked_gae,
    masked_gae_reference,
    register_advantage_estimator,
    rloo_advantages,
)
from vapo.errors import VapoError

FAST = settings(max_examples=60, deadline=None)


def make_mask(gen: torch.Generator, b: int, t: int, layout: str) -> torch.Tensor:
    """Right-padded with lengths 0..T, or an arbitrary (left/middle/holey) mask."""
    if layout == "right":
        lengths = torch.randint(0, t + 1, (b,), generator=gen)
        return torch.arange(t)[None, :] < lengths[:, None]
    if layout == "left":
        lengths = torch.randint(0, t + 1, (b,), generator=gen)
        return torch.arange(t)[None, :] >= (t - lengths)[:, None]
    p = torch.rand(b, 1, generator=gen)  # per-row density, some rows nearly empty or full
    return torch.rand(b, t, generator=gen) < p


def make_batch(seed: int, b: int, t: int, layout: str, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    mask = make_mask(gen, b, t, layout)
    rewards = torch.randn(b, t, generator=gen, dtype=dtype)
    values = torch.randn(b, t, generator=gen, dtype=dtype)
    return rewards, values, mask


def per_seq(draw_scalar: bool, gen: torch.Generator, b: int, special: bool):
    if draw_scalar:
        return 1.0 if special else float(torch.rand((), generator=gen))
    v = torch.rand(b, generator=gen)
    if special and b >= 2:
        v[0], v[1] = 0.0, 1.0  # the edges: pure TD and Monte-Carlo
    return v


def close(a, b, tol):
    return (a.double() - b.double()).abs().max().item() <= tol * (1 + b.abs().max().item())


# ---------------------------------------------------------------------------------- masked_gae


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 6),
    t=st.integers(1, 80),
    layout=st.sampled_from(["right", "left", "any"]),
    scalar_g=st.booleans(),
    scalar_l=st.booleans(),
    special=st.booleans(),
)
def test_masked_gae_matches_float64_loop(seed, b, t, layout, scalar_g, scalar_l, special):
    rewards, values, mask = make_batch(seed, b, t, layout)
    gen = torch.Generator().manual_seed(seed + 1)
    gamma = per_seq(scalar_g, gen, b, special)
    lam = per_seq(scalar_l, gen, b, special)
    adv, ret = masked_gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = gae_ref(rewards, values, mask, gamma, lam)
    assert adv.dtype == torch.float32 and adv.shape == (b, t)
    assert close(adv, adv_ref, 1e-5) and close(ret, ret_ref, 1e-5)
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()
    # The readable loop gives the same numbers.
    adv_loop, ret_loop = masked_gae_reference(rewards.double(), values.double(), mask,
                                              gamma if not isinstance(gamma, torch.Tensor) else gamma.double(),
                                              lam if not isinstance(lam, torch.Tensor) else lam.double())
    assert close(adv_loop, adv_ref, 1e-12) and close(ret_loop, ret_ref, 1e-12)


@pytest.mark.parametrize("t", [31, 32, 33, 1100, 2100])  # one chunk, 2 and 3 scan levels
@pytest.mark.parametrize("layout", ["right", "any"])
def test_masked_gae_long_sequences_float64_exact(t, layout):
    rewards, values, mask = make_batch(t, 3, t, layout, dtype=torch.float64)
    lam = torch.tensor([0.0, 0.97, 1.0], dtype=torch.float64)
    gamma = torch.tensor([1.0, 0.999, 1.0], dtype=torch.float64)
    adv, ret = masked_gae(rewards, values, mask, gamma, lam)
    adv_ref, ret_ref = gae_ref(rewards, values, mask, gamma, lam)
    assert adv.dtype == torch.float64
    assert close(adv, adv_ref, 1e-11) and close(ret, ret_ref, 1e-11)


def test_masked_gae_long_float32_accuracy():
    rewards, values, mask = make_batch(7, 4, 3000, "right")
    lam = adaptive_lambda(mask.sum(-1).clamp_min(1), 0.05)
    adv, ret = masked_gae(rewards, values, mask, 1.0, lam)
    adv_ref, ret_ref = gae_ref(rewards, values, mask, 1.0, lam)
    assert close(adv, adv_ref, 1e-6) and close(ret, ret_ref, 1e-6)


@given(seed=st.integers(0, 2**31 - 1), t=st.integers(1, 200),
       c=st.sampled_from([0.0, 0.5, 0.99, 1.0]))
@settings(max_examples=30, deadline=None)
def test_discounted_reverse_cumsum(seed, t, c):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, t, generator=gen, dtype=torch.float64)
    cs = torch.tensor([c, 0.3], dtype=torch.float64)
    y = discounted_reverse_cumsum(x, cs, chunk=8)  # small chunk: several levels
    for i in range(2):
        acc = 0.0
        for k in reversed(range(t)):
            acc = x[i, k].item() + cs[i].item() * acc
            assert math.isclose(y[i, k].item(), acc, rel_tol=1e-10, abs_tol=1e-10)


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 70),
       layout=st.sampled_from(["right", "left", "any"]))
def test_gamma_lambda_one_is_monte_carlo_return(seed, b, t, layout):
    rewards, values, mask = make_batch(seed, b, t, layout)
    _, ret = masked_gae(rewards, values, mask, 1.0, 1.0)
    for i in range(b):
        acc = 0.0
        for k in reversed(range(t)):
            if mask[i, k]:
                acc += rewards[i, k].item()
                assert math.isclose(ret[i, k].item(), acc, abs_tol=1e-4 * (1 + abs(acc)))
            else:
                assert ret[i, k].item() == 0.0


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 70),
       layout=st.sampled_from(["right", "any"]), gamma=st.floats(0.0, 1.0))
def test_lambda_zero_is_one_step_td(seed, b, t, layout, gamma):
    rewards, values, mask = make_batch(seed, b, t, layout)
    adv, _ = masked_gae(rewards, values, mask, gamma, 0.0)
    for i in range(b):
        idx = [k for k in range(t) if mask[i, k]]
        for j, k in enumerate(idx):
            v_next = values[i, idx[j + 1]].item() if j + 1 < len(idx) else 0.0
            delta = rewards[i, k].item() + gamma * v_next - values[i, k].item()
            assert math.isclose(adv[i, k].item(), delta, abs_tol=1e-5)


def test_padding_never_leaks():
    """Garbage (inf / NaN) at masked positions must not reach real positions."""
    rewards, values, mask = make_batch(3, 4, 50, "any")
    adv, ret = masked_gae(rewards, values, mask, 1.0, 0.9)
    r2, v2 = rewards.clone(), values.clone()
    r2[~mask], v2[~mask] = float("nan"), float("inf")
    adv2, ret2 = masked_gae(r2, v2, mask, 1.0, 0.9)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_left_padding_equals_right_padding_shifted():
    rewards, values, mask = make_batch(5, 3, 40, "right")
    lengths = mask.sum(-1)
    shift = lambda x: torch.stack([torch.roll(x[i], 40 - int(lengths[i])) for i in range(3)])  # noqa: E731
    adv, ret = masked_gae(rewards, values, mask, 1.0, torch.tensor([0.5, 0.9, 1.0]))
    adv_l, ret_l = masked_gae(shift(rewards), shift(values), shift(mask), 1.0, torch.tensor([0.5, 0.9, 1.0]))
    assert torch.allclose(shift(adv), adv_l, atol=1e-6) and torch.allclose(shift(ret), ret_l, atol=1e-6)


def test_masked_gae_bad_input():
    r, v, m = make_batch(0, 2, 5, "right")
    with pytest.raises(VapoError, match="shape"):
        masked_gae(r[:, :4], v, m)
    with pytest.raises(VapoError, match="lam"):
        masked_gae(r, v, m, 1.0, 1.5)
    with pytest.raises(VapoError, match=r"\[B\]"):
        masked_gae(r, v, m, 1.0, torch.ones(3))
    with pytest.raises(VapoError, match="2-D"):
        masked_gae(r[0], v[0], m[0])


# ---------------------------------------------------------------------- adaptive / decoupled


def test_adaptive_lambda_formula_and_clamp():
    lengths = torch.tensor([1, 10, 20, 21, 40, 100, 8192])
    lam = adaptive_lambda(lengths, alpha=0.05)
    for length, got in zip(lengths.tolist(), lam.tolist(), strict=True):
        assert math.isclose(got, max(0.0, 1 - 1 / (0.05 * length)), abs_tol=1e-7)
    assert lam[2] == 0.0 and lam[0] == 0.0 and 0 < lam[3] < 1 and lam.max() < 1
    # horizon 1/(1 - lambda) = alpha * l for l > 1/alpha
    assert math.isclose(1 / (1 - lam[-1].item()), 0.05 * 8192, rel_tol=1e-4)


def test_adaptive_lambda_bad_input():
    with pytest.raises(VapoError, match=">= 1"):
        adaptive_lambda(torch.tensor([0, 5]), 0.05)
    with pytest.raises(VapoError, match="alpha"):
        adaptive_lambda(torch.tensor([5]), alpha=0.0)


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 60),
       layout=st.sampled_from(["right", "any"]))
def test_decoupled_gae(seed, b, t, layout):
    rewards, values, mask = make_batch(seed, b, t, layout)
    lam_a = torch.rand(b, generator=torch.Generator().manual_seed(seed))
    adv, ret = decoupled_gae(rewards, values, mask, 1.0, lam_a, 1.0)
    adv_ref, _ = gae_ref(rewards, values, mask, 1.0, lam_a)
    _, ret_ref = gae_ref(rewards, values, mask, 1.0, 1.0)
    assert close(adv, adv_ref, 1e-5) and close(ret, ret_ref, 1e-5)


# --------------------------------------------------------------------------- group advantages

GROUP_FNS = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages}


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 12),
    t=st.integers(1, 9),
    n_groups=st.integers(1, 4),
    kind=st.sampled_from(sorted(GROUP_FNS)),
    binary=st.booleans(),
)
def test_group_advantages_match_reference(seed, b, t, n_groups, kind, binary):
    gen = torch.Generator().manual_seed(seed)
    # arbitrary, unsorted, non-contiguous group ids
    ids = torch.tensor([-7, 3, 1000, 42])[torch.randint(0, n_groups, (b,), generator=gen)]
    scores = (torch.rand(b, generator=gen) < 0.5).float() if binary else torch.randn(b, generator=gen)
    mask = make_mask(gen, b, t, "any")
    adv = GROUP_FNS[kind](scores, ids, mask)
    ref = group_ref(scores, ids, mask, kind)
    assert adv.shape == (b, t) and torch.isfinite(adv).all()
    assert close(adv, ref, 1e-5)
    assert (adv[~mask] == 0).all()
    # Per-sequence advantages (ours, one token each) sum to zero within each group.
    seq_adv = GROUP_FNS[kind](scores, ids, torch.ones(b, 1, dtype=torch.bool))[:, 0]
    for g in ids.unique():
        assert abs(seq_adv[ids == g].sum().item()) < 1e-5


@pytest.mark.parametrize("kind", sorted(GROUP_FNS))
def test_group_degenerate_cases_give_zero_not_nan(kind):
    scores = torch.tensor([0.1, 0.1, 0.1, 5.0, 2.0, 2.0])
    ids = torch.tensor([9, 9, 9, 4, 1, 1])  # zero variance, singleton, zero variance
    adv = GROUP_FNS[kind](scores, ids, torch.ones(6, 3))
    assert torch.equal(adv, torch.zeros(6, 3))


def test_grpo_uses_unbiased_std():
    adv = grpo_advantages(torch.tensor([0.0, 1.0]), torch.tensor([0, 0]), torch.ones(2, 1), eps=0.0)
    # mean 0.5, unbiased std sqrt(0.5) -> +-0.7071 (biased std 0.5 would give +-1)
    assert torch.allclose(adv[:, 0], torch.tensor([-(0.5**0.5), 0.5**0.5]))


def test_group_bad_input():
    with pytest.raises(VapoError, match="integers"):
        grpo_advantages(torch.ones(2), torch.tensor([0.0, 1.0]), torch.ones(2, 3))
    with pytest.raises(VapoError, match="scores"):
        rloo_advantages(torch.ones(3), torch.tensor([0, 1]), torch.ones(2, 3))


# ---------------------------------------------------------------------------------- registry


def test_builtin_estimators_registered():
    assert {"gae", "grpo", "dr_grpo", "rloo"} <= set(ADVANTAGE_ESTIMATORS)


def test_gae_estimator_adaptive_and_decoupled():
    rewards, values, mask = make_batch(11, 4, 60, "right")
    mask[0] = False  # an empty row must not break the adaptive lambda
    inp = AdvantageInput(rewards, mask, values)
    out = get_advantage_estimator("gae")(inp, AdvantageParams(lam_actor=None, lam_critic=1.0, alpha=0.1))
    lam = (1 - 1 / (0.1 * mask.sum(-1).clamp_min(1).float())).clamp_min(0)
    adv_ref, _ = gae_ref(rewards, values, mask, 1.0, lam)
    _, ret_ref = gae_ref(rewards, values, mask, 1.0, 1.0)
    assert close(out.advantages, adv_ref, 1e-5) and close(out.returns, ret_ref, 1e-5)
    out2 = get_advantage_estimator("gae")(inp, AdvantageParams(lam_actor=0.9, lam_critic=0.9, alpha=0.05))
    adv2, ret2 = gae_ref(rewards, values, mask, 1.0, 0.9)
    assert close(out2.advantages, adv2, 1e-5) and close(out2.returns, ret2, 1e-5)
    with pytest.raises(VapoError, match="values"):
        get_advantage_estimator("gae")(AdvantageInput(rewards, mask), AdvantageParams(lam_actor=None, alpha=0.05))


@pytest.mark.parametrize("kind", sorted(GROUP_FNS))
def test_group_estimators_via_registry(kind):
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 1]], dtype=torch.bool)
    rewards = torch.zeros(4, 3)
    rewards[0, 1], rewards[2, 2], rewards[3, 2] = 1.0, 0.5, 0.25
    rewards[1, 2] = 100.0  # a masked reward: ignored by the default score
    ids = torch.tensor([5, 5, 8, 8])
    out = get_advantage_estimator(kind)(AdvantageInput(rewards, mask, None, None, ids), AdvantageParams(lam_actor=None, alpha=0.05))
    assert out.returns is None
    expected = GROUP_FNS[kind](torch.tensor([1.0, 0.0, 0.5, 0.25]), ids, mask)
    assert torch.allclose(out.advantages, expected)
    with pytest.raises(VapoError, match="group_index"):
        get_advantage_estimator(kind)(AdvantageInput(rewards, mask), AdvantageParams(lam_actor=None, alpha=0.05))


def test_registry_unknown_and_duplicate_names():
    with pytest.raises(VapoError, match='Did you mean "grpo"'):
        get_advantage_estimator("grp")
    with pytest.raises(VapoError, match="already registered"):
        register_advantage_estimator("gae")(lambda inp, params: None)
    name = "test_only_estimator"
    try:
        @register_advantage_estimator(name)
        def _est(inp, params):
            return None

        assert get_advantage_estimator(name) is _est
    finally:
        ADVANTAGE_ESTIMATORS.pop(name, None)
