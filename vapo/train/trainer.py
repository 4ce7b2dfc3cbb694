"""The RL trainer: one loop for every preset (docs/training.md, docs/algorithms.md).

One iteration, :meth:`Trainer.iterate`, reads top to bottom as the stages of the data flow
(each a method below; the data between them is one :class:`vapo.train.batch.Experience`)::

    collect            sample prompts, G answers each, score them (dynamic sampling: refill)
    forward_passes     old and reference log-probs, critic values  (→ the critic's graphs)
    advantages         loss mask, token rewards (+ in-reward KL), advantages and returns
    update_critic      value-loss steps (through the graphs kept by forward_passes when fused)
    update_actor       policy-loss steps (ppo_epochs × minibatches optimizer steps, each over micro-batches)
    iteration_metrics  one flat metrics row

Under torchrun the stages run on every process; vapo.train.distributed says which share of the
rollout streams and of each minibatch's micro-batches is this process's, and sums across processes
(docs/distributed.md). In a single process those calls are the identity.

Before RL: supervised warm start on task demonstrations (cached, vapo.train.sft), then value
pretraining of the critic on Monte-Carlo returns of the frozen warm-start policy, with its own stop
rule (vapo.train.value_pretrain). A checkpoint's trainer state (optimizers, schedulers, random
streams) is written and read by vapo.train.trainer_state. Config → algorithm arguments go through
vapo.train.adapter only. This module holds the loop.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vapo.algos.losses import (
    aggregate_loss,
    explained_variance,
    get_policy_loss,
    kl_estimate,
    masked_mean,
    masked_sum,
    positive_nll_loss,
    token_weights,
    value_loss,
)
from vapo.algos.shaping import dynamic_sampling_keep, zero_signal_fraction
from vapo.config import Config
from vapo.errors import ConfigError
from vapo.models import build_critic, response_logprobs, response_values
from vapo.tasks import sample_problems, task_from_config
from vapo.train import adapter, trainer_state, value_pretrain
from vapo.train.batch import Experience, Graphs, forward_rows
from vapo.train.collect import RewardSettings, fault_counts, rollout_and_score
from vapo.train.distributed import Dist, current
from vapo.train.exploration import OutcomeExplorer, entropy_by_position
from vapo.train.faults import BadUpdateGuard, NonFinite, find_nonfinite, grad_nonfinite
from vapo.train.mc_values import MC_SEED_OFFSET, CriticControl, MCBatch, draw_mc_values
from vapo.train.probe import ProbeSet, critic_at, critic_quality, draw_probe
from vapo.train.rundir import append_jsonl
from vapo.train.sft import warm_start
from vapo.train.ui import UI, StopFlag


@dataclass
class Timings:
    """Seconds spent in each stage of one iteration."""

    rollout: float = 0.0
    annotate: float = 0.0
    critic: float = 0.0
    actor: float = 0.0


class _StatSum:
    """Combines per-micro-batch statistics into the minibatch's: sums (loss terms that already
    carry the minibatch's normalisers), token-weighted means, maxima and minima."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.means: dict[str, tuple[float, float]] = {}
        self.maxs: dict[str, float] = {}
        self.mins: dict[str, float] = {}

    def add_sum(self, **kv: Any) -> None:
        for k, v in kv.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v.detach() if isinstance(v, torch.Tensor) else v)

    def add_mean(self, weight: float, **kv: Any) -> None:
        for k, v in kv.items():
            s, w = self.means.get(k, (0.0, 0.0))
            self.means[k] = (s + weight * float(v), w + weight)

    def add_max(self, **kv: Any) -> None:
        for k, v in kv.items():
            self.maxs[k] = max(self.maxs.get(k, -math.inf), float(v))

    def add_min(self, **kv: Any) -> None:
        for k, v in kv.items():
            self.mins[k] = min(self.mins.get(k, math.inf), float(v))

    def result(self) -> dict[str, float]:
        out = dict(self.sums)
        out.update({k: s / w if w > 0 else 0.0 for k, (s, w) in self.means.items()})
        out.update(self.maxs)
        out.update(self.mins)
        return out


def _over_steps(stats: dict[str, list[float]]) -> dict[str, float]:
    """One value per statistic over an iteration's optimizer steps: the extreme of ``*_max`` /
    ``*_min`` statistics, the mean of all others."""
    return {k: max(v) if k.endswith("_max") else min(v) if k.endswith("_min") else sum(v) / len(v)
            for k, v in stats.items()}


