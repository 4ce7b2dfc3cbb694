"""The RL trainer: one loop for every preset.

An iteration, as data flows (each arrow a plain tensor dataclass, see docs/contracts.md)::

    sample prompts → generate G answers each (Rollout) → score (+ shaping) → old log-probs,
    reference log-probs, critic values → advantages/returns (registry, by preset)
    → minibatch PPO epochs for actor and critic → metrics → (maybe) checkpoint

Before RL: supervised warm start on task demonstrations (cached), then value pretraining of
the critic on Monte-Carlo returns of the frozen warm-start policy (VC-PPO §4, VAPO §3), with
its own stop rule (explained variance has plateaued).
"""

from __future__ import annotations

import copy
import math
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vapo.algos.advantages import AdvantageInput, AdvantageParams, get_advantage_estimator
from vapo.algos.losses import (
    aggregate_loss,
    explained_variance,
    get_policy_loss,
    kl_estimate,
    masked_mean,
    masked_sum,
    masked_whiten,
    positive_nll_loss,
    token_weights,
    value_loss,
)
from vapo.algos.shaping import dynamic_sampling_keep, overlong_penalty, scores_to_token_rewards
from vapo.config import Config
from vapo.models import decode_responses
from vapo.train.rundir import AtomicDir, append_jsonl


# --------------------------------------------------------------------------------------------
# Plain data between stages
# --------------------------------------------------------------------------------------------
@dataclass
class Experience:
    """One iteration's experience. B responses, P prompt tokens (left-padded), T response tokens."""

    prompt_ids: torch.Tensor  # [B, P] long
    prompt_mask: torch.Tensor  # [B, P] long
    response_ids: torch.Tensor  # [B, T] long, pad after EOS
    response_mask: torch.Tensor  # [B, T] float, 1 on generated tokens (incl. EOS)
    lengths: torch.Tensor  # [B] long
    truncated: torch.Tensor  # [B] bool, no EOS within max_new_tokens
    scores: torch.Tensor  # [B] float, task reward + shaping
    correct: torch.Tensor  # [B] bool, verifier says correct
    sizes: torch.Tensor  # [B] long, the task's length knob of each problem
    group_index: torch.Tensor  # [B] long, which prompt a response answers
    loss_mask: torch.Tensor | None = None  # [B, T] response_mask, minus filtered responses
    old_logprobs: torch.Tensor | None = None  # [B, T]
    ref_logprobs: torch.Tensor | None = None  # [B, T]
    values: torch.Tensor | None = None  # [B, T] V(state before token t)
    token_rewards: torch.Tensor | None = None  # [B, T]
    advantages: torch.Tensor | None = None  # [B, T]
    returns: torch.Tensor | None = None  # [B, T]

    def select(self, idx: torch.Tensor) -> Experience:
        """The sub-batch of rows ``idx``, trimmed to its own longest prompt (left padding) and
        longest answer (right padding). Positions come from the masks, so trimming padding
        changes no computed value."""
        out = {}
        t_max = int(self.lengths[idx].max().item()) if len(idx) else 0
        p_keep = int(self.prompt_mask[idx].sum(1).max().item()) if len(idx) else self.prompt_mask.shape[1]
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                out[f.name] = None
                continue
            v = v[idx]
            if f.name in ("prompt_ids", "prompt_mask"):
                v = v[:, v.shape[1] - p_keep :]
            elif v.dim() == 2:
                v = v[:, :t_max]
            out[f.name] = v
        return Experience(**out)

    @staticmethod
    def concat(parts: list[Experience], pad_id: int) -> Experience:
        """Concatenate experiences (re-padding prompts on the left and responses on the right)."""
        if len(parts) == 1:
            return parts[0]
        p_max = max(p.prompt_ids.shape[1] for p in parts)
        t_max = max(p.response_ids.shape[1] for p in parts)
        g_off = 0
        out: dict[str, list[torch.Tensor]] = {}
        for p in parts:
            for f in fields(p):
                v = getattr(p, f.name)
                if v is None:
                    continue
                if f.name in ("prompt_ids", "prompt_mask"):
                    fill = pad_id if f.name == "prompt_ids" else 0
                    v = torch.nn.functional.pad(v, (p_max - v.shape[1], 0), value=fill)
                elif v.dim() == 2:
                    fill = pad_id if f.name == "response_ids" else 0
                    v = torch.nn.functional.pad(v, (0, t_max - v.shape[1]), value=fill)
                elif f.name == "group_index":
                    v = v + g_off
                out.setdefault(f.name, []).append(v)
            g_off += int(p.group_index.max().item()) + 1 if len(p.group_index) else 0
        return Experience(**{k: torch.cat(v) for k, v in out.items()})


