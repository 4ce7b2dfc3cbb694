"""Section 3 — length weighting: how much of the policy gradient each response-length bucket gets.

The policy loss is Σ_{i,t} w_{i,t} ℓ_{i,t} with per-token weights w fixed by the aggregation mode
(vapo.algos.token_weights; DAPO §3.3 "token-level policy gradient loss", Dr. GRPO §3.1):

    token-mean                w_{i,t} = 1 / Σ_j l_j
    seq-mean-token-mean       w_{i,t} = 1 / (B · l_i)
    seq-mean-token-sum-norm   w_{i,t} = 1 / (B · T_max)

The *share* of bucket b under a mode is Σ_{i∈b,t} w_{i,t} / Σ_{i,t} w_{i,t}: under seq-mean-
token-mean a long response's tokens count less than a short one's, which is the length bias
these papers discuss. The *measured gradient norm* of bucket b is ‖∇_θ Σ_{i∈b,t} w_{i,t}·(−A_{i,t}
log π_θ(y_t|s_t))‖, the gradient of the clipped surrogate at ratio 1 (where the clip is inactive)
restricted to bucket b, with the full batch's normalisers.

The run does not store its batches: the batch is regenerated with the checkpoint's policy and
the run's sampling settings, and its advantages come from the run's own estimator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vapo.algos.losses import LOSS_AGG_MODES, token_weights
from vapo.diagnostics.common import bucket_of
from vapo.models import response_logprobs


def weight_shares(mask: torch.Tensor, lengths: torch.Tensor, edges: list[int], labels: list[str],
                  norm_len: int) -> dict[str, Any]:
    """Share of total loss weight per length bucket under every registered aggregation mode.

    Args: mask [B, T] {0,1}; lengths [B]; edges/labels from vapo.diagnostics.common; norm_len T_max.
    Returns: {"modes": {mode: {label: share}}, "total_weight": {mode: Σw}, "responses": {label: share
        of responses}, "tokens": {label: share of tokens}}; shares of a mode sum to 1.
    """
    b = bucket_of(lengths, edges)
    m = mask.double()
    tok_per_row = m.sum(1).numpy()
    out: dict[str, Any] = {"modes": {}, "total_weight": {}, "responses": {}, "tokens": {}}
    for j, lab in enumerate(labels):
        out["responses"][lab] = float((b == j).mean())
        out["tokens"][lab] = float(tok_per_row[b == j].sum() / max(tok_per_row.sum(), 1))
    for mode in LOSS_AGG_MODES:
        w = token_weights(m, mode, norm_len=norm_len).sum(1).numpy()  # per-response weight
        total = float(w.sum())
        out["total_weight"][mode] = total
        out["modes"][mode] = {lab: float(w[b == j].sum() / total) if total > 0 else float("nan")
                              for j, lab in enumerate(labels)}
    return out


def bucket_grad_norms(policy: Any, batch: Any, advantages: torch.Tensor, edges: list[int], labels: list[str],
                      norm_len: int) -> dict[str, dict[str, float]]:
    """‖∇θ‖ of the policy-gradient loss restricted to each length bucket, per aggregation mode.

    Args: policy: the HF causal LM; batch: an Experience; advantages [B, T] (0 masked); norm_len T_max.
    Returns: {mode: {label: grad norm (0 for empty buckets)}}. The policy's weights are unchanged
    (gradients are taken with torch.autograd.grad, never stored in .grad).
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    device = next(policy.parameters()).device
    mask = batch.response_mask
    weights = {mode: token_weights(mask.double(), mode, norm_len=norm_len).float() for mode in LOSS_AGG_MODES}
    b = bucket_of(batch.lengths, edges)
    out: dict[str, dict[str, float]] = {mode: {} for mode in LOSS_AGG_MODES}
    was_training = policy.training
    policy.eval()  # no dropout: the gradient of the deterministic forward
    try:
        for j, lab in enumerate(labels):
            idx = torch.from_numpy(np.nonzero(b == j)[0])
            if len(idx) == 0:
                for mode in LOSS_AGG_MODES:
                    out[mode][lab] = 0.0
                continue
            t_max = int(batch.lengths[idx].max())
            logp, _ = response_logprobs(policy, batch.prompt_ids[idx].to(device), batch.prompt_mask[idx].to(device),
                                        batch.response_ids[idx, :t_max].to(device), mask[idx, :t_max].to(device))
            adv = advantages[idx, :t_max].float().to(device)
            modes = list(LOSS_AGG_MODES)
            for k, mode in enumerate(modes):
                w = weights[mode][idx, :t_max].to(device)
                loss = -(w * adv * logp).sum()
                grads = torch.autograd.grad(loss, params, retain_graph=k < len(modes) - 1, allow_unused=True)
                sq = sum(float(g.double().pow(2).sum()) for g in grads if g is not None)
                out[mode][lab] = float(np.sqrt(sq))
    finally:
        policy.train(was_training)
    return out


def finding(report: dict[str, Any], run_mode: str, labels: list[str]) -> str:
    """One line: the run's mode's share for the longest populated bucket vs its token share."""
    shares = report["shares"]
    populated = [lab for lab in labels if shares["responses"].get(lab, 0) > 0]
    if not populated:
        return "no responses"
    lab = populated[-1]
    s = shares["modes"].get(run_mode, {}).get(lab, float("nan"))
    parts = [f"{m} {shares['modes'][m][lab]:.0%}" for m in shares["modes"] if m != run_mode]
    return (f"longest bucket ({lab} tokens: {shares['responses'][lab]:.0%} of responses, {shares['tokens'][lab]:.0%} "
            f"of tokens) gets {s:.0%} of the weight under the run's {run_mode} (vs {', '.join(parts)})")