def _local_grads(model: torch.nn.Module) -> list[tuple[str, Any]]:
    """(name, parameter) pairs whose ``.grad`` is this process's part (the local shard of an FSDP2
    DTensor gradient), for a check that runs without collectives (vapo.train.faults.grad_nonfinite)."""
    out = []
    for n, p in model.named_parameters():
        g = p.grad
        out.append((n, types.SimpleNamespace(grad=g.to_local() if hasattr(g, "to_local") else g)))
    return out


def _warmup_constant(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def _stream(seed: int, k: int) -> tuple[random.Random, torch.Generator]:
    """Rollout stream k: (prompt rng, sampling generator), seeded with seed + k·2³² (stream 0 is
    the single-process run's)."""
    s = seed + k * 2**32
    return random.Random(s), torch.Generator().manual_seed(s + 1)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Owns the models, optimizers and random streams of one run directory."""

    def __init__(self, cfg: Config, run_dir: Path, *, progress: bool = True, dist: Dist | None = None):

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.dist = dist or current()
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = self.dist.device(cfg.train.device)
        self.task = task_from_config(cfg.task)
        self.settings = RewardSettings.from_config(cfg)
        # NaN/Inf guard per model: consecutive skipped optimizer steps (see _finish_step).
        self.bad_updates = {who: BadUpdateGuard(cfg.train.max_bad_updates) for who in ("actor", "critic")}
        # Random streams, all checkpointed: prompts and sampling per rollout stream (this process's
        # streams; one in a single process), minibatch shuffling (the same on every process), one
        # for the actor and one for the critic, so that the actor's minibatches do not depend on how
        # many passes the critic makes (a fork that changes the critic's schedule keeps them).
        self.n_streams = cfg.dist.rollout_streams or self.dist.world
        if cfg.rollout.prompts_per_iter % self.n_streams:
            raise ConfigError(f"rollout.prompts_per_iter={cfg.rollout.prompts_per_iter} does not split into "
                              f"{self.n_streams} rollout streams", where="rollout.prompts_per_iter / dist.rollout_streams",
                              fix=f"use a multiple of {self.n_streams} prompts")
        self.streams = {k: _stream(cfg.seed, k) for k in self.dist.streams(self.n_streams)}
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 2)  # the actor's
        self.critic_shuffle_gen = torch.Generator().manual_seed(cfg.seed + 3)
        self.iteration = 0
        self.policy: Any = None
        self.critic: Any = None
        self.ref_policy: Any = None
        self.tokenizer: Any = None
        self.actor_opt: torch.optim.Optimizer | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        self.explorer = OutcomeExplorer(cfg)  # final-answer history (checkpointed), exploration shaping
        self.critic_control = CriticControl()  # the critic's EV against MC values: blend weight, warm-up
        mc = cfg.algo.mc_values
        if self.dist.enabled and (cfg.algo.advantage.estimator == "vine" or mc.rl_targets or mc.pretrain_targets):
            raise ConfigError("Monte-Carlo values of the training answers are drawn in one process only",
                              where="algo.mc_values / algo.advantage.estimator", fix="run it without torchrun")

    # ---------------------------------------------------------------- set-up
    @property
    def prompt_rng(self) -> random.Random:
        """The prompt stream of this process's first rollout stream (the only one in a single process)."""
        return next(iter(self.streams.values()))[0]

    @property
    def sample_gen(self) -> torch.Generator:
        """The sampling generator of this process's first rollout stream."""
        return next(iter(self.streams.values()))[1]

    @property
    def uses_critic(self) -> bool:
        return self.cfg.algo.critic.enabled

    @property
    def uses_ref(self) -> bool:
        return self.cfg.algo.kl.coef > 0

    @property
    def single_step(self) -> bool:
        """True when each iteration makes exactly one actor step (one epoch, one minibatch)."""
        return self.cfg.optim.ppo_epochs == 1 and self.cfg.optim.minibatches == 1

    def build(self, ui: UI, stop: Any = None) -> None:
        """Warm-start policy (SFT, cached), critic from it, optimizers."""
        torch.manual_seed(self.cfg.seed)
        if self.dist.is_writer:
            self.policy, self.tokenizer = warm_start(self.cfg, self.task, ui=ui, run_dir=self.run_dir, stop=stop, device=self.device)
        else:  # the architecture only: the weights are rank 0's warm start, broadcast below
            cfg0 = self.cfg.model_copy(update={"sft": self.cfg.sft.model_copy(update={"steps": 0})})
            self.policy, self.tokenizer = warm_start(cfg0, self.task, device=self.device)
        self.policy.to(self.device)
        self.dist.broadcast_weights(self.policy)
        if self.uses_ref:
            self.ref_policy = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if self.uses_critic:
            self.critic = build_critic(self.cfg, self.policy).to(self.device)
        self._shard()
        self._make_optimizers()

    def _shard(self) -> None:
        """FSDP2 under torchrun (vapo.train.distributed.Dist.shard); nothing in a single process."""
        for m in (self.policy, self.ref_policy, self.critic):
            if m is not None:
                self.dist.shard(m)

    def _make_optimizers(self) -> None:
        o = self.cfg.optim
        betas = (o.beta1, o.beta2)
        self.actor_opt = torch.optim.AdamW(self.policy.parameters(), lr=o.actor_lr, betas=betas, weight_decay=o.weight_decay)
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, _warmup_constant(o.warmup_steps))
        if self.uses_critic:
            self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=o.critic_lr, betas=betas, weight_decay=o.weight_decay)
            self.critic_sched = torch.optim.lr_scheduler.LambdaLR(self.critic_opt, _warmup_constant(o.warmup_steps))

    # ---------------------------------------------------------------- one RL iteration
    def iterate(self) -> tuple[dict[str, Any], Experience]:
        """One iteration, stage by stage. Returns its metrics row and its experience."""
        tm = Timings()
        t = time.perf_counter()
        exp, gen_info = self.collect()  # sample + score (with the verifier faults of every row scored)
        gen_info.update(self.explorer.apply(exp, self.tokenizer))  # final answers: algo.exploration shaping, metrics
        tm.rollout, t = time.perf_counter() - t, time.perf_counter()
        mc = self.draw_mc_values(exp)  # Monte-Carlo values at points of each answer, when configured
        exp, critic_graphs = self.forward_passes(exp)  # values / log-probs
        exp = self.advantages(exp, mc)
        # The critic's EV against MC values when due: blend weight, critic-only warm-up (vapo.train.mc_values).
        critic_only, control = self.critic_control.step(self, exp, mc) if self.uses_critic else (False, {})
        gen_info.update(control, **(mc.metrics() if mc is not None else {}))
        gen_info["extra_gen_tokens"] = gen_info.get("mc_gen_tokens", 0) + gen_info.get("ev_probe_gen_tokens", 0)
        tm.annotate, t = time.perf_counter() - t, time.perf_counter()
        # The critic first: its update does not change this iteration's advantages, and in the
        # fused case it frees the graphs of forward_passes before the actor builds its own.
        k = self.cfg.algo.critic.steps_per_actor_step  # SAO: k passes of the PPO schedule
        critic_stats = self.update_critic(exp, critic_graphs, epochs=self.cfg.optim.ppo_epochs * k) if self.uses_critic else {}
        tm.critic, t = time.perf_counter() - t, time.perf_counter()
        actor_stats = {"actor_steps": 0} if critic_only else self.update_actor(exp)
        tm.actor = time.perf_counter() - t
        self.iteration += 1
        return self.iteration_metrics(exp, gen_info, actor_stats, critic_stats, tm), exp

    # ---------------------------------------------------------------- stage 1: sample and score
    def sample_and_score(self, n_prompts: int, stream: int | None = None) -> Experience:
        """``n_prompts`` training problems (from a rollout stream's prompts; default: this
        process's first stream), G answers each, scored."""
        prompt_rng, sample_gen = self.streams[next(iter(self.streams)) if stream is None else stream]
        problems = sample_problems(self.task, prompt_rng, n_prompts, "train")
        self.policy.eval()
        with self.dist.full_params(self.policy):
            return rollout_and_score(self.policy, self.tokenizer, self.task, problems, self.settings,
                                     generator=sample_gen, group_size=self.cfg.rollout.group_size)

    def collect(self) -> tuple[Experience, dict[str, float]]:
        """The iteration's global batch: each rollout stream fills its share of prompts_per_iter
        (this process's streams here, the others on the other processes), and the shares are
        gathered in stream order. The metrics hold the verifier faults of every row scored
        (``reward_faults_<kind>``; with dynamic sampling, the dropped groups' rows too)."""
        share = self.cfg.rollout.prompts_per_iter // self.n_streams
        mine = [self._collect_stream(share, k) for k in self.streams]
        parts = [p for rank_parts in self.dist.gather(mine) for p in rank_parts]
        exp = Experience.concat([e for e, _ in parts], self.tokenizer.pad_token_id)
        rounds, seen, dropped, faults = zip(*(info for _, info in parts), strict=True)
        info = fault_counts(torch.cat(faults))
        if not self.cfg.algo.dynamic_sampling.enabled:
            return exp, {"gen_rounds": 1, "zero_signal_frac": zero_signal_fraction(exp.scores, exp.group_index), **info}
        return exp, {"gen_rounds": max(rounds), "zero_signal_frac": sum(dropped) / sum(seen), **info}

    def _collect_stream(self, target: int, stream: int) -> tuple[Experience, tuple[int, int, int, torch.Tensor]]:
        """``target`` groups from one rollout stream; with dynamic sampling (DAPO), keep only groups
        with reward variance and sample more rounds until the share is full or max_rounds is hit.
        Returns the experience and (rounds, groups seen, groups dropped, the fault column of every
        row scored, dropped ones included)."""
        c = self.cfg
        if not c.algo.dynamic_sampling.enabled:
            exp = self.sample_and_score(target, stream)
            return exp, (1, target, 0, exp.reward_fault)
        kept: list[Experience] = []
        scored: list[torch.Tensor] = []
        n_kept, rounds, seen, dropped = 0, 0, 0, 0
        G = c.rollout.group_size
        while n_kept < target and rounds < c.algo.dynamic_sampling.max_rounds:
            exp = self.sample_and_score(target, stream)
            scored.append(exp.reward_fault)
            rounds += 1
            keep = dynamic_sampling_keep(exp.scores, exp.group_index)
            seen += target
            dropped += target - int(keep.sum().item()) // G
            if keep.any():
                idx = keep.nonzero().squeeze(1)[: (target - n_kept) * G]
                kept.append(exp.select(idx))
                n_kept += len(idx) // G
        if not kept:  # every group had zero signal: train on the last batch (zero advantages)
            kept = [exp]
        return Experience.concat(kept, self.tokenizer.pad_token_id), (rounds, seen, dropped, torch.cat(scored))

    # ---------------------------------------------------------------- stage 2: forward passes
    def _logprobs(self, model: Any, *tensors: torch.Tensor) -> torch.Tensor:
        """log π(y_t | ·) [b, t] at the rollout's sampling temperature (the distribution sampled from)."""
        return response_logprobs(model, *tensors, temperature=self.settings.temperature)[0]

    def _forward(self, fn: Any, model: Any, exp: Experience, keep_graphs: bool = False) -> tuple[torch.Tensor, Graphs | None]:
        """``fn`` over this process's micro-batches of ``exp``, summed over processes into [B, T]
        (graphs, when kept, are this process's)."""
        out, graphs = forward_rows(functools.partial(self.dist.forward, fn), model, exp, device=self.device,
                                   max_tokens=self.cfg.optim.micro_batch_tokens,
                                   keep_graphs=keep_graphs, micro_batches=self.dist.micro_batches)
        return self.dist.all_reduce_sum(out), graphs

    @torch.no_grad()
    def forward_passes(self, exp: Experience) -> tuple[Experience, Graphs | None]:
        """Old log-probs, reference log-probs and critic values [B, T] of ``exp``.

        Old log-probs (the policy that sampled), with ``optim.old_logprobs``:
          "sampler"    the sampler's own, recorded by the rollout (config validation allows it only
                       at temperature 1 and top-p 1, where they are the policy's distribution);
          "recompute"  a teacher-forced forward pass of the policy before any update, at the
                       sampling temperature.
        With one optimizer step per iteration the old policy *is* the current one: the actor update
        takes old = its own log-probs, detached (ratio exactly 1), and ``exp.old_logprobs`` is None,
        unless the in-reward KL needs them.

        Returns the experience and, in the fused single-step case, the critic's forward outputs
        with their graphs ((rows, [b, t] values) per micro-batch) for :meth:`update_critic`.
        """
        kl = self.cfg.algo.kl
        self.policy.eval()
        if self.single_step and not (self.uses_ref and kl.in_reward):
            exp.old_logprobs = None
        elif self.cfg.optim.old_logprobs == "recompute" or exp.old_logprobs is None:
            exp.old_logprobs, _ = self._forward(self._logprobs, self.policy, exp)
        if self.uses_ref:
            exp.ref_logprobs, _ = self._forward(self._logprobs, self.ref_policy, exp)
        graphs = None
        if self.uses_critic and self.single_step:
            # Likewise for the critic: its one update step would recompute exactly these values, so
            # they are computed once, with the graphs kept, and update_critic backpropagates through
            # them (one critic forward per iteration instead of two).
            self.critic.train()
            with torch.enable_grad():
                exp.values, graphs = self._forward(response_values, self.critic, exp, keep_graphs=True)
        elif self.uses_critic:
            self.critic.eval()
            exp.values, _ = self._forward(response_values, self.critic, exp)
        return exp, graphs

    # ---------------------------------------------------------------- stage 3: advantages
    @torch.no_grad()
    def advantages(self, exp: Experience, mc: MCBatch | None = None) -> Experience:
        """Loss mask, token rewards, advantages and returns [B, T] (vapo.train.adapter). With
        Monte-Carlo values ``mc``: the "vine" estimator reads them in place of the critic's, and
        with ``algo.mc_values.rl_targets`` they give the critic's targets."""
        c = self.cfg.algo
        mask = exp.response_mask
        exp.loss_mask = adapter.loss_mask(c, mask, exp.truncated)
        exp.token_rewards = adapter.token_rewards(c, exp.scores, mask, exp.old_logprobs, exp.ref_logprobs)
        vine = mc is not None and c.advantage.estimator == "vine"
        out = adapter.advantage_output(
            c, exp.token_rewards, mask, values=mc.values if vine else exp.values, scores=exp.scores,
            group_index=exp.group_index, mc_points=mc.point_mask if vine else None)
        exp.advantages, exp.returns, exp.lam_actor = out.advantages, out.returns, out.lam_actor
        if mc is not None and c.mc_values.rl_targets:
            exp.returns = mc.targets(exp.token_rewards, mask)
        return exp

    def annotate(self, exp: Experience) -> tuple[Experience, Graphs | None]:
        """Stages 2 and 3 together: forward passes, then advantages."""
        exp, graphs = self.forward_passes(exp)
        return self.advantages(exp), graphs

    # ---------------------------------------------------------------- stages 4-5: updates
    def _minibatches(self, n: int, gen: torch.Generator) -> list[torch.Tensor]:
        """A shuffled split of range(n) into ``optim.minibatches`` parts, one optimizer step each.

        Config validation makes the parts equal for a full rollout. Dynamic sampling can return
        fewer groups when ``max_rounds`` is hit; then the number of steps stays the configured one
        and the parts differ by at most one answer (fewer than ``minibatches`` answers: one step
        per answer)."""
        perm = torch.randperm(n, generator=gen)
        return [p for p in torch.tensor_split(perm, self.cfg.optim.minibatches) if len(p)]

    def update_critic(self, exp: Experience, graphs: Graphs | None = None, *, epochs: int | None = None,
                      minibatch_size: int | None = None) -> dict[str, float]:
        """Value-loss steps on ``exp.returns`` over ``exp.loss_mask``, micro-batched like the
        actor's (``epochs`` passes over minibatches of ``minibatch_size`` answers; by default the
        PPO schedule, optim.ppo_epochs × optim.minibatches). With ``graphs`` (the fused single-step case, see
        :meth:`forward_passes`) the one step backpropagates through those outputs instead of
        running the critic forward again."""
        c, o = self.cfg.algo, self.cfg.optim
        epochs = o.ppo_epochs if epochs is None else epochs
        stats: dict[str, list[float]] = {}
        self.critic.train()
        for _ in range(epochs):
            if graphs is not None:
                parts_idx: list[torch.Tensor | None] = [None]
            elif minibatch_size is None:
                parts_idx = list(self._minibatches(len(exp), self.critic_shuffle_gen))
            else:
                perm = torch.randperm(len(exp), generator=self.critic_shuffle_gen)
                parts_idx = [perm[i : i + minibatch_size] for i in range(0, len(exp), minibatch_size)]
            for idx in parts_idx:
                mb = exp if idx is None else exp.select(idx)
                weights = token_weights(mb.loss_mask, "token-mean")
                self.critic_opt.zero_grad(set_to_none=True)
                acc = _StatSum()
                bad: list[NonFinite] = []
                parts = graphs if graphs is not None else [(rows, None) for rows in self.dist.micro_batches(mb, o.micro_batch_tokens)]
                for rows, v in parts:
                    u = mb.select(rows)
                    mask = u.loss_mask.to(self.device)
                    if v is None:
                        v = self.dist.forward(response_values, self.critic, u.prompt_ids.to(self.device), u.prompt_mask.to(self.device),
                                            u.response_ids.to(self.device), u.response_mask.to(self.device))
                    loss, st = value_loss(v, u.values.to(self.device), u.returns.to(self.device), mask,
                                          clip_eps=c.critic.value_clip, weights=weights[rows, : mask.shape[1]].to(self.device))
                    bad += find_nonfinite(value_loss=loss, values=(v, mask), returns=(u.returns, u.loss_mask))
                    (c.critic.coef * loss).backward()
                    acc.add_sum(value_loss=loss)
                    acc.add_mean(float(mask.sum()), **st)
                step = self._finish_step(self.critic_opt, self.critic_sched, self.critic, bad, "critic")
                for k, val in {**self.dist.reduce_stats(acc), **step}.items():
                    stats.setdefault(k, []).append(val)
            graphs = None  # the kept graphs serve the first step only
        return _over_steps(stats)

    def update_actor(self, exp: Experience) -> dict[str, float]:
        """``optim.ppo_epochs`` passes over ``optim.minibatches`` shuffled minibatches; each
        minibatch is one optimizer step whose gradient is accumulated over its length-sorted
        micro-batches with the minibatch's own token weights (so the step is the same as one pass
        over the whole minibatch, under any aggregation). The ratio's denominator is
        ``exp.old_logprobs`` (the policy that sampled), or, with one step per iteration, the
        step's own log-probs detached (the same policy; ratio 1).

        Statistics: the mean over steps, and for ratio_max / ratio_min the extreme over steps."""
        c, o = self.cfg.algo, self.cfg.optim
        pl, ls = c.policy_loss, adapter.loss_settings(self.cfg)
        loss_fn = get_policy_loss(ls.name)
        stats: dict[str, list[float]] = {}
        self.policy.train()
        for _ in range(o.ppo_epochs):
            for idx in self._minibatches(len(exp), self.shuffle_gen):
                mb = exp.select(idx)
                weights = token_weights(mb.loss_mask, ls.agg_mode, norm_len=ls.norm_len)
                n_tok = float(mb.loss_mask.sum())
                n_pos = float((mb.loss_mask.bool() & mb.correct[:, None]).sum())
                self.actor_opt.zero_grad(set_to_none=True)
                acc = _StatSum()
                bad: list[NonFinite] = []
                for rows in self.dist.micro_batches(mb, o.micro_batch_tokens):
                    u = mb.select(rows)
                    mask = u.loss_mask.to(self.device)
                    w = weights[rows, : mask.shape[1]].to(self.device)
                    logp, ent = self.dist.forward(
                        response_logprobs, self.policy, u.prompt_ids.to(self.device), u.prompt_mask.to(self.device),
                        u.response_ids.to(self.device), u.response_mask.to(self.device),
                        temperature=self.settings.temperature, with_entropy=True,
                    )
                    old = logp.detach() if self.single_step else u.old_logprobs.to(self.device)
                    loss, st = loss_fn(logp, old, u.advantages.to(self.device), mask,
                                       **adapter.policy_loss_kwargs(pl), weights=w)
                    total = loss
                    acc.add_sum(policy_loss=loss)
                    if ls.nll_coef > 0:
                        nll = positive_nll_loss(logp, mask, u.correct.to(self.device), num_tokens=max(n_pos, 1.0))
                        total = total + ls.nll_coef * nll
                        acc.add_sum(nll_loss=nll)
                    if self.uses_ref and ls.kl_coef > 0:
                        kl = aggregate_loss(kl_estimate(logp, u.ref_logprobs.to(self.device), ls.kl_estimator), mask, weights=w)
                        total = total + ls.kl_coef * kl
                        acc.add_sum(kl=kl)
                    if ls.entropy_coef > 0:  # the bonus is aggregated like the policy loss (agg_mode)
                        total = total - ls.entropy_coef * aggregate_loss(ent, mask, weights=w)
                    bad += find_nonfinite(actor_loss=total, advantages=(u.advantages, u.loss_mask))
                    total.backward()
                    acc.add_sum(entropy=masked_sum(ent, mask) / max(n_tok, 1.0))  # logged as a token mean
                    for key, (s_ent, n_ent) in entropy_by_position(ent.detach(), mask).items():  # entropy_q1..q4
                        if n_ent:
                            acc.add_mean(n_ent, **{key: s_ent / n_ent})
                    acc.add_mean(float(mask.sum()), **{k: v for k, v in st.items() if k != "ratio_max"})
                    acc.add_max(ratio_max=st["ratio_max"])
                    if mask.any():
                        acc.add_min(ratio_min=(logp.detach() - old)[mask.bool()].exp().min())
                step = self._finish_step(self.actor_opt, self.actor_sched, self.policy, bad, "actor")
                for k, v in {**self.dist.reduce_stats(acc), **step}.items():
                    stats.setdefault(k, []).append(v)
        out = _over_steps(stats)
        out["actor_steps"] = len(stats["actor_grad_norm"])
        return out

    def _finish_step(self, opt: torch.optim.Optimizer, sched: Any, model: Any, bad: list[NonFinite],
                     who: str) -> dict[str, float]:
        """End one optimizer step of ``who`` ("actor" or "critic") whose gradients are accumulated:
        clip them, then step, or skip the step when ``bad`` (the NaN/Inf found in the step's
        inputs and losses) is not empty or the gradient norm is not finite. A skipped step leaves
        the weights, the Adam moments and the lr schedule as they were and writes an events.jsonl
        line with the offending statistics; the ``train.max_bad_updates``-th consecutive skip of
        one model raises :class:`vapo.train.faults.DivergenceError`.

        Under torchrun the decision is the same on every process: the findings of all processes
        are gathered (and the gradient norm is the global one) before deciding.

        Returns the step's statistics: ``<who>_grad_norm`` (the norm before clipping; NaN/Inf when
        that is what stopped it) and ``<who>_skipped_frac`` (1.0 when skipped)."""
        gn = self.dist.clip_grad_norm(model, self.cfg.optim.grad_clip)  # the global norm on every process
        if not math.isfinite(gn):
            bad = bad + grad_nonfinite(_local_grads(model), who)
        if self.dist.enabled:  # every process's findings, in rank order: all skip, or none
            bad = [b for part in self.dist.gather(bad) for b in part]
        guard, where = self.bad_updates[who], f"{who} update"
        skip = bool(bad)
        if skip:  # no step: the weights, the Adam moments and the lr schedule stay as they were
            opt.zero_grad(set_to_none=True)
            if self.dist.is_writer:
                append_jsonl(self.run_dir / "events.jsonl", {
                    "phase": "skipped_update", "where": where, "iteration": self.iteration + 1,
                    "consecutive": guard.consecutive + 1, "nonfinite": [b.describe() for b in bad], "time": time.time()})
        else:
            opt.step()
            sched.step()
        guard.record(bad, where=where, iteration=self.iteration + 1)  # raises DivergenceError at the max_bad-th skip in a row
        return {f"{who}_grad_norm": float(gn), f"{who}_skipped_frac": float(skip)}

    # ---------------------------------------------------------------- stage 6: metrics
    def iteration_metrics(self, exp: Experience, gen_info: dict[str, float], actor: dict[str, float],
                          critic: dict[str, float], tm: Timings) -> dict[str, Any]:
        """The iteration's metrics row (what metrics.jsonl holds; names in docs/training.md)."""
        mask = exp.response_mask
        n_tokens = int(mask.sum().item())
        m: dict[str, Any] = {
            "iteration": self.iteration,
            "reward": float(exp.scores.mean()),
            "accuracy": float(exp.correct.float().mean()),
            "response_length": float(exp.lengths.float().mean()),
            "response_length_max": int(exp.lengths.max()),
            "truncated_frac": float(exp.truncated.float().mean()),
            "advantage_mean": float(masked_mean(exp.advantages, mask)),
            "advantage_abs": float(masked_mean(exp.advantages.abs(), mask)),
            **gen_info,
            **actor,
            **critic,
            "actor_lr": self.actor_sched.get_last_lr()[0],
        }
        if self.uses_critic:
            m["explained_variance"] = float(explained_variance(exp.values, exp.returns, mask))
            m["value_mean"] = float(masked_mean(exp.values, mask))
        if exp.lam_actor is not None:  # the estimator chose each row's λ (gae_error_aware): log those
            m["lambda_actor_mean"] = float(exp.lam_actor.float().mean())
            m["lambda_actor_min"] = float(exp.lam_actor.min())
        elif self.cfg.algo.advantage.lam_actor == "adaptive":
            m["lambda_actor_mean"] = float(adapter.actor_lambda(self.cfg.algo.advantage, exp.lengths.float()).mean())
        total = tm.rollout + tm.annotate + tm.critic + tm.actor
        m.update(tokens=n_tokens, tokens_per_s=n_tokens / max(tm.rollout, 1e-9), time_rollout=tm.rollout,
                 time_annotate=tm.annotate, time_actor=tm.actor, time_critic=tm.critic, time_iter=total)
        return m

    # ---------------------------------------------------------------- Monte-Carlo values of training answers
    def draw_mc(self, exp: Experience, seed_offset: int) -> MCBatch:
        """Monte-Carlo values at ``algo.mc_values.points`` of each answer of ``exp``, with a generator
        seeded by the run's seed and ``seed_offset``."""
        mc = self.cfg.algo.mc_values
        self.policy.eval()
        return draw_mc_values(self.policy, self.tokenizer, self.task, exp, self.settings, points=mc.points,
                              continuations=mc.continuations, placement=mc.placement,
                              seed=self.cfg.seed * 100_003 + MC_SEED_OFFSET + seed_offset,
                              max_rows=max(self.cfg.rollout.prompts_per_iter * self.cfg.rollout.group_size, 2048))

    def draw_mc_values(self, exp: Experience) -> MCBatch | None:
        """Monte-Carlo values at ``algo.mc_values.points`` of each answer of ``exp`` (vapo.train.mc_values)
        when this RL iteration uses them (the vine estimator, or the critic's targets with
        ``algo.mc_values.rl_targets``); None otherwise. Own generator: seeded by the seed and the iteration."""
        c = self.cfg.algo
        if c.advantage.estimator != "vine" and not c.mc_values.rl_targets:
            return None
        return self.draw_mc(exp, self.iteration)

    # ---------------------------------------------------------------- the critic probe
    def draw_probe(self, seed_offset: int = 0) -> ProbeSet | None:
        """A Monte-Carlo probe of the current policy (vapo.train.probe): held-out answers, MC values
        at algo.critic.probe_positions. Its prompts and draws are fixed by the seed and the iteration
        and use their own streams, so probing does not change what training samples.

        Under torchrun rank 0 alone draws it (with the policy's full weights; the other processes
        wait) and the others get None: the probe is only read by :meth:`probe_critic`, on rank 0."""
        cc = self.cfg.algo.critic
        self.policy.eval()
        probe = None
        with self.dist.full_params(self.policy):
            if self.dist.is_writer:
                probe = draw_probe(self.policy, self.tokenizer, self.task, self.settings, answers=cc.probe_answers,
                                   positions=tuple(cc.probe_positions), continuations=cc.probe_continuations,
                                   seed=self.cfg.seed * 100_003 + self.iteration + seed_offset)
        return probe

    def probe_critic(self, probe: ProbeSet | None, *, n_boot: int = 0) -> dict[str, Any]:
        """The critic's figures on ``probe`` (vapo.train.probe.critic_quality): a critic forward only.
        Under torchrun rank 0 computes them with the critic's full weights and every process gets
        the same figures (a collective: every process calls this)."""
        q: dict[str, Any] = {}
        with self.dist.full_params(self.critic):
            if self.dist.is_writer:
                v = critic_at(self.critic, probe, max_tokens=self.cfg.optim.micro_batch_tokens)
                q = critic_quality(v, probe, n_boot=n_boot, seed=self.cfg.seed)
        return self.dist.broadcast(q)

    # ---------------------------------------------------------------- value pretraining, checkpoints
    def pretrain_value(self, ui: UI, flag: StopFlag) -> list[dict[str, Any]]:
        """Value pretraining before RL (vapo.train.value_pretrain.pretrain_value)."""
        return value_pretrain.pretrain_value(self, ui, flag)

    def save_checkpoint(self) -> Path:
        """checkpoints/step_<iteration> of this trainer (vapo.train.trainer_state.save_checkpoint)."""
        return trainer_state.save_checkpoint(self)

    def load_checkpoint(self, path: Path) -> None:
        """Restore this trainer from ``path`` (vapo.train.trainer_state.load_checkpoint)."""
        trainer_state.load_checkpoint(self, path)

    def save_models(self, directory: Path, **models: Any) -> None:
        """``save_pretrained`` of each model into directory/<name> (vapo.train.trainer_state.save_models)."""
        trainer_state.save_models(self, directory, **models)


__all__ = ["Trainer"]
