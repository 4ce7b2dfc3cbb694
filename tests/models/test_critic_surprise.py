"""The critic's surprise input: each token's embedding plus a learned embedding of the bucket of the
frozen warm-start policy's probability of it, checked against a naive per-token loop."""

from __future__ import annotations

import torch

from vapo.models import Critic, build_char_tokenizer, build_policy, encode_prompts
from vapo.models.critic import SURPRISE_EDGES

TOK = build_char_tokenizer()
TEXTS = ["1+2=3\n3+4=7", "33-4+5=", "9"]


def _policy():
    return build_policy("micro", TOK, seed=0)


def _naive_buckets(policy, ids, mask) -> torch.Tensor:
    """Bucket of π₀(y_j | y_<j) for each position, one sequence and one position at a time (float64)."""
    out = torch.full(ids.shape, len(SURPRISE_EDGES), dtype=torch.long)
    for i in range(ids.shape[0]):
        real = mask[i].bool().nonzero().squeeze(1)
        seq = ids[i, real]
        for j in range(1, len(seq)):
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
        assert torch.allclose(plain(ids, mask), sur(ids, mask), atol=1e-6)  # zero surprise embedding
        torch.nn.init.normal_(sur.surprise_embed.weight)
        buckets = _naive_buckets(policy, ids, mask)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        emb = sur.backbone.get_input_embeddings()(ids) + sur.surprise_embed(buckets)
        h = sur.backbone(inputs_embeds=emb, attention_mask=mask, position_ids=pos).last_hidden_state
        want = torch.where(mask.bool(), sur.value_head(h).squeeze(-1), 0.0)
        assert torch.allclose(sur(ids, mask), want, atol=1e-5)
        assert len(set(buckets[mask.bool()].tolist())) > 1  # the check is not vacuous


def test_surprise_critic_trains_its_embedding_not_the_frozen_policy_and_round_trips(tmp_path):
    policy = _policy()
    sur = Critic.from_policy(policy, surprise=True).train()
    assert not sur.surprise_policy.training
    ids, mask = encode_prompts(TOK, TEXTS)
    with torch.no_grad():
        torch.nn.init.normal_(sur.value_head.weight)
    sur(ids, mask).sum().backward()
    assert sur.surprise_embed.weight.grad is not None and sur.surprise_embed.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in sur.surprise_policy.parameters())
    with torch.no_grad():
        torch.nn.init.normal_(sur.surprise_embed.weight)
    sur.save_pretrained(tmp_path / "c")
    back = Critic.from_pretrained(tmp_path / "c")
    assert back.surprise_policy is not None
    with torch.no_grad():
        assert torch.allclose(sur.eval()(ids, mask), back(ids, mask), atol=1e-6)
