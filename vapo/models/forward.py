"""Per-token log-probabilities and values of sampled responses, computed in one forward pass.

The scored sequence is ``cat(prompt_ids, response_ids)`` (prompt left-padded, response
right-padded) with attention mask ``cat(prompt_mask, response_mask)`` and position ids
``cumsum(mask) - 1`` clamped at 0, so a sequence's positions do not depend on how much padding
its batch needed (left-padding invariance). With P prompt columns, the hidden state at column
``P - 1 + t`` has seen the prompt and response[:t]: it predicts response token t (policy) and is
the state s_t *before* token t (critic).

Only these T columns go through the LM head: the [B, P+T, V] logits of the full sequence are
never materialised.
"""

from __future__ import annotations

from typing import Any

import torch

from vapo.algos.losses import entropy_from_logits, logprobs_from_logits
from vapo.errors import VapoError


def _joint(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, response_ids: torch.Tensor,
           response_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if prompt_ids.dim() != 2 or response_ids.dim() != 2 or prompt_ids.shape != prompt_mask.shape \
            or response_ids.shape != response_mask.shape or prompt_ids.shape[0] != response_ids.shape[0]:
        raise VapoError(
            f"shape mismatch: prompt_ids {tuple(prompt_ids.shape)}, prompt_mask {tuple(prompt_mask.shape)}, "
            f"response_ids {tuple(response_ids.shape)}, response_mask {tuple(response_mask.shape)}",
            where="vapo.models.forward", fix="pass prompt tensors [B, P] and response tensors [B, T] with the same B")
    if prompt_ids.shape[1] == 0:
        raise VapoError("empty prompts (P = 0)", where="vapo.models.forward",
                        fix="every prompt needs at least the BOS token (use encode_prompts)")
    ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


def response_logprobs(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t | x, y_<t) for every response token, and optionally the entropy of π(· | x, y_<t).

    Args:
        model: a Hugging Face causal LM (``base_model`` + output embeddings, e.g. Qwen2/Llama).
        prompt_ids [B, P] int64, left-padded; prompt_mask [B, P] {0,1}.
        response_ids [B, T] int64, right-padded; response_mask [B, T] {0,1} (1 on EOS too).
        temperature: logits are divided by it (the sampling distribution at that temperature).
    Returns:
        logprobs [B, T] float32 and entropy [B, T] float32 (or None); masked positions hold 0.
        Differentiable with respect to the model's parameters.
    """
    if temperature <= 0:
        raise VapoError(f"temperature must be > 0, got {temperature}", where="response_logprobs",
                        fix="use temperature=1.0 for the model's own distribution")
    ids, mask, pos = _joint(prompt_ids, prompt_mask, response_ids, response_mask)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    h = out.last_hidden_state[:, P - 1 : P - 1 + T]  # [B, T, H]: the states that predict y_0..y_{T-1}
    logits = model.get_output_embeddings()(h).float()  # [B, T, V], response columns only
    if temperature != 1.0:
        logits = logits / temperature
    m = response_mask.bool()
    logp = torch.where(m, logprobs_from_logits(logits, response_ids), 0.0)
    ent = torch.where(m, entropy_from_logits(logits), 0.0) if with_entropy else None
    return logp, ent


def response_values(
    critic: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """V(s_t) for every response token, s_t = prompt + response[:t] (the state *before* token t).

    Args: as :func:`response_logprobs`; ``critic`` is a :class:`vapo.models.Critic`.
    Returns:
        values [B, T] float32; masked positions hold 0. values[:, 0] is V(prompt).
    """
    ids, mask, pos = _joint(prompt_ids, prompt_mask, response_ids, response_mask)
    P, T = prompt_ids.shape[1], response_ids.shape[1]
    h = critic.hidden_states(ids, mask, pos, prompt_len=P)[:, P - 1 : P - 1 + T]  # [B, T, H]
    v = critic.value_head(h).squeeze(-1).float()
    return torch.where(response_mask.bool(), v, 0.0)
