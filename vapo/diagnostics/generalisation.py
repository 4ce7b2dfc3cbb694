"""Section 5 — generalisation: train vs held-out vs longer-than-trained accuracy per checkpoint.

Each checkpoint's policy answers the same fixed problems of every split (vapo.train.evaluate:
the evaluation set is fixed by task, split and seed) with the run's evaluation sampling settings;
accuracies get Wilson 95% CIs (answers to the same prompt are counted as independent, so the
interval is slightly optimistic). The run's own eval.jsonl (more prompts, fewer checkpoints) is
reported alongside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vapo.diagnostics.common import wilson
from vapo.train.evaluate import evaluate_split

GEN_SPLITS = ("train", "heldout", "long")


def pick_checkpoints(found: list[tuple[int, Path]], max_n: int, must: int | None = None) -> list[tuple[int, Path]]:
    """At most ``max_n`` (≥ 1) checkpoints spread evenly over the run. ``must`` (the diagnosed step)
    is always among them, else the last; with ``max_n`` ≥ 2 the first is too (``must`` takes the
    last one's place when the spread misses it)."""
    if max_n < 1:
        raise ValueError(f"max_n={max_n}: at least one checkpoint is evaluated")
    if len(found) <= max_n:
        return found
    if max_n == 1:
        return [c for c in found if c[0] == must] or found[-1:]
    idx = {0, len(found) - 1}
    idx |= {round(i * (len(found) - 1) / (max_n - 1)) for i in range(max_n)}
    keep = [found[i] for i in sorted(idx)][: max_n]
    if must is not None and all(s != must for s, _ in keep):
        keep = sorted(keep[:-1] + [c for c in found if c[0] == must])
    return keep


def evaluate_checkpoint(policy: Any, tokenizer: Any, task: Any, cfg: Any, *, prompts: int, samples: int,
                        seed: int = 1234) -> dict[str, Any]:
    """{split: {"accuracy": {value, lo, hi, n}, "by_size": {...}}} for train, held-out and long."""
    out = {}
    for split in GEN_SPLITS:
        r = evaluate_split(policy, tokenizer, task, split, prompts=prompts, samples=samples, temperature=cfg.eval.temperature,
                           top_p=cfg.eval.top_p, max_new_tokens=cfg.rollout.max_new_tokens, seed=seed,
                           verify_timeout=cfg.task.verify_timeout)
        n = prompts * samples
        lo, hi = wilson(r["accuracy"] * n, n)
        out[split] = {"accuracy": {"value": r["accuracy"], "lo": lo, "hi": hi, "n": n}, "by_size": r["by_size"],
                      "mean_length": r["mean_length"]}
    return out


def eval_series(evals: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """{split: [[iteration, accuracy], ...]} from the run's eval.jsonl."""
    out: dict[str, list[list[float]]] = {}
    for r in evals:
        if "split" in r and "accuracy" in r:
            out.setdefault(r["split"], []).append([float(r["iteration"]), float(r["accuracy"])])
    return out


def finding(report: dict[str, Any]) -> str:
    """One line: accuracies at the last evaluated checkpoint and the train − long gap."""
    per = report["checkpoints"]
    if not per:
        return "no checkpoint evaluated"
    last = max(per, key=int)
    acc = {s: per[last][s]["accuracy"]["value"] for s in GEN_SPLITS}
    first = min(per, key=int)
    moved = ""
    if first != last:
        moved = f"; long {per[first]['long']['accuracy']['value']:.2f} → {acc['long']:.2f} since step {first}"
    return (f"step {last}: train {acc['train']:.2f}, held-out {acc['heldout']:.2f}, long {acc['long']:.2f} "
            f"(train − long gap {acc['train'] - acc['long']:+.2f}){moved}")
