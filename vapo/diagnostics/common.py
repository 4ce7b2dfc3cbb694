"""Shared pieces of the diagnostics: regenerated batches, length buckets and the small statistics
(bootstrap and correlation intervals; means with intervals and Wilson intervals come from vapo.stats)
every section reports.

Shapes follow docs/contracts.md: ``B`` responses, ``P`` prompt tokens (left-padded), ``T``
response tokens (right-padded), ``response_mask[i, t] = 1`` on real response tokens (EOS included).
"""

from __future__ import annotations

import math
import random
import warnings
from typing import Any

import numpy as np
import torch
from scipy import stats

from vapo.errors import VapoError
from vapo.stats import Z95, estimate_ci, wilson  # noqa: F401  (re-exported: the statistics live in vapo.stats)
from vapo.tasks import sample_problems
from vapo.train.batch import Experience
from vapo.train.collect import RewardSettings, rollout_and_score


# --------------------------------------------------------------------------------------------
# A regenerated batch: the run does not store its batches, so diagnostics draw a fresh one from
# the checkpoint's policy with the run's sampling and reward settings (same distribution, new
# draws), through the same rollout → score function as training (vapo.train.collect).
# --------------------------------------------------------------------------------------------
def generate_batch(policy: Any, tokenizer: Any, task: Any, settings: RewardSettings, *, n_prompts: int,
                   group_size: int, seed: int, split: str = "train", chunk: int = 512) -> Experience:
    """``group_size`` answers to each of ``n_prompts`` problems of ``split`` (fixed by ``seed``),
    sampled and scored with ``settings``. Returns an :class:`Experience` (B = n_prompts·group_size
    rows, ``problems`` filled; scores [B] float32)."""
    problems = sample_problems(task, random.Random(f"vapo-diagnose-{seed}-{split}"), n_prompts, split)
    return rollout_and_score(policy, tokenizer, task, problems, settings, generator=torch.Generator().manual_seed(seed),
                             group_size=group_size, chunk=chunk)


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
def bootstrap_ci(fn: Any, *arrays: np.ndarray, n_boot: int = 200, seed: int = 0) -> dict[str, float]:
    """``fn(*arrays)`` with a percentile-bootstrap 95% CI (scipy.stats.bootstrap, rows of all
    arrays resampled jointly). Resamples where ``fn`` is not finite are dropped; when more than
    half are, the interval is nan."""
    arrays = tuple(np.asarray(a, dtype=np.float64) for a in arrays)
    n = len(arrays[0])
    if n == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    value = float(fn(*arrays))
    if n < 3:
        return {"value": value, "lo": math.nan, "hi": math.nan, "n": n}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(arrays, fn, n_resamples=n_boot, paired=True, vectorized=False, method="percentile",
                              rng=np.random.default_rng(seed))
    boots = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    boots = boots[np.isfinite(boots)]
    if len(boots) < n_boot // 2:
        return {"value": value, "lo": math.nan, "hi": math.nan, "n": n}
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"value": value, "lo": float(lo), "hi": float(hi), "n": n}


def corr_ci(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson correlation with its Fisher-z 95% CI (scipy.stats.pearsonr); nan when either side
    is constant or n < 4."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if n < 4 or x.std() == 0 or y.std() == 0:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n": n}
    res = stats.pearsonr(x, y)
    ci = res.confidence_interval(confidence_level=0.95)
    return {"value": float(res.statistic), "lo": float(ci.low), "hi": float(ci.high), "n": n}


def check_positive(name: str, value: int, where: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise VapoError(f"{name} must be a positive integer, got {value!r}", where=where, fix=f"pass e.g. --{name} 8")
