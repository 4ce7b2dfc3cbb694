"""The sampler against independent Hugging Face forward passes.

* the fast decoder's logits (prefill, every step, after compaction) equal the HF model's own
  forward on cat(prompt, response) with attention mask and position ids cumsum(mask) − 1;
* at τ = 1, p = 1 the sampling log-probs equal a teacher-forced float64 log-softmax of that forward
  (both engines), and with p < 1 they are the nucleus-renormalised ones;
* masks, lengths, truncation, padding and EOS handling are consistent; draws are reproducible;
* the generic engine is picked for a non-Qwen2/Llama model (GPT-2) and is exact too.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.errors import VapoError
from vapo.models import build_char_tokenizer, build_policy
from vapo.rollout import (
    FastDecoder,
    Rollout,
    fast_path_unsupported_reason,
    filtered_logprobs,
    sample,
    sample_texts,
)

PAD, EOS = 0, 2


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def qwen(tok):
    return build_policy("tiny", tok, seed=3)


@pytest.fixture(scope="module")
def llama():
    """A Llama with biases everywhere and no GQA (n_rep = 1): other branches of the fast path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, intermediate_size=96, attention_bias=True, mlp_bias=True,
                      tie_word_embeddings=False, max_position_embeddings=256, pad_token_id=PAD, eos_token_id=EOS,
                      bos_token_id=1)
    torch.manual_seed(11)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # HF zero-initialises biases; make them matter
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.2)
    return m


@pytest.fixture(scope="module")
def gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=100, n_positions=128, n_embd=32, n_layer=2, n_head=2, pad_token_id=PAD,
                     eos_token_id=EOS, bos_token_id=1)
    torch.manual_seed(12)
    return GPT2LMHeadModel(cfg).eval()


