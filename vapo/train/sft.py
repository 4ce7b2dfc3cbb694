"""Supervised warm start on task demonstrations, cached by a hash of what determines it.

The warm start is short on purpose: it teaches the answer format and the step-by-step procedure
well enough that sampling finds correct answers, while leaving headroom for RL (see the README
for the measured warm-start accuracy of the default run).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from vapo.cache import cache_root
from vapo.config import Config
from vapo.errors import VapoError
from vapo.models import build_char_tokenizer, build_policy, load_policy_and_tokenizer
from vapo.models.hf import apply_model_options, load_model, model_options
from vapo.models.storage import own_memory
from vapo.models.tokenizer import prompt_format, prompt_token_ids, set_prompt_format
from vapo.rollout import describe_engine
from vapo.tasks import MARKER, sample_problems
from vapo.train.rundir import AtomicDir, append_jsonl


def demo_batch(tokenizer: Any, problems: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt solution [EOS]`` sequences and a loss mask on solution + EOS. The
    prompt is encoded as in RL (:func:`vapo.models.prompt_token_ids`: BOS + text, or the chat
    template), so the demonstration continues exactly where sampling will.

    Returns input_ids [B, L], attention_mask [B, L], loss_mask [B, L] (1 where the *next* token is
    a solution or EOS token, aligned with the logits that predict it).
    """
    seqs, starts = [], []
    for p in problems:
        prompt = prompt_token_ids(tokenizer, p.prompt)
        sol = tokenizer.encode(p.solution, add_special_tokens=False) + [tokenizer.eos_token_id]
        seqs.append(prompt + sol)
        starts.append(len(prompt))
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), L), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), L), dtype=torch.float32)
    for i, (s, st) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        loss_mask[i, st - 1 : len(s) - 1] = 1.0  # logits at position j predict token j+1
    return ids, attn, loss_mask


def demonstration(task: Any, problem: Any, rng: random.Random, slip: float) -> str:
    """The teacher's response to ``problem``: the worked solution, with slips (probability ``slip``
    per step) when the task has a slip model (``slipped_solution``)."""
    if slip > 0 and hasattr(task, "slipped_solution"):
        return task.slipped_solution(problem, rng, slip)
    return problem.solution


