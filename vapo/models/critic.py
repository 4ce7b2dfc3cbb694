"""The critic: the policy's transformer backbone plus a scalar value head.

    V(s_t) = w · h_t + b,    h_t = last hidden state (after the final norm) at position t

The backbone is a deep copy of the warm-start policy's base model (``policy.base_model``, e.g.
``Qwen2Model``), so the critic starts from the same features the policy learned (VAPO §3.1
"value pretraining" starts the critic from the SFT model). The head is initialised to **zero**
(w = 0, b = 0), so V ≡ 0 before value pretraining: with a 0/1 outcome reward and no per-token
reward, a randomly initialised head would start with an arbitrary, prompt-dependent bias that
GAE then bootstraps through every token (VC-PPO, Yuan et al. 2025, §3 traces PPO's collapse on
long CoT to exactly this initialisation bias of the value model). Starting from 0 makes the
initial advantages equal the (undiscounted, λ-weighted) returns, and value pretraining moves the
head from there; gradients still reach the backbone after the first update of w.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vapo.errors import VapoError

CRITIC_FORMAT = "vapo-critic-v1"
HEAD_FILE = "value_head.safetensors"
META_FILE = "critic.json"


class Critic(nn.Module):
    """Causal-LM backbone + ``Linear(hidden, 1)`` value head. float32 values.

    Attributes:
        backbone: a Hugging Face base model (``AutoModel``) returning ``last_hidden_state``.
        value_head: ``nn.Linear(hidden_size, 1)``.
        config: the backbone's config.
    """

    def __init__(self, backbone: nn.Module, *, zero_init: bool = True):
        super().__init__()
        self.backbone = backbone
        self.config = backbone.config
        self.value_head = nn.Linear(backbone.config.hidden_size, 1)
        if zero_init:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(backbone.parameters()).dtype)

    @classmethod
    def from_policy(cls, policy: Any, *, zero_init: bool = True) -> Critic:
        """A critic whose backbone is a deep copy of ``policy.base_model`` (weights copied, the policy
        is left untouched) and whose value head is zero (V ≡ 0; ``zero_init=False``: PyTorch's
        default random init of ``nn.Linear``)."""
        base = getattr(policy, "base_model", None)
        if base is None or base is policy or not hasattr(base, "config"):
            raise VapoError(f"cannot find the backbone of {type(policy).__name__}", where="Critic.from_policy",
                            fix="pass a Hugging Face causal LM (e.g. from vapo.models.build_policy)")
        backbone = copy.deepcopy(base)
        backbone.requires_grad_(True)
        critic = cls(backbone, zero_init=zero_init)
        return critic.to(next(policy.parameters()).device).train(policy.training)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states [B, L, H] of the backbone."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False)
        return out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Values V(prefix up to and including token l) for every position.

        Args:
            input_ids [B, L] int64, attention_mask [B, L] {0,1}, position_ids [B, L] (optional;
            default cumsum(mask) - 1 clamped at 0, so left padding does not shift positions).
        Returns:
            values [B, L] float32; positions where attention_mask is 0 hold 0.
        """
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        h = self.hidden_states(input_ids, attention_mask, position_ids)
        v = self.value_head(h).squeeze(-1).float()
        return torch.where(attention_mask.bool(), v, torch.zeros_like(v))

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` (the backbone, HF format),
        ``value_head.safetensors`` and ``critic.json`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(d)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.value_head.state_dict().items()}, str(d / HEAD_FILE))
        (d / META_FILE).write_text(json.dumps({"format": CRITIC_FORMAT, "hidden_size": self.config.hidden_size,
                                               "backbone_class": type(self.backbone).__name__}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Critic:
        """Load a critic written by :meth:`save_pretrained` (float32)."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        d = Path(directory)
        missing = [f for f in ("config.json", HEAD_FILE, META_FILE) if not (d / f).is_file()]
        if not d.is_dir() or missing:
            raise VapoError(f"{d} is not a saved critic (missing: {', '.join(missing) if d.is_dir() else 'the directory'})",
                            where="Critic.from_pretrained", fix="pass a directory written by Critic.save_pretrained")
        meta = json.loads((d / META_FILE).read_text())
        if meta.get("format") != CRITIC_FORMAT:
            raise VapoError(f"unknown critic format {meta.get('format')!r} in {d / META_FILE}",
                            where="Critic.from_pretrained", fix=f"expected {CRITIC_FORMAT!r}; re-save the critic")
        try:
            backbone = AutoModel.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa")
        except Exception as e:
            raise VapoError(f"could not load the critic backbone from {d}: {type(e).__name__}: {e}",
                            where="Critic.from_pretrained", fix="re-save the critic with Critic.save_pretrained") from e
        critic = cls(backbone, zero_init=True)
        critic.value_head.load_state_dict(load_file(str(d / HEAD_FILE)))
        return critic.eval()
