"""Pass@k-aware advantages (vapo.algos.advantages): grpo_passk (verl) and passk (arXiv 2508.10751)
against naive loops, the k-subset enumeration and the unbiased pass@k estimator."""

from __future__ import annotations

import math

import pytest
import torch
from algos_reference import grpo_passk_ref, passk_ref
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos import AdvantageInput, AdvantageParams, get_advantage_estimator
from vapo.algos.advantages import grpo_passk_advantages, passk_advantages, passk_credit
from vapo.errors import VapoError
from vapo.train.evaluate import pass_at_k

FAST = settings(max_examples=60, deadline=None)


def groups(seed, n_groups, size, binary=True):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(1000, generator=gen)[:n_groups].repeat_interleave(size)
    perm = torch.randperm(len(ids), generator=gen)
    ids = ids[perm]  # arbitrary, unsorted group ids
    if binary:
        p = torch.rand(n_groups, generator=gen).repeat_interleave(size)[perm]
        scores = (torch.rand(len(ids), generator=gen) < p).to(torch.float32)
    else:
        scores = torch.randn(len(ids), generator=gen)
    t = 5
    lengths = torch.randint(0, t + 1, (len(ids),), generator=gen)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()
    return scores, ids, mask


@FAST
@given(seed=st.integers(0, 2**31 - 1), n_groups=st.integers(1, 5), size=st.integers(2, 8),
       binary=st.booleans())
def test_grpo_passk_matches_loop(seed, n_groups, size, binary):
    scores, ids, mask = groups(seed, n_groups, size, binary)
    got = grpo_passk_advantages(scores, ids, mask)
    ref = torch.tensor(grpo_passk_ref(scores, ids), dtype=torch.float32)
    assert torch.allclose(got, ref[:, None] * mask, atol=1e-5)
    # at most one response per group is non-zero, and it is a best one
    for g in ids.unique():
        rows = ids == g
        nz = (got[rows].abs().sum(1) > 0).sum()
        assert nz <= 1


@FAST
@given(seed=st.integers(0, 2**31 - 1), n_groups=st.integers(1, 4), size=st.integers(1, 7), data=st.data())
def test_passk_matches_subset_enumeration(seed, n_groups, size, data):
    k = data.draw(st.integers(1, size))
    scores, ids, mask = groups(seed, n_groups, size)
    got = passk_advantages(scores, ids, mask, k)
    ref = torch.tensor(passk_ref(scores, ids, k), dtype=torch.float64)
    assert torch.allclose(got.double(), ref[:, None] * mask.double(), atol=1e-5)


@FAST
@given(seed=st.integers(0, 2**31 - 1), n_groups=st.integers(1, 4), size=st.integers(1, 8), data=st.data())
def test_passk_credit_mean_is_unbiased_pass_at_k(seed, n_groups, size, data):
    k = data.draw(st.integers(1, size))
    scores, ids, _ = groups(seed, n_groups, size)
    credit = passk_credit(scores.bool(), ids, k)
    for g in ids.unique():
        rows = ids == g
        c = int(scores[rows].sum())
        assert math.isclose(float(credit[rows].mean()), pass_at_k(size, c, k), abs_tol=1e-12)
        assert bool((credit[rows][scores[rows] > 0] == 1).all())
    if k == 1:
        assert torch.equal(credit, scores.double())


def test_passk_with_k1_is_grpo_with_population_std():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    mask = torch.ones(8, 2)
    got = passk_advantages(scores, ids, mask, 1)[:, 0]
    p = torch.tensor([0.5] * 4 + [0.75] * 4)
    want = (scores - p) / (torch.sqrt(p * (1 - p)) + 1e-6)
    assert torch.allclose(got, want, atol=1e-6)


def test_estimators_registered_and_errors():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0])
    ids = torch.tensor([0, 0, 1, 1])
    mask = torch.ones(4, 3)
    inp = AdvantageInput(token_rewards=torch.zeros(4, 3), response_mask=mask, scores=scores, group_index=ids)
    out = get_advantage_estimator("passk")(inp, AdvantageParams(lam_actor=None, alpha=0.5, pass_k=2))
    assert torch.allclose(out.advantages, passk_advantages(scores, ids, mask, 2))
    assert out.returns is None
    out = get_advantage_estimator("grpo_passk")(inp, AdvantageParams(lam_actor=None, alpha=0.5))
    assert torch.allclose(out.advantages, grpo_passk_advantages(scores, ids, mask))
    with pytest.raises(VapoError, match="integer k"):
        get_advantage_estimator("passk")(inp, AdvantageParams(lam_actor=None, alpha=0.5))
    with pytest.raises(VapoError, match="at least k=3"):
        passk_advantages(scores, ids, mask, 3)
    with pytest.raises(VapoError, match="0/1 scores"):
        passk_advantages(scores * 0.5, ids, mask, 1)
    with pytest.raises(VapoError, match="at least 2 responses"):
        grpo_passk_advantages(torch.tensor([1.0]), torch.tensor([0]), torch.ones(1, 2))
