"""The critic's surprise input: each token's embedding plus a learned embedding of the bucket of the
frozen warm-start policy's probability of it (prompt columns: a bucket of their own), checked
against a naive per-token loop."""

from __future__ import annotations

import pytest
import torch

from vapo.errors import VapoError
from vapo.models import Critic, build_char_tokenizer, build_policy, encode_prompts, response_values
from vapo.models.critic import PROMPT_BUCKET, SURPRISE_EDGES

TOK = build_char_tokenizer()
TEXTS = ["1+2=3\n3+4=7", "33-4+5=", "9"]


def _policy():
    return build_policy("micro", TOK, seed=0)


def _naive_buckets(policy, ids, mask, prompt_len: int) -> torch.Tensor:
    """Bucket of π₀(y_j | y_<j) for each position, one sequence and one position at a time (float64);
    the first ``prompt_len`` columns are prompt columns."""
    out = torch.full(ids.shape, len(SURPRISE_EDGES), dtype=torch.long)
    out[:, :prompt_len] = PROMPT_BUCKET
    for i in range(ids.shape[0]):
        real = mask[i].bool().nonzero().squeeze(1)
        seq = ids[i, real]
        for j in range(1, len(seq)):
            if real[j] < prompt_len:
                continue
            with torch.no_grad():
                logits = policy(input_ids=seq[None, :j]).logits[0, -1].double()
            p = float(torch.softmax(logits, -1)[seq[j]])
            out[i, real[j]] = sum(p >= e for e in SURPRISE_EDGES)
    return out


def test_surprise_critic_starts_as_the_plain_critic_and_reads_the_naive_buckets():
    policy = _policy()
    plain, sur = Critic.from_policy(policy), Critic.from_policy(policy, surprise=True)
    ids, mask = encode_prompts(TOK, TEXTS)
    with torch.no_grad():
        torch.nn.init.normal_(plain.value_head.weight)
        sur.value_head.load_state_dict(plain.value_head.state_dict())
        P = ids.shape[1] - 4  # the last 4 columns play the response
        assert torch.allclose(plain(ids, mask), sur(ids, mask, prompt_len=P), atol=1e-6)  # zero surprise embedding
        torch.nn.init.normal_(sur.surprise_embed.weight)
        buckets = _naive_buckets(policy, ids, mask, P)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        emb = sur.backbone.get_input_embeddings()(ids) + sur.surprise_embed(buckets)
        h = sur.backbone(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state
        want = torch.where(mask.bool(), sur.value_head(h).squeeze(-1), 0.0)
        assert torch.allclose(sur(ids, mask, prompt_len=P), want, atol=1e-5)
        resp = buckets[:, P:][mask[:, P:].bool()]
        assert len(set(resp.tolist())) > 1 and PROMPT_BUCKET not in resp.tolist()  # the check is not vacuous
        assert (buckets[:, :P] == PROMPT_BUCKET).all()


def test_prompt_tokens_do_not_reach_the_surprise_input_through_their_probabilities():
    """Values of response states do not change when the frozen π₀'s probabilities of prompt tokens
    change (only its probabilities of response tokens are read), and a surprise critic refuses a
    call that does not say where the prompt ends."""
    policy = _policy()
    sur = Critic.from_policy(policy, surprise=True)
    with torch.no_grad():
        torch.nn.init.normal_(sur.value_head.weight)
        torch.nn.init.normal_(sur.surprise_embed.weight, std=1.0)
    p_ids, p_mask = encode_prompts(TOK, ["12+3=", "4-5="])
    r_ids, _ = encode_prompts(TOK, ["15", "9"])
    r_ids, r_mask = r_ids.flip(1), torch.ones_like(r_ids)  # any right-aligned response ids will do
    with torch.no_grad():
        v = response_values(sur, p_ids, p_mask, r_ids, r_mask)
        # the old behaviour (prompt tokens bucketed by π₀) gives other values: the test can fail
        ids = torch.cat([p_ids, r_ids], 1)
        mask = torch.cat([p_mask, r_mask], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        old = _naive_buckets(policy, ids, mask, 0)
        h = sur.backbone(inputs_embeds=sur.backbone.get_input_embeddings()(ids) + sur.surprise_embed(old),
                         attention_mask=mask, position_ids=pos).last_hidden_state
        P, T = p_ids.shape[1], r_ids.shape[1]
        v_old = torch.where(r_mask.bool(), sur.value_head(h[:, P - 1 : P - 1 + T]).squeeze(-1), 0.0)
        assert not torch.allclose(v, v_old, atol=1e-4)
        new = _naive_buckets(policy, ids, mask, P)
        h = sur.backbone(inputs_embeds=sur.backbone.get_input_embeddings()(ids) + sur.surprise_embed(new),
                         attention_mask=mask, position_ids=pos).last_hidden_state
        assert torch.allclose(v, sur.value_head(h[:, P - 1 : P - 1 + T]).squeeze(-1), atol=1e-5)
    with pytest.raises(VapoError, match="prompt_len"):
        sur(ids, mask)


def test_surprise_critic_trains_its_embedding_not_the_frozen_policy_and_round_trips(tmp_path):
    policy = _policy()
    sur = Critic.from_policy(policy, surprise=True).train()
    assert not sur.surprise_policy.training
    ids, mask = encode_prompts(TOK, TEXTS)
    with torch.no_grad():
        torch.nn.init.normal_(sur.value_head.weight)
    sur(ids, mask, prompt_len=2).sum().backward()
    assert sur.surprise_embed.weight.grad is not None and sur.surprise_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in sur.surprise_policy.parameters())
    with torch.no_grad():
        torch.nn.init.normal_(sur.surprise_embed.weight)
    sur.save_pretrained(tmp_path / "c")
    back = Critic.from_pretrained(tmp_path / "c")
    assert back.surprise_policy is not None
    with torch.no_grad():
        assert torch.allclose(sur.eval()(ids, mask, prompt_len=2), back(ids, mask, prompt_len=2), atol=1e-6)


def test_a_surprise_critic_saved_in_the_old_format_is_refused(tmp_path):
    """Format v1 bucketed prompt tokens by π₀: such a critic would read its inputs differently now."""
    import json

    sur = Critic.from_policy(_policy(), surprise=True)
    sur.save_pretrained(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / "critic.json").read_text())
    (tmp_path / "c" / "critic.json").write_text(json.dumps({**meta, "format": "vapo-critic-v1"}))
    with pytest.raises(VapoError, match="old format"):
        Critic.from_pretrained(tmp_path / "c")
    plain = Critic.from_policy(_policy())
    plain.save_pretrained(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "critic.json").read_text())
    (tmp_path / "p" / "critic.json").write_text(json.dumps({**meta, "format": "vapo-critic-v1"}))
    assert Critic.from_pretrained(tmp_path / "p").surprise_policy is None  # a plain v1 critic still loads


