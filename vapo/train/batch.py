"""The experience batch: one type for every consumer (training, evaluation, diagnostics, the
Monte-Carlo probe), and the micro-batch packing of its rows for forward passes.

Shapes (docs/contracts.md): ``B`` responses, ``P`` prompt tokens (left-padded), ``T`` response
tokens (right-padded); ``response_mask[i, t] = 1`` on generated tokens, EOS included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch

_PROMPT_FIELDS = ("prompt_ids", "prompt_mask")


@dataclass
class Experience:
    """B responses (rows ``i·G .. i·G+G−1`` answer problem ``i`` when sampled in groups of G).

    Filled by :func:`vapo.train.collect.rollout_and_score`; the training stages fill the optional
    fields (see vapo.train.trainer).
    """

    prompt_ids: torch.Tensor  # [B, P] long, left-padded with pad
    prompt_mask: torch.Tensor  # [B, P] long
    response_ids: torch.Tensor  # [B, T] long, pad after EOS
    response_mask: torch.Tensor  # [B, T] float, 1 on generated tokens (incl. EOS)
    lengths: torch.Tensor  # [B] long
    truncated: torch.Tensor  # [B] bool, no EOS within max_new_tokens
    scores: torch.Tensor  # [B] float32, task reward + shaping
    correct: torch.Tensor  # [B] bool, verifier says correct
    sizes: torch.Tensor  # [B] long, the task's length knob of each problem
    group_index: torch.Tensor  # [B] long, which prompt a response answers
    problems: list[Any] = field(default_factory=list)  # B Problem objects (empty when not kept)
    reward_fault: torch.Tensor | None = None  # [B] long: 0, or 1 + the FAULT_KINDS index of the verifier fault that scored the row 0
    loss_mask: torch.Tensor | None = None  # [B, T] response_mask, minus filtered responses
    old_logprobs: torch.Tensor | None = None  # [B, T]
    ref_logprobs: torch.Tensor | None = None  # [B, T]
    values: torch.Tensor | None = None  # [B, T] V(state before token t)
    token_rewards: torch.Tensor | None = None  # [B, T]
    advantages: torch.Tensor | None = None  # [B, T]
    returns: torch.Tensor | None = None  # [B, T]
    lam_actor: torch.Tensor | None = None  # [B] λ of each row's advantages, when the estimator chose it (gae_error_aware)

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, idx: torch.Tensor) -> Experience:
        """The sub-batch of rows ``idx``, trimmed to its own longest prompt (left padding) and
        longest answer (right padding). Positions come from the masks, so trimming padding
        changes no computed value."""
        out: dict[str, Any] = {}
        t_max = int(self.lengths[idx].max().item()) if len(idx) else 0
        p_keep = int(self.prompt_mask[idx].sum(1).max().item()) if len(idx) else self.prompt_mask.shape[1]
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                out[f.name] = None
                continue
            if isinstance(v, list):
                out[f.name] = [v[i] for i in idx.tolist()] if v else []
                continue
            v = v[idx]
            if f.name in _PROMPT_FIELDS:
                v = v[:, v.shape[1] - p_keep :]
            elif v.dim() == 2:
                v = v[:, :t_max]
            out[f.name] = v
        return Experience(**out)

    @staticmethod
    def concat(parts: list[Experience], pad_id: int) -> Experience:
        """Concatenate experiences (re-padding prompts on the left and responses on the right;
        group indices are offset so that groups stay distinct)."""
        if len(parts) == 1:
            return parts[0]
        p_max = max(p.prompt_ids.shape[1] for p in parts)
        t_max = max(p.response_ids.shape[1] for p in parts)
        g_off = 0
        out: dict[str, list[Any]] = {}
        for p in parts:
            for f in fields(p):
                v = getattr(p, f.name)
                if v is None:
                    continue
                if isinstance(v, list):
                    out.setdefault(f.name, []).extend(v)
                    continue
                if f.name in _PROMPT_FIELDS:
                    v = pad_left(v, p_max, pad_id if f.name == "prompt_ids" else 0)
                elif v.dim() == 2:
                    v = pad_right(v, t_max, pad_id if f.name == "response_ids" else 0)
                elif f.name == "group_index":
                    v = v + g_off
                out.setdefault(f.name, []).append(v)
            g_off += int(p.group_index.max().item()) + 1 if len(p.group_index) else 0
        return Experience(**{k: (v if k == "problems" else torch.cat(v)) for k, v in out.items()})


def pad_left(x: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """[b, w] → [b, width] with ``fill`` on the left."""
    return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=fill)


def pad_right(x: torch.Tensor, width: int, fill: int) -> torch.Tensor:
    """[b, w] → [b, width] with ``fill`` on the right."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=fill)


