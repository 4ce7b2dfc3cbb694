"""Monte-Carlo values of the training answers, and the critic's measured quality during RL
(docs/algorithms.md: "Monte-Carlo values", "Critic weighted by its quality", "Critic schedule").

The rollout-dependent half of the value pathways; the formulas are in vapo.algos.pathways.

Monte-Carlo values (VinePPO, arXiv 2410.01679). M points of each answer (the first is always
the prompt state, t = 0), K continuations from each: V̂(s_t) is the mean reward of the K
completions of prompt ⊕ y_<t, sampled through the same path as the critic probe
(vapo.train.probe.mc_values → vapo.train.collect.rollout_and_score with prefixes), with the run's
sampling settings and L_max budget. Points: "even" (t = ⌊j·l/M⌋, j = 0..M−1, repeats dropped
for answers shorter than M) or "lines" (t = 0 and the starts of the answer's lines, i.e. the
positions after a token whose text holds a newline; when there are more than M − 1 of them, M − 1
spread evenly). The draws use their own generator, seeded by the run's seed and the iteration, so
they do not change what training samples. Their cost, the tokens the continuations generated, is
logged per iteration as ``mc_gen_tokens`` (and with the EV probes as ``extra_gen_tokens``).

The critic's explained variance against Monte-Carlo values (:class:`CriticControl`), for the
quality-weighted blend and the critic-only warm-up: measured on the iteration's Monte-Carlo points
when it draws them (free), else on a fresh critic probe (vapo.train.probe.draw_probe) every
``algo.critic.ev_every`` iterations; the last measurement holds in between.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vapo.algos.pathways import blend_advantages, critic_weight, ev_against_mc, mc_value_targets
from vapo.train.batch import Experience
from vapo.train.probe import MCEstimate, mc_values

MC_SEED_OFFSET = 70_001  # the Monte-Carlo draws' generator: seed · 100_003 + iteration + this
EV_PROBE_OFFSET = 90_001  # the EV probe's seed offset (vapo.train.trainer.Trainer.draw_probe)


def newline_token_ids(tokenizer: Any, response_ids: torch.Tensor) -> set[int]:
    """The ids among ``response_ids`` whose decoded text holds a newline (each distinct id decoded once)."""
    ids = sorted(int(i) for i in torch.unique(response_ids).tolist())
    return {i for i in ids if "\n" in tokenizer.decode([i])}


def point_positions(lengths: np.ndarray, n_points: int, placement: str, response_ids: torch.Tensor | None = None,
                    newline: set[int] | frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """The Monte-Carlo points of every answer (module docstring): ``rows`` [K], ``ts`` [K] int64,
    sorted by row then position; each answer of length l ≥ 1 gets t = 0 and at most ``n_points``
    distinct positions 0 ≤ t < l. ``placement`` "lines" reads ``response_ids`` [B, T] and ``newline``."""
    rows, ts = [], []
    for i, ln in enumerate(np.asarray(lengths).tolist()):
        ln = int(ln)
        if ln < 1:
            continue
        if placement == "even":
            pts = sorted({(j * ln) // n_points for j in range(n_points)})
        elif placement == "lines":
            assert response_ids is not None
            prev = response_ids[i, : ln - 1].tolist()
            starts = [t for t in range(1, ln) if int(prev[t - 1]) in newline]
            if len(starts) > n_points - 1:
                pick = np.unique(np.round(np.linspace(0, len(starts) - 1, n_points - 1)).astype(np.int64)) if n_points > 1 else []
                starts = [starts[k] for k in pick]
            pts = [0, *starts]
        else:
            raise ValueError(f"unknown placement {placement!r}")
        rows += [i] * len(pts)
        ts += pts
    return np.asarray(rows, np.int64), np.asarray(ts, np.int64)


@dataclass
class MCBatch:
    """Monte-Carlo values of one batch: the points (rows [K], ts [K]), their estimates, and the same
    as dense ``[B, T]`` tensors: ``point_mask`` (bool) and ``values`` (V̂ at the points, 0 elsewhere)."""

    rows: np.ndarray
    ts: np.ndarray
    estimate: MCEstimate
    point_mask: torch.Tensor
    values: torch.Tensor
    seconds: float = 0.0

    def targets(self, token_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """The critic's regression targets [B, T] (vapo.algos.pathways.mc_value_targets)."""
        return mc_value_targets(token_rewards, self.values.to(token_rewards.dtype), self.point_mask, response_mask)

    def critic_ev(self, critic_values: torch.Tensor) -> float:
        """The critic's EV against these Monte-Carlo values (vapo.algos.pathways.ev_against_mc),
        ``critic_values`` [B, T] read at the points."""
        pred = critic_values.detach().double().cpu()[torch.as_tensor(self.rows), torch.as_tensor(self.ts)]
        return float(ev_against_mc(pred, torch.as_tensor(self.estimate.mean), torch.as_tensor(self.estimate.var_mean)))

    def metrics(self) -> dict[str, float]:
        return {"mc_gen_tokens": int(self.estimate.gen_tokens), "mc_points": len(self.rows),
                "mc_value_mean": float(np.mean(self.estimate.mean)) if len(self.rows) else math.nan, "time_mc": self.seconds}


