"""Test fixtures for the diagnostics: a policy whose value is known exactly, and a micro run directory.

FixedDist ignores its input and emits 'a' with probability pa, 'b' with pb and EOS with pe at
every step; ToyTask scores 1 when the response contains an 'a'. For a prefix without an 'a' and
a remaining budget of r tokens (L_max − t), the response succeeds iff an 'a' comes before the
first EOS within r draws:

    V(s_t) = Σ_{k=0}^{r−1} pb^k · pa = pa (1 − pb^r) / (1 − pb),     and V(s_t) = 1 once an 'a' is in it.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from vapo.tasks import Problem, Reward

PA, PB, PE = 0.15, 0.6, 0.25
L_MAX = 6


class FixedDist(nn.Module):
    """A 'causal LM' whose next-token distribution is fixed (runs on the sampler's generic path)."""

    def __init__(self, tokenizer, pa=PA, pb=PB, pe=PE):
        super().__init__()
        logits = torch.full((len(tokenizer),), -1e9)
        for ch, p in (("a", pa), ("b", pb)):
            logits[tokenizer.convert_tokens_to_ids(ch)] = math.log(p)
        logits[tokenizer.eos_token_id] = math.log(pe)
        self.logits = nn.Parameter(logits, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False, **kw):
        B, L = input_ids.shape
        return SimpleNamespace(logits=self.logits.expand(B, L, -1), past_key_values=None)


class ToyTask:
    name = "toy_a"
    splits = {"train": (1, 1), "heldout": (1, 1), "long": (2, 2)}

    def sample(self, rng: random.Random, split: str = "train") -> Problem:
        return Problem(prompt="x" * rng.randint(1, 3), answer="a", solution="a", size=1, split=split)

    def score(self, problem: Problem, response_text: str) -> Reward:
        ok = "a" in response_text
        return Reward(float(ok), ok, response_text, "correct" if ok else "wrong_answer")


def true_value(prefix_text: str, t: int, pa=PA, pb=PB, l_max=L_MAX) -> float:
    if "a" in prefix_text:
        return 1.0
    r = l_max - t
    return pa * (1 - pb**r) / (1 - pb)


def true_values_matrix(batch, tokenizer) -> torch.Tensor:
    """[B, T] exact V(s_t) of every state before token t of every response (0 at masked positions)."""
    B, T = batch.response_ids.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for i in range(B):
        ids = batch.response_ids[i].tolist()
        for t in range(int(batch.lengths[i])):
            out[i, t] = true_value(tokenizer.decode(ids[:t]), t)
    return out


def micro_policy(tokenizer, seed: int = 0):
    """A randomly initialised Qwen2 causal LM with hidden size 32 and 2 layers."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).float()
    return model.eval()


def _sft(model, tokenizer, task, steps: int = 40) -> None:
    """A few supervised steps on demonstrations, so some answers are right and lengths vary."""
    from vapo.train.sft import demo_batch

    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        ids, attn, lm = demo_batch(tokenizer, [task.sample(rng, "train") for _ in range(32)])
        logits = model(input_ids=ids, attention_mask=attn).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        loss = -(lp * lm[:, :-1]).sum() / lm.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def make_micro_run(root: Path, preset: str = "vapo", steps=(0, 2), sft_steps: int = 40) -> Path:
    """A run directory laid out as vapo.train writes it, with a micro model and synthetic logs."""
    from vapo.config import resolve_config
    from vapo.models import Critic, build_char_tokenizer
    from vapo.tasks import get_task

    cfg = resolve_config(preset, overrides=[
        "task.name=running_sum", "task.kwargs={train_sizes: [2, 3], long_sizes: [4, 4]}", "rollout.max_new_tokens=40",
        "rollout.group_size=4", "eval.samples=2",
    ])
    run = root / f"micro-{preset}"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    tok = build_char_tokenizer()
    task = get_task(cfg.task.name, **cfg.task.kwargs)
    policy = micro_policy(tok)
    _sft(policy, tok, task, sft_steps)
    if cfg.algo.critic.enabled:
        Critic.from_policy(policy).save_pretrained(run / "checkpoints" / "critic_init")
    for s in steps:
        d = run / "checkpoints" / f"step_{s}"
        policy.save_pretrained(d / "policy")
        tok.save_pretrained(d / "policy")
        if cfg.algo.critic.enabled:
            critic = Critic.from_policy(policy)
            with torch.no_grad():
                critic.value_head.bias.fill_(0.1 * (s + 1))
            critic.save_pretrained(d / "critic")
        (d / "COMPLETE").write_text("1")
    rng = np.random.default_rng(0)
    with open(run / "metrics.jsonl", "w") as f:
        for it in range(1, max(steps) + 1):
            f.write(json.dumps({"iteration": it, "reward": 0.3, "accuracy": 0.3, "response_length": 20.0,
                                "entropy": 1.0 - 0.1 * it, "zero_signal_frac": float(rng.uniform(0.2, 0.6)),
                                "clipfrac_low": 0.01, "clipfrac_high": 0.03, "approx_kl": 0.001,
                                **({"explained_variance": 0.2} if cfg.algo.critic.enabled else {})}) + "\n")
    with open(run / "eval.jsonl", "w") as f:
        for it in (0, max(steps)):
            for split in ("heldout", "long"):
                f.write(json.dumps({"iteration": it, "split": split, "accuracy": 0.2, "by_size": {"2": 0.2},
                                    "pass_at_k": {"1": 0.2, "2": 0.3}}) + "\n")
    return run
