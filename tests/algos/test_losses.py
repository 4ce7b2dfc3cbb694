"""vapo.algos.losses vs naive float64 references and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from algos_reference import agg_ref, ppo_clip_ref
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos import (
    LOSS_AGG_MODES,
    POLICY_LOSSES,
    aggregate_loss,
    entropy_from_logits,
    explained_variance,
    get_loss_agg_mode,
    get_policy_loss,
    kl_estimate,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss_clip,
    positive_nll_loss,
    register_loss_agg_mode,
    token_weights,
    value_loss,
)
from vapo.errors import VapoError

FAST = settings(max_examples=50, deadline=None)
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def batch(seed, b, t, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(b, 1, generator=gen)
    mask = torch.rand(b, t, generator=gen) < p
    x = torch.randn(b, t, generator=gen, dtype=dtype)
    return gen, x, mask


# -------------------------------------------------------------------------- masked reductions


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 20))
def test_masked_reductions(seed, b, t):
    _, x, mask = batch(seed, b, t)
    vals = [x[i, k].item() for i in range(b) for k in range(t) if mask[i, k]]
    n = len(vals)
    assert math.isclose(masked_sum(x, mask).item(), sum(vals), abs_tol=1e-9)
    mean = sum(vals) / n if n else 0.0
    assert math.isclose(masked_mean(x, mask).item(), mean, abs_tol=1e-9)
    var_b = sum((v - mean) ** 2 for v in vals) / n if n else 0.0
    var_u = var_b * n / (n - 1) if n > 1 else 0.0
    assert math.isclose(masked_var(x, mask, unbiased=False).item(), var_b, abs_tol=1e-9)
    assert math.isclose(masked_var(x, mask).item(), var_u, abs_tol=1e-9)
    for i in range(b):  # along a dim
        row = [x[i, k].item() for k in range(t) if mask[i, k]]
        assert math.isclose(masked_mean(x, mask, dim=-1)[i].item(),
                            sum(row) / len(row) if row else 0.0, abs_tol=1e-9)
    w = masked_whiten(x, mask)
    assert (w[~mask] == 0).all()
    if n > 1 and var_u > 1e-6:
        for i in range(b):
            for k in range(t):
                if mask[i, k]:
                    assert math.isclose(w[i, k].item(), (x[i, k].item() - mean) / math.sqrt(var_u + 1e-8),
                                        abs_tol=1e-6)
        w2 = masked_whiten(x, mask, shift_mean=False)
        assert torch.allclose(w2[mask], w[mask] + mean)


def test_explained_variance():
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    y = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    assert explained_variance(y, y, mask).item() == 1.0
    assert abs(explained_variance(torch.full_like(y, 2.0), y, mask).item()) < 1e-12
    pred = torch.tensor([[1.5, 2.0, 2.5, 0.0]])  # residual var 1/6, target var 2/3 -> 0.75
    assert math.isclose(explained_variance(pred, y, mask).item(), 0.75, rel_tol=1e-9)
    assert math.isnan(explained_variance(y, torch.ones_like(y), mask).item())


# -------------------------------------------------------------------------------- aggregation


def test_token_weights_hand_computed():
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    w = token_weights(mask, "token-mean")
    assert torch.allclose(w, mask.float() / 5)
    w = token_weights(mask, "seq-mean-token-mean")  # 2 non-empty rows; 1/(2*4) and 1/(2*1)
    assert torch.allclose(w[0], torch.full((4,), 1 / 8)) and w[1, 0] == 0.5 and w[2].sum() == 0
    w = token_weights(mask, "seq-mean-token-sum-norm")  # 1/(B*T) = 1/12
    assert torch.allclose(w, mask.float() / 12)
    w = token_weights(mask, "seq-mean-token-sum-norm", norm_len=10, num_seqs=4)
    assert torch.allclose(w, mask.float() / 40)
    assert torch.allclose(token_weights(mask, "token-mean", num_tokens=20), mask.float() / 20)
    assert torch.allclose(token_weights(mask, "seq-mean-token-mean", num_seqs=8)[1, 0], torch.tensor(1 / 8))


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 6), t=st.integers(1, 15),
       mode=st.sampled_from(MODES))
def test_aggregate_loss_matches_reference(seed, b, t, mode):
    _, x, mask = batch(seed, b, t)
    x[~mask] = float("inf")  # padding must be ignored
    got = aggregate_loss(x, mask, mode)
    assert math.isclose(got.item(), agg_ref(x, mask, mode), rel_tol=1e-9, abs_tol=1e-12)


def test_micro_batch_overrides_reassemble_the_full_batch():
    _, x, mask = batch(1, 8, 10)
    mask[:, 0] = True
    for mode in MODES:
        full = aggregate_loss(x, mask, mode)
        kw = {"num_tokens": int(mask.sum()), "num_seqs": 8}
        parts = aggregate_loss(x[:3], mask[:3], mode, **kw) + aggregate_loss(x[3:], mask[3:], mode, **kw)
        assert torch.allclose(full, parts), mode


def test_agg_mode_registry():
    assert set(MODES) <= set(LOSS_AGG_MODES)
    with pytest.raises(VapoError, match='Did you mean "token-mean"'):
        get_loss_agg_mode("token_mean")
    with pytest.raises(VapoError, match="already registered"):
        register_loss_agg_mode("token-mean")(lambda *a: None)
    with pytest.raises(VapoError, match="0 and 1"):
        token_weights(torch.full((2, 2), 0.5), "token-mean")


# -------------------------------------------------------------------------------- policy loss


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 12),
       mode=st.sampled_from(MODES), dual=st.sampled_from([None, 3.0]),
       eps=st.sampled_from([(0.2, 0.28), (0.2, 0.2), (0.1, 0.5)]))
def test_policy_loss_matches_reference(seed, b, t, mode, dual, eps):
    gen, logp, mask = batch(seed, b, t)
    old = logp + 0.4 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    adv = torch.randn(b, t, generator=gen, dtype=torch.float64)
    loss, stats = policy_loss_clip(logp, old, adv, mask, eps[0], eps[1], dual, mode)
    ref_mat = ppo_clip_ref(logp, old, adv, mask, eps[0], eps[1], dual)
    assert math.isclose(loss.item(), agg_ref(ref_mat, mask, mode), rel_tol=1e-9, abs_tol=1e-12)
    ratio = torch.exp(logp - old)
    n = max(int(mask.sum()), 1)
    low = sum(1 for i in range(b) for k in range(t)
              if mask[i, k] and adv[i, k] < 0 and ratio[i, k] < 1 - eps[0])
    high = sum(1 for i in range(b) for k in range(t)
               if mask[i, k] and adv[i, k] > 0 and ratio[i, k] > 1 + eps[1])
    assert math.isclose(stats["clipfrac_low"].item(), low / n, abs_tol=1e-12)
    assert math.isclose(stats["clipfrac_high"].item(), high / n, abs_tol=1e-12)
    k3 = [(ratio[i, k] - 1 - math.log(ratio[i, k])).item() for i in range(b) for k in range(t) if mask[i, k]]
    assert math.isclose(stats["approx_kl"].item(), sum(k3) / n, abs_tol=1e-9)
    if mask.any():
        assert math.isclose(stats["ratio_max"].item(), ratio[mask].max().item(), rel_tol=1e-12)
    assert all(v.dim() == 0 and not v.requires_grad for v in stats.values())


def _grad_at(ratio: float, adv: float, **kw) -> float:
    old = torch.zeros(1, 1, dtype=torch.float64)
    logp = torch.full((1, 1), math.log(ratio), dtype=torch.float64, requires_grad=True)
    loss, _ = policy_loss_clip(logp, old, torch.tensor([[adv]], dtype=torch.float64),
                               torch.ones(1, 1, dtype=torch.bool), **kw)
    loss.backward()
    return logp.grad.item()


def test_clipping_switches_exactly_at_the_bounds():
    d = 1e-6
    kw = {"eps_low": 0.2, "eps_high": 0.28}
    # A > 0: gradient vanishes just above 1 + eps_high, not just below; never clipped below 1.
    assert _grad_at(1.28 + d, 1.0, **kw) == 0.0
    assert _grad_at(1.28 - d, 1.0, **kw) < 0.0
    assert _grad_at(0.5, 1.0, **kw) < 0.0
    # A < 0: gradient vanishes just below 1 - eps_low, not just above; never clipped above 1.
    assert _grad_at(0.8 - d, -1.0, **kw) == 0.0
    assert _grad_at(0.8 + d, -1.0, **kw) > 0.0
    assert _grad_at(2.0, -1.0, **kw) > 0.0
    # Dual clip (c = 3): for A < 0 the loss is capped at -c*A beyond ratio c.
    assert _grad_at(3.0 + 1e-4, -1.0, dual_clip_c=3.0, **kw) == 0.0
    assert _grad_at(3.0 - 1e-4, -1.0, dual_clip_c=3.0, **kw) > 0.0
    assert _grad_at(5.0, 1.0, dual_clip_c=3.0, **kw) == 0.0  # A > 0 untouched by dual clip


def test_dual_clipfrac_and_value():
    logp = torch.log(torch.tensor([[4.0, 2.0, 4.0]]))
    adv = torch.tensor([[-1.0, -1.0, 1.0]])
    loss, stats = policy_loss_clip(logp, torch.zeros(1, 3), adv, torch.ones(1, 3), dual_clip_c=3.0)
    # token 0: min(4, 3) = 3; token 1: 2; token 2: -min(4, 1.28) = -1.28
    assert math.isclose(loss.item(), (3 + 2 - 1.28) / 3, rel_tol=1e-6)
    assert math.isclose(stats["dual_clipfrac"].item(), 1 / 3, rel_tol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_policy_gradient_reaches_only_real_tokens(mode):
    gen, x, mask = batch(4, 4, 9, dtype=torch.float32)
    mask[:, 0] = True
    logp = (0.1 * x).requires_grad_(True)
    old = torch.zeros(4, 9)
    old[~mask] = float("-inf")  # garbage padding
    adv = torch.randn(4, 9, generator=gen)
    adv[~mask] = float("nan")
    loss, _ = policy_loss_clip(logp, old, adv, mask, agg_mode=mode)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert (logp.grad[~mask] == 0).all() and (logp.grad[mask] != 0).any()


def test_policy_loss_registry_and_errors():
    assert get_policy_loss("ppo_clip") is policy_loss_clip and "ppo_clip" in POLICY_LOSSES
    with pytest.raises(VapoError, match='Did you mean "ppo_clip"'):
        get_policy_loss("ppo-clip")
    one = torch.zeros(1, 2)
    with pytest.raises(VapoError, match="dual_clip_c"):
        policy_loss_clip(one, one, one, one, dual_clip_c=0.5)
    with pytest.raises(VapoError, match="shape"):
        policy_loss_clip(one, one, torch.zeros(1, 3), one)


# --------------------------------------------------------------------------------- value loss


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), t=st.integers(1, 12),
       clip=st.sampled_from([None, 0.2]), mode=st.sampled_from(MODES))
def test_value_loss_matches_reference(seed, b, t, clip, mode):
    gen, v, mask = batch(seed, b, t)
    v_old = v + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)
    ret = torch.randn(b, t, generator=gen, dtype=torch.float64)
    loss, stats = value_loss(v, v_old, ret, mask, clip, mode)
    ref = torch.zeros(b, t, dtype=torch.float64)
    nclip = 0
    for i in range(b):
        for k in range(t):
            if mask[i, k]:
                e = (v[i, k].item() - ret[i, k].item()) ** 2
                if clip is None:
                    ref[i, k] = 0.5 * e
                else:
                    vc = v_old[i, k].item() + min(max(v[i, k].item() - v_old[i, k].item(), -clip), clip)
                    ec = (vc - ret[i, k].item()) ** 2
                    ref[i, k] = 0.5 * max(e, ec)
                    nclip += ec > e
    assert math.isclose(loss.item(), agg_ref(ref, mask, mode), rel_tol=1e-9, abs_tol=1e-12)
    if clip is not None:
        assert math.isclose(stats["vf_clipfrac"].item(), nclip / max(int(mask.sum()), 1), abs_tol=1e-12)


def test_value_gradient_only_real_tokens():
    _, x, mask = batch(2, 3, 7, dtype=torch.float32)
    mask[:, 0] = True
    v = x.clone().requires_grad_(True)
    ret = torch.randn(3, 7)
    ret[~mask] = float("inf")
    loss, _ = value_loss(v, x, ret, mask, clip_eps=0.2)
    loss.backward()
    assert torch.isfinite(v.grad).all() and (v.grad[~mask] == 0).all() and (v.grad[mask] != 0).any()


# ------------------------------------------------------------------------ NLL, KL, logits


def test_positive_nll_loss():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -4.0, -5.0], [-0.5, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    correct = torch.tensor([True, False, True])
    loss = positive_nll_loss(logp, mask, correct)
    assert math.isclose(loss.item(), (1 + 2 + 0.5) / 3, rel_tol=1e-6)
    loss.backward()
    expected = torch.zeros(3, 3)
    expected[0, :2], expected[2, 0] = -1 / 3, -1 / 3
    assert torch.allclose(logp.grad, expected)
    logp.grad = None
    none = positive_nll_loss(logp, mask, torch.zeros(3, dtype=torch.bool))
    none.backward()  # attached to the graph
    assert none.item() == 0.0 and (logp.grad == 0).all()


@given(seed=st.integers(0, 2**31 - 1))
@settings(max_examples=20, deadline=None)
def test_kl_estimators(seed):
    gen = torch.Generator().manual_seed(seed)
    lp, ref = torch.randn(3, 5, generator=gen, dtype=torch.float64), torch.randn(3, 5, generator=gen, dtype=torch.float64)
    k1, k2, k3 = (kl_estimate(lp, ref, k) for k in ("k1", "k2", "k3"))
    for i in range(3):
        for j in range(5):
            d = lp[i, j].item() - ref[i, j].item()
            assert math.isclose(k1[i, j].item(), d, abs_tol=1e-12)
            assert math.isclose(k2[i, j].item(), 0.5 * d * d, abs_tol=1e-12)
            assert math.isclose(k3[i, j].item(), math.exp(-d) + d - 1, rel_tol=1e-9, abs_tol=1e-12)
    assert (k3 >= 0).all()
    with pytest.raises(VapoError, match="k3"):
        kl_estimate(lp, ref, "k4")


def test_k3_is_unbiased_for_kl():
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    k3 = kl_estimate(p.log(), q.log(), "k3")
    assert math.isclose((p * k3).sum().item(), (p * (p / q).log()).sum().item(), rel_tol=1e-12)


def test_entropy_and_logprobs_from_logits():
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 4, 11, generator=gen, dtype=torch.float64)
    logits[0, 0, 3] = 200.0  # extreme logit: no overflow
    h = entropy_from_logits(logits)
    assert torch.allclose(h, torch.distributions.Categorical(logits=logits).entropy(), atol=1e-10)
    labels = torch.randint(0, 11, (2, 4), generator=gen)
    lp = logprobs_from_logits(logits, labels)
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0], atol=1e-12)
    with pytest.raises(VapoError, match="labels"):
        logprobs_from_logits(logits, labels[:, :3])