@torch.no_grad()
def draw_mc_values(policy: Any, tokenizer: Any, task: Any, exp: Experience, settings: Any, *, points: int,
                   continuations: int, placement: str, seed: int, max_rows: int = 2048) -> MCBatch:
    """V̂ at the Monte-Carlo points of every answer of ``exp`` (module docstring), K = ``continuations``
    samples each, from ``policy`` with ``settings`` (vapo.train.collect.RewardSettings)."""
    t0 = time.perf_counter()
    newline = newline_token_ids(tokenizer, exp.response_ids) if placement == "lines" else frozenset()
    rows, ts = point_positions(exp.lengths.numpy(), points, placement, exp.response_ids, newline)
    est = mc_values(policy, tokenizer, task, exp, rows, ts, continuations=continuations, settings=settings,
                    generator=torch.Generator().manual_seed(seed), max_rows=max_rows)
    mask = torch.zeros(exp.response_ids.shape, dtype=torch.bool)
    vals = torch.zeros(exp.response_ids.shape, dtype=torch.float32)
    r, t = torch.as_tensor(rows), torch.as_tensor(ts)
    mask[r, t] = True
    vals[r, t] = torch.as_tensor(est.mean, dtype=torch.float32)
    return MCBatch(rows=rows, ts=ts, estimate=est, point_mask=mask, values=vals, seconds=time.perf_counter() - t0)


@dataclass
class CriticControl:
    """The critic's measured quality during RL and what follows from it: the blend weight
    (``algo.critic.blend``) and the critic-only warm-up (``algo.critic.warmup_ev``). Checkpointed
    with the trainer (:meth:`state_dict`)."""

    ev: float = math.nan  # the last EV against Monte-Carlo values
    ev_iteration: int = -1  # the iteration it was measured at (-1: never)
    warmup_iters: int = 0  # critic-only iterations so far
    warmup_done: bool = False

    def state_dict(self) -> dict[str, Any]:
        return {"ev": self.ev, "ev_iteration": self.ev_iteration, "warmup_iters": self.warmup_iters,
                "warmup_done": self.warmup_done}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.ev, self.ev_iteration = float(s["ev"]), int(s["ev_iteration"])
        self.warmup_iters, self.warmup_done = int(s["warmup_iters"]), bool(s["warmup_done"])

    def step(self, trainer: Any, exp: Experience, mc: MCBatch | None) -> tuple[bool, dict[str, float]]:
        """After the advantages of iteration ``trainer.iteration`` (0-based, before the updates):
        measure the EV when due, blend ``exp.advantages`` in place when ``blend`` is "ev", and say
        whether this iteration is critic-only. Returns (critic_only, metrics)."""
        cc = trainer.cfg.algo.critic
        warm = cc.warmup_ev is not None and not self.warmup_done
        if cc.blend != "ev" and not warm:
            return False, {}
        m: dict[str, float] = {}
        if mc is not None:
            self.ev, self.ev_iteration = mc.critic_ev(exp.values), trainer.iteration
        elif trainer.iteration % cc.ev_every == 0 or self.ev_iteration < 0:
            t0 = time.perf_counter()
            probe = trainer.draw_probe(seed_offset=EV_PROBE_OFFSET)
            q = trainer.probe_critic(probe)
            self.ev, self.ev_iteration = float(q["ev_vs_mc"]), trainer.iteration
            if probe is not None:
                m["ev_probe_gen_tokens"] = int(probe.batch.lengths.sum()) + int(probe.mc.gen_tokens)
            m["time_ev_probe"] = time.perf_counter() - t0
        m["critic_ev_vs_mc"] = self.ev
        m["critic_ev_age"] = trainer.iteration - self.ev_iteration
        critic_only = False
        if warm:
            if self.ev >= cc.warmup_ev or self.warmup_iters >= cc.warmup_max_iters:
                self.warmup_done = True
            else:
                self.warmup_iters += 1
                critic_only = True
            m["critic_warmup"] = float(critic_only)
        if cc.blend == "ev":
            w = critic_weight(self.ev)
            exp.advantages = blend_advantages(exp.advantages, exp.scores, exp.group_index, exp.response_mask, w)
            m["critic_weight"] = w
        return critic_only, m


__all__ = ["CriticControl", "MCBatch", "draw_mc_values", "newline_token_ids", "point_positions"]