# ------------------------------------------------------------------ surprise history
def _naive_history(policy, ids, mask, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Slip count (π₀ < HISTORY_SLIP, capped) and bucket of the smallest π₀ over the response tokens
    up to and including each column, one sequence and one position at a time (float64)."""
    from vapo.models.critic import HISTORY_COUNTS, HISTORY_SLIP

    count = torch.full(ids.shape, HISTORY_COUNTS, dtype=torch.long)
    low = torch.full(ids.shape, PROMPT_BUCKET, dtype=torch.long)
    for i in range(ids.shape[0]):
        seen: list[float] = []
        for j in range(prompt_len, ids.shape[1]):
            if mask[i, j] and mask[i, j - 1] and j > 0:
                with torch.no_grad():
                    real = mask[i, :j].bool()
                    logits = policy(input_ids=ids[i, :j][real][None]).logits[0, -1].double()
                seen.append(float(torch.softmax(logits, -1)[ids[i, j]]))
            else:
                seen.append(1.0)  # no prediction
            count[i, j] = min(sum(p < HISTORY_SLIP for p in seen), HISTORY_COUNTS - 1)
            low[i, j] = sum(min(seen) >= e for e in SURPRISE_EDGES)
    return count, low


def test_surprise_history_starts_as_the_surprise_critic_and_reads_the_naive_history():
    policy = _policy()
    sur, hist = Critic.from_policy(policy, surprise=True), Critic.from_policy(policy, surprise=True, history=True)
    ids, mask = encode_prompts(TOK, TEXTS)
    P = ids.shape[1] - 6
    with torch.no_grad():
        torch.nn.init.normal_(sur.value_head.weight)
        torch.nn.init.normal_(sur.surprise_embed.weight)
        hist.value_head.load_state_dict(sur.value_head.state_dict())
        hist.surprise_embed.load_state_dict(sur.surprise_embed.state_dict())
        assert torch.allclose(sur(ids, mask, prompt_len=P), hist(ids, mask, prompt_len=P), atol=1e-6)  # zero history
        torch.nn.init.normal_(hist.history_count_embed.weight)
        torch.nn.init.normal_(hist.history_min_embed.weight)
        count, low = _naive_history(policy, ids, mask, P)
        buckets = _naive_buckets(policy, ids, mask, P)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        emb = (hist.backbone.get_input_embeddings()(ids) + hist.surprise_embed(buckets)
               + hist.history_count_embed(count) + hist.history_min_embed(low))
        h = hist.backbone(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state
        want = torch.where(mask.bool(), hist.value_head(h).squeeze(-1), 0.0)
        assert torch.allclose(hist(ids, mask, prompt_len=P), want, atol=1e-5)
        resp = mask[:, P:].bool()
        assert len(set(count[:, P:][resp].tolist())) > 1 and len(set(low[:, P:][resp].tolist())) > 1  # not vacuous


def test_surprise_history_round_trips_and_needs_the_surprise_input(tmp_path):
    policy = _policy()
    hist = Critic.from_policy(policy, surprise=True, history=True)
    ids, mask = encode_prompts(TOK, TEXTS)
    with torch.no_grad():
        for w in (hist.value_head.weight, hist.history_count_embed.weight, hist.history_min_embed.weight):
            torch.nn.init.normal_(w)
    hist.save_pretrained(tmp_path / "c")
    back = Critic.from_pretrained(tmp_path / "c")
    assert back.has_history
    with torch.no_grad():
        assert torch.allclose(hist.eval()(ids, mask, prompt_len=3), back(ids, mask, prompt_len=3), atol=1e-6)
    with pytest.raises(VapoError, match="surprise input"):
        Critic.from_policy(policy, history=True)
