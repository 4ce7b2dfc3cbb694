"""Batched sampling of responses from a causal LM: the rollout stage of the RL loop.

    prompts (left-padded) ──▶ sample ──▶ Rollout(response ids, sampling log-probs, masks, lengths)

For every prompt x the sampler draws y_0, y_1, ... with y_t ~ π(· | x, y_<t) (temperature and
top-p as in :mod:`vapo.rollout.sampling`) until it emits the end-of-sequence token (kept, with
mask 1) or has produced ``max_new_tokens`` tokens (then ``truncated`` is True). The recorded
``logprobs`` are log π(y_t | ·) under the distribution actually sampled from: the "old" policy
log-probs π_old of the PPO ratio (VAPO §2 Eq. 1; DAPO Eq. 8), exact when τ = 1 and p = 1.

Two engines compute the logits, chosen by ``backend``:

* ``"fast"`` (:class:`vapo.rollout.fast.FastDecoder`): Qwen2/Llama models, static KV cache, and
  compaction: finished rows leave the batch, so a batch whose answers have very different lengths
  costs the sum of its lengths rather than batch × longest.
* ``"hf"``: any Hugging Face causal LM, through its own ``forward`` with ``past_key_values``.
* ``"auto"`` (default): "fast" when the model supports it, else "hf".

Both use position ids cumsum(mask) − 1, as ``vapo.models.forward`` does when it recomputes
log-probs, so the two agree to float precision at τ = 1, p = 1.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import torch

from vapo.errors import VapoError
from vapo.models import decode_responses, encode_prompts
from vapo.rollout.fast import FastDecoder, fast_path_unsupported_reason
from vapo.rollout.sampling import draw

BACKENDS = ("auto", "fast", "hf")
logger = logging.getLogger("vapo.rollout")
_NOTED: set[tuple[str, str]] = set()


def describe_engine(model: Any) -> str:
    """Which engine ``backend="auto"`` uses for ``model``, in words (for the run's log)."""
    reason = fast_path_unsupported_reason(model)
    if reason is None:
        return "fast sampler (static KV cache, batch compaction)"
    return f"Hugging Face forward with its KV cache (fast sampler unsupported: {reason})"


def _note_fallback(model: Any, reason: str) -> None:
    """Say once per model type and reason that sampling falls back to the generic engine."""
    key = (str(getattr(getattr(model, "config", None), "model_type", None)), reason)
    if key not in _NOTED:
        _NOTED.add(key)
        logger.warning("rollout: %s", describe_engine(model))


@dataclass
class Rollout:
    """Sampled responses of a batch of prompts (``B`` rows, ``P`` prompt and ``T`` response columns).

    Attributes:
        prompt_ids [B, P] int64: the prompts as given (left-padded).
        prompt_mask [B, P] int64: 1 on real prompt tokens, 0 on padding.
        response_ids [B, T] int64: sampled tokens, right-padded with ``pad_token_id``; the EOS
            token is included when emitted. T = the longest response (≤ max_new_tokens).
        response_mask [B, T] int64: 1 on the response's tokens (EOS included), 0 on padding.
        logprobs [B, T] float32: log π(y_t | x, y_<t) under the sampling distribution; 0 where masked.
        lengths [B] int64: number of response tokens (= response_mask.sum(1), EOS included).
        truncated [B] bool: True when no EOS was emitted within max_new_tokens.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor

    def to(self, device: torch.device | str) -> Rollout:
        """The same rollout with every tensor on ``device``."""
        return Rollout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _check(model: Any, prompt_ids: Any, prompt_mask: Any, max_new_tokens: Any, temperature: Any, top_p: Any,
           eos_token_id: Any, pad_token_id: Any, backend: str) -> None:
    where = "vapo.rollout.sample"
    if not isinstance(prompt_ids, torch.Tensor) or not isinstance(prompt_mask, torch.Tensor):
        raise VapoError("prompt_ids and prompt_mask must be torch tensors", where=where,
                        fix="encode the prompts with vapo.models.encode_prompts")
    if prompt_ids.dim() != 2 or prompt_ids.shape != prompt_mask.shape or prompt_ids.numel() == 0:
        raise VapoError(f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} must both be "
                        "[B, P] with B, P ≥ 1", where=where, fix="encode the prompts with vapo.models.encode_prompts")
    if prompt_ids.dtype not in (torch.int64, torch.int32):
        raise VapoError(f"prompt_ids must be integer token ids, got {prompt_ids.dtype}", where=where,
                        fix="pass a torch.long tensor")
    m = prompt_mask.long()
    if ((m != 0) & (m != 1)).any():
        raise VapoError("prompt_mask must hold only 0 and 1", where=where, fix="pass the mask from encode_prompts")
    if (m.sum(1) == 0).any():
        raise VapoError("some prompts are empty (mask all 0)", where=where, fix="every prompt needs at least a BOS token")
    if (m[:, 1:] < m[:, :-1]).any():
        raise VapoError("prompts must be left-padded (padding, then tokens); found padding after a real token",
                        where=where, fix="use vapo.models.encode_prompts, which left-pads")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise VapoError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}", where=where,
                        fix="e.g. max_new_tokens=256")
    if not isinstance(temperature, int | float) or not temperature >= 0:
        raise VapoError(f"temperature must be ≥ 0, got {temperature!r}", where=where,
                        fix="use 1.0 to sample from the model, 0 for greedy decoding")
    if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
        raise VapoError(f"top_p must be in (0, 1], got {top_p!r}", where=where, fix="use 1.0 to disable nucleus sampling")
    if eos_token_id is not None and not isinstance(eos_token_id, int):
        raise VapoError(f"eos_token_id must be an int or None, got {eos_token_id!r}", where=where,
                        fix="pass tokenizer.eos_token_id")
    if not isinstance(pad_token_id, int):
        raise VapoError(f"pad_token_id must be an int, got {pad_token_id!r}", where=where, fix="pass tokenizer.pad_token_id")
    if backend not in BACKENDS:
        raise VapoError(f"unknown backend {backend!r}", where=where, fix=f"use one of: {', '.join(BACKENDS)}")
    if backend == "fast" and (reason := fast_path_unsupported_reason(model)) is not None:
        raise VapoError(f"the fast backend cannot run this model: {reason}", where=where,
                        fix="use backend='auto' or 'hf'")


def sample(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_id: int | None,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    backend: str = "auto",
) -> Rollout:
    """Sample one response per prompt.

    Args:
        model: a Hugging Face causal LM (its parameters' device is used; its train/eval mode and
            weights are not changed).
        prompt_ids [B, P] int64, left-padded; prompt_mask [B, P] {0,1} (1 on real tokens).
        max_new_tokens: at most this many response tokens (EOS included).
        temperature: τ ≥ 0; 0 = greedy (argmax; logprobs are the untempered log-softmax).
        top_p: nucleus mass p ∈ (0, 1]; 1 disables it.
        eos_token_id: the end token; None = never stop early (every response is max_new_tokens
            long and truncated).
        pad_token_id: fills response_ids after the end.
        generator: torch.Generator for reproducible draws (None = the global RNG).
        backend: "auto" | "fast" | "hf" (see the module docstring).
    Returns:
        :class:`Rollout` on the model's device; ``logprobs`` = log-prob of each sampled token under
        the temperature-scaled, top-p-renormalised distribution it was drawn from, 0 where masked.
    """
    _check(model, prompt_ids, prompt_mask, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id, backend)
    temperature, top_p = float(temperature), float(top_p)
    device = next(model.parameters()).device
    prompt_ids = prompt_ids.to(device=device, dtype=torch.long)
    prompt_mask = prompt_mask.to(device=device, dtype=torch.long)
    if backend == "auto":
        reason = fast_path_unsupported_reason(model)
        backend = "fast" if reason is None else "hf"
        if reason is not None:
            _note_fallback(model, reason)
    run = _sample_fast if backend == "fast" else _sample_hf
    with torch.inference_mode():
        ids, logp = run(model, prompt_ids, prompt_mask, max_new_tokens, temperature, top_p, eos_token_id, generator)
        return _finish(prompt_ids, prompt_mask, ids, logp, eos_token_id, pad_token_id)


def _finish(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, ids: torch.Tensor, logp: torch.Tensor,
            eos: int | None, pad: int) -> Rollout:
    """Cut every row after its first EOS: mask, lengths, truncation, padding, trimming to the longest.

    ``ids``/``logp`` [B, T0] hold the tokens drawn at every step (rows may continue past their EOS
    while they wait for compaction or for the batch to end; those tokens are discarded here).
    """
    B, T0 = ids.shape
    if eos is None:
        lengths = torch.full((B,), T0, dtype=torch.long, device=ids.device)
        truncated = torch.ones(B, dtype=torch.bool, device=ids.device)
    else:
        is_eos = ids == eos
        has = is_eos.any(1)
        lengths = torch.where(has, is_eos.int().argmax(1) + 1, T0).long()
        truncated = ~has
    T = max(int(lengths.max()), 1)
    mask = torch.arange(T, device=ids.device)[None] < lengths[:, None]
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask,
        response_ids=torch.where(mask, ids[:, :T], pad), response_mask=mask.long(),
        logprobs=torch.where(mask, logp[:, :T], 0.0), lengths=lengths, truncated=truncated,
    )


# Rows per thread below which a decoding step runs on one thread: a step of fewer rows is a few
# hundred microseconds of small kernels, and handing rows to another thread costs tens.
MIN_ROWS_PER_THREAD = 32


class _RowThreads:
    """Runs each decoding step's live rows as contiguous ranges on ``n`` threads, every kernel
    single-threaded (the calling thread takes the first range).

    A decoding step on a CPU is ~70 small kernels. PyTorch's intra-op threads split each kernel
    separately: a fork and a join per kernel, most of them too small to split at all, and when the
    cores are shared with other work a join waits for a thread that is not scheduled. Rows of a
    step are independent (each has its own cache rows), so here each thread runs whole steps of
    its own rows: one hand-off per step. The caller's intra-op thread count is set to 1 while this
    object is open and restored by :meth:`close`.
    """

    def __init__(self, dec: FastDecoder, n: int):
        self.dec, self.n = dec, n
        self.saved = torch.get_num_threads()
        torch.set_num_threads(1)
        self.pool = ThreadPoolExecutor(n - 1, thread_name_prefix="vapo-rollout", initializer=torch.set_num_threads,
                                       initargs=(1,))

    def _rows(self, tokens: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        with torch.inference_mode():
            return self.dec.forward_rows(tokens, lo, hi)

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        b = tokens.shape[0]
        n = min(self.n, b // MIN_ROWS_PER_THREAD)
        if n <= 1:
            return self.dec.step(tokens)
        cut = [b * i // n for i in range(n + 1)]
        futures = [self.pool.submit(self._rows, tokens, cut[i], cut[i + 1]) for i in range(1, n)]
        try:
            first = self.dec.forward_rows(tokens, 0, cut[1])
        finally:
            rest = [f.result() for f in futures]  # wait for every range, even if this one failed
        self.dec.advance()
        return torch.cat([first, *rest])

    def close(self) -> None:
        self.pool.shutdown()
        torch.set_num_threads(self.saved)


def _sample_fast(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, T: int, temperature: float,
                 top_p: float, eos: int | None, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast engine. Returns ids [B, T] and logprobs [B, T] of every step (unfinished columns of
    rows that ended early hold garbage that :func:`_finish` masks).

    On a CPU with ``torch.get_num_threads()`` = n > 1 and at least 2 × MIN_ROWS_PER_THREAD rows,
    the decoding steps run row ranges on n threads (:class:`_RowThreads`); the draws stay in one
    thread, in the same order, so the tokens for a given generator do not depend on n."""
    B = prompt_ids.shape[0]
    dev = prompt_ids.device
    dec = FastDecoder(model, T)
    logits = dec.prefill(prompt_ids, prompt_mask)
    threads = torch.get_num_threads() if dev.type == "cpu" else 1
    runner = _RowThreads(dec, threads) if threads > 1 and B >= 2 * MIN_ROWS_PER_THREAD and T > 1 else None
    try:
        return _decode(dec, runner, logits, B, T, temperature, top_p, eos, generator)
    finally:
        if runner is not None:
            runner.close()


def _decode(dec: FastDecoder, runner: _RowThreads | None, logits: torch.Tensor, B: int, T: int, temperature: float,
            top_p: float, eos: int | None, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    dev = logits.device
    step = dec.step if runner is None else runner.step
    out_ids = torch.zeros(B, T, dtype=torch.long, device=dev)
    out_lp = torch.zeros(B, T, dtype=torch.float32, device=dev)
    rows = torch.arange(B, device=dev)  # original index of each live row
    # Per-live-row buffers, written with cheap column slices and flushed to out_* on compaction.
    buf_ids, buf_lp = out_ids.clone(), out_lp.clone()
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    t = 0
    while True:
        tok, lp = draw(logits, temperature, top_p, generator)
        buf_ids[:, t] = tok
        buf_lp[:, t] = lp
        t += 1
        if t == T:
            break
        if eos is not None:
            done |= tok == eos
            n_done = int(done.sum())
            b = done.shape[0]
            if n_done == b:
                break
            # Compact once at least 1/8 of the live rows have finished: each compaction copies the
            # cache, so shrinking geometrically keeps the total copy cost O(one cache).
            if n_done * 8 >= b:
                out_ids[rows] = buf_ids
                out_lp[rows] = buf_lp
                keep = (~done).nonzero().squeeze(1)
                rows, buf_ids, buf_lp = rows[keep], buf_ids[keep], buf_lp[keep]
                tok, done = tok[keep], done[keep]
                dec.keep(keep)
        logits = step(tok)
    out_ids[rows] = buf_ids
    out_lp[rows] = buf_lp
    return out_ids, out_lp


def _sample_hf(model: Any, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, T: int, temperature: float,
               top_p: float, eos: int | None, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The generic engine: the model's own forward with its KV cache (``past_key_values``), all rows
    to the end (no compaction). Returns ids [B, T'] and logprobs [B, T'], T' ≤ T."""
    # transformers ≥ 5 names the KV-cache argument ``cache``; older models ``past_key_values``.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    mask = prompt_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=pos, use_cache=True)
    ones = torch.ones(mask.shape[0], 1, dtype=mask.dtype, device=mask.device)
    next_pos = pos[:, -1:] + 1
    done = torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    ids, lps = [], []
    for t in range(T):
        tok, lp = draw(out.logits[:, -1], temperature, top_p, generator)
        ids.append(tok)
        lps.append(lp)
        if eos is not None:
            done |= tok == eos
            if bool(done.all()):
                break
        if t == T - 1:
            break
        mask = torch.cat([mask, ones], 1)
        cache = getattr(out, "cache", None)
        cache = out.past_key_values if cache is None else cache
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True,
                    **{cache_arg: cache})
        next_pos = next_pos + 1
    return torch.stack(ids, 1), torch.stack(lps, 1)


def sample_texts(model: Any, tokenizer: Any, prompts: Sequence[str], **kwargs: Any) -> tuple[Rollout, list[str]]:
    """Encode ``prompts`` (BOS + text, left-padded), :func:`sample`, and decode the responses.

    ``kwargs`` go to :func:`sample`; ``eos_token_id`` and ``pad_token_id`` default to the tokenizer's.
    Returns the rollout and one text per prompt (cut at EOS, special tokens dropped).
    """
    kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    if "max_new_tokens" not in kwargs:
        raise VapoError("sample_texts needs max_new_tokens", where="vapo.rollout.sample_texts", fix="e.g. max_new_tokens=128")
    ids, mask = encode_prompts(tokenizer, prompts)
    ro = sample(model, ids, mask, **kwargs)
    return ro, decode_responses(tokenizer, ro.response_ids, ro.lengths)