def sft_loss_backward(policy: Any, tokenizer: Any, problems: list[Any], micro_batches: int,
                      device: torch.device | str) -> torch.Tensor:
    """Backpropagate the demonstrations' token-mean NLL; returns it (detached).

    With ``micro_batches`` > 1 the problems are sorted by solution length and split into that many
    parts, each padded to its own longest sequence; each part's summed NLL is divided by the token
    count of the whole batch, so the accumulated gradient is the one-batch token mean (up to
    floating-point summation order) without computing the padding of the short demonstrations."""
    if micro_batches > 1:
        problems = sorted(problems, key=lambda p: len(p.solution))
    n = len(problems)
    k = min(micro_batches, n)
    parts = [problems[i * n // k : (i + 1) * n // k] for i in range(k)]
    batches = [demo_batch(tokenizer, part) for part in parts if part]
    total = sum(float(b[2][:, :-1].sum()) for b in batches)
    loss_sum = torch.zeros((), device=device)
    for ids, attn, lmask in batches:
        ids, attn, lmask = ids.to(device), attn.to(device), lmask.to(device)
        logits = policy(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        part = -(logp * lmask[:, :-1]).sum() / total
        part.backward()
        loss_sum += part.detach()
    return loss_sum


def sft_train(policy: Any, tokenizer: Any, task: Any, cfg: Config, *, ui: Any = None, stop: Any = None) -> list[float]:
    """Train ``policy`` in place on demonstrations; returns the loss per step."""
    s = cfg.sft
    rng = random.Random(f"vapo-sft-{cfg.seed}")
    device = next(policy.parameters()).device
    opt = torch.optim.AdamW(policy.parameters(), lr=s.lr, weight_decay=0.0)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < s.warmup_steps:
            return (step + 1) / s.warmup_steps
        frac = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    task_id = ui.add_task("SFT warm start", total=s.steps) if ui is not None else None
    slips = s.teacher_slip > 0 and hasattr(task, "slipped_solution")
    if s.teacher_slip > 0 and not slips and ui is not None:
        ui.log(f"note: task {task.name!r} has no slip model (slipped_solution): sft.teacher_slip is ignored")
    losses = []
    policy.train()
    t0 = time.perf_counter()
    for step in range(s.steps):
        if stop is not None and stop.requested:
            raise KeyboardInterrupt
        problems = sample_problems(task, rng, s.batch_size, "train")
        if slips:
            problems = [dataclasses.replace(p, solution=demonstration(task, p, rng, s.teacher_slip)) for p in problems]
        opt.zero_grad(set_to_none=True)
        loss = sft_loss_backward(policy, tokenizer, problems, s.micro_batches, device)
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if ui is not None:
            if step == 0:
                _say_what_sft_imitates(ui, task, problems, s.steps, time.perf_counter() - t0)
            ui.update(task_id, advance=1, info=f"loss {loss.item():.3f}")
    opt.zero_grad(set_to_none=True)  # no stale gradients: the policy leaves as a loaded one would
    policy.eval()
    return losses


def warm_start_key(cfg: Config) -> str:
    """The cache key of a warm start: a hash of the task, model, SFT config and seed. SFT fields
    that do not change the result at their default are left out (``sft.micro_batches=1`` is the
    one-batch step every earlier warm start used), so existing caches stay valid."""
    d = {k: cfg.to_dict()[k] for k in ("task", "model", "sft", "seed")}
    if d["sft"].get("micro_batches") == 1:
        del d["sft"]["micro_batches"]
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _say_what_sft_imitates(ui: Any, task: Any, problems: list[Any], steps: int, first_step_s: float) -> None:
    """One note after the first SFT step when the demonstrations are bare answers (``#### 15926``,
    e.g. reasoning-gym tasks, which give no worked solutions): what the warm start will imitate
    and how long SFT will take at the first step's pace."""
    if not all(p.solution.strip() == f"{MARKER} {p.answer}" for p in problems):
        return
    total = first_step_s * steps
    ui.log(f"note: task {task.name!r} gives no worked solutions: SFT imitates bare answers such as "
           f"{problems[0].solution.strip()!r} (no reasoning steps to learn), for {steps} steps, about "
           f"{total / 60:.0f} min at the first step's {first_step_s:.2f} s; set sft.steps=0 to start RL from "
           "the untrained model, or give a file task with worked solutions (docs/byo.md)")


def warm_start(cfg: Config, task: Any, *, ui: Any = None, run_dir: Path | None = None, stop: Any = None,
               device: torch.device | str = "cpu") -> tuple[Any, Any]:
    """The warm-start policy and its tokenizer: from ``model.path`` or a built-in size, then SFT.

    A Hugging Face model is loaded with its own tokenizer and the ``model`` options (dtype,
    gradient checkpointing, LoRA, chat template); ``sft.steps=0`` starts RL from it as it is.
    With ``sft.cache`` the SFT result is stored under ``$VAPO_CACHE_DIR`` (default
    ``~/.cache/vapo``) keyed by a hash of the task, model, SFT config and seed.
    """
    key = warm_start_key(cfg)
    cached = cache_root() / "sft" / key
    if cfg.sft.cache and cfg.sft.steps > 0 and (cached / "COMPLETE").is_file():
        if ui is not None:
            ui.log(f"warm start: loaded from cache {cached}")
        policy, tokenizer = load_policy_and_tokenizer(cached)
        return own_memory(policy.to(device)), tokenizer
    torch.manual_seed(cfg.seed)
    if cfg.model.path:
        p = Path(cfg.model.path)
        if not p.is_dir():
            raise VapoError(f"model path {p} is not a directory", where="model.path", fix="point it at a Hugging Face model directory")
        policy, tokenizer = load_model(cfg)
        if ui is not None:
            fmt = prompt_format(tokenizer)
            n_train = sum(q.numel() for q in policy.parameters() if q.requires_grad)
            ui.log(f"model: {p} ({policy.config.model_type}, {sum(q.numel() for q in policy.parameters()):,} parameters, "
                   f"{n_train:,} trained, {cfg.model.dtype}); tokenizer: {len(tokenizer)} tokens, "
                   f"eos {tokenizer.eos_token!r}, pad {tokenizer.pad_token!r}, bos {tokenizer.bos_token!r}; "
                   f"chat template {'on' if fmt['chat'] else 'off'}; rollout: {describe_engine(policy)}")
    else:
        tokenizer = build_char_tokenizer()
        set_prompt_format(tokenizer, chat_template=cfg.model.chat_template, system_prompt=cfg.model.system_prompt)
        policy = apply_model_options(build_policy(cfg.model.size, tokenizer, seed=cfg.seed), model_options(cfg.model))
    policy.to(device)  # SFT runs where training runs (train.device)
    if cfg.sft.steps > 0:
        losses = sft_train(policy, tokenizer, task, cfg, ui=ui, stop=stop)
        if run_dir is not None:
            append_jsonl(run_dir / "events.jsonl", {"phase": "sft", "steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]})
        if cfg.sft.cache:
            with AtomicDir(cached) as tmp:
                policy.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
    return own_memory(policy), tokenizer