# --------------------------------------------------------------------------------------------
# Micro-batches: rows packed for forward passes
# --------------------------------------------------------------------------------------------
def micro_batches(exp: Experience, max_tokens: int) -> list[torch.Tensor]:
    """Row groups of ``exp`` for forward passes: rows sorted by length and packed so that a
    group's padded size, rows × (longest prompt + longest answer), stays within ``max_tokens``
    (a single longer row forms its own group). Sorting keeps the padding of answers of very
    different lengths out of the computation.

    Returns: a list of [b] long row-index tensors that partition range(B).
    """
    plen, rlen = exp.prompt_mask.sum(1).tolist(), exp.lengths.tolist()
    order = sorted(range(len(rlen)), key=lambda i: (plen[i] + rlen[i], i))
    groups: list[list[int]] = []
    cur: list[int] = []
    p_max = r_max = 0
    for i in order:
        p2, r2 = max(p_max, plen[i]), max(r_max, rlen[i])
        if cur and (len(cur) + 1) * (p2 + r2) > max_tokens:
            groups.append(cur)
            cur, p2, r2 = [], plen[i], rlen[i]
        cur.append(i)
        p_max, r_max = p2, r2
    if cur:
        groups.append(cur)
    return [torch.tensor(g, dtype=torch.long) for g in groups]


# A forward over micro-batch tensors: fn(model, prompt_ids, prompt_mask, response_ids, response_mask) -> [b, t]
RowForward = Callable[..., torch.Tensor]
# The device outputs of a forward with their graphs: (rows, [b, t] output) per micro-batch
Graphs = list[tuple[torch.Tensor, torch.Tensor]]


def forward_rows(fn: RowForward, model: Any, exp: Experience, *, device: torch.device, max_tokens: int,
                 keep_graphs: bool = False,
                 micro_batches: Callable[[Experience, int], list[torch.Tensor]] | None = None) -> tuple[torch.Tensor, Graphs | None]:
    """``fn`` over the micro-batches of ``exp``, reassembled to [B, T] float32 on CPU (0 at padding).

    With ``keep_graphs`` the device outputs (graph attached) are also returned, as (rows, output)
    pairs, so that a later loss can backpropagate through this very forward pass.
    ``micro_batches``: the packing (default :func:`micro_batches`; under torchrun, this process's
    share, vapo.train.distributed; rows outside it stay 0).
    """
    out = torch.zeros(exp.response_ids.shape, dtype=torch.float32)
    graphs: Graphs | None = [] if keep_graphs else None
    for rows in (micro_batches or _micro_batches)(exp, max_tokens):
        u = exp.select(rows)
        y = fn(model, *(t.to(device) for t in (u.prompt_ids, u.prompt_mask, u.response_ids, u.response_mask)))
        out[rows, : y.shape[1]] = y.detach().float().cpu()
        if graphs is not None:
            graphs.append((rows, y))
    return out, graphs


_micro_batches = micro_batches

__all__ = ["Experience", "Graphs", "forward_rows", "micro_batches", "pad_left", "pad_right"]