# --------------------------------------------------------------------------------------------
# Interrupts: Ctrl-C / SIGTERM finish the current step, checkpoint, exit cleanly
# --------------------------------------------------------------------------------------------
class _StopFlag:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: Any) -> None:
        if self.requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True


@contextmanager
def graceful_interrupts() -> Iterator[_StopFlag]:
    flag = _StopFlag()
    try:
        old_int = signal.signal(signal.SIGINT, flag)
        old_term = signal.signal(signal.SIGTERM, flag)
    except ValueError:  # not in the main thread: no signal handling
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


class _StatSum:
    """Combines per-micro-batch statistics into the minibatch's: sums (loss terms that already
    carry the minibatch's normalisers), token-weighted means, and maxima."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.means: dict[str, tuple[float, float]] = {}
        self.maxs: dict[str, float] = {}

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

    def result(self) -> dict[str, float]:
        out = dict(self.sums)
        out.update({k: s / w if w > 0 else 0.0 for k, (s, w) in self.means.items()})
        out.update(self.maxs)
        return out


def _warmup_constant(warmup: int):
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
class Trainer:
    """Owns the models, optimizers and random streams of one run directory."""

    def __init__(self, cfg: Config, run_dir: Path, *, progress: bool = True):
        from vapo.tasks import get_task

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = torch.device(cfg.train.device if cfg.train.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.task = get_task(cfg.task.name, **cfg.task.kwargs)
        # Random streams, all checkpointed: prompts, sampling, minibatch shuffling.
        self.prompt_rng = random.Random(cfg.seed)
        self.sample_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 2)
        self.iteration = 0
        self.policy: Any = None
        self.critic: Any = None
        self.ref_policy: Any = None
        self.tokenizer: Any = None
        self.actor_opt: torch.optim.Optimizer | None = None
        self.critic_opt: torch.optim.Optimizer | None = None
        # annotate → update_critic in the single-step case: (rows, values with graph) per micro-batch
        self._critic_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # ---------------------------------------------------------------- set-up
    @property
    def uses_critic(self) -> bool:
        return self.cfg.algo.critic.enabled

    @property
    def uses_ref(self) -> bool:
        return self.cfg.algo.kl.coef > 0

    def build(self, ui: Any, stop: Any = None) -> None:
        """Warm-start policy (SFT, cached), critic from it, optimizers."""
        from vapo.models import Critic
        from vapo.train.sft import warm_start

        torch.manual_seed(self.cfg.seed)
        self.policy, self.tokenizer = warm_start(self.cfg, self.task, ui=ui, run_dir=self.run_dir, stop=stop)
        self.policy.to(self.device)
        if self.uses_ref:
            self.ref_policy = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if self.uses_critic:
            self.critic = Critic.from_policy(self.policy).to(self.device)
        self._make_optimizers()

    def _make_optimizers(self) -> None:
        o = self.cfg.optim
        betas = (o.beta1, o.beta2)
        self.actor_opt = torch.optim.AdamW(self.policy.parameters(), lr=o.actor_lr, betas=betas, weight_decay=o.weight_decay)
        self.actor_sched = torch.optim.lr_scheduler.LambdaLR(self.actor_opt, _warmup_constant(o.warmup_steps))
        if self.uses_critic:
            self.critic_opt = torch.optim.AdamW(self.critic.parameters(), lr=o.critic_lr, betas=betas, weight_decay=o.weight_decay)
            self.critic_sched = torch.optim.lr_scheduler.LambdaLR(self.critic_opt, _warmup_constant(o.warmup_steps))

    # ---------------------------------------------------------------- rollout and scoring
    @torch.no_grad()
    def generate(self, n_prompts: int) -> Experience:
        """Sample n_prompts problems, G answers each, and score them."""
        from vapo.models import encode_prompts
        from vapo.rollout import sample

        c, G = self.cfg, self.cfg.rollout.group_size
        problems = [self.task.sample(self.prompt_rng, "train") for _ in range(n_prompts)]
        flat = [p for p in problems for _ in range(G)]
        ids, mask = encode_prompts(self.tokenizer, [p.prompt for p in flat])
        self.policy.eval()
        ro = sample(
            self.policy, ids.to(self.device), mask.to(self.device), max_new_tokens=c.rollout.max_new_tokens,
            temperature=c.rollout.temperature, top_p=c.rollout.top_p, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id, generator=self.sample_gen,
        )
        texts = decode_responses(self.tokenizer, ro.response_ids, ro.lengths)
        rewards = [self.task.score(p, t) for p, t in zip(flat, texts, strict=True)]
        scores = torch.tensor([r.score for r in rewards], dtype=torch.float32)
        if c.algo.overlong.enabled:
            scores = scores + overlong_penalty(ro.lengths.cpu(), c.rollout.max_new_tokens, c.algo.overlong.cache_len)
        return Experience(
            prompt_ids=ro.prompt_ids.cpu(), prompt_mask=ro.prompt_mask.cpu(), response_ids=ro.response_ids.cpu(),
            response_mask=ro.response_mask.float().cpu(), lengths=ro.lengths.cpu(), truncated=ro.truncated.cpu(),
            scores=scores, correct=torch.tensor([r.correct for r in rewards]),
            sizes=torch.tensor([p.size for p in flat]), group_index=torch.arange(n_prompts).repeat_interleave(G),
        )

    def collect(self) -> tuple[Experience, dict[str, float]]:
        """Generate the iteration's batch; with dynamic sampling (DAPO), keep only groups with
        reward variance and generate more rounds until the batch is full or max_rounds is hit."""
        c = self.cfg
        target = c.rollout.prompts_per_iter
        if not c.algo.dynamic_sampling.enabled:
            exp = self.generate(target)
            zero = 1.0 - dynamic_sampling_keep(exp.scores, exp.group_index).float().mean().item()
            return exp, {"gen_rounds": 1, "zero_signal_frac": zero}
        kept: list[Experience] = []
        n_kept, rounds, seen, dropped = 0, 0, 0, 0
        G = c.rollout.group_size
        while n_kept < target and rounds < c.algo.dynamic_sampling.max_rounds:
            exp = self.generate(target)
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
        return Experience.concat(kept, self.tokenizer.pad_token_id), {"gen_rounds": rounds, "zero_signal_frac": dropped / seen}

    def annotate(self, exp: Experience) -> Experience:
        """Old log-probs, reference log-probs, critic values, token rewards, advantages, returns."""
        with torch.no_grad():
            return self._annotate(exp)

    def _annotate(self, exp: Experience) -> Experience:
        from vapo.models import response_logprobs, response_values

        c = self.cfg.algo
        self.policy.eval()

        def logprobs(model: Any, *args: torch.Tensor) -> torch.Tensor:
            return response_logprobs(model, *args)[0]

        # With one optimizer step per iteration the old policy *is* the current one: the actor
        # update takes old log-probs from its own forward pass (detached) and this pass is skipped.
        if not self.single_step or (self.uses_ref and c.kl.in_reward):
            exp.old_logprobs = self._forward_rows(logprobs, self.policy, exp)
        if self.uses_ref:
            exp.ref_logprobs = self._forward_rows(logprobs, self.ref_policy, exp)
        if self.uses_critic and self.single_step:
            # Likewise for the critic: its one update step would recompute exactly these values, so
            # they are computed once, with the graphs kept, and update_critic backpropagates through
            # them (one critic forward per iteration instead of two).
            self.critic.train()
            graphs: list[tuple[torch.Tensor, torch.Tensor]] = []
            with torch.enable_grad():
                exp.values = self._forward_rows(response_values, self.critic, exp, keep=graphs)
            self._critic_values = graphs
        elif self.uses_critic:
            self.critic.eval()
            exp.values = self._forward_rows(response_values, self.critic, exp)
        mask = exp.response_mask
        exp.loss_mask = mask * (~exp.truncated).float()[:, None] if c.overlong.filter_truncated else mask
        rewards = scores_to_token_rewards(exp.scores, mask)
        if self.uses_ref and c.kl.in_reward:
            rewards = rewards - c.kl.coef * kl_estimate(exp.old_logprobs, exp.ref_logprobs, "k1") * mask
        exp.token_rewards = rewards
        a = c.advantage
        params = AdvantageParams(
            gamma=a.gamma, lam_actor=None if a.lam_actor == "adaptive" else float(a.lam_actor),
            lam_critic=a.lam_critic, alpha=a.alpha, eps=a.eps, extra=dict(a.extra),
        )
        out = get_advantage_estimator(a.estimator)(
            AdvantageInput(token_rewards=rewards, response_mask=mask, values=exp.values, scores=exp.scores, group_index=exp.group_index),
            params,
        )
        exp.advantages = masked_whiten(out.advantages, mask) * mask if a.whiten else out.advantages
        exp.returns = out.returns
        return exp

    def _micro_batches(self, exp: Experience) -> list[torch.Tensor]:
        """Row groups of ``exp`` for forward passes: rows sorted by length and packed so that a
        group's padded size, rows × (longest prompt + longest answer), stays within
        ``optim.micro_batch_tokens`` (a single longer row forms its own group). Sorting keeps
        the padding of answers of very different lengths out of the computation."""
        budget = self.cfg.optim.micro_batch_tokens
        plen, rlen = exp.prompt_mask.sum(1).tolist(), exp.lengths.tolist()
        order = sorted(range(len(rlen)), key=lambda i: (plen[i] + rlen[i], i))
        groups: list[list[int]] = []
        cur: list[int] = []
        p_max = r_max = 0
        for i in order:
            p2, r2 = max(p_max, plen[i]), max(r_max, rlen[i])
            if cur and (len(cur) + 1) * (p2 + r2) > budget:
                groups.append(cur)
                cur, p2, r2 = [], plen[i], rlen[i]
            cur.append(i)
            p_max, r_max = p2, r2
        if cur:
            groups.append(cur)
        return [torch.tensor(g, dtype=torch.long) for g in groups]

    def _forward_rows(self, fn: Any, model: Any, exp: Experience,
                      keep: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        """``fn(model, prompt_ids, prompt_mask, response_ids, response_mask) -> [b, t]`` over the
        micro-batches of ``exp``, reassembled to [B, T] on CPU (0 at padding). With ``keep``, the
        device outputs (graph attached) are appended to it as (rows, output) pairs."""
        out = torch.zeros(exp.response_ids.shape, dtype=torch.float32)
        for rows in self._micro_batches(exp):
            u = exp.select(rows)
            y = fn(model, *(t.to(self.device) for t in (u.prompt_ids, u.prompt_mask, u.response_ids, u.response_mask)))
            out[rows, : y.shape[1]] = y.detach().float().cpu()
            if keep is not None:
                keep.append((rows, y))
        return out

    # ---------------------------------------------------------------- updates
    @property
    def single_step(self) -> bool:
        """True when each iteration makes exactly one actor step (one epoch, one minibatch)."""
        o, r = self.cfg.optim, self.cfg.rollout
        return o.ppo_epochs == 1 and o.minibatch_size >= r.prompts_per_iter * r.group_size

    def _minibatches(self, n: int) -> list[torch.Tensor]:
        perm = torch.randperm(n, generator=self.shuffle_gen)
        mb = self.cfg.optim.minibatch_size
        return [perm[i : i + mb] for i in range(0, n, mb)]

    def update_actor(self, exp: Experience) -> dict[str, float]:
        """PPO epochs over minibatches; each minibatch is one optimizer step whose gradient is
        accumulated over its length-sorted micro-batches with the minibatch's own token weights
        (so the step is the same as one pass over the whole minibatch, under any aggregation)."""
        from vapo.models import response_logprobs

        c, o = self.cfg.algo, self.cfg.optim
        pl = c.policy_loss
        norm_len = pl.norm_len or self.cfg.rollout.max_new_tokens
        loss_fn = get_policy_loss(pl.name)
        stats: dict[str, list[float]] = {}
        self.policy.train()
        for _ in range(o.ppo_epochs):
            for idx in self._minibatches(len(exp.lengths)):
                mb = exp.select(idx)
                weights = token_weights(mb.loss_mask, pl.agg_mode, norm_len=norm_len)
                n_tok = float(mb.loss_mask.sum())
                n_pos = float((mb.loss_mask.bool() & mb.correct[:, None]).sum())
                self.actor_opt.zero_grad(set_to_none=True)
                acc = _StatSum()
                for rows in self._micro_batches(mb):
                    u = mb.select(rows)
                    mask = u.loss_mask.to(self.device)
                    w = weights[rows, : mask.shape[1]].to(self.device)
                    logp, ent = response_logprobs(
                        self.policy, u.prompt_ids.to(self.device), u.prompt_mask.to(self.device),
                        u.response_ids.to(self.device), u.response_mask.to(self.device), with_entropy=True,
                    )
                    old = logp.detach() if u.old_logprobs is None else u.old_logprobs.to(self.device)
                    loss, st = loss_fn(logp, old, u.advantages.to(self.device), mask, eps_low=pl.eps_low, eps_high=pl.eps_high,
                                       dual_clip_c=pl.dual_clip_c, weights=w)
                    total = loss
                    acc.add_sum(policy_loss=loss)
                    if pl.nll_coef > 0:
                        nll = positive_nll_loss(logp, mask, u.correct.to(self.device), num_tokens=max(n_pos, 1.0))
                        total = total + pl.nll_coef * nll
                        acc.add_sum(nll_loss=nll)
                    if self.uses_ref and not c.kl.in_reward:
                        kl = aggregate_loss(kl_estimate(logp, u.ref_logprobs.to(self.device), c.kl.estimator), mask, weights=w)
                        total = total + c.kl.coef * kl
                        acc.add_sum(kl=kl)
                    ent_sum = masked_sum(ent, mask)
                    if pl.entropy_coef > 0:
                        total = total - pl.entropy_coef * ent_sum / max(n_tok, 1.0)
                    total.backward()
                    acc.add_sum(entropy=ent_sum / max(n_tok, 1.0))
                    acc.add_mean(float(mask.sum()), **{k: v for k, v in st.items() if k != "ratio_max"})
                    acc.add_max(ratio_max=st["ratio_max"])
                gn = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), o.grad_clip)
                self.actor_opt.step()
                self.actor_sched.step()
                for k, v in {**acc.result(), "actor_grad_norm": float(gn)}.items():
                    stats.setdefault(k, []).append(v)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def update_critic(self, exp: Experience) -> dict[str, float]:
        """Value-loss steps, micro-batched like the actor's. In the single-step case the forward
        pass is the one annotate() kept (its graphs), so the critic runs forward once."""
        from vapo.models import response_values

        c, o = self.cfg.algo, self.cfg.optim
        stats: dict[str, list[float]] = {}
        self.critic.train()
        fused, self._critic_values = self._critic_values, None
        for _ in range(o.ppo_epochs):
            for idx in [None] if fused is not None else self._minibatches(len(exp.lengths)):
                mb = exp if idx is None else exp.select(idx)
                weights = token_weights(mb.response_mask, "token-mean")
                self.critic_opt.zero_grad(set_to_none=True)
                acc = _StatSum()
                parts = fused if fused is not None else [(rows, None) for rows in self._micro_batches(mb)]
                for rows, v in parts:
                    u = mb.select(rows)
                    mask = u.response_mask.to(self.device)
                    if v is None:
                        v = response_values(self.critic, u.prompt_ids.to(self.device), u.prompt_mask.to(self.device),
                                            u.response_ids.to(self.device), mask)
                    loss, st = value_loss(v, u.values.to(self.device), u.returns.to(self.device), mask,
                                          clip_eps=c.critic.value_clip, weights=weights[rows, : mask.shape[1]].to(self.device))
                    (c.critic.coef * loss).backward()
                    acc.add_sum(value_loss=loss)
                    acc.add_mean(float(mask.sum()), **st)
                gn = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), o.grad_clip)
                self.critic_opt.step()
                self.critic_sched.step()
                for k, val in {**acc.result(), "critic_grad_norm": float(gn)}.items():
                    stats.setdefault(k, []).append(val)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    # ---------------------------------------------------------------- value pretraining
    def pretrain_value(self, ui: Any, flag: _StopFlag) -> list[dict[str, float]]:
        """Train the critic on Monte-Carlo returns (λ = 1) of the frozen warm-start policy until
        the value loss stops improving (VC-PPO §4; VAPO §3 'value pretraining')."""
        cc = self.cfg.algo.critic
        history: list[dict[str, float]] = []
        if not self.uses_critic or cc.pretrain_steps == 0:
            return history
        losses: list[float] = []
        task_id = ui.add_task("value pretraining", total=cc.pretrain_steps)
        for step in range(cc.pretrain_steps):
            if flag.requested:
                break
            t0 = time.perf_counter()
            exp, _ = self.collect()
            exp = self.annotate(exp)
            # Targets: Monte-Carlo returns (γ = 1, λ = 1 GAE returns of the token rewards).
            from vapo.algos.advantages import masked_gae

            _, exp.returns = masked_gae(exp.token_rewards, exp.values, exp.response_mask, gamma=self.cfg.algo.advantage.gamma, lam=1.0)
            ev = float(explained_variance(exp.values, exp.returns, exp.response_mask))
            st = self.update_critic(exp)
            rec = {"phase": "value_pretrain", "step": step, "explained_variance": ev, "value_loss": st["value_loss"],
                   "seconds": time.perf_counter() - t0}
            history.append(rec)
            append_jsonl(self.run_dir / "events.jsonl", rec)
            ui.update(task_id, advance=1, info=f"EV {ev:+.3f}  value loss {st['value_loss']:.4f}")
            # Stop rule: the value loss has plateaued. Explained variance against 0/1 returns is too
            # noisy to stop on (it stays far below 1 even for the true value function), so the rule
            # compares the mean loss of the last w steps with the w steps before.
            losses.append(st["value_loss"])
            w = cc.pretrain_patience
            if step + 1 >= max(cc.pretrain_min_steps, 2 * w):
                recent, before = sum(losses[-w:]) / w, sum(losses[-2 * w : -w]) / w
                if recent > (1.0 - cc.pretrain_tol) * before:
                    break
        ui.update(task_id, total=len(history), completed=len(history))
        return history

    # ---------------------------------------------------------------- one RL iteration
    def iterate(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        exp, gen_info = self.collect()
        t1 = time.perf_counter()
        exp = self.annotate(exp)
        t2 = time.perf_counter()
        # The critic first: its update does not change this iteration's advantages, and in the
        # single-step case it frees the graph that annotate() kept before the actor builds its own.
        critic = self.update_critic(exp) if self.uses_critic else {}
        t3 = time.perf_counter()
        actor = self.update_actor(exp)
        t4 = time.perf_counter()
        self.iteration += 1
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
            **{k: v for k, v in critic.items()},
            "actor_lr": self.actor_sched.get_last_lr()[0],
        }
        if self.uses_critic:
            m["explained_variance"] = float(explained_variance(exp.values, exp.returns, mask))
            m["value_mean"] = float(masked_mean(exp.values, mask))
        if self.cfg.algo.advantage.lam_actor == "adaptive":
            from vapo.algos.advantages import adaptive_lambda

            m["lambda_actor_mean"] = float(adaptive_lambda(exp.lengths.float(), self.cfg.algo.advantage.alpha).mean())
        m.update(tokens=n_tokens, tokens_per_s=n_tokens / max(t1 - t0, 1e-9), time_rollout=t1 - t0, time_annotate=t2 - t1,
                 time_actor=t4 - t3, time_critic=t3 - t2, time_iter=t4 - t0)
        self.last_experience = exp
        return m

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        s = {
            "iteration": self.iteration,
            "actor_opt": self.actor_opt.state_dict(),
            "actor_sched": self.actor_sched.state_dict(),
            "prompt_rng": self.prompt_rng.getstate(),
            "sample_gen": self.sample_gen.get_state(),
            "shuffle_gen": self.shuffle_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.uses_critic:
            s["critic_opt"] = self.critic_opt.state_dict()
            s["critic_sched"] = self.critic_sched.state_dict()
        return s

    def save_checkpoint(self) -> Path:
        final = self.run_dir / "checkpoints" / f"step_{self.iteration}"
        with AtomicDir(final) as tmp:
            self.policy.save_pretrained(tmp / "policy")
            self.tokenizer.save_pretrained(tmp / "policy")
            if self.uses_critic:
                self.critic.save_pretrained(tmp / "critic")
            if self.uses_ref:
                self.ref_policy.save_pretrained(tmp / "ref_policy")
            torch.save(self.state_dict(), tmp / "trainer_state.pt")
        return final

    def load_checkpoint(self, path: Path) -> None:
        from vapo.models import Critic, load_policy, load_policy_and_tokenizer

        self.policy, self.tokenizer = load_policy_and_tokenizer(path / "policy")
        self.policy.to(self.device)
        if self.uses_critic:
            self.critic = Critic.from_pretrained(path / "critic").to(self.device)
        if self.uses_ref:
            self.ref_policy = load_policy(path / "ref_policy").to(self.device).requires_grad_(False)
        self._make_optimizers()
        s = torch.load(path / "trainer_state.pt", weights_only=False)
        self.iteration = s["iteration"]
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.actor_sched.load_state_dict(s["actor_sched"])
        if self.uses_critic:
            self.critic_opt.load_state_dict(s["critic_opt"])
            self.critic_sched.load_state_dict(s["critic_sched"])
        self.prompt_rng.setstate(s["prompt_rng"])
        self.sample_gen.set_state(s["sample_gen"])
        self.shuffle_gen.set_state(s["shuffle_gen"])
        torch.set_rng_state(s["torch_rng"])


class NullUI:
    """Progress interface used when progress bars are off (and by tests)."""

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        return 0

    def update(self, task_id: int, **_: Any) -> None:
        pass

    def log(self, *args: Any) -> None:
        pass


@contextmanager
def progress_ui(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield NullUI()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[bold]{task.description:<20}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), refresh_per_second=4,
    ) as p:
        class _UI:
            def add_task(self, description: str, total: float | None = None, **kw: Any) -> int:
                return p.add_task(description, total=total, info=kw.get("info", ""))

            def update(self, task_id: int, **kw: Any) -> None:
                p.update(task_id, **kw)

            def log(self, *args: Any) -> None:
                p.console.print(*args)

        yield _UI()


__all__ = ["Experience", "NullUI", "Trainer", "graceful_interrupts", "progress_ui"]
