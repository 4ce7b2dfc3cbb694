"""The cheap subset of `vapo diagnose` run during training every ``diagnose_every`` iterations.

:class:`DiagnosticsCallback` is the training-loop callback (vapo.train.Callback) that implements
``diagnose_every``; ``vapo train`` passes it. ``during_training(trainer, exp)`` returns flat
``{"diag/...": float}`` metrics for the iteration's metrics row:

* ``diag/weight_share_<lo>_<hi>``: share of the loss weight that responses of length lo..hi get
  under the run's aggregation mode (vapo.algos.token_weights), from the iteration's own batch;
* ``diag/zero_signal_frac``: fraction of groups whose answers all got the same reward;
* ``diag/critic_bias``, ``diag/critic_rmse`` (MC noise removed), ``diag/mc_value_mean``: a small
  Monte-Carlo probe of the critic at the middle of a few fresh responses (vapo.diagnostics.mc);
* ``diag/seconds``: what the hook cost.

It draws its fresh responses and continuations from its own generators (seeded by the iteration),
so the trainer's random streams, and hence resume-exactness, are untouched.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from vapo.algos.losses import token_weights
from vapo.algos.shaping import zero_signal_fraction
from vapo.diagnostics.common import bucket_of, generate_batch, length_edges
from vapo.diagnostics.critic import critic_values_at
from vapo.diagnostics.mc import mc_values, probe_positions, spread_rows
from vapo.train import adapter
from vapo.train.collect import RewardSettings
from vapo.train.run import Callback

PROBE_PROMPTS = 4  # fresh problems (× 2 answers) for the critic probe
PROBE_PREFIXES = 8
PROBE_CONTINUATIONS = 8


def weight_share_metrics(mask: torch.Tensor, lengths: torch.Tensor, mode: str, max_new_tokens: int,
                         norm_len: int) -> dict[str, float]:
    """{"diag/weight_share_<lo>_<hi>": share} per length bucket (quarters of L_max) under ``mode``.

    Args: mask [B, T] {0,1}; lengths [B]; mode: an aggregation mode; norm_len: T_max
        (vapo.train.adapter.norm_len of the run's config).
    """
    edges = length_edges(max_new_tokens)
    w = token_weights(mask.double(), mode, norm_len=norm_len).sum(1).numpy()
    b = bucket_of(lengths, edges)
    total = w.sum()
    return {f"diag/weight_share_{lo + 1}_{hi}": float(w[b == j].sum() / total) if total > 0 else float("nan")
            for j, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True))}


def during_training(trainer: Any, exp: Any) -> dict[str, float]:
    """Cheap diagnostics of one training iteration (see the module docstring).

    Args:
        trainer: a vapo.train.Trainer (uses .cfg, .policy, .critic, .tokenizer, .task, .iteration,
            .uses_critic).
        exp: the iteration's Experience (uses .response_mask [B, T], .lengths [B], .scores [B],
            .group_index [B]).
    Returns: flat {name: float} metrics.
    """
    t0 = time.perf_counter()
    cfg = trainer.cfg
    settings = RewardSettings.from_config(cfg)
    m = weight_share_metrics(exp.response_mask, exp.lengths, cfg.algo.policy_loss.agg_mode, settings.max_new_tokens,
                             adapter.norm_len(cfg))
    m["diag/zero_signal_frac"] = zero_signal_fraction(exp.scores.cpu(), exp.group_index.cpu())
    if trainer.uses_critic and trainer.critic is not None:
        was = trainer.policy.training, trainer.critic.training
        trainer.policy.eval()
        seed = 10_007 * (int(trainer.iteration) + 1) + int(cfg.seed)
        batch = generate_batch(trainer.policy, trainer.tokenizer, trainer.task, settings, n_prompts=PROBE_PROMPTS,
                               group_size=2, seed=seed)
        rows = spread_rows(batch.lengths.numpy(), PROBE_PREFIXES)
        rows, ts, _ = probe_positions(batch.lengths.numpy(), rows, (0.5,))
        mc = mc_values(trainer.policy, trainer.tokenizer, trainer.task, batch, rows, ts, continuations=PROBE_CONTINUATIONS,
                       settings=settings, generator=torch.Generator().manual_seed(seed))
        v = critic_values_at(trainer.critic, batch, rows, ts, max_tokens=cfg.optim.micro_batch_tokens)
        e = v - mc.mean
        m["diag/critic_bias"] = float(e.mean())
        m["diag/critic_rmse"] = float(np.sqrt(max(float(np.mean(e**2) - np.mean(mc.var_mean)), 0.0)))
        m["diag/mc_value_mean"] = float(mc.mean.mean())
        trainer.policy.train(was[0])
        trainer.critic.train(was[1])
    m["diag/seconds"] = time.perf_counter() - t0
    return m


class DiagnosticsCallback(Callback):
    """Adds :func:`during_training`'s metrics to every ``cfg.diagnose_every``-th iteration's row
    (does nothing when ``diagnose_every`` is 0)."""

    handles = frozenset({"diagnose_every"})

    def on_iteration_end(self, trainer: Any, exp: Any, metrics: dict[str, Any]) -> None:
        every = trainer.cfg.diagnose_every
        if every and trainer.iteration % every == 0:
            metrics.update(during_training(trainer, exp))
