"""Outcome-based exploration and exploration statistics: pure torch over ``[B]`` answers.

Outcome-based exploration (arXiv 2509.06941) gives exploration bonuses by *final answer*
rather than by token sequence: the outcome space of a reasoning task is small, so answers can
be counted. Two terms, each added to a response's reward (docs/algorithms.md, "Outcome-based
exploration"):

* historical: ``c_hist / sqrt(N(x, a))``, where N(x, a) counts how often answer a was given to
  prompt x so far in training (this batch included, so N >= 1 and the bonus is at most c_hist);
  rarely seen answers earn more (a UCB-style bonus);
* batch: ``-c_batch * (1/n) * #{j != i in the group : a_j = a_i}``, a penalty for answers that
  other members of the same group (n answers to the same prompt) repeat.

Answers are integer ids ``[B]`` (equal id = equal final answer *for the same prompt*); turning
texts into ids and keeping the counts N across iterations is the trainer's job
(vapo.train.exploration), because that state must be checkpointed.

Also here: the number of distinct answers per group and token statistics by relative position
in the response (entropy by position bucket), both logged every iteration.
"""

from __future__ import annotations

import torch

from vapo.errors import VapoError

__all__ = [
    "batch_repeat_penalty",
    "distinct_answers_per_group",
    "historical_bonus",
    "position_bucket_sums",
]


def _check_answers(answer_ids: torch.Tensor, group_index: torch.Tensor, where: str) -> None:
    ok = (isinstance(answer_ids, torch.Tensor) and isinstance(group_index, torch.Tensor)
          and answer_ids.dim() == 1 and group_index.shape == answer_ids.shape
          and not answer_ids.is_floating_point() and not group_index.is_floating_point())
    if not ok:
        raise VapoError("answer_ids and group_index must be 1-D integer [B] tensors of the same length",
                        where=where, fix="pass one answer id and one group id per response")


def _same_answer_counts(answer_ids: torch.Tensor, group_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m_i = #{j in i's group : a_j = a_i} (i included) and n_i = the size of i's group, [B] each."""
    pairs = torch.stack([group_index.long(), answer_ids.long()], dim=1)
    _, inv_pair, count_pair = torch.unique(pairs, dim=0, return_inverse=True, return_counts=True)
    _, inv_group, count_group = torch.unique(group_index, return_inverse=True, return_counts=True)
    return count_pair[inv_pair], count_group[inv_group]


def historical_bonus(counts: torch.Tensor, coef: float) -> torch.Tensor:
    """UCB-style outcome bonus ``coef / sqrt(N)`` (arXiv 2509.06941, historical exploration).

    Args:
        counts: [B] how often each response's (prompt, final answer) pair has been seen so far,
            this batch included (every entry >= 1).
        coef: c_hist >= 0.
    Returns:
        [B] float64 bonuses in (0, coef].
    """
    where = "historical_bonus"
    if not (isinstance(counts, torch.Tensor) and counts.dim() == 1):
        raise VapoError("counts must be a 1-D [B] tensor", where=where, fix="pass one count per response")
    if counts.numel() and bool((counts < 1).any()):
        raise VapoError(f"counts must be >= 1 (this batch included), got min {counts.min().item()}",
                        where=where, fix="add the batch to the history before computing the bonus")
    if not coef >= 0:
        raise VapoError(f"coef must be >= 0, got {coef}", where=where, fix="use e.g. coef=0.1")
    return coef / counts.to(torch.float64).sqrt()


def batch_repeat_penalty(answer_ids: torch.Tensor, group_index: torch.Tensor, coef: float) -> torch.Tensor:
    """Within-group repetition penalty (arXiv 2509.06941, batch exploration):
    ``-coef * (m_i - 1) / n_i`` with m_i the number of members of i's group that gave the same
    final answer (i included) and n_i the group's size. A group of n different answers gets 0;
    a group of n equal answers gets -coef (n - 1) / n each.

    Args: answer_ids, group_index: [B] int. coef: c_batch >= 0.
    Returns: [B] float64 penalties in [-coef, 0].
    """
    where = "batch_repeat_penalty"
    _check_answers(answer_ids, group_index, where)
    if not coef >= 0:
        raise VapoError(f"coef must be >= 0, got {coef}", where=where, fix="use e.g. coef=0.1")
    if answer_ids.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    m, n = _same_answer_counts(answer_ids, group_index)
    return -coef * (m - 1).to(torch.float64) / n.to(torch.float64)


def distinct_answers_per_group(answer_ids: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """The number of distinct final answers in each group, [n_groups] int64 (groups in
    increasing id order)."""
    _check_answers(answer_ids, group_index, "distinct_answers_per_group")
    if answer_ids.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    pairs = torch.unique(torch.stack([group_index.long(), answer_ids.long()], dim=1), dim=0)
    _, per_group = torch.unique(pairs[:, 0], return_counts=True)
    return per_group


def position_bucket_sums(x: torch.Tensor, mask: torch.Tensor, n_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and token counts of x by relative position in each response: the j-th real token
    (j = 0 .. l-1) of a response of l real tokens falls in bucket floor(n_buckets * j / l), so
    bucket 0 holds the first 1/n_buckets of every response and the last bucket its end.

    Args:
        x: [B, T] values (e.g. token entropies). mask: [B, T] in {0, 1} (any layout).
        n_buckets: >= 1.
    Returns:
        (sums [n_buckets] float64, counts [n_buckets] float64); a bucket's mean is sums / counts.
    """
    where = "position_bucket_sums"
    if x.shape != mask.shape or x.dim() != 2:
        raise VapoError(f"x {tuple(x.shape)} and mask {tuple(mask.shape)} must be the same [B, T]", where=where,
                        fix="pass token values with their response mask")
    if not (isinstance(n_buckets, int) and n_buckets >= 1):
        raise VapoError(f"n_buckets must be an integer >= 1, got {n_buckets!r}", where=where, fix="use e.g. 4")
    m = mask.bool()
    rank = torch.cumsum(m.to(torch.int64), dim=1) - 1  # index among the row's real tokens
    length = m.sum(1, keepdim=True).clamp_min(1)
    bucket = torch.div(rank * n_buckets, length, rounding_mode="floor").clamp(0, n_buckets - 1)
    sel = bucket[m]
    vals = x.detach().to(torch.float64)[m]
    sums = torch.zeros(n_buckets, dtype=torch.float64, device=x.device).index_add_(0, sel, vals)
    counts = torch.zeros(n_buckets, dtype=torch.float64, device=x.device).index_add_(0, sel, torch.ones_like(vals))
    return sums, counts
