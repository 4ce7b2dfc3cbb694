"""Monte-Carlo value pathways and the quality-weighted critic (vapo.algos.pathways): against
naive float64 loop references, plus hypothesis properties over random shapes, masks and points."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos.advantages import AdvantageInput, AdvantageParams, get_advantage_estimator
from vapo.algos.pathways import (
    blend_advantages,
    critic_weight,
    ev_against_mc,
    fill_mc_values,
    mc_value_targets,
    vine_advantages,
)
from vapo.errors import VapoError

# ------------------------------------------------------------------ loop references (one row at a time)


def _real(mask_row):
    return [t for t, m in enumerate(mask_row) if m > 0]


def ref_fill(values, points, mask):
    out = [[0.0] * len(mask[0]) for _ in mask]
    for i in range(len(mask)):
        cur = None
        for t in _real(mask[i]):
            if points[i][t]:
                cur = float(values[i][t])
            out[i][t] = cur
    return out


def ref_targets(rewards, values, points, mask):
    out = [[0.0] * len(mask[0]) for _ in mask]
    for i in range(len(mask)):
        idx = _real(mask[i])
        for k, t in enumerate(idx):
            y = 0.0
            boot = 0.0
            for t2 in idx[k:]:
                if points[i][t2]:
                    boot = float(values[i][t2])
                    break
                y += float(rewards[i][t2])
            out[i][t] = y + boot
    return out


def ref_vine(rewards, values, points, mask):
    out = [[0.0] * len(mask[0]) for _ in mask]
    for i in range(len(mask)):
        idx = _real(mask[i])
        starts = [k for k, t in enumerate(idx) if points[i][t]]
        for j, s in enumerate(starts):
            e = starts[j + 1] if j + 1 < len(starts) else len(idx)
            v_next = float(values[i][idx[e]]) if e < len(idx) else 0.0
            a = sum(float(rewards[i][idx[k]]) for k in range(s, e)) + v_next - float(values[i][idx[s]])
            for k in range(s, e):
                out[i][idx[k]] = a
    return out


def ref_ev(pred, mc, var):
    n = len(pred)
    mean = sum(mc) / n
    vy = sum((y - mean) ** 2 for y in mc) / n
    d = [y - p for y, p in zip(mc, pred, strict=True)]
    md = sum(d) / n
    vd = sum((x - md) ** 2 for x in d) / n
    noise = sum(var) / n
    return float("nan") if vy - noise <= 0 else 1.0 - (vd - noise) / (vy - noise)


# ------------------------------------------------------------------ random inputs


@st.composite
def mc_batch(draw):
    b = draw(st.integers(1, 5))
    t_len = draw(st.integers(1, 12))
    mask, points = [], []
    for _ in range(b):
        m = [draw(st.sampled_from([0, 1, 1, 1])) for _ in range(t_len)]
        idx = _real(m)
        p = [0] * t_len
        if idx:
            p[idx[0]] = 1  # a point at the first real position (the contract)
            for t in idx[1:]:
                p[t] = draw(st.sampled_from([0, 0, 1]))
        mask.append(m)
        points.append(p)
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(b, t_len, generator=g, dtype=torch.float64)
    values = torch.rand(b, t_len, generator=g, dtype=torch.float64)
    return rewards, values, torch.tensor(points), torch.tensor(mask, dtype=torch.float64)


def _close(a, b):
    assert np.allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=1e-10), (a, b)


@settings(max_examples=150, deadline=None)
@given(mc_batch())
def test_fill_targets_and_vine_match_the_loop_references(batch):
    r, v, p, m = batch
    fill = fill_mc_values(v, p, m)
    _close(fill, [[x or 0.0 for x in row] for row in ref_fill(v.tolist(), p.tolist(), m.tolist())])
    _close(mc_value_targets(r, v, p, m), ref_targets(r.tolist(), v.tolist(), p.tolist(), m.tolist()))
    _close(vine_advantages(r, v, p, m), ref_vine(r.tolist(), v.tolist(), p.tolist(), m.tolist()))


@settings(max_examples=100, deadline=None)
@given(mc_batch())
def test_properties(batch):
    r, v, p, m = batch
    pb = p.bool()
    fill = fill_mc_values(v, p, m)
    y = mc_value_targets(r, v, p, m)
    a = vine_advantages(r, v, p, m)
    # Masked positions hold 0; at a point the filled value and the target are the point's own V̂.
    for x in (fill, y, a):
        assert bool((x[m == 0] == 0).all())
    assert torch.allclose(fill[pb], v[pb]) and torch.allclose(y[pb], v[pb])
    # Only values at points matter: garbage elsewhere changes nothing.
    noise = torch.where(pb, v, torch.full_like(v, 123.0))
    assert torch.equal(fill_mc_values(noise, p, m), fill) and torch.equal(vine_advantages(r, noise, p, m), a)
    # Sum of the segment advantages over the segments' first tokens telescopes to G_0 − V̂(s_0).
    for i in range(m.shape[0]):
        idx = _real(m[i].tolist())
        if not idx:
            continue
        total = sum(float(a[i, t]) for t in idx if p[i, t])
        assert math.isclose(total, float(r[i, idx].sum()) - float(v[i, idx[0]]), abs_tol=1e-9)


def test_one_point_per_answer_gives_returns_and_a_state_baseline():
    m = torch.ones(2, 4, dtype=torch.float64)
    p = torch.zeros(2, 4, dtype=torch.long)
    p[:, 0] = 1
    r = torch.tensor([[0.0, 0, 0, 1], [0, 0, 0, 0]], dtype=torch.float64)
    v = torch.tensor([[0.3, 9, 9, 9], [0.6, 9, 9, 9]], dtype=torch.float64)
    y = mc_value_targets(r, v, p, m)
    assert y[:, 0].tolist() == [0.3, 0.6] and y[0, 1:].tolist() == [1.0, 1.0, 1.0] and y[1, 1:].tolist() == [0.0] * 3
    a = vine_advantages(r, v, p, m)
    assert torch.allclose(a[0], torch.full((4,), 0.7, dtype=torch.float64))
    assert torch.allclose(a[1], torch.full((4,), -0.6, dtype=torch.float64))


def test_points_must_start_each_answer_and_lie_on_real_tokens():
    m = torch.ones(1, 3)
    with pytest.raises(VapoError, match="first real position"):
        fill_mc_values(torch.zeros(1, 3), torch.tensor([[0, 1, 0]]), m)
    with pytest.raises(VapoError, match="masked"):
        fill_mc_values(torch.zeros(1, 3), torch.tensor([[1, 0, 1]]), torch.tensor([[1.0, 1.0, 0.0]]))
    with pytest.raises(VapoError, match="shape"):
        fill_mc_values(torch.zeros(1, 3), torch.tensor([[1, 0]]), m)


def test_vine_estimator_segment_and_gae_credit():
    m = torch.ones(1, 4)
    p = torch.tensor([[1, 0, 1, 0]])
    r = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.0, 0.8, 0.0]])
    est = get_advantage_estimator("vine")
    inp = AdvantageInput(token_rewards=r, response_mask=m, values=v, mc_points=p)
    out = est(inp, AdvantageParams(lam_actor=None, alpha=0.5))
    assert out.returns is None
    assert torch.allclose(out.advantages, torch.tensor([[0.3, 0.3, 0.2, 0.2]]))
    g = est(inp, AdvantageParams(lam_actor=1.0, alpha=0.5, extra={"vine_credit": "gae"}))
    # λ = 1: A_t = G_t − V_t with V filled from the latest point: [0.5, 0.5, 0.8, 0.8].
    assert torch.allclose(g.advantages, torch.tensor([[0.5, 0.5, 0.2, 0.2]]))
    with pytest.raises(VapoError, match="vine_credit"):
        est(inp, AdvantageParams(lam_actor=None, alpha=0.5, extra={"vine_credit": "nope"}))
    with pytest.raises(VapoError, match="Monte-Carlo"):
        est(AdvantageInput(token_rewards=r, response_mask=m, values=v), AdvantageParams(lam_actor=None, alpha=0.5))


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 30), st.integers(0, 2**16), st.floats(0.0, 0.05))
def test_ev_against_mc_matches_the_reference_and_the_probe(k, seed, var):
    from vapo.train.probe import _figures

    g = np.random.default_rng(seed)
    mc = g.random(k)
    pred = mc + g.normal(0, 0.2, k)
    mv = np.full(k, var)
    ev = float(ev_against_mc(torch.tensor(pred), torch.tensor(mc), torch.tensor(mv)))
    ref = ref_ev(pred.tolist(), mc.tolist(), mv.tolist())
    assert (math.isnan(ev) and math.isnan(ref)) or math.isclose(ev, ref, rel_tol=1e-9, abs_tol=1e-12)
    probe = _figures(pred, mc, mv, np.zeros(k))["ev_vs_mc"]
    assert (math.isnan(ev) and math.isnan(probe)) or math.isclose(ev, probe, rel_tol=1e-9, abs_tol=1e-12)


def test_ev_against_mc_edge_cases_and_weight():
    t = torch.tensor([0.2, 0.4])
    assert float(ev_against_mc(t, t, torch.zeros(2))) == 1.0
    assert math.isnan(float(ev_against_mc(t, torch.tensor([0.5, 0.5]), torch.zeros(2))))
    assert math.isnan(float(ev_against_mc(torch.zeros(0), torch.zeros(0), torch.zeros(0))))
    assert [critic_weight(x) for x in (-0.3, 0.4, 1.7, float("nan"))] == [0.0, 0.4, 1.0, 0.0]
    with pytest.raises(VapoError):
        ev_against_mc(t, torch.zeros(3), torch.zeros(2))


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**16), st.floats(0.0, 1.0))
def test_blend_against_the_reference(n_groups, g_size, t_len, seed, w):
    gen = torch.Generator().manual_seed(seed)
    b = n_groups * g_size
    scores = torch.randint(0, 2, (b,), generator=gen).double()
    gi = torch.arange(n_groups).repeat_interleave(g_size)
    mask = (torch.rand(b, t_len, generator=gen) < 0.8).double()
    crit = torch.randn(b, t_len, generator=gen, dtype=torch.float64) * mask
    out = blend_advantages(crit, scores, gi, mask, w)
    for i in range(b):
        peers = [float(scores[j]) for j in range(b) if gi[j] == gi[i]]
        base = float(scores[i]) - sum(peers) / len(peers)
        for t in range(t_len):
            want = (w * float(crit[i, t]) + (1 - w) * base) if mask[i, t] else 0.0
            assert math.isclose(float(out[i, t]), want, abs_tol=1e-12)
    assert torch.equal(blend_advantages(crit, scores, gi, mask, 1.0), crit)
    with pytest.raises(VapoError):
        blend_advantages(crit, scores, gi, mask, 1.5)
