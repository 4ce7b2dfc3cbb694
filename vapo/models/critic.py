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

Surprise input (``surprise=True``): the critic also holds a frozen copy of the warm-start policy
π₀, and each input token y_j enters the backbone as its embedding plus a learned embedding of the
bucket of π₀(y_j | y_<j) (edges :data:`SURPRISE_EDGES`; the embedding starts at zero, so the
critic starts as the plain one). On a task whose warm start imitates a sloppy teacher a slip is a
token π₀ took with low probability, and the value after a slip is 0: the critic no longer has to
re-derive from 0/1 returns what π₀'s next-token distribution already says (docs/training.md, the
critic). It costs one extra no-grad forward of π₀ per critic forward.

Prompt columns (everything before the first response token, left padding included) get a bucket
of their own, :data:`PROMPT_BUCKET`. SFT never trains on prompt tokens, so π₀'s probability of a
prompt token means nothing (on the default warm start 80% of prompt tokens fall below 0.1 against
1% of response tokens): bucketed like response tokens, every state would look as if it followed a
slip, and the critic would first have to learn to ignore its prompt. The response's first token
y_0 is bucketed by π₀(y_0 | prompt), which is meaningful.

Surprise history (``history=True``, with the surprise input): the token's own bucket says whether
*this* token was a slip, but the value of a state depends on whether *any* earlier token was one,
and on a long answer the backbone must carry that over hundreds of positions by attention alone,
from 0/1 returns. The history input hands it over: each response position also gets a learned
embedding of (a) how many response tokens so far, this one included, π₀ gave probability below
:data:`HISTORY_SLIP` (0, 1, 2, 3, 4 or more: :data:`HISTORY_COUNTS` rows) and (b) the bucket of
the smallest π₀ probability so far (the :data:`SURPRISE_EDGES` buckets). They are the two features
of the least-squares read-out in ``benchmarks/critic_features.py``. Prompt columns get a row of
their own in both. Both embeddings start at zero, so the critic starts as the plain one.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel

from vapo.errors import VapoError
from vapo.models.options import enable_checkpointing, has_lora, is_checkpointing, merge_lora
from vapo.models.policy import load_policy

CRITIC_FORMAT = "vapo-critic-v2"  # v2: prompt columns have a surprise bucket of their own
OLD_FORMATS = ("vapo-critic-v1",)  # loadable unless they carry the surprise input (v1 bucketed prompt tokens)
HEAD_FILE = "value_head.safetensors"
META_FILE = "critic.json"
SURPRISE_DIR = "surprise_policy"
SURPRISE_EDGES = (0.1, 0.3, 0.5, 0.8)  # buckets of π₀(y_j | y_<j): [0, .1), [.1, .3), [.3, .5), [.5, .8), [.8, 1]
PROMPT_BUCKET = len(SURPRISE_EDGES) + 1  # the bucket of every prompt column: "no prediction"
HISTORY_SLIP = 0.5  # a response token π₀ gave less than this counts as a slip in the history input
HISTORY_COUNTS = 5  # slip counts 0, 1, 2, 3 and "4 or more"; prompt columns get row HISTORY_COUNTS


