"""vapo.algos.shaping vs naive references."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos import dynamic_sampling_keep, overlong_penalty, scores_to_token_rewards
from vapo.errors import VapoError


def penalty_ref(length: float, max_len: int, cache_len: int) -> float:
    if length <= max_len - cache_len:
        return 0.0
    if length <= max_len:
        return ((max_len - cache_len) - length) / cache_len
    return -1.0


@given(lengths=st.lists(st.integers(0, 300), min_size=1, max_size=20),
       max_len=st.integers(1, 200), frac=st.floats(0.0, 1.0))
@settings(max_examples=80, deadline=None)
def test_overlong_penalty_matches_piecewise_definition(lengths, max_len, frac):
    cache_len = int(frac * max_len)
    got = overlong_penalty(torch.tensor(lengths), max_len, cache_len)
    for length, g in zip(lengths, got.tolist(), strict=True):
        assert math.isclose(g, penalty_ref(length, max_len, cache_len), abs_tol=1e-6)
        assert -1.0 <= g <= 0.0


def test_overlong_penalty_continuous_at_breakpoints():
    max_len, cache_len, d = 20480, 4096, 1e-3
    start = max_len - cache_len
    x = torch.tensor([start - d, start, start + d, max_len - d, max_len, max_len + d], dtype=torch.float64)
    p = overlong_penalty(x, max_len, cache_len).tolist()
    assert abs(p[0] - p[1]) < 1e-6 and abs(p[2] - p[1]) < 1e-6 and p[1] == 0.0
    assert abs(p[3] - p[4]) < 1e-6 and abs(p[5] - p[4]) < 1e-6 and p[4] == -1.0
    # monotone non-increasing in length
    ls = torch.arange(0, 25000, 7)
    assert (overlong_penalty(ls, max_len, cache_len).diff() <= 0).all()


def test_overlong_penalty_bad_input():
    with pytest.raises(VapoError, match="cache_len"):
        overlong_penalty(torch.tensor([3]), 10, 11)
    with pytest.raises(VapoError, match="1-D"):
        overlong_penalty(torch.tensor([[3]]), 10, 5)


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(0, 16), n_groups=st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_dynamic_sampling_keep(seed, b, n_groups):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([11, -3, 7, 500, 2])[torch.randint(0, n_groups, (b,), generator=gen)]
    scores = torch.randint(0, 2, (b,), generator=gen).float()
    keep = dynamic_sampling_keep(scores, ids)
    assert keep.dtype == torch.bool and keep.shape == (b,)
    for i in range(b):
        members = [scores[j].item() for j in range(b) if ids[j] == ids[i]]
        assert keep[i].item() == (max(members) != min(members))


@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 6), t=st.integers(0, 12))
@settings(max_examples=60, deadline=None)
def test_scores_to_token_rewards(seed, b, t):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=gen) < torch.rand(b, 1, generator=gen)  # arbitrary layout
    scores = torch.randn(b, generator=gen)
    r = scores_to_token_rewards(scores, mask)
    assert r.shape == (b, t)
    for i in range(b):
        real = [k for k in range(t) if mask[i, k]]
        for k in range(t):
            expected = scores[i].item() if real and k == real[-1] else 0.0
            assert r[i, k].item() == expected


def test_scores_to_token_rewards_right_padded_example():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    r = scores_to_token_rewards(torch.tensor([1.0, -0.5, 3.0]), mask)
    assert torch.equal(r, torch.tensor([[0, 0, 1.0, 0], [-0.5, 0, 0, 0], [0, 0, 0, 0]]))
