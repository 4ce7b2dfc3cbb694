"""Outcome-based exploration terms and exploration statistics (vapo.algos.exploration) vs loops."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos.exploration import (
    batch_repeat_penalty,
    distinct_answers_per_group,
    historical_bonus,
    position_bucket_sums,
)
from vapo.errors import VapoError

FAST = settings(max_examples=60, deadline=None)


def answers(seed, b):
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randint(0, 4, (b,), generator=gen) * 7 - 3  # arbitrary ids, unsorted, may be negative
    ans = torch.randint(0, 3, (b,), generator=gen)
    return ans, groups


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 30), coef=st.sampled_from([0.0, 0.1, 1.0]))
def test_batch_penalty_and_distinct_match_loops(seed, b, coef):
    ans, groups = answers(seed, b)
    a, g = ans.tolist(), groups.tolist()
    pen = batch_repeat_penalty(ans, groups, coef)
    for i in range(b):
        n = sum(1 for j in range(b) if g[j] == g[i])
        same_others = sum(1 for j in range(b) if j != i and g[j] == g[i] and a[j] == a[i])
        assert math.isclose(float(pen[i]), -coef * same_others / n, abs_tol=1e-12)
    distinct = distinct_answers_per_group(ans, groups).tolist()
    assert distinct == [len({a[i] for i in range(b) if g[i] == gid}) for gid in sorted(set(g))]


def test_penalty_extremes():
    g = torch.tensor([5, 5, 5, 5])
    assert torch.equal(batch_repeat_penalty(torch.tensor([0, 1, 2, 3]), g, 0.5), torch.zeros(4, dtype=torch.float64))
    assert torch.allclose(batch_repeat_penalty(torch.tensor([9, 9, 9, 9]), g, 0.5),
                          torch.full((4,), -0.5 * 3 / 4, dtype=torch.float64))


def test_historical_bonus():
    b = historical_bonus(torch.tensor([1, 4, 100]), 0.2)
    assert torch.allclose(b, torch.tensor([0.2, 0.1, 0.02], dtype=torch.float64))
    with pytest.raises(VapoError, match=">= 1"):
        historical_bonus(torch.tensor([0, 1]), 0.2)
    with pytest.raises(VapoError, match="coef"):
        historical_bonus(torch.tensor([1]), -1.0)
    with pytest.raises(VapoError, match="integer"):
        batch_repeat_penalty(torch.tensor([0.5]), torch.tensor([0]), 0.1)


@FAST
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 6), t=st.integers(1, 20), n=st.integers(1, 5))
def test_position_buckets_match_loop(seed, b, t, n):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(b, t, generator=gen) < torch.rand(b, 1, generator=gen)  # any layout
    x = torch.randn(b, t, generator=gen, dtype=torch.float64)
    sums, counts = position_bucket_sums(x, mask, n)
    ref_s, ref_c = [0.0] * n, [0.0] * n
    for i in range(b):
        real = [k for k in range(t) if mask[i, k]]
        for j, k in enumerate(real):
            bucket = (n * j) // len(real)
            ref_s[bucket] += float(x[i, k])
            ref_c[bucket] += 1
    assert torch.allclose(sums, torch.tensor(ref_s, dtype=torch.float64), atol=1e-10)
    assert counts.tolist() == ref_c
    assert counts.sum() == mask.sum()


def test_position_buckets_first_and_last_quarter():
    mask = torch.ones(1, 8)
    x = torch.arange(8.0)[None]
    sums, counts = position_bucket_sums(x, mask, 4)
    assert (sums / counts).tolist() == [0.5, 2.5, 4.5, 6.5]