def surprise_history(p: torch.Tensor, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The history input's two indices for every column of ``p`` [B, L] (π₀'s probability of each
    token; 1 where there is no prediction), whose first ``prompt_len`` columns are the prompt:
    the number of response tokens up to and including each column with p < :data:`HISTORY_SLIP`,
    capped at ``HISTORY_COUNTS - 1``, and the :data:`SURPRISE_EDGES` bucket of the smallest p over
    the same tokens. Prompt columns get ``HISTORY_COUNTS`` and ``PROMPT_BUCKET``."""
    resp = p[:, prompt_len:]
    count = (resp < HISTORY_SLIP).long().cumsum(-1).clamp(max=HISTORY_COUNTS - 1)
    low = torch.bucketize(resp.cummin(-1).values, torch.tensor(SURPRISE_EDGES, device=p.device), right=True)
    b = p.shape[0]
    count = torch.cat([count.new_full((b, prompt_len), HISTORY_COUNTS), count], 1)
    low = torch.cat([low.new_full((b, prompt_len), PROMPT_BUCKET), low], 1)
    return count, low


def _checkpointing(model: nn.Module) -> bool:
    return is_checkpointing(model)


class Critic(nn.Module):
    """Causal-LM backbone + ``Linear(hidden, 1)`` value head. float32 values.

    Attributes:
        backbone: a Hugging Face base model (``AutoModel``) returning ``last_hidden_state``.
        value_head: ``nn.Linear(hidden_size, 1)``.
        config: the backbone's config.
    """

    def __init__(self, backbone: nn.Module, *, zero_init: bool = True, surprise_policy: nn.Module | None = None,
                 history: bool = False):
        super().__init__()
        if history and surprise_policy is None:
            raise VapoError("the critic's surprise history needs the surprise input (a frozen π₀)", where="Critic",
                            fix="set algo.critic.surprise_input: true, or algo.critic.surprise_history: false")
        self.backbone = backbone
        self.config = backbone.config
        self.value_head = nn.Linear(backbone.config.hidden_size, 1)
        if zero_init:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        dtype = next(backbone.parameters()).dtype
        self.value_head.to(dtype)
        self.surprise_policy = surprise_policy
        self.surprise_embed: nn.Embedding | None = None
        if surprise_policy is not None:
            surprise_policy.eval().requires_grad_(False)
            self.surprise_embed = nn.Embedding(PROMPT_BUCKET + 1, backbone.config.hidden_size).to(dtype)
            nn.init.zeros_(self.surprise_embed.weight)
        self.history_count_embed: nn.Embedding | None = None
        self.history_min_embed: nn.Embedding | None = None
        if history:
            self.history_count_embed = nn.Embedding(HISTORY_COUNTS + 1, backbone.config.hidden_size).to(dtype)
            self.history_min_embed = nn.Embedding(PROMPT_BUCKET + 1, backbone.config.hidden_size).to(dtype)
            nn.init.zeros_(self.history_count_embed.weight)
            nn.init.zeros_(self.history_min_embed.weight)

    def train(self, mode: bool = True) -> Critic:
        super().train(mode)
        if self.surprise_policy is not None:
            self.surprise_policy.eval()  # frozen: no dropout, whatever the critic's mode
        return self

    @classmethod
    def from_policy(cls, policy: Any, *, zero_init: bool = True, surprise: bool = False, history: bool = False) -> Critic:
        """A critic whose backbone is a deep copy of ``policy.base_model`` (weights copied, the policy
        is left untouched) and whose value head is zero (V ≡ 0; ``zero_init=False``: PyTorch's
        default random init of ``nn.Linear``). ``surprise``: with a frozen copy of ``policy`` as π₀
        (module docstring); ``history``: with the surprise history too."""
        base = getattr(policy, "base_model", None)
        if base is None or base is policy or not hasattr(base, "config"):
            raise VapoError(f"cannot find the backbone of {type(policy).__name__}", where="Critic.from_policy",
                            fix="pass a Hugging Face causal LM (e.g. from vapo.models.build_policy)")
        backbone = copy.deepcopy(base)
        if has_lora(backbone):  # a LoRA actor: the critic trains all weights of a plain copy
            merge_lora(backbone)
        backbone.requires_grad_(True)
        frozen = copy.deepcopy(policy) if surprise else None
        critic = cls(backbone, zero_init=zero_init, surprise_policy=frozen, history=history)
        return critic.to(next(policy.parameters()).device).train(policy.training)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor | None = None, *, prompt_len: int | None = None) -> torch.Tensor:
        """Last hidden states [B, L, H] of the backbone (with the surprise input when the critic has one).

        ``prompt_len``: the number of leading prompt columns of ``input_ids`` (the prompt is left-padded
        to this width); they get :data:`PROMPT_BUCKET`. Required with the surprise input."""
        if self.surprise_policy is None:
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False)
            return out.last_hidden_state
        if prompt_len is None or not 0 < prompt_len <= input_ids.shape[1]:
            raise VapoError(f"a critic with the surprise input needs prompt_len in [1, {input_ids.shape[1]}], got {prompt_len}",
                            where="Critic.hidden_states", fix="pass prompt_len= the prompt's column count (vapo.models.response_values does)")
        with torch.no_grad():
            logits = self.surprise_policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                          use_cache=False).logits
            p = torch.softmax(logits[:, :-1].float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # π₀(y_j | y_<j)
            p = torch.where(attention_mask[:, :-1].bool(), p, 1.0)  # after left padding: no prediction
            p = torch.nn.functional.pad(p, (1, 0), value=1.0)  # nor for the first token
            bucket = torch.bucketize(p, torch.tensor(SURPRISE_EDGES, device=p.device), right=True)
            bucket[:, :prompt_len] = PROMPT_BUCKET  # prompt tokens (and left padding): π₀ was never trained on them
        emb = self.backbone.get_input_embeddings()(input_ids) + self.surprise_embed(bucket)
        if self.history_count_embed is not None:
            count, low = surprise_history(p, prompt_len)
            emb = emb + self.history_count_embed(count) + self.history_min_embed(low)
        out = self.backbone(inputs_embeds=emb, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state

    @property
    def has_history(self) -> bool:
        return self.history_count_embed is not None

    def _input_embeddings(self) -> list[tuple[str, nn.Embedding]]:
        """The learned input embeddings this critic has beyond its backbone (saved with its head)."""
        names = ("surprise_embed", "history_count_embed", "history_min_embed")
        return [(n, getattr(self, n)) for n in names if getattr(self, n) is not None]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, *, prompt_len: int | None = None) -> torch.Tensor:
        """Values V(prefix up to and including token l) for every position.

        Args:
            input_ids [B, L] int64, attention_mask [B, L] {0,1}, position_ids [B, L] (optional;
            default cumsum(mask) - 1 clamped at 0, so left padding does not shift positions),
            prompt_len (the leading prompt columns; see :meth:`hidden_states`).
        Returns:
            values [B, L] float32; positions where attention_mask is 0 hold 0.
        """
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        h = self.hidden_states(input_ids, attention_mask, position_ids, prompt_len=prompt_len)
        v = self.value_head(h).squeeze(-1).float()
        return torch.where(attention_mask.bool(), v, torch.zeros_like(v))

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` + ``model.safetensors`` (the backbone, HF format),
        ``value_head.safetensors`` and ``critic.json`` into ``directory`` (created if needed)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(d)
        head = {k: v.detach().contiguous().cpu() for k, v in self.value_head.state_dict().items()}
        for name, emb in self._input_embeddings():
            head[f"{name}.weight"] = emb.weight.detach().contiguous().cpu()
        if self.surprise_policy is not None:
            self.surprise_policy.save_pretrained(d / SURPRISE_DIR)
        save_file(head, str(d / HEAD_FILE))
        dtype = str(next(self.backbone.parameters()).dtype).removeprefix("torch.")
        (d / META_FILE).write_text(json.dumps({"format": CRITIC_FORMAT, "hidden_size": self.config.hidden_size,
                                               "backbone_class": type(self.backbone).__name__, "dtype": dtype,
                                               "gradient_checkpointing": _checkpointing(self.backbone),
                                               "surprise": self.surprise_embed is not None,
                                               "surprise_history": self.has_history}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Critic:
        """Load a critic written by :meth:`save_pretrained` (in the dtype it was saved in)."""
        d = Path(directory)
        missing = [f for f in ("config.json", HEAD_FILE, META_FILE) if not (d / f).is_file()]
        if not d.is_dir() or missing:
            raise VapoError(f"{d} is not a saved critic (missing: {', '.join(missing) if d.is_dir() else 'the directory'})",
                            where="Critic.from_pretrained", fix="pass a directory written by Critic.save_pretrained")
        meta = json.loads((d / META_FILE).read_text())
        if meta.get("format") in OLD_FORMATS and meta.get("surprise"):
            raise VapoError(f"{d} holds a critic with the surprise input saved in the old format {meta['format']!r}, "
                            "whose input bucketed prompt tokens by the warm start's probability",
                            where="Critic.from_pretrained", fix="re-run value pretraining (vapo train) to get a critic in the current format")
        if meta.get("format") != CRITIC_FORMAT and meta.get("format") not in OLD_FORMATS:
            raise VapoError(f"unknown critic format {meta.get('format')!r} in {d / META_FILE}",
                            where="Critic.from_pretrained", fix=f"expected {CRITIC_FORMAT!r}; re-save the critic")
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(meta.get("dtype", "float32"), torch.float32)
        try:
            backbone = AutoModel.from_pretrained(d, dtype=dtype, attn_implementation="sdpa")
        except Exception as e:
            raise VapoError(f"could not load the critic backbone from {d}: {type(e).__name__}: {e}",
                            where="Critic.from_pretrained", fix="re-save the critic with Critic.save_pretrained") from e
        if meta.get("gradient_checkpointing"):
            enable_checkpointing(backbone)
        surprise_policy = None
        if meta.get("surprise"):
            surprise_policy = load_policy(d / SURPRISE_DIR)
        critic = cls(backbone, zero_init=True, surprise_policy=surprise_policy, history=bool(meta.get("surprise_history")))
        head = load_file(str(d / HEAD_FILE))
        for name, emb in critic._input_embeddings():
            emb.weight.data.copy_(head.pop(f"{name}.weight"))
        critic.value_head.load_state_dict(head)
        return critic.eval()