def random_prompts(B: int, P: int, seed: int, vocab: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of random lengths 1..P (BOS first), random token ids ≥ 4."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, P + 1, (B,), generator=g)
    lens[0] = P  # at least one full-width row
    ids = torch.full((B, P), PAD, dtype=torch.long)
    mask = torch.zeros(B, P, dtype=torch.long)
    for i, n in enumerate(lens.tolist()):
        ids[i, P - n:] = torch.randint(4, vocab, (n,), generator=g)
        ids[i, P - n] = 1
        mask[i, P - n:] = 1
    return ids, mask


def hf_logits(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """Independent reference: the HF model's own forward over cat(prompt, response); returns the
    float64 logits [B, T, V] of the columns that predict response tokens 0..T-1."""
    ids = torch.cat([prompt_ids, response_ids], 1)
    mask = torch.cat([prompt_mask, response_mask], 1)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.double()
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    return logits[:, P - 1 : P - 1 + T]


def check_rollout_invariants(ro: Rollout, max_new_tokens: int, eos: int | None) -> None:
    B, T = ro.response_ids.shape
    assert 1 <= T <= max_new_tokens and ro.logprobs.shape == (B, T) and ro.response_mask.shape == (B, T)
    assert torch.equal(ro.lengths, ro.response_mask.sum(1))
    assert torch.equal(ro.response_mask, (torch.arange(T)[None] < ro.lengths[:, None]).long())
    assert int(ro.lengths.max()) == T
    m = ro.response_mask.bool()
    assert (ro.response_ids[~m] == PAD).all() and (ro.logprobs[~m] == 0).all()
    assert (ro.logprobs[m] <= 0).all() and torch.isfinite(ro.logprobs).all()
    if eos is None:
        assert ro.truncated.all() and (ro.lengths == max_new_tokens).all()
        return
    for i in range(B):
        n = int(ro.lengths[i])
        body = ro.response_ids[i, : n - 1]
        assert not (body == eos).any()  # the first EOS ends the response
        if ro.truncated[i]:
            assert n == max_new_tokens and ro.response_ids[i, n - 1] != eos
        else:
            assert ro.response_ids[i, n - 1] == eos


# ---------------------------------------------------------------------------- fast decoder logits
def teacher_forced_fast_logits(model, prompt_ids, prompt_mask, response_ids, keep_after=None):
    """Fast-decoder logits for every response column, feeding the given tokens; optionally keep
    only the rows ``keep_after[1]`` after step ``keep_after[0]`` (compaction)."""
    T = response_ids.shape[1]
    with torch.inference_mode():
        dec = FastDecoder(model, T + 1)
        out = [dec.prefill(prompt_ids, prompt_mask).double()]
        rows = torch.arange(prompt_ids.shape[0])
        for t in range(T - 1):
            if keep_after is not None and t == keep_after[0]:
                dec.keep(keep_after[1])
                rows = rows[keep_after[1]]
            out.append(dec.step(response_ids[rows, t]).double())
    return out, rows


@pytest.mark.parametrize("which", ["qwen", "llama"])
def test_fast_decoder_logits_equal_hf_forward(which, request):
    model = request.getfixturevalue(which)
    assert fast_path_unsupported_reason(model) is None
    prompt_ids, prompt_mask = random_prompts(6, 9, seed=1)
    T = 12
    resp = torch.randint(4, 100, (6, T), generator=torch.Generator().manual_seed(2))
    ref = hf_logits(model, prompt_ids, prompt_mask, resp, torch.ones_like(resp))
    out, _ = teacher_forced_fast_logits(model, prompt_ids, prompt_mask, resp)
    for t in range(T):
        assert (out[t] - ref[:, t]).abs().max() < 1e-4, t
    # After compaction to rows {4, 1, 5} at step 5, the kept rows continue unchanged.
    keep = torch.tensor([4, 1, 5])
    out, rows = teacher_forced_fast_logits(model, prompt_ids, prompt_mask, resp, keep_after=(5, keep))
    assert torch.equal(rows, keep)
    for t in range(6, T):
        assert (out[t] - ref[keep, t]).abs().max() < 1e-4, t


# ---------------------------------------------------------------------------- sampling log-probs
@pytest.mark.parametrize("which,backend", [("qwen", "fast"), ("qwen", "hf"), ("llama", "fast"), ("gpt2", "auto")])
def test_sampling_logprobs_equal_teacher_forced_forward(which, backend, request):
    model = request.getfixturevalue(which)
    prompt_ids, prompt_mask = random_prompts(8, 7, seed=3)
    g = torch.Generator().manual_seed(4)
    ro = sample(model, prompt_ids, prompt_mask, max_new_tokens=16, eos_token_id=EOS, pad_token_id=PAD,
                generator=g, backend=backend)
    check_rollout_invariants(ro, 16, EOS)
    ref = torch.log_softmax(hf_logits(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask), -1)
    ref = ref.gather(2, ro.response_ids[..., None]).squeeze(2)
    m = ro.response_mask.bool()
    assert (ro.logprobs[m].double() - ref[m]).abs().max() < 1e-4


def test_auto_backend_choice(qwen, gpt2):
    assert fast_path_unsupported_reason(qwen) is None
    assert "gpt2" in fast_path_unsupported_reason(gpt2)
    ids, mask = random_prompts(2, 3, seed=0)
    with pytest.raises(VapoError, match="fast backend"):
        sample(gpt2, ids, mask, max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD, backend="fast")


def test_logprobs_match_the_contract_forward(qwen):
    """The sampler and vapo.models.response_logprobs (the trainer's recompute) agree at τ = 1."""
    from vapo.models import response_logprobs

    ids, mask = random_prompts(8, 6, seed=5)
    ro = sample(qwen, ids, mask, max_new_tokens=20, eos_token_id=EOS, pad_token_id=PAD,
                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lp, _ = response_logprobs(qwen, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
    assert (lp - ro.logprobs).abs().max() < 1e-4


@settings(max_examples=10, deadline=None)
@given(B=st.integers(1, 6), P=st.integers(1, 6), T=st.integers(1, 10), temperature=st.floats(0.5, 2.0),
       top_p=st.one_of(st.just(1.0), st.floats(0.3, 0.95)), seed=st.integers(0, 1000),
       backend=st.sampled_from(["fast", "hf"]))
def test_logprobs_are_those_of_the_sampled_distribution(qwen, B, P, T, temperature, top_p, seed, backend):
    ids, mask = random_prompts(B, P, seed=seed)
    # A frequent token as EOS half of the time, so that early ends and compaction are exercised.
    eos = EOS if seed % 2 else frequent_token(qwen, ids, mask)
    ro = sample(qwen, ids, mask, max_new_tokens=T, temperature=temperature, top_p=top_p, eos_token_id=eos,
                pad_token_id=PAD, generator=torch.Generator().manual_seed(seed), backend=backend)
    check_rollout_invariants(ro, T, eos)
    assert torch.equal(ro.prompt_ids, ids) and torch.equal(ro.prompt_mask, mask)
    logits = hf_logits(qwen, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
    B, T, V = logits.shape
    ref = filtered_logprobs(logits.reshape(B * T, V), temperature, top_p).reshape(B, T, V)
    ref = ref.gather(2, ro.response_ids[..., None]).squeeze(2)
    m = ro.response_mask.bool()
    assert torch.isfinite(ref[m]).all()  # every sampled token lies in its nucleus
    assert (ro.logprobs[m] - ref[m]).abs().max() < 1e-4


# ---------------------------------------------------------------------------- EOS, compaction, determinism
def frequent_token(model, ids, mask) -> int:
    """A token this model samples often (used as 'EOS' so that rows end early and get compacted)."""
    ro = sample(model, ids, mask, max_new_tokens=24, eos_token_id=None, pad_token_id=PAD,
                generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(ro.response_ids.flatten(), minlength=100)
    counts[PAD] = 0
    return int(counts.argmax())


def test_early_stops_compaction_and_backends_agree_greedily(qwen):
    ids, mask = random_prompts(24, 6, seed=7)
    eos = frequent_token(qwen, ids, mask)
    g = torch.Generator().manual_seed(9)
    ro = sample(qwen, ids, mask, max_new_tokens=40, eos_token_id=eos, pad_token_id=PAD, generator=g)
    check_rollout_invariants(ro, 40, eos)
    assert (~ro.truncated).sum() >= 6  # several rows ended early: the compaction path ran
    ref = torch.log_softmax(hf_logits(qwen, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask), -1)
    ref = ref.gather(2, ro.response_ids[..., None]).squeeze(2)
    m = ro.response_mask.bool()
    assert (ro.logprobs[m].double() - ref[m]).abs().max() < 1e-4
    # Greedy decoding is deterministic, so the two engines must produce the same tokens.
    a = sample(qwen, ids, mask, max_new_tokens=30, temperature=0, eos_token_id=eos, pad_token_id=PAD, backend="fast")
    b = sample(qwen, ids, mask, max_new_tokens=30, temperature=0, eos_token_id=eos, pad_token_id=PAD, backend="hf")
    check_rollout_invariants(a, 30, eos)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.lengths, b.lengths)
    assert (a.logprobs - b.logprobs).abs().max() < 1e-4
    # Greedy tokens are the argmax of the reference logits, logprobs the untempered log-softmax.
    ref_logits = hf_logits(qwen, a.prompt_ids, a.prompt_mask, a.response_ids, a.response_mask)
    ma = a.response_mask.bool()
    assert torch.equal(ref_logits.argmax(-1)[ma], a.response_ids[ma])


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_fixed_generator_is_deterministic(qwen, backend):
    ids, mask = random_prompts(10, 5, seed=8)
    kw = dict(max_new_tokens=15, eos_token_id=EOS, pad_token_id=PAD, backend=backend, top_p=0.9)
    a = sample(qwen, ids, mask, generator=torch.Generator().manual_seed(1), **kw)
    b = sample(qwen, ids, mask, generator=torch.Generator().manual_seed(1), **kw)
    c = sample(qwen, ids, mask, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(a.response_ids, b.response_ids) and torch.equal(a.logprobs, b.logprobs)
    assert not torch.equal(a.response_ids, c.response_ids)


def test_no_eos_runs_to_max_length(qwen):
    ids, mask = random_prompts(4, 4, seed=2)
    ro = sample(qwen, ids, mask, max_new_tokens=9, eos_token_id=None, pad_token_id=PAD)
    check_rollout_invariants(ro, 9, None)
    assert ro.response_ids.shape == (4, 9)
    moved = ro.to("cpu")
    assert all(torch.equal(getattr(moved, f), getattr(ro, f)) for f in ("response_ids", "logprobs", "truncated"))


def test_left_padding_does_not_change_the_distribution(qwen):
    """Greedy responses of a prompt do not depend on how much padding its batch needed."""
    ids, mask = random_prompts(5, 6, seed=4)
    alone = [sample(qwen, ids[i : i + 1, mask[i].argmax():], mask[i : i + 1, mask[i].argmax():], max_new_tokens=12,
                    temperature=0, eos_token_id=EOS, pad_token_id=PAD) for i in range(5)]
    batch = sample(qwen, ids, mask, max_new_tokens=12, temperature=0, eos_token_id=EOS, pad_token_id=PAD)
    for i, r in enumerate(alone):
        n = int(r.lengths[0])
        assert torch.equal(batch.response_ids[i, :n], r.response_ids[0, :n])
        assert (batch.logprobs[i, :n] - r.logprobs[0, :n]).abs().max() < 1e-4


def test_sample_texts(qwen, tok):
    ro, texts = sample_texts(qwen, tok, ["12+3=", "hello"], max_new_tokens=10, generator=torch.Generator().manual_seed(0))
    assert len(texts) == 2 and ro.response_ids.shape[0] == 2
    for i, t in enumerate(texts):
        body = ro.response_ids[i, : int(ro.lengths[i])]
        assert len(t) == int((body >= 4).sum())  # char tokenizer: one character per non-special token
        assert t.startswith(tok.decode([int(x) for x in body[:3] if x >= 4]))
    with pytest.raises(VapoError, match="max_new_tokens"):
        sample_texts(qwen, tok, ["a"])


@pytest.mark.parametrize("bad,match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(backend="vllm"), "backend"),
    (dict(eos_token_id="x"), "eos_token_id"),
])
def test_bad_arguments_raise(qwen, bad, match):
    ids, mask = random_prompts(2, 3, seed=0)
    kw = dict(max_new_tokens=4, eos_token_id=EOS, pad_token_id=PAD) | bad
    with pytest.raises(VapoError, match=match):
        sample(qwen, ids, mask, **kw)


def test_bad_prompts_raise(qwen):
    ids, mask = random_prompts(2, 3, seed=0)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    with pytest.raises(VapoError, match="left-padded"):
        sample(qwen, ids, right, max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(VapoError, match="empty"):
        sample(qwen, ids, torch.tensor([[0, 0, 0], [1, 1, 1]]), max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(VapoError, match=r"\[B, P\]"):
        sample(qwen, ids[0], mask[0], max_new_tokens=2, eos_token_id=EOS, pad_token_id=PAD)


# ---------------------------------------------------------------------------- row threads
@settings(max_examples=6, deadline=None)
@given(extra=st.integers(0, 40), T=st.integers(2, 14), threads=st.sampled_from([2, 3]), seed=st.integers(0, 1000),
       top_p=st.sampled_from([1.0, 0.9]))
def test_row_threads_give_the_tokens_of_one_thread(qwen, extra, T, threads, seed, top_p):
    """With n > 1 intra-op threads the decoding steps run row ranges on n threads; the tokens and
    log-probs are those of one thread (same generator), compaction included, and the caller's
    thread count is restored."""
    import vapo.rollout.sampler as sampler_mod

    B = 2 * sampler_mod.MIN_ROWS_PER_THREAD + extra
    ids, mask = random_prompts(B, 6, seed=seed)
    eos = frequent_token(qwen, ids[:8], mask[:8]) if seed % 2 else EOS  # a frequent EOS: rows end, batch compacts
    calls = {"threaded": 0}
    real_step = sampler_mod._RowThreads.step

    def counting_step(self, tokens):
        calls["threaded"] += int(tokens.shape[0] >= 2 * sampler_mod.MIN_ROWS_PER_THREAD)
        return real_step(self, tokens)

    kw = dict(max_new_tokens=T, top_p=top_p, eos_token_id=eos, pad_token_id=PAD)
    saved = torch.get_num_threads()
    with mock.patch.object(sampler_mod._RowThreads, "step", counting_step):
        try:
            torch.set_num_threads(1)
            one = sample(qwen, ids, mask, generator=torch.Generator().manual_seed(seed), **kw)
            assert calls["threaded"] == 0
            torch.set_num_threads(threads)
            many = sample(qwen, ids, mask, generator=torch.Generator().manual_seed(seed), **kw)
            assert torch.get_num_threads() == threads
        finally:
            torch.set_num_threads(saved)
    assert calls["threaded"] >= 1  # the threaded path ran
    check_rollout_invariants(many, T, eos)
    assert torch.equal(many.response_ids, one.response_ids) and torch.equal(many.lengths, one.lengths)
    assert (many.logprobs - one.logprobs).abs().max() <= 1e-6
    if top_p == 1.0:  # and they are the policy's own log-probs
        ref = torch.log_softmax(hf_logits(qwen, many.prompt_ids, many.prompt_mask, many.response_ids,
                                          many.response_mask), -1).gather(2, many.response_ids[..., None]).squeeze(2)
        m = many.response_mask.bool()
        assert (many.logprobs[m].double() - ref[m]).abs().max() < 1e-4


def test_fast_decoder_row_ranges_equal_whole_step(qwen):
    """forward_rows over disjoint ranges + advance == one step over all rows."""
    ids, mask = random_prompts(10, 5, seed=6)
    toks = torch.randint(4, 100, (10, 4), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = FastDecoder(qwen, 5), FastDecoder(qwen, 5)
        assert torch.equal(a.prefill(ids, mask), b.prefill(ids, mask))
        for t in range(4):
            whole = a.step(toks[:, t])
            parts = torch.cat([b.forward_rows(toks[:, t], 0, 3), b.forward_rows(toks[:, t], 3, 10)])
            b.advance()
            assert torch.allclose(whole, parts, atol=1e-6, rtol=0)
            assert a.t == b.t == t + 1
