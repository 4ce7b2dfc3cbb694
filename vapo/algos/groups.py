"""Group statistics: the one place where per-group reductions over ``[B]`` scores are computed.

GRPO / Dr. GRPO / RLOO advantages, DAPO's dynamic-sampling filter and the pathway
estimators all read the statistics of the *group* (responses to the same prompt) each
response belongs to. :func:`group_stats` computes them once, in float64, for arbitrary
(unsorted, non-contiguous) integer group ids, and returns them broadcast back to the
responses, so every caller indexes nothing. See docs/algorithms.md, "Group statistics".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vapo.errors import VapoError

__all__ = ["GroupStats", "group_stats"]


@dataclass(frozen=True)
class GroupStats:
    """Statistics of each response's group, broadcast to the responses. All ``[B]`` float64
    except ``all_equal`` ([B] bool).

    count: n_g, the group's size. total: Σ_g R. mean: Σ_g R / n_g.
    var: unbiased variance Σ_g (R - mean)² / (n_g - 1) (0 for n_g = 1). std: sqrt(var).
    all_equal: every score of the group is equal (true for groups of size 1).
    loo_mean: leave-one-out mean of the *other* members, (Σ_g R - R_i) / (n_g - 1); 0 for
    groups of size 1 (no peer; test ``count >= 2``).
    """

    count: torch.Tensor
    total: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor
    all_equal: torch.Tensor
    loo_mean: torch.Tensor


def group_stats(scores: torch.Tensor, group_index: torch.Tensor) -> GroupStats:
    """Per-response statistics of its group, in float64.

    Args:
        scores: [B] float (or int) scores, one per response.
        group_index: [B] int group ids (e.g. prompt ids); arbitrary, unsorted integers.
    Returns:
        :class:`GroupStats`, every field [B]. B = 0 gives empty tensors.
    """
    if not (isinstance(scores, torch.Tensor) and isinstance(group_index, torch.Tensor)
            and scores.dim() == 1 and group_index.shape == scores.shape):
        raise VapoError("scores and group_index must be 1-D [B] tensors of the same length, got "
                        f"{tuple(getattr(scores, 'shape', ()))} and "
                        f"{tuple(getattr(group_index, 'shape', ()))}",
                        where="group_stats", fix="pass one score and one group id per response")
    if group_index.is_floating_point() or group_index.is_complex():
        raise VapoError(f"group_index must hold integers, got dtype {group_index.dtype}",
                        where="group_stats", fix="pass integer group ids (e.g. prompt ids)")
    s = scores.to(torch.float64)
    _, inv = torch.unique(group_index, return_inverse=True)
    n_groups = int(inv.max().item()) + 1 if inv.numel() else 0
    count = torch.zeros(n_groups, dtype=torch.float64, device=s.device).index_add_(0, inv, torch.ones_like(s))
    total = torch.zeros_like(count).index_add_(0, inv, s)
    mean = total / count
    sq = torch.zeros_like(count).index_add_(0, inv, (s - mean[inv]) ** 2)  # two-pass: stable
    var = sq / (count - 1).clamp_min(1)  # unbiased (torch.std's n - 1), as GRPO's references
    big = torch.finfo(torch.float64).max
    gmax = torch.full_like(count, -big).scatter_reduce_(0, inv, s, "amax")
    gmin = torch.full_like(count, big).scatter_reduce_(0, inv, s, "amin")
    n, t = count[inv], total[inv]
    loo = torch.where(n >= 2, (t - s) / (n - 1).clamp_min(1), torch.zeros_like(s))
    return GroupStats(count=n, total=t, mean=mean[inv], var=var[inv], std=var[inv].sqrt(),
                      all_equal=(gmax == gmin)[inv], loo_mean=loo)
