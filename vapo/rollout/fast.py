"""A lean decoder for Qwen2/Llama-architecture Hugging Face models, with a static KV cache.

On a CPU with a ~1M-parameter policy and batch 256, a generation step costs little arithmetic:
the time goes to per-step dispatch (cache objects, mask construction, logits processors, hooks).
This module runs the *same* network, reading the model's own weight tensors (no copy of the
parameters, except the concatenated q/k/v and gate/up projections built once per call), with:

* a preallocated cache ``[layers, 2 (k/v), b, kv_heads, P + T, head_dim]`` written in place;
  since prompts are left-padded to the same width P and every row advances in lockstep, the
  token of step t always goes to column P + t for all rows;
* grouped-query attention without repeating K/V: the ``n_rep`` query heads that share a KV head
  are the rows of one small attention ``q [b·kv_heads, n_rep, d]`` (two batched matmuls);
* rotary tables gathered once per row for every future step (positions ``len(prompt) + t``),
  so a step slices them instead of recomputing cos/sin;
* batch compaction: :meth:`FastDecoder.keep` drops finished rows from the cache and state;
* row ranges: :meth:`FastDecoder.forward_rows` runs one step for a contiguous range of rows, so
  that disjoint ranges can run in parallel threads (the sampler does so on a multi-core CPU).

Positions follow the project contract (``vapo.models.forward``): position = cumsum(mask) − 1,
so a prompt's left padding does not shift its positions, and the log-probs recomputed by a
teacher-forced forward equal the sampling ones.

The transformer is the one of Qwen2 (Bai et al. 2023) / Llama (Touvron et al. 2023): pre-norm
RMSNorm blocks, RoPE attention (Su et al. 2021), SwiGLU MLP, final RMSNorm and LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

SUPPORTED_MODEL_TYPES = ("qwen2", "llama")


def fast_path_unsupported_reason(model: Any) -> str | None:
    """None when :class:`FastDecoder` can run ``model`` exactly, else why not (one sentence)."""
    cfg = getattr(model, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        return f"model_type {mtype!r} is not one of {SUPPORTED_MODEL_TYPES}"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"hidden_act {getattr(cfg, 'hidden_act', None)!r} is not 'silu'"
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or ["full_attention"])):
        return "the model has sliding-window attention layers"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") in ("dynamic", "longrope"):
        return f"rope_type {rope.get('rope_type')!r} depends on the sequence length"
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1"
    if any(hasattr(m, "lora_A") for m in model.modules()):
        return "the model has LoRA adapters (the fast sampler reads the base weights only)"
    base = getattr(model, "model", None)
    need = ("embed_tokens", "layers", "norm", "rotary_emb")
    if base is None or not all(hasattr(base, n) for n in need) or model.get_output_embeddings() is None:
        return "the model does not have the Qwen2/Llama module layout (model.embed_tokens/layers/norm, lm_head)"
    return None


@dataclass
class _Layer:
    ln1: torch.Tensor  # [H]
    ln1_eps: float
    w_qkv: torch.Tensor  # [(Hq + 2 Hkv) d, H]
    b_qkv: torch.Tensor | None
    w_o: torch.Tensor  # [H, Hq d]
    b_o: torch.Tensor | None
    ln2: torch.Tensor
    ln2_eps: float
    w_gu: torch.Tensor  # [2 I, H]: gate rows then up rows
    b_gu: torch.Tensor | None
    w_d: torch.Tensor  # [H, I]
    b_d: torch.Tensor | None


def _cat_bias(*linears: Any) -> torch.Tensor | None:
    if all(lin.bias is None for lin in linears):
        return None
    return torch.cat([lin.bias if lin.bias is not None else torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                                                          device=lin.weight.device)
                      for lin in linears])


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as in Qwen2RMSNorm/LlamaRMSNorm: statistics in float32, then cast back, then scale.
    (float32: PyTorch's fused kernel, which computes exactly this; other dtypes: step by step.)"""
    if x.dtype == torch.float32 and w.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), w, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor, half: int) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, with rotate_half(x) = [−x₂, x₁] written as roll(x)·[−1…, +1…]
    (the sign folded into ``sin_signed``). x [..., heads, d]; cos, sin_signed broadcast to it."""
    return torch.addcmul(x * cos, x.roll(half, -1), sin_signed)


class FastDecoder:
    """Incremental decoding of a Qwen2/Llama ``*ForCausalLM`` with a static KV cache.

    Usage: ``logits = dec.prefill(prompt_ids, prompt_mask)`` then, for t = 0, 1, ...,
    ``logits = dec.step(tokens)`` where ``tokens`` [b] is the token at response position t;
    ``dec.keep(index)`` keeps only the rows ``index`` (compaction). All under
    ``torch.inference_mode()`` (the caller's job); the model is not modified.
    """

    def __init__(self, model: Any, max_new_tokens: int):
        reason = fast_path_unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"FastDecoder cannot run this model: {reason}")
        cfg, base = model.config, model.model
        attn0 = base.layers[0].self_attn
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = attn0.head_dim
        self.n_rep = self.n_heads // self.n_kv
        self.scale = attn0.scaling
        self.max_new_tokens = max_new_tokens
        self.embed = base.embed_tokens.weight
        self.dtype = self.embed.dtype
        self.device = self.embed.device
        lm = model.get_output_embeddings()
        self.w_lm, self.b_lm = lm.weight, lm.bias
        self.norm, self.norm_eps = base.norm.weight, base.norm.variance_epsilon
        self.rotary = base.rotary_emb
        self.layers = []
        for layer in base.layers:
            a, m = layer.self_attn, layer.mlp
            self.layers.append(_Layer(
                ln1=layer.input_layernorm.weight, ln1_eps=layer.input_layernorm.variance_epsilon,
                w_qkv=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                b_qkv=_cat_bias(a.q_proj, a.k_proj, a.v_proj), w_o=a.o_proj.weight, b_o=a.o_proj.bias,
                ln2=layer.post_attention_layernorm.weight, ln2_eps=layer.post_attention_layernorm.variance_epsilon,
                w_gu=torch.cat([m.gate_proj.weight, m.up_proj.weight]), b_gu=_cat_bias(m.gate_proj, m.up_proj),
                w_d=m.down_proj.weight, b_d=m.down_proj.bias,
            ))
        self.inter = self.layers[0].w_gu.shape[0] // 2

    # ------------------------------------------------------------------ rotary tables
    def _rope_table(self, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos [n_pos, d] and sin with the rotate_half sign folded in, from the model's own rotary
        module (so any static RoPE variant and its attention scaling are reproduced)."""
        pos = torch.arange(n_pos, device=self.device)[None]
        cos, sin = self.rotary(self.embed[:1][None], pos)
        cos, sin = cos[0], sin[0]
        half = self.head_dim // 2
        sign = torch.ones(self.head_dim, dtype=sin.dtype, device=sin.device)
        sign[:half] = -1
        return cos, sin * sign

    # ------------------------------------------------------------------ prefill
    def prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """Run the left-padded prompts [B, P], fill the cache, return next-token logits [B, V]
        (float in the model's dtype) at the last column (every prompt ends there)."""
        B, P = prompt_ids.shape
        T = self.max_new_tokens
        L = P + T
        mask = prompt_mask.bool()
        plen = mask.sum(-1)  # [B]
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, P], contract: cumsum(mask) − 1
        cos_t, sin_t = self._rope_table(int(plen.max()) + T + 1)
        half = self.head_dim // 2
        # Per row, the rotary rows of the response positions plen + t, t = 0..T-1 (sliced by step).
        resp_pos = plen[:, None] + torch.arange(T, device=self.device)[None]
        self.cos_r = cos_t[resp_pos][:, :, None, :]  # [B, T, 1, d]
        self.sin_r = sin_t[resp_pos][:, :, None, :]
        cos_p, sin_p = cos_t[pos][:, :, None, :], sin_t[pos][:, :, None, :]  # [B, P, 1, d]

        self.cache = torch.empty((len(self.layers), 2, B, self.n_kv, L, self.head_dim), dtype=self.dtype,
                                 device=self.device)
        # Additive key mask for decoding: −inf on the prompt's padding columns, 0 elsewhere.
        key_ok = torch.cat([mask, torch.ones(B, T, dtype=torch.bool, device=self.device)], 1)
        self.key_bias = torch.zeros(B, self.n_kv, 1, L, dtype=self.dtype, device=self.device).masked_fill_(
            ~key_ok[:, None, None, :], float("-inf"))  # [B, Hkv, 1, L]
        # Prefill mask: causal ∧ key is real; a padding query may see itself (its output is never
        # used by a real token, this only keeps its softmax finite).
        causal = torch.ones(P, P, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=self.device)
        attn_mask = ((causal[None] & mask[:, None, :]) | eye[None])[:, None]  # [B, 1, P, P]

        Hq, Hkv, d = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(prompt_ids, self.embed)  # [B, P, H]
        for li, ly in enumerate(self.layers):
            h = _rms(x, ly.ln1, ly.ln1_eps)
            qkv = F.linear(h, ly.w_qkv, ly.b_qkv).view(B, P, Hq + 2 * Hkv, d)
            qk = _rope(qkv[:, :, : Hq + Hkv], cos_p, sin_p, half)
            q = qk[:, :, :Hq].transpose(1, 2)  # [B, Hq, P, d]
            k = qk[:, :, Hq:].transpose(1, 2)  # [B, Hkv, P, d]
            v = qkv[:, :, Hq + Hkv :].transpose(1, 2)
            self.cache[li, 0, :, :, :P] = k
            self.cache[li, 1, :, :, :P] = v
            if self.n_rep > 1:
                k = k.repeat_interleave(self.n_rep, dim=1)
                v = v.repeat_interleave(self.n_rep, dim=1)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
            x = x + F.linear(o.transpose(1, 2).reshape(B, P, Hq * d), ly.w_o, ly.b_o)
            x = x + self._mlp(_rms(x, ly.ln2, ly.ln2_eps), ly)
        self.P = P
        self.t = 0
        return self._logits(x[:, -1])

    def _mlp(self, h: torch.Tensor, ly: _Layer) -> torch.Tensor:
        gu = F.linear(h, ly.w_gu, ly.b_gu)
        return F.linear(F.silu(gu[..., : self.inter]) * gu[..., self.inter :], ly.w_d, ly.b_d)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_rms(x, self.norm, self.norm_eps), self.w_lm, self.b_lm)

    # ------------------------------------------------------------------ one decoding step
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed response token t (``tokens`` [b], one per live row), return the logits [b, V] of
        token t + 1. Requires t < max_new_tokens."""
        logits = self.forward_rows(tokens, 0, tokens.shape[0])
        self.advance()
        return logits

    def forward_rows(self, tokens: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """The decoding step t for the live rows ``lo:hi`` only: ``tokens`` [b] holds every live
        row's token t (rows outside ``lo:hi`` are not read); writes those rows' keys and values at
        column P + t and returns their logits [hi − lo, V]. Disjoint row ranges touch disjoint
        memory, so they may run at the same time in different threads; :meth:`advance` ends the
        step once every row has been computed. (Each row's arithmetic is the same whatever the
        range: the rows of a step are independent.)"""
        b = hi - lo
        Hq, Hkv, d = self.n_heads, self.n_kv, self.head_dim
        col = self.P + self.t
        cos, sin = self.cos_r[lo:hi, self.t], self.sin_r[lo:hi, self.t]  # [b, 1, d]
        bias = self.key_bias[lo:hi].view(b * Hkv, 1, -1)[..., : col + 1]  # [b·Hkv, 1, col+1]
        half = d // 2
        x = F.embedding(tokens[lo:hi], self.embed)  # [b, H]
        for li, ly in enumerate(self.layers):
            h = _rms(x, ly.ln1, ly.ln1_eps)
            qkv = F.linear(h, ly.w_qkv, ly.b_qkv).view(b, Hq + 2 * Hkv, d)
            qk = _rope(qkv[:, : Hq + Hkv], cos, sin, half)
            kv = self.cache[li, :, lo:hi]  # [2, b, Hkv, L, d]: each row's block is contiguous
            kv[0, :, :, col] = qk[:, Hq:]
            kv[1, :, :, col] = qkv[:, Hq + Hkv :]
            k = kv[0].view(b * Hkv, -1, d)[:, : col + 1]  # [b·Hkv, col+1, d] (views of the cache)
            v = kv[1].view(b * Hkv, -1, d)[:, : col + 1]
            # GQA: the n_rep query heads of one KV head are the rows of one small attention
            # (query head j uses KV head j // n_rep, as in HF's repeat_kv), so K/V are never repeated.
            # softmax(q kᵀ · scale + key_bias) v, with two batched matmuls (faster than SDPA's CPU
            # kernels for a query length of n_rep).
            # The softmax runs in float32 and is cast back, as in HF's eager attention (a bf16/fp16
            # softmax over a long context loses the small weights); a no-op for float32 models.
            q = qk[:, :Hq].reshape(b * Hkv, self.n_rep, d)
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=self.scale)
            att = scores.softmax(-1, dtype=torch.float32).to(v.dtype)
            o = torch.bmm(att, v)  # [b·Hkv, n_rep, d]
            x = x + F.linear(o.view(b, Hq * d), ly.w_o, ly.b_o)
            x = x + self._mlp(_rms(x, ly.ln2, ly.ln2_eps), ly)
        return self._logits(x)

    def advance(self) -> None:
        """End the decoding step (every live row has been through :meth:`forward_rows`)."""
        self.t += 1

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the rows ``index`` [b'] (int64, into the current rows) of the cache and state."""
        filled = self.P + self.t  # columns written so far; the rest of the cache is never read yet
        cache = self.cache.new_empty((*self.cache.shape[:2], index.shape[0], *self.cache.shape[3:]))
        cache[..., :filled, :] = self.cache[..., :filled, :].index_select(2, index)
        self.cache = cache
        self.key_bias = self.key_bias.index_select(0, index)
        self.cos_r = self.cos_r.index_select(0, index)
        self.sin_r = self.sin_r.index_select(0, index)
