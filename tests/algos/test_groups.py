"""vapo.algos.groups.group_stats against a float64 loop reference, over random group layouts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos import group_stats
from vapo.algos.pathways import group_loo_mean, group_variance
from vapo.algos.shaping import dynamic_sampling_keep
from vapo.errors import VapoError

FAST = settings(max_examples=80, deadline=None)


def stats_loop(scores: list[float], ids: list[int]) -> list[dict]:
    """Naive per-response statistics of its group, in Python floats (float64)."""
    out = []
    for i, gid in enumerate(ids):
        members = [scores[j] for j in range(len(ids)) if ids[j] == gid]
        n = len(members)
        mean = sum(members) / n
        var = sum((x - mean) ** 2 for x in members) / (n - 1) if n > 1 else 0.0
        others = [scores[j] for j in range(len(ids)) if ids[j] == gid and j != i]
        out.append({"count": n, "total": sum(members), "mean": mean, "var": var, "std": math.sqrt(var),
                    "all_equal": len(set(members)) == 1,
                    "loo_mean": sum(others) / len(others) if others else 0.0})
    return out


@st.composite
def group_layouts(draw):
    """Arbitrary, unsorted, possibly negative and non-contiguous group ids; scores drawn from a
    small set so that all-equal groups, singletons and ties all occur."""
    b = draw(st.integers(0, 24))
    ids = draw(st.lists(st.integers(-5, 40), min_size=b, max_size=b))
    scores = draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0, 0.5]),
                                     st.floats(-10, 10, allow_nan=False, width=32)),
                           min_size=b, max_size=b))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return torch.tensor(scores, dtype=dtype), torch.tensor(ids, dtype=torch.int64)


@FAST
@given(group_layouts())
def test_group_stats_matches_loop_reference(layout):
    scores, ids = layout
    g = group_stats(scores, ids)
    ref = stats_loop(scores.double().tolist(), ids.tolist())
    for field in ("count", "total", "mean", "var", "std", "loo_mean"):
        got = getattr(g, field)
        assert got.dtype == torch.float64 and got.shape == scores.shape, field
        want = torch.tensor([r[field] for r in ref], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=field)
    assert g.all_equal.tolist() == [r["all_equal"] for r in ref]


@FAST
@given(group_layouts())
def test_group_users_agree_with_the_reference(layout):
    """Every former copy now reads group_stats; check each against the loop reference."""
    scores, ids = layout
    ref = stats_loop(scores.double().tolist(), ids.tolist())
    assert dynamic_sampling_keep(scores, ids).tolist() == [not r["all_equal"] for r in ref]
    if scores.numel() == 0:
        return
    loo, has_peers = group_loo_mean(scores, ids)
    assert has_peers.tolist() == [r["count"] >= 2 for r in ref]
    torch.testing.assert_close(loo, torch.tensor([r["loo_mean"] for r in ref], dtype=torch.float64))
    s = scores.double()
    batch_var = s.var().item() if s.numel() > 1 else 0.0
    want = [r["var"] if r["count"] >= 2 else batch_var for r in ref]
    torch.testing.assert_close(group_variance(scores, ids), torch.tensor(want, dtype=torch.float64))


def test_group_ids_relabelling_does_not_change_the_stats():
    scores = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5])
    a = group_stats(scores, torch.tensor([3, 3, 7, 7, 9]))
    b = group_stats(scores, torch.tensor([-1, -1, 100, 100, 0]))
    for f in ("count", "mean", "var", "loo_mean"):
        torch.testing.assert_close(getattr(a, f), getattr(b, f))
    assert a.all_equal.tolist() == [False, False, True, True, True]


@pytest.mark.parametrize("scores,ids", [
    (torch.zeros(3), torch.zeros(4, dtype=torch.long)),
    (torch.zeros(2, 2), torch.zeros(2, 2, dtype=torch.long)),
    (torch.zeros(3), torch.zeros(3)),
])
def test_group_stats_rejects_bad_input(scores, ids):
    with pytest.raises(VapoError, match="group_stats"):
        group_stats(scores, ids)
