"""Evaluation: accuracy by split and length bucket, avg@k and pass@k.

The evaluation set of a split is fixed by (task, split, seed): the same prompts before and after
training, and its sampling uses its own generator, so evaluating never changes a training run's
random stream (resume stays exact). A training run evaluates with ``eval_seed(its seed)``, so runs
of one seed (the variants of a comparison) answer the same problems and runs of different seeds
answer different ones. Each evaluation records every problem's id and its number of correct
answers, so that comparisons can resample problems.
"""

from __future__ import annotations

import math
import random
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from vapo.config import TaskConfig, load_config_file
from vapo.errors import VapoError
from vapo.models import load_policy_and_tokenizer
from vapo.tasks import sample_problems, task_from_config
from vapo.train.checkpoint import readable_checkpoints, weights_verified
from vapo.train.collect import RewardSettings, rollout_and_score

SPLITS = ("heldout", "long")
PASS_K_BY_SIZE = (1, 2, 4, 8)  # pass@k by problem size for these k (k <= eval.samples; docs/exploration.md)
EVAL_SEED = 1234  # evaluation seed of training seed 0 (and of `vapo eval` and `vapo diagnose`)


def eval_seed(train_seed: int) -> int:
    """The evaluation seed of a training run: EVAL_SEED + its seed (seed 0 keeps the set every run
    evaluated on before evaluation sets were drawn per seed)."""
    return EVAL_SEED + int(train_seed)


def problem_id(problem: Any) -> str:
    """A short stable id of a problem (CRC-32 of prompt and answer, 8 hex digits)."""
    key = (problem.prompt + "\x00" + problem.answer).encode()
    return f"{zlib.crc32(key):08x}"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def eval_problems(task: Any, split: str, n: int, seed: int) -> list[Any]:
    """The fixed evaluation problems of ``split`` (the same for every checkpoint of a run)."""
    return sample_problems(task, random.Random(f"vapo-eval-{task.name}-{split}-{seed}"), n, split)


def evaluate_split(
    policy: torch.nn.Module,
    tokenizer: Any,
    task: Any,
    split: str,
    *,
    prompts: int,
    samples: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int = EVAL_SEED,
    batch_size: int = 512,
    verify_timeout: float = TaskConfig.model_fields["verify_timeout"].default,
) -> dict[str, Any]:
    """Sample ``samples`` answers for each of ``prompts`` fixed problems of ``split`` and score them.

    Returns accuracy (avg@samples), accuracy by problem size (the task's length knob), pass@k for
    k = 1..samples, mean response length, the truncation rate, the seed, and per problem (in draw
    order) its id and number of correct answers (``problem_ids``, ``problem_correct``).
    """
    problems = eval_problems(task, split, prompts, seed)
    settings = RewardSettings(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                              verify_timeout=verify_timeout)
    exp = rollout_and_score(policy, tokenizer, task, problems, settings, generator=torch.Generator().manual_seed(seed),
                            group_size=samples, chunk=batch_size)
    correct = exp.correct.tolist()
    lengths = exp.lengths.tolist()
    truncated = int(exp.truncated.sum())
    by_size: dict[int, list[bool]] = defaultdict(list)
    per_prompt = []
    per_prompt_by_size: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(problems):
        c = correct[i * samples : (i + 1) * samples]
        by_size[p.size].extend(c)
        per_prompt.append(sum(c))
        per_prompt_by_size[p.size].append(sum(c))
    return {
        "split": split,
        "accuracy": sum(correct) / len(correct),
        "by_size": {str(s): sum(v) / len(v) for s, v in sorted(by_size.items())},
        "count_by_size": {str(s): len(v) for s, v in sorted(by_size.items())},
        "pass_at_k": {str(k): sum(pass_at_k(samples, c, k) for c in per_prompt) / len(per_prompt) for k in range(1, samples + 1)},
        "pass_at_k_by_size": {str(s): {str(k): sum(pass_at_k(samples, c, k) for c in v) / len(v) for k in PASS_K_BY_SIZE if k <= samples}
                              for s, v in sorted(per_prompt_by_size.items())},
        "mean_length": sum(lengths) / len(lengths),
        "truncated_frac": truncated / len(lengths),
        "prompts": prompts,
        "samples": samples,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "problem_ids": [problem_id(p) for p in problems],
        "problem_correct": per_prompt,
    }


def eval_command(run: Path, *, prompts: int | None, samples: int | None, temperature: float | None, seed: int) -> None:
    """`vapo eval RUN_OR_CKPT`: print held-out and longer-than-trained accuracy by length bucket and pass@k."""
    run = Path(run)
    if not run.exists():
        raise VapoError(f"{run} does not exist", where="vapo eval", fix="pass a run directory (runs/<name>) or a checkpoint directory")
    console = Console()
    if (run / "policy").is_dir():
        if not weights_verified(run):  # a damaged checkpoint raises CheckpointError, naming the bad file
            console.print(f"[yellow]{run} has no manifest (written before manifests): its files are not verified")
        ckpt, run_dir = run, run.parent.parent
    else:  # the newest checkpoint whose files match their manifest (damaged ones are skipped, and said)
        found, skipped = readable_checkpoints(run, log=lambda line: console.print(f"[yellow]{line}"))
        if not found:
            raise VapoError(f"no usable checkpoint in {run / 'checkpoints'}" + "".join(f"; {p.name}: {w}" for p, w in skipped),
                            where="vapo eval", fix="train the run until its first checkpoint (step_0 is written after value pretraining)")
        ckpt, run_dir = found[-1][1], run
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise VapoError(f"no config.yaml in {run_dir}", where="vapo eval", fix="pass a directory made by `vapo train`")
    cfg = load_config_file(cfg_path)
    policy, tokenizer = load_policy_and_tokenizer(ckpt / "policy")
    policy.eval()
    task = task_from_config(cfg.task)
    e = cfg.eval
    n, k = prompts or e.prompts, samples or e.samples
    temp = e.temperature if temperature is None else temperature
    console.print(f"[bold]{ckpt}[/]  task={cfg.task.name}  prompts={n}  samples={k}  temperature={temp}  top_p={e.top_p}")
    for split in SPLITS:
        r = evaluate_split(policy, tokenizer, task, split, prompts=n, samples=k, temperature=temp, top_p=e.top_p,
                           max_new_tokens=cfg.rollout.max_new_tokens, seed=seed, verify_timeout=cfg.task.verify_timeout)
        t = Table(title=f"{split}: accuracy {r['accuracy']:.3f}  (mean length {r['mean_length']:.1f}, truncated {r['truncated_frac']:.1%})")
        t.add_column("size")
        t.add_column("accuracy", justify="right")
        t.add_column("n", justify="right")
        for s, acc in r["by_size"].items():
            t.add_row(s, f"{acc:.3f}", str(r["count_by_size"][s]))
        console.print(t)
        console.print("pass@k: " + "  ".join(f"k={kk}: {v:.3f}" for kk, v in r["pass_at_k"].items()))
        console.print("pass@k by size: " + "  ".join(f"{s}: " + " ".join(f"@{kk} {v:.2f}" for kk, v in row.items())
                                                     for s, row in r["pass_at_k_by_size"].items()))
