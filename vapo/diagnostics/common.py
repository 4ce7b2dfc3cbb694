"""Shared pieces of the diagnostics: the run's reward and sampling settings, regenerated batches,
length buckets and the small statistics (confidence intervals) every section reports.

Shapes follow docs/contracts.md: ``B`` responses, ``P`` prompt tokens (left-padded), ``T``
response tokens (right-padded), ``response_mask[i, t] = 1`` on real response tokens (EOS included).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vapo.errors import VapoError

Z95 = 1.959963984540054  # two-sided 95% normal quantile


# --------------------------------------------------------------------------------------------
# What a response is worth: the run's reward and sampling settings
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RewardSettings:
    """How the run sampled and scored: V^π depends on all of these.

    temperature, top_p: the rollout's sampling distribution (vapo.rollout.sampling).
    max_new_tokens: L_max; a response that reaches it without EOS is truncated.
    overlong: DAPO soft overlong punishment added to the task score (cache_len = L_cache).
    """

    temperature: float
    top_p: float
    max_new_tokens: int
    overlong: bool = False
    overlong_cache_len: int = 32

    @classmethod
    def from_config(cls, cfg: Any) -> RewardSettings:
        return cls(
            temperature=float(cfg.rollout.temperature), top_p=float(cfg.rollout.top_p),
            max_new_tokens=int(cfg.rollout.max_new_tokens), overlong=bool(cfg.algo.overlong.enabled),
            overlong_cache_len=int(cfg.algo.overlong.cache_len),
        )


def score_texts(task: Any, problems: list[Any], texts: list[str], lengths: torch.Tensor,
                settings: RewardSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's reward of finished responses: task score, plus the overlong penalty when the run
    used it (DAPO §3.4, eq. 13), exactly as the trainer scores a rollout.

    Args: problems and texts: B each; lengths [B] int response lengths (EOS included).
    Returns: scores [B] float64 and correct [B] bool.
    """
    rewards = [task.score(p, t) for p, t in zip(problems, texts, strict=True)]
    scores = torch.tensor([float(r.score) for r in rewards], dtype=torch.float64)
    if settings.overlong:
        from vapo.algos.shaping import overlong_penalty

        scores = scores + overlong_penalty(lengths.cpu().double(), settings.max_new_tokens, settings.overlong_cache_len)
    return scores, torch.tensor([bool(r.correct) for r in rewards])


