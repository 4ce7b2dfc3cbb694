"""Tokenizer round trips, model sizes, critic persistence and the batched forward passes against
naive per-sequence loops (no padding, float64 log-softmax)."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.errors import VapoError
from vapo.models import (
    BOS_ID,
    EOS_ID,
    MODEL_SIZES,
    PAD_ID,
    VOCAB,
    Critic,
    build_char_tokenizer,
    build_policy,
    count_parameters,
    decode_responses,
    encode_chars,
    encode_prompts,
    ensure_tokenizer_compatible,
    load_policy,
    load_policy_and_tokenizer,
    response_logprobs,
    response_values,
)

PRINTABLE = st.text(alphabet=st.sampled_from([chr(i) for i in range(32, 127)] + ["\n"]), max_size=60)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def policy(tok):
    return build_policy("tiny", tok, seed=0)


# ------------------------------------------------------------------------------ tokenizer
def test_vocab_ids_are_fixed(tok):
    assert len(tok) == 100 and tok.pad_token_id == PAD_ID == 0 and tok.bos_token_id == BOS_ID == 1
    assert tok.eos_token_id == EOS_ID == 2 and tok.unk_token_id == 3
    assert tok.convert_tokens_to_ids(" ") == 4 and tok.convert_tokens_to_ids("~") == 98
    assert tok.convert_tokens_to_ids("\n") == 99 and VOCAB[99] == "\n"


@settings(max_examples=60, deadline=None)
@given(PRINTABLE)
def test_round_trip_printable(text):
    tok = _TOK
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert ids == encode_chars(text)
    assert tok.decode(ids) == text
    assert decode_responses(tok, torch.tensor([ids + [EOS_ID, 5, 6]]))[0] == text


_TOK = build_char_tokenizer()


def test_special_strings_are_plain_text_and_unknowns_map_to_unk(tok):
    assert tok.encode("<eos>", add_special_tokens=False) == encode_chars("<eos>")
    assert tok.decode(tok.encode("a<pad>b", add_special_tokens=False)) == "a<pad>b"
    assert tok.encode("a\tb\u00e9", add_special_tokens=False) == [69, 3, 70, 3]


def test_save_and_autoload(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    t2 = AutoTokenizer.from_pretrained(tmp_path)
    s = " 12 + 3\n\n#### 15 "
    assert t2.encode(s, add_special_tokens=False) == tok.encode(s, add_special_tokens=False)
    assert t2.decode(t2.encode(s, add_special_tokens=False)) == s
    assert (t2.pad_token_id, t2.bos_token_id, t2.eos_token_id) == (0, 1, 2)
    a, am = encode_prompts(tok, ["1+2=", "345+6789="])
    b, bm = encode_prompts(t2, ["1+2=", "345+6789="])
    assert torch.equal(a, b) and torch.equal(am, bm)


def test_encode_prompts_left_pads_with_bos(tok):
    ids, mask = encode_prompts(tok, ["ab", "abcd"])
    assert ids.tolist() == [[0, 0, 1, 69, 70], [1, 69, 70, 71, 72]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    with pytest.raises(VapoError):
        encode_prompts(tok, "ab")


def test_decode_responses_matches_hf_and_respects_lengths(tok):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (20, 30), generator=g)
    lengths = torch.randint(0, 31, (20,), generator=g)
    fast = decode_responses(tok, ids, lengths)
    rows = []
    for r, n in zip(ids.tolist(), lengths.tolist(), strict=True):
        r = r[:n]
        rows.append(r[: r.index(EOS_ID)] if EOS_ID in r else r)
    assert fast == tok.batch_decode(rows, skip_special_tokens=True)


# ------------------------------------------------------------------------------ policy
@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_param_counts_near_nominal(tok, size):
    n = count_parameters(build_policy(size, tok, seed=0))
    nominal = MODEL_SIZES[size].nominal_params
    assert 0.6 * nominal <= n <= 1.4 * nominal, (size, n)


def test_build_policy_is_deterministic_and_leaves_global_rng(tok):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_policy("tiny", tok, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)
    b, c = build_policy("tiny", tok, seed=7), build_policy("tiny", tok, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert a.config._attn_implementation == "sdpa" and a.dtype == torch.float32


def test_unknown_size_and_bad_paths(tok, tmp_path):
    with pytest.raises(VapoError, match="tinny|did you mean|tiny"):
        build_policy("tinny", tok)
    with pytest.raises(VapoError, match="does not exist"):
        load_policy(tmp_path / "nope")
    with pytest.raises(VapoError, match="config.json"):
        load_policy(tmp_path)


def test_policy_save_load_round_trip(tok, policy, tmp_path):
    policy.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m2, t2 = load_policy_and_tokenizer(tmp_path)
    ids, mask = encode_prompts(t2, ["12+3=", "1-2+3="])
    with torch.no_grad():
        a = policy(input_ids=ids, attention_mask=mask).logits
        b = m2(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a, b, atol=1e-6)


def test_tokenizer_compatibility_check(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    small_vocab = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=1, intermediate_size=32))
    with pytest.raises(VapoError, match="100 tokens"):
        ensure_tokenizer_compatible(small_vocab, tok)


# ------------------------------------------------------------------------------ forward
def _random_batch(seed: int, B: int, max_p: int, max_t: int):
    rng = random.Random(seed)
    prompts = [[BOS_ID] + [rng.randrange(4, 100) for _ in range(rng.randint(0, max_p - 1))] for _ in range(B)]
    resps = [[rng.randrange(4, 100) for _ in range(rng.randint(0, max_t))] for _ in range(B)]
    P, T = max(map(len, prompts)), max(1, max(map(len, resps)))
    pid = torch.full((B, P), PAD_ID)
    pm = torch.zeros((B, P), dtype=torch.long)
    rid = torch.full((B, T), PAD_ID)
    rm = torch.zeros((B, T), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, resps, strict=True)):
        pid[i, P - len(p):], pm[i, P - len(p):] = torch.tensor(p), 1
        if r:
            rid[i, : len(r)], rm[i, : len(r)] = torch.tensor(r), 1
    return prompts, resps, pid, pm, rid, rm


def _naive_logprobs(model, prompt, resp, temperature):
    """One unpadded sequence, full logits, float64 log-softmax, gather at each response token."""
    seq = torch.tensor([prompt + resp])
    with torch.no_grad():
        logits = model(input_ids=seq).logits[0].double() / temperature
    lp = torch.log_softmax(logits, -1)
    p = torch.softmax(logits, -1)
    out, ent = [], []
    for t, y in enumerate(resp):
        row = len(prompt) - 1 + t  # logits at this position predict response token t
        out.append(lp[row, y])
        ent.append(-(p[row] * lp[row]).sum())
    return out, ent


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4), st.sampled_from([1.0, 0.7]))
def test_response_logprobs_match_naive_loop(seed, B, temperature):
    model = _POLICY
    prompts, resps, pid, pm, rid, rm = _random_batch(seed, B, 8, 7)
    with torch.no_grad():
        lp, ent = response_logprobs(model, pid, pm, rid, rm, temperature=temperature, with_entropy=True)
    assert lp.dtype == torch.float32 and lp.shape == rid.shape
    for i in range(B):
        ref, ref_ent = _naive_logprobs(model, prompts[i], resps[i], temperature)
        for t in range(rid.shape[1]):
            if t < len(resps[i]):
                assert abs(float(lp[i, t]) - float(ref[t])) < 1e-5
                assert abs(float(ent[i, t]) - float(ref_ent[t])) < 1e-5
            else:
                assert lp[i, t] == 0 and ent[i, t] == 0


_POLICY = build_policy("tiny", _TOK, seed=3)


def test_response_logprobs_has_gradients_and_no_entropy_by_default(policy):
    _, _, pid, pm, rid, rm = _random_batch(1, 3, 5, 5)
    lp, ent = response_logprobs(policy, pid, pm, rid, rm)
    assert ent is None
    lp.sum().backward()
    assert policy.model.embed_tokens.weight.grad is not None
    policy.zero_grad(set_to_none=True)


def test_critic_starts_at_zero_and_values_are_states_before_tokens(policy):
    critic = Critic.from_policy(policy)
    prompts, resps, pid, pm, rid, rm = _random_batch(5, 4, 6, 6)
    with torch.no_grad():
        assert torch.count_nonzero(response_values(critic, pid, pm, rid, rm)) == 0
        torch.nn.init.normal_(critic.value_head.weight, std=0.5)
        torch.nn.init.constant_(critic.value_head.bias, 0.1)
        v = response_values(critic, pid, pm, rid, rm)
        for i in range(4):
            full = prompts[i] + resps[i]
            per_pos = critic(torch.tensor([full]), torch.ones(1, len(full), dtype=torch.long))[0]
            for t in range(rid.shape[1]):
                if t < len(resps[i]):
                    # V(s_t) is read at the last token of prompt + response[:t]
                    assert abs(float(v[i, t]) - float(per_pos[len(prompts[i]) - 1 + t])) < 1e-5
                else:
                    assert v[i, t] == 0
    # the critic is a copy: the policy's weights are untouched and not shared
    assert critic.backbone.embed_tokens.weight.data_ptr() != policy.model.embed_tokens.weight.data_ptr()


def test_critic_save_load_round_trip(policy, tmp_path):
    critic = Critic.from_policy(policy)
    with torch.no_grad():
        torch.nn.init.normal_(critic.value_head.weight)
        critic.backbone.norm.weight.mul_(1.5)
    critic.save_pretrained(tmp_path / "critic")
    c2 = Critic.from_pretrained(tmp_path / "critic")
    ids, mask = encode_prompts(_TOK, ["1+2=", "33-4+5="])
    with torch.no_grad():
        assert torch.allclose(critic(ids, mask), c2(ids, mask), atol=1e-6)
    assert c2(ids, mask).dtype == torch.float32
    with pytest.raises(VapoError, match="not a saved critic"):
        Critic.from_pretrained(tmp_path / "missing")
