"""Length weighting: hand-computed shares per aggregation mode, and measured gradient norms."""

import numpy as np
import pytest
import torch
from toys import micro_policy

from vapo.diagnostics.common import bucket_labels, length_edges
from vapo.diagnostics.hook import weight_share_metrics
from vapo.diagnostics.weighting import bucket_grad_norms, weight_shares
from vapo.models import build_char_tokenizer
from vapo.train.batch import Experience


def _mask(lengths, T):
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()


def test_hand_computed_shares():
    # Lengths 2, 4, 8 with L_max = 8: buckets (0,2], (2,4], (4,6], (6,8] hold one response each except (4,6].
    lengths = [2, 4, 8]
    edges = length_edges(8)
    labels = bucket_labels(edges)
    rep = weight_shares(_mask(lengths, 8), torch.tensor(lengths), edges, labels, norm_len=8)
    tm, smm, sts = (rep["modes"][m] for m in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"))
    # token-mean: w = 1/Σl = 1/14 per token → shares l/14.
    assert [tm[b] for b in labels] == pytest.approx([2 / 14, 4 / 14, 0, 8 / 14])
    # seq-mean-token-mean: each response gets 1/B whatever its length.
    assert [smm[b] for b in labels] == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3])
    # seq-mean-token-sum-norm: w = 1/(B·T_max) = 1/24 per token; total 14/24, shares l/14.
    assert [sts[b] for b in labels] == pytest.approx([2 / 14, 4 / 14, 0, 8 / 14])
    assert rep["total_weight"]["seq-mean-token-sum-norm"] == pytest.approx(14 / 24)
    assert rep["total_weight"]["token-mean"] == pytest.approx(1.0)
    assert [rep["tokens"][b] for b in labels] == pytest.approx([2 / 14, 4 / 14, 0, 8 / 14])
    assert [rep["responses"][b] for b in labels] == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3])
    hook = weight_share_metrics(_mask(lengths, 8), torch.tensor(lengths), "seq-mean-token-mean", 8, 8)
    assert list(hook.values()) == pytest.approx([1 / 3, 1 / 3, 0, 1 / 3])
    assert list(hook) == ["diag/weight_share_1_2", "diag/weight_share_3_4", "diag/weight_share_5_6", "diag/weight_share_7_8"]


def _batch(lengths, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = _mask(lengths, T)
    ids = torch.randint(4, 90, (B, T), generator=g) * mask.long()
    return Experience(problems=[None] * B, prompt_ids=torch.randint(4, 90, (B, 3), generator=g), prompt_mask=torch.ones(B, 3, dtype=torch.long),
                 response_ids=ids, response_mask=mask, lengths=torch.tensor(lengths), truncated=torch.zeros(B, dtype=torch.bool),
                 scores=torch.zeros(B), correct=torch.zeros(B, dtype=torch.bool), sizes=torch.ones(B, dtype=torch.long),
                 group_index=torch.arange(B))


def test_grad_norms_scale_with_the_modes_weights():
    """Within a bucket, token-mean and seq-mean-token-sum-norm weights differ by the constant
    B·T_max/Σl, so their measured gradient norms must differ by exactly that factor; a bucket whose
    advantages are 0 has zero gradient."""
    tok = build_char_tokenizer()
    policy = micro_policy(tok)
    lengths = [2, 3, 5, 8, 8]
    T = 8
    batch = _batch(lengths, T)
    g = torch.Generator().manual_seed(1)
    adv = torch.randn(len(lengths), T, generator=g) * batch.response_mask
    adv[0] = 0  # bucket (0,2] holds only row 0
    edges, labels = length_edges(T), bucket_labels(length_edges(T))
    before = [p.detach().clone() for p in policy.parameters()]
    norms = bucket_grad_norms(policy, batch, adv, edges, labels, norm_len=T)
    assert norms["token-mean"][labels[0]] == 0.0
    ratio = len(lengths) * T / sum(lengths)
    for b in labels[1:]:
        if norms["token-mean"][b] > 0:
            assert norms["token-mean"][b] / norms["seq-mean-token-sum-norm"][b] == pytest.approx(ratio, rel=1e-4)
    assert norms["token-mean"][labels[3]] > 0
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters(), strict=True))
    assert all(p.grad is None for p in policy.parameters())
    assert np.isfinite(list(norms["seq-mean-token-mean"].values())).all()