# --------------------------------------------------------------------------------------------
# A regenerated batch: the run does not store its batches, so diagnostics draw a fresh one from
# the checkpoint's policy with the run's sampling settings (same distribution, new draws).
# --------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """G answers for each of n problems (B = n·G rows; rows i·G .. i·G+G−1 answer problem i).

    problems: B Problem objects (repeated G times each).
    prompt_ids [B, P] int64 left-padded; prompt_mask [B, P] int64.
    response_ids [B, T] int64 right-padded with pad; response_mask [B, T] float32 (1 incl. EOS).
    lengths [B] int64; truncated [B] bool; scores [B] float64 (run's reward); correct [B] bool;
    sizes [B] int64 (the task's length knob); group_index [B] int64.
    """

    problems: list[Any]
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    lengths: torch.Tensor
    truncated: torch.Tensor
    scores: torch.Tensor
    correct: torch.Tensor
    sizes: torch.Tensor
    group_index: torch.Tensor


@torch.no_grad()
def generate_batch(policy: Any, tokenizer: Any, task: Any, settings: RewardSettings, *, n_prompts: int,
                   group_size: int, seed: int, split: str = "train", chunk: int = 512) -> Batch:
    """Sample ``n_prompts`` problems of ``split`` (fixed by ``seed``) and ``group_size`` answers each
    with the run's temperature/top_p and L_max, and score them with the run's reward."""
    from vapo.models import decode_responses, encode_prompts
    from vapo.rollout import sample

    rng = random.Random(f"vapo-diagnose-{seed}-{split}")
    problems = [task.sample(rng, split) for _ in range(n_prompts)]
    flat = [p for p in problems for _ in range(group_size)]
    gen = torch.Generator().manual_seed(seed)
    device = next(policy.parameters()).device
    parts = []
    for s in range(0, len(flat), chunk):
        ids, mask = encode_prompts(tokenizer, [p.prompt for p in flat[s : s + chunk]])
        parts.append(sample(policy, ids.to(device), mask.to(device), max_new_tokens=settings.max_new_tokens,
                            temperature=settings.temperature, top_p=settings.top_p, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, generator=gen).to("cpu"))
    P = max(r.prompt_ids.shape[1] for r in parts)
    T = max(r.response_ids.shape[1] for r in parts)
    pad = tokenizer.pad_token_id

    def cat(name: str, left: bool, fill: int) -> torch.Tensor:
        out = []
        for r in parts:
            v = getattr(r, name)
            width = P if left else T
            v = torch.nn.functional.pad(v, (width - v.shape[1], 0) if left else (0, width - v.shape[1]), value=fill)
            out.append(v)
        return torch.cat(out)

    lengths = torch.cat([r.lengths for r in parts])
    response_ids = cat("response_ids", False, pad)
    texts = decode_responses(tokenizer, response_ids, lengths)
    scores, correct = score_texts(task, flat, texts, lengths, settings)
    return Batch(
        problems=flat, prompt_ids=cat("prompt_ids", True, pad), prompt_mask=cat("prompt_mask", True, 0),
        response_ids=response_ids, response_mask=cat("response_mask", False, 0).float(), lengths=lengths,
        truncated=torch.cat([r.truncated for r in parts]), scores=scores, correct=correct,
        sizes=torch.tensor([p.size for p in flat]), group_index=torch.arange(n_prompts).repeat_interleave(group_size),
    )


# --------------------------------------------------------------------------------------------
# Length buckets: quarters of L_max, so that runs with the same L_max are comparable
# --------------------------------------------------------------------------------------------
def length_edges(max_new_tokens: int, n: int = 4) -> list[int]:
    """Bucket edges [e_0 = 0, ..., e_n = L_max]; bucket j holds lengths in (e_j, e_{j+1}]."""
    edges = sorted({0, *(round(max_new_tokens * j / n) for j in range(1, n)), max_new_tokens})
    return edges


def bucket_labels(edges: list[int]) -> list[str]:
    return [f"{a + 1}–{b}" for a, b in zip(edges[:-1], edges[1:], strict=True)]


def bucket_of(lengths: torch.Tensor | np.ndarray, edges: list[int]) -> np.ndarray:
    """Bucket index [B] int of each length (lengths above L_max fall in the last bucket)."""
    ln = np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths)
    return np.clip(np.searchsorted(np.asarray(edges[1:-1]), ln, side="left"), 0, len(edges) - 2)


# --------------------------------------------------------------------------------------------
# Statistics with 95% confidence intervals
# --------------------------------------------------------------------------------------------
def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion (Wilson 1927); (nan, nan) when n = 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    den = 1 + Z95**2 / n
    mid = (p + Z95**2 / (2 * n)) / den
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def mean_ci(x: np.ndarray) -> dict[str, float]:
    """Mean with a normal-approximation 95% CI (mean ± 1.96·sd/√n); n < 2 gives a nan interval."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    m = float(x.mean())
    if n < 2:
        return {"value": m, "lo": math.nan, "hi": math.nan, "n": n}
    se = float(x.std(ddof=1)) / math.sqrt(n)
    return {"value": m, "lo": m - Z95 * se, "hi": m + Z95 * se, "n": n}


def bootstrap_ci(fn: Any, *arrays: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """``fn(*arrays)`` with a percentile-bootstrap 95% CI, resampling the rows of all arrays jointly."""
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    n = len(arrays[0])
    if n == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    value = float(fn(*arrays))
    if n < 3:
        return {"value": value, "lo": math.nan, "hi": math.nan, "n": n}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    with np.errstate(all="ignore"):
        boots = np.array([fn(*(a[i] for a in arrays)) for i in idx], dtype=np.float64)
    boots = boots[np.isfinite(boots)]
    if len(boots) < n_boot // 2:
        return {"value": value, "lo": math.nan, "hi": math.nan, "n": n}
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"value": value, "lo": float(lo), "hi": float(hi), "n": n}


def corr_ci(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson correlation with a Fisher-z 95% CI; nan when either side is constant or n < 4."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if n < 4 or x.std() == 0 or y.std() == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": n}
    r = float(np.corrcoef(x, y)[0, 1])
    z, se = math.atanh(max(min(r, 0.999999), -0.999999)), 1 / math.sqrt(n - 3)
    return {"value": r, "lo": math.tanh(z - Z95 * se), "hi": math.tanh(z + Z95 * se), "n": n}


def fmt_ci(d: dict[str, float], digits: int = 3) -> str:
    """'0.123 [0.100, 0.150]' (or just the value when the interval is undefined)."""
    v = d.get("value", math.nan)
    if v is None or not math.isfinite(v):
        return "n/a"
    lo, hi = d.get("lo", math.nan), d.get("hi", math.nan)
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def check_positive(name: str, value: int, where: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise VapoError(f"{name} must be a positive integer, got {value!r}", where=where, fix=f"pass e.g. --{name} 8")
