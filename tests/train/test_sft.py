"""The SFT step: length-sorted micro-batches give the one-batch token-mean gradient, one micro-batch
is the one-batch step exactly, and the cache key of a default warm start is unchanged by the
micro-batch field."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.config import resolve_config
from vapo.models import build_char_tokenizer, build_policy
from vapo.tasks import get_task, sample_problems
from vapo.train.sft import demo_batch, sft_loss_backward, warm_start_key

TOK = build_char_tokenizer()


def _naive_grads(policy, problems) -> tuple[float, list[torch.Tensor]]:
    """Token-mean NLL of the solution tokens and EOS, one sequence at a time in float64."""
    policy = policy.double()
    policy.zero_grad(set_to_none=True)
    ids, attn, lmask = demo_batch(TOK, problems)
    n_tok = float(lmask[:, :-1].sum())
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(problems)):
        L = int(attn[i].sum())
        logits = policy(input_ids=ids[i : i + 1, :L]).logits[0, :-1]
        logp = torch.log_softmax(logits, -1).gather(-1, ids[i, 1:L, None]).squeeze(-1)
        nll = -(logp * lmask[i, : L - 1].double()).sum() / n_tok
        nll.backward()
        total += nll.detach()
    grads = [p.grad.clone() for p in policy.parameters()]
    policy.float()
    return float(total), grads


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 7), k=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_micro_batches_give_the_token_mean_gradient(n, k, seed):
    task = get_task("repeat_add")
    problems = sample_problems(task, random.Random(seed), n, "train")
    problems = [dataclasses.replace(p, solution=p.solution[: 20 + 7 * i]) for i, p in enumerate(problems)]  # short, unequal
    policy = build_policy("micro", TOK, seed=0)
    want_loss, want = _naive_grads(policy, problems)
    policy.zero_grad(set_to_none=True)
    loss = sft_loss_backward(policy, TOK, problems, k, "cpu")
    assert float(loss) == pytest.approx(want_loss, rel=1e-5)
    for p, g in zip(policy.parameters(), want, strict=True):
        assert torch.allclose(p.grad.double(), g, atol=1e-6, rtol=1e-4)


def test_one_micro_batch_is_the_one_batch_step_bit_for_bit():
    task = get_task("rewrite_sum")
    problems = sample_problems(task, random.Random(3), 8, "train")
    policy = build_policy("micro", TOK, seed=0)
    ids, attn, lmask = demo_batch(TOK, problems)
    logits = policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = lmask[:, :-1]
    ref = -(logp * m).sum() / m.sum()
    ref.backward()
    want = [p.grad.clone() for p in policy.parameters()]
    policy.zero_grad(set_to_none=True)
    loss = sft_loss_backward(policy, TOK, problems, 1, "cpu")
    assert torch.equal(loss, ref.detach())
    assert all(torch.equal(p.grad, g) for p, g in zip(policy.parameters(), want, strict=True))


def test_cache_key_keeps_old_warm_starts_and_separates_micro_batches():
    import hashlib
    import json

    cfg = resolve_config("vapo")
    d = {k: cfg.to_dict()[k] for k in ("task", "model", "sft", "seed")}
    del d["sft"]["micro_batches"]
    old = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    assert warm_start_key(cfg) == old
    assert warm_start_key(resolve_config("vapo", overrides=["sft.micro_batches=4"])) != old
