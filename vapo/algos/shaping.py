"""Reward shaping: DAPO's overlong penalty and dynamic-sampling filter, and the placement of
outcome scores on tokens. Pure torch; shapes as in `vapo.algos.advantages`."""

from __future__ import annotations

import torch

from vapo.algos.groups import group_stats
from vapo.errors import VapoError

__all__ = ["dynamic_sampling_keep", "overlong_penalty", "scores_to_token_rewards"]


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache_len: int) -> torch.Tensor:
    """DAPO soft overlong punishment (arXiv 2503.14476 §3.4, eq. 13; docs/algorithms.md,
    "Overlong reward shaping"), added to the task reward:

        0                                    if l <= L_max - L_cache
        ((L_max - L_cache) - l) / L_cache    if L_max - L_cache < l <= L_max
        -1                                   if l > L_max

    Continuous: 0 at l = L_max - L_cache and -1 at l = L_max. With cache_len = 0 it is a hard
    -1 beyond L_max.

    Args:
        lengths: [B] int or float response lengths in tokens.
        max_len: L_max (paper: 20480), > 0. cache_len: L_cache (paper: 4096), 0 <= L_cache <= L_max.
    Returns:
        [B] float32 (float64 for float64 lengths) penalties in [-1, 0].
    """
    where = "overlong_penalty"
    if not (isinstance(lengths, torch.Tensor) and lengths.dim() == 1):
        raise VapoError("lengths must be a 1-D [B] tensor", where=where, fix="pass response_mask.sum(-1)")
    if not (max_len > 0 and 0 <= cache_len <= max_len):
        raise VapoError(f"need max_len > 0 and 0 <= cache_len <= max_len, got max_len={max_len}, "
                        f"cache_len={cache_len}", where=where,
                        fix="e.g. max_len=20480, cache_len=4096 (DAPO)")
    dtype = lengths.dtype if lengths.dtype == torch.float64 else torch.float32
    ln = lengths.to(dtype)
    start = float(max_len - cache_len)
    ramp = (start - ln) / cache_len if cache_len > 0 else torch.zeros_like(ln)
    out = torch.where(ln <= start, torch.zeros_like(ln), ramp)
    return torch.where(ln > max_len, torch.full_like(ln, -1.0), out)


def dynamic_sampling_keep(scores: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """DAPO dynamic sampling (arXiv 2503.14476 §3.2, eq. 11; docs/algorithms.md, "Dynamic
    sampling"): keep a response only if its
    group's scores are not all equal (all correct / all wrong give zero advantage and zero
    gradient). Groups of size 1 are all-equal, so they are dropped.

    Args:
        scores: [B] float. group_index: [B] int group ids (arbitrary, unsorted).
    Returns:
        [B] bool, True = keep.
    """
    where = "dynamic_sampling_keep"
    if not (isinstance(scores, torch.Tensor) and isinstance(group_index, torch.Tensor)
            and scores.dim() == 1 and group_index.shape == scores.shape):
        raise VapoError("scores and group_index must be 1-D [B] tensors of the same length",
                        where=where, fix="pass one score and one group id per response")
    return ~group_stats(scores, group_index).all_equal


def zero_signal_fraction(scores: torch.Tensor, group_index: torch.Tensor) -> float:
    """Fraction of the responses whose group's scores are all equal (no group-relative signal;
    the groups' fraction when they are of one size): ``1 − mean(dynamic_sampling_keep)``, the
    ``zero_signal_frac`` that training logs and the diagnostics report. NaN for an empty batch.

    Args: scores [B] float; group_index [B] int group ids.
    """
    if scores.numel() == 0:
        return float("nan")
    return 1.0 - dynamic_sampling_keep(scores, group_index).float().mean().item()


def scores_to_token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Outcome rewards as token rewards (docs/algorithms.md, "Notation"): r[i, l_i - 1] = R_i, else 0, where
    l_i - 1 is the position of the *last real token* of row i (any mask layout).

    Args:
        scores: [B] float. response_mask: [B, T] in {0, 1}.
    Returns:
        [B, T] (dtype of scores, float32 for integer scores); rows with no real token are all 0.
    """
    where = "scores_to_token_rewards"
    if response_mask.dim() != 2 or scores.shape != (response_mask.shape[0],):
        raise VapoError(f"need scores [B] and response_mask [B, T], got {tuple(scores.shape)} and "
                        f"{tuple(response_mask.shape)}", where=where,
                        fix="pass one score per row of response_mask")
    dtype = scores.dtype if scores.is_floating_point() else torch.float32
    mask = response_mask.bool()
    b, t = mask.shape
    pos = torch.arange(t, device=mask.device).expand(b, t)
    last = torch.where(mask, pos, -1).max(-1).values if t else torch.full((b,), -1)
    out = torch.zeros(b, t, dtype=dtype, device=scores.device)
    has = last >= 0
    rows = torch.nonzero(has).squeeze(-1)
    out[rows, last[rows]] = scores.to(dtype)[rows]
    return out
