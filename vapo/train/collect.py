"""Rollout → score: the one path from a policy and problems to a scored :class:`Experience`.

Training (``Trainer.sample_and_score``), evaluation (``evaluate_split``), the diagnostics'
regenerated batches (``generate_batch``) and the Monte-Carlo value probe (``mc_values``) all call
:func:`rollout_and_score`, and every verifier call goes through :func:`score_batch`: the
distribution the diagnostics measure is the one training samples from, by construction.
Problems are drawn with :func:`vapo.tasks.sample_problems` everywhere.

Every verifier call is guarded (:class:`vapo.tasks.guard.GuardedVerifier`): a verifier that
raises, hangs past ``settings.verify_timeout`` or returns a non-number gives that answer reward 0.
Each scored row carries the kind of its fault, if any (``Experience.reward_fault``: 0 = none, else
1 + its index in :data:`vapo.tasks.guard.FAULT_KINDS`); :func:`fault_counts` turns rows into the
``reward_faults_<kind>`` metrics, and the trainer counts every row it scored in an iteration (with
dynamic sampling, the dropped groups too). The first example of each kind is logged once per task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from vapo.algos.shaping import overlong_penalty
from vapo.config import OverlongConfig, TaskConfig
from vapo.errors import VapoError
from vapo.models import decode_responses, encode_prompts
from vapo.rollout import sample
from vapo.tasks.guard import FAULT_KINDS, GuardedVerifier
from vapo.train.batch import Experience, pad_left, pad_right

# Fault kinds already logged, per task name: one example of each kind per task and process.
_LOGGED: dict[str, set[str]] = {}


@dataclass(frozen=True)
class RewardSettings:
    """How responses are sampled and scored (the value V^π of a state depends on all of these).

    temperature, top_p: the sampling distribution (vapo.rollout.sample; temperature 0 = greedy).
    max_new_tokens: L_max; a response that reaches it without EOS is truncated.
    overlong: add the soft overlong punishment to the task score (L_cache = overlong_cache_len).
    verify_timeout: seconds one verifier call may take (the config's ``task.verify_timeout``).
    """

    temperature: float
    top_p: float
    max_new_tokens: int
    overlong: bool = False
    overlong_cache_len: int = OverlongConfig.model_fields["cache_len"].default
    verify_timeout: float = TaskConfig.model_fields["verify_timeout"].default

    @classmethod
    def from_config(cls, cfg: Any) -> RewardSettings:
        """The training rollout's settings of a :class:`vapo.config.Config`."""
        return cls(
            temperature=float(cfg.rollout.temperature), top_p=float(cfg.rollout.top_p),
            max_new_tokens=int(cfg.rollout.max_new_tokens), overlong=bool(cfg.algo.overlong.enabled),
            overlong_cache_len=int(cfg.algo.overlong.cache_len), verify_timeout=float(cfg.task.verify_timeout),
        )


class Scored(NamedTuple):
    """What :func:`score_batch` returns: scores [B] float32, correct [B] bool, and fault [B] long
    (0 = the verifier answered, else 1 + the index of its fault kind in FAULT_KINDS)."""

    scores: torch.Tensor
    correct: torch.Tensor
    fault: torch.Tensor


def fault_counts(fault: torch.Tensor) -> dict[str, int]:
    """Metrics of the fault column of scored rows (``Scored.fault`` or ``Experience.reward_fault``):
    ``reward_faults`` (all kinds) and ``reward_faults_<kind>``, zeros included."""
    n = torch.bincount(fault.long().flatten(), minlength=len(FAULT_KINDS) + 1).tolist()
    return {"reward_faults": sum(n[1:]), **{f"reward_faults_{k}": n[i + 1] for i, k in enumerate(FAULT_KINDS)}}


def score_batch(task: Any, problems: Sequence[Any], texts: Sequence[str], lengths: torch.Tensor,
                settings: RewardSettings) -> Scored:
    """The reward of finished responses: the task's verifier score, plus the overlong penalty
    when ``settings.overlong`` (docs/algorithms.md, overlong shaping). Every verifier call of
    the project goes through here, guarded: a call that raises, takes longer than
    ``settings.verify_timeout`` seconds or returns a non-number scores 0 and its row's ``fault``
    says which kind of fault it was.

    Args: problems, texts: B each; lengths [B] int response lengths (EOS included).
    Returns: :class:`Scored` (scores, correct, fault).
    """
    guard = GuardedVerifier(task, timeout_s=settings.verify_timeout)
    guard.logged = _LOGGED.setdefault(str(getattr(task, "name", type(task).__name__)), set())
    rewards = guard.score_batch(list(zip(problems, texts, strict=True)))
    fault = torch.tensor([0 if k is None else 1 + FAULT_KINDS.index(k) for k in guard.last_kinds], dtype=torch.long)
    scores = torch.tensor([float(r.score) for r in rewards], dtype=torch.float32)
    if settings.overlong:
        scores = scores + overlong_penalty(lengths.cpu(), settings.max_new_tokens, settings.overlong_cache_len)
    return Scored(scores, torch.tensor([bool(r.correct) for r in rewards], dtype=torch.bool), fault)


def _encode_with_prefixes(tokenizer: Any, problems: Sequence[Any],
                          prefixes: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded [b, P'] ids and mask of each problem's prompt, followed by its response prefix."""
    ids, mask = encode_prompts(tokenizer, [p.prompt for p in problems])
    if prefixes is None:
        return ids, mask
    seqs = [torch.cat([ids[i][mask[i].bool()], prefixes[i].long()]) for i in range(len(problems))]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = s
        mask[i, width - len(s):] = 1
    return ids, mask


@torch.no_grad()
def rollout_and_score(policy: Any, tokenizer: Any, task: Any, problems: Sequence[Any], settings: RewardSettings, *,
                      generator: torch.Generator, group_size: int = 1, chunk: int | None = None,
                      prefixes: Sequence[torch.Tensor] | None = None) -> Experience:
    """Sample ``group_size`` answers to each of ``problems`` with ``policy`` and score them.

    Args:
        policy: a causal LM (its device is used; its mode is not changed).
        problems: n problems; the batch has B = n·group_size rows, rows i·G .. i·G+G−1 answer
            problem i (``group_index``).
        settings: sampling distribution, L_max and reward shaping.
        generator: the random stream of the draws (consumed in row order).
        chunk: at most this many rows per sampler call (None = one call).
        prefixes: optional B response prefixes ([t_i] long each, t_i < L_max): each row then
            continues its prefix with at most L_max − t_i new tokens, and the scored response is
            prefix ⊕ continuation (the Monte-Carlo value probe). One sampler call per ``chunk``
            rows with max_new_tokens = the chunk's largest remaining budget.
    Returns:
        :class:`Experience` on CPU with prompt/response tensors, lengths, truncated, scores
        (float32), correct, sizes, group_index and problems filled, and ``old_logprobs``: the
        sampler's log π(y_t | ·) [B, T] under the distribution sampled from (None with prefixes).
    """
    flat = [p for p in problems for _ in range(group_size)]
    if not flat:
        raise VapoError("no problems to answer", where="rollout_and_score(problems=...)", fix="pass at least one problem")
    if prefixes is not None and len(prefixes) != len(flat):
        raise VapoError(f"{len(prefixes)} prefixes for {len(flat)} rows", where="rollout_and_score(prefixes=...)",
                        fix="pass one prefix per row (len(problems) × group_size)")
    if prefixes is not None and any(len(x) >= settings.max_new_tokens for x in prefixes):
        raise VapoError("a prefix leaves no token of budget", where="rollout_and_score(prefixes=...)",
                        fix=f"prefixes must be shorter than max_new_tokens={settings.max_new_tokens}")
    device = next(policy.parameters()).device
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    step = chunk or len(flat)
    parts: list[dict[str, torch.Tensor]] = []
    for s in range(0, len(flat), step):
        rows = flat[s : s + step]
        pre = None if prefixes is None else prefixes[s : s + step]
        ids, mask = _encode_with_prefixes(tokenizer, rows, pre)
        if pre is None:
            max_new = settings.max_new_tokens
        else:
            budget = torch.tensor([settings.max_new_tokens - len(x) for x in pre], dtype=torch.long)
            max_new = int(budget.max())
        ro = sample(policy, ids.to(device), mask.to(device), max_new_tokens=max_new, temperature=settings.temperature,
                    top_p=settings.top_p, eos_token_id=eos, pad_token_id=pad, generator=generator).to("cpu")
        part = {"prompt_ids": ro.prompt_ids, "prompt_mask": ro.prompt_mask, "response_ids": ro.response_ids,
                "lengths": ro.lengths, "truncated": ro.truncated, "logprobs": ro.logprobs}
        if pre is not None:
            # Each continuation may use only its own remaining budget L_max − t: cut it there; the
            # response is the prefix followed by the continuation.
            cont_len = torch.minimum(ro.lengths, budget)
            full = [torch.cat([x.long(), ro.response_ids[j, : int(cont_len[j])]]) for j, x in enumerate(pre)]
            lengths = torch.tensor([len(x) for x in full], dtype=torch.long)
            resp = torch.full((len(full), max(int(lengths.max()), 1)), pad, dtype=torch.long)
            for j, x in enumerate(full):
                resp[j, : len(x)] = x
            part.update(prompt_ids=None, prompt_mask=None, response_ids=resp, lengths=lengths,
                        truncated=ro.truncated | (ro.lengths > budget))
        parts.append(part)
    if prefixes is not None:  # the batch's prompts are the problems' own, without the prefixes
        p_ids, p_mask = encode_prompts(tokenizer, [p.prompt for p in flat])
    else:
        P = max(p["prompt_ids"].shape[1] for p in parts)
        p_ids = torch.cat([pad_left(p["prompt_ids"], P, pad) for p in parts])
        p_mask = torch.cat([pad_left(p["prompt_mask"], P, 0) for p in parts])
    T = max(p["response_ids"].shape[1] for p in parts)
    response_ids = torch.cat([pad_right(p["response_ids"], T, pad) for p in parts])
    lengths = torch.cat([p["lengths"] for p in parts])
    # The sampler's own log-probs are the old policy's only where every token was sampled here.
    old_logprobs = None if prefixes is not None else torch.cat([pad_right(p["logprobs"], T, 0) for p in parts])
    texts = decode_responses(tokenizer, response_ids, lengths)
    scores, correct, fault = score_batch(task, flat, texts, lengths, settings)
    return Experience(
        prompt_ids=p_ids, prompt_mask=p_mask, response_ids=response_ids,
        response_mask=(torch.arange(T)[None] < lengths[:, None]).float(), lengths=lengths,
        truncated=torch.cat([p["truncated"] for p in parts]), scores=scores, correct=correct,
        sizes=torch.tensor([p.size for p in flat]), group_index=torch.arange(len(problems)).repeat_interleave(group_size),
        problems=flat, old_logprobs=old_logprobs, reward_fault=fault,
    )


__all__ = ["RewardSettings", "Scored", "fault_counts", "rollout_and_score", "score_batch"]
