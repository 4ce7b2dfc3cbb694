"""The sampling head (temperature, top-p, exponential-race draws) against a float64 per-row loop."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.rollout import draw, filtered_logprobs
from vapo.rollout.sampling import exponential_noise


def nucleus_reference(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """float64, one row and one token at a time: softmax(z/τ), then the smallest prefix of the
    tokens in decreasing-probability order whose mass reaches p, renormalised; log of that."""
    out = torch.full(logits.shape, -math.inf, dtype=torch.float64)
    for i in range(logits.shape[0]):
        z = [float(v) / temperature for v in logits[i]]
        m = max(z)
        w = [math.exp(v - m) for v in z]
        s = sum(w)
        p = [v / s for v in w]
        order = sorted(range(len(p)), key=lambda j: -p[j])
        limit = top_p if top_p < 1.0 else math.inf  # p = 1 disables the filter (a float sum may fall short of 1)
        kept, mass = [], 0.0
        for j in order:
            kept.append(j)
            mass += p[j]
            if mass >= limit:
                break
        total = sum(p[j] for j in kept)
        for j in kept:
            out[i, j] = math.log(p[j] / total)
    return out


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 5), V=st.integers(2, 40), temperature=st.floats(0.3, 3.0),
       top_p=st.one_of(st.just(1.0), st.floats(0.05, 0.999)), seed=st.integers(0, 10_000))
def test_filtered_logprobs_match_float64_loop(b, V, temperature, top_p, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, V, generator=g) * 3
    got = filtered_logprobs(logits, temperature, top_p)
    ref = nucleus_reference(logits, temperature, top_p)
    kept_ref = torch.isfinite(ref)
    # Ties in cumulative mass at exactly p are measure-zero for Gaussian logits; the kept sets agree.
    assert torch.equal(torch.isfinite(got), kept_ref)
    assert torch.allclose(got[kept_ref].double(), ref[kept_ref], atol=1e-5)
    assert torch.allclose(got.exp().sum(-1), torch.ones(b), atol=1e-5)
    # The most likely token is always kept.
    assert kept_ref.gather(1, logits.argmax(1, keepdim=True)).all()


def test_draw_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(40_000, 1)
    for temperature, top_p in [(1.0, 1.0), (0.7, 1.0), (1.5, 0.8)]:
        g = torch.Generator().manual_seed(1)
        tok, lp = draw(logits, temperature, top_p, g)
        pi = filtered_logprobs(logits[:1], temperature, top_p)[0].exp()
        freq = torch.bincount(tok, minlength=6).float() / tok.numel()
        # 40k draws: standard error ≤ 0.0025; allow 4 of them.
        assert (freq - pi).abs().max() < 0.01, (temperature, top_p, freq, pi)
        assert (freq[pi == 0] == 0).all()  # nothing outside the nucleus is ever drawn
        assert torch.allclose(lp, pi.log()[tok])


def test_greedy_takes_argmax_with_untempered_logprob():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 30, generator=g)
    tok, lp = draw(logits, 0.0, 0.5, g)
    assert torch.equal(tok, logits.argmax(-1))
    assert torch.allclose(lp, torch.log_softmax(logits.double(), -1).gather(1, tok[:, None]).squeeze(1).float())


@pytest.mark.parametrize("top_p", [1.0, 0.9])
def test_draw_is_reproducible_with_a_generator(top_p):
    logits = torch.randn(64, 50)
    a = draw(logits, 1.0, top_p, torch.Generator().manual_seed(5))
    b = draw(logits, 1.0, top_p, torch.Generator().manual_seed(5))
    c = draw(logits, 1.0, top_p, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 300), min_size=1, max_size=3), seed=st.integers(0, 2**31 - 1),
       calls=st.integers(1, 3))
def test_exponential_noise_is_exponential_(shape, seed, calls):
    """The vectorised noise has the values of ``exponential_`` (bit for bit) and leaves the
    generator where ``exponential_`` leaves it, call after call."""
    g_ref, g = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    for _ in range(calls):
        ref = torch.empty(shape).exponential_(generator=g_ref)
        got = exponential_noise(tuple(shape), "cpu", g)
        assert got.dtype == torch.float32 and got.shape == ref.shape
        assert torch.equal(got, ref)
    assert torch.equal(torch.rand(4, generator=g_ref), torch.rand(4, generator=g))


def test_exponential_noise_default_generator():
    torch.manual_seed(7)
    ref = torch.empty(64, 50).exponential_()
    torch.manual_seed(7)
    assert torch.equal(exponential_noise((64, 50), "cpu"), ref)
