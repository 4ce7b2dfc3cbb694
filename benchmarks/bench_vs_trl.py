"""One RL iteration of vapo's `grpo` preset against TRL's GRPOTrainer doing the same work, and
the cost of a `vapo` iteration (which also trains a critic) relative to a `grpo` iteration.

    python benchmarks/bench_vs_trl.py [--prompts 32] [--group-size 8] [--max-new-tokens 160]
        [--iterations 3] [--size tiny] [--task running_sum] [--sft-steps 300]
        [--variants natural,fixed] [--threads N] [--quick] [--out PATH]

Needs the benchmark-only extra: ``pip install -e ".[bench]"`` (TRL, datasets).

What is compared (one process, one model, one warm start):

* The warm-start policy is built once (vapo's cached SFT warm start, ``--sft-steps``; 0 = random
  init) and saved with ``save_pretrained`` (weights + char tokenizer) to a temporary directory.
  Every side loads its own copy from that directory, so all start from identical weights.
* One iteration = ``prompts`` problems of the task × ``group-size`` sampled answers each, at most
  ``max-new-tokens`` tokens, temperature 1, top-p 1, rewards from the task's verifier, group
  z-score advantages, one PPO-clip update epoch as ONE optimizer step over the whole batch
  (minibatch = prompts × group size), ε = 0.2 on both sides, no KL term (β = 0, so no reference
  model on either side), AdamW, gradient clipping at 1.0, float32 on CPU.
* vapo-grpo: ``Trainer.iterate()`` with the `grpo` preset (its seq-mean-token-mean
  aggregation), ``algo.kl.coef=0``. An iteration samples with vapo's KV-cached sampler, scores,
  and takes the update step over length-sorted micro-batches (with the per-token entropy
  computed for logging); with one optimizer step per iteration the old log-probs are the
  detached current ones, so no separate forward pass computes them.
* TRL: ``GRPOTrainer`` with ``loss_type="grpo"`` (per-sequence token mean, then mean over
  sequences = vapo's seq-mean-token-mean), ``scale_rewards="group"``, ``beta=0``,
  ``num_iterations=1``, ``per_device_train_batch_size = prompts × G``,
  ``gradient_accumulation_steps=1`` (so generation batch = one optimizer step), sampling with
  ``transformers`` ``generate`` (no vLLM), no logging/saving. In this set-up TRL also skips the
  old-log-prob forward (it uses the detached current log-probs, which are equal).
* vapo-vapo: ``Trainer.iterate()`` with the `vapo` preset (critic forward for the values,
  decoupled length-adaptive GAE, positive-example NLL, and one critic update step);
  value pretraining is not part of an iteration and is skipped (``pretrain_steps=0``).

Timing: the three sides run interleaved. TRL's ``trainer.train()`` drives the loop; a callback at
every optimizer-step end records the TRL step time (wall time since the previous step ended, so it
includes TRL's data loading and bookkeeping but not its set-up) and then runs one vapo-grpo and
one vapo-vapo iteration (alternating their order), outside TRL's timed interval. The first round
is a warm-up on every side and is not counted. Reported: median seconds per iteration, their
ratios, the median of the per-round ratios, tokens generated per iteration and tokens/s.

Variants: ``natural`` stops answers at EOS (answer lengths, hence work, can differ between the
sides); ``fixed`` suppresses EOS on both sides so every answer is exactly ``max-new-tokens``
tokens (a per-token comparison): TRL via ``generation_kwargs={"min_new_tokens": T}``, vapo via a
benchmark-only wrapper that passes the sampler ``eos_token_id=None`` (never stop early).

Writes benchmarks/results/bench_vs_trl.json (``--quick``: bench_vs_trl_quick.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------
# The shared warm start
# --------------------------------------------------------------------------------------------
def prepare_model(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    """Build (or load from vapo's SFT cache) the warm-start policy and save it to ``model_dir``."""
    from vapo.config import resolve_config
    from vapo.tasks import get_task
    from vapo.train.sft import warm_start
    from vapo.train.ui import quiet_ui

    cfg = resolve_config("grpo", overrides=[f"task.name={args.task}", f"model.size={args.size}",
                                            f"sft.steps={args.sft_steps}", f"seed={args.seed}"])
    task = get_task(cfg.task.name, **cfg.task.kwargs)
    t0 = time.perf_counter()
    policy, tokenizer = warm_start(cfg, task, ui=quiet_ui())
    policy.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    n_params = sum(p.numel() for p in policy.parameters())
    return {"sft_steps": args.sft_steps, "params": n_params, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------
# vapo side
# --------------------------------------------------------------------------------------------
def vapo_overrides(args: argparse.Namespace, model_dir: Path) -> list[str]:
    return [
        f"task.name={args.task}", f"seed={args.seed}", f"model.path={model_dir}", "sft.steps=0", "sft.cache=false",
        f"rollout.prompts_per_iter={args.prompts}", f"rollout.group_size={args.group_size}",
        f"rollout.max_new_tokens={args.max_new_tokens}", "rollout.temperature=1.0", "rollout.top_p=1.0",
        "optim.minibatches=1", "optim.ppo_epochs=1", "algo.kl.coef=0.0",
        "algo.critic.pretrain_steps=0", "train.device=cpu",
    ]


def build_vapo(preset: str, args: argparse.Namespace, model_dir: Path, run_dir: Path) -> Any:
    from vapo.config import resolve_config
    from vapo.train.trainer import Trainer
    from vapo.train.ui import quiet_ui

    cfg = resolve_config(preset, overrides=vapo_overrides(args, model_dir))
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.build(quiet_ui())
    return trainer


@contextlib.contextmanager
def vapo_no_eos(enabled: bool):
    """Benchmark-only: make vapo's sampler never stop early (every answer max_new_tokens long).

    ``vapo.train.collect.rollout_and_score`` imports ``vapo.rollout.sample`` at call time; this wraps it to pass
    ``eos_token_id=None`` (the sampler's "never stop early"): an EOS token may still be sampled,
    it just does not end the answer, so the work per answer is exactly max_new_tokens.
    """
    if not enabled:
        yield
        return
    import vapo.rollout as rollout

    original = rollout.sample

    def sample(*a: Any, **kw: Any) -> Any:
        kw["eos_token_id"] = None
        return original(*a, **kw)

    rollout.sample = sample
    try:
        yield
    finally:
        rollout.sample = original


def run_vapo_iteration(trainer: Any) -> dict[str, float]:
    t0 = time.perf_counter()
    m, _ = trainer.iterate()
    sec = time.perf_counter() - t0
    return {"seconds": sec, "tokens": float(m["tokens"]), "gen_seconds": float(m["time_rollout"]),
            "accuracy": float(m["accuracy"]), "mean_length": float(m["response_length"]),
            "phases": {k: float(m[k]) for k in ("time_rollout", "time_annotate", "time_actor", "time_critic") if k in m}}


# --------------------------------------------------------------------------------------------
# TRL side
# --------------------------------------------------------------------------------------------
def build_trl(args: argparse.Namespace, model_dir: Path, out_dir: Path, fixed: bool, callback: Any,
              lr: float = 2e-4) -> tuple[Any, dict]:
    """A GRPOTrainer configured to do one vapo `grpo` iteration per optimizer step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from vapo.tasks import get_task

    task = get_task(args.task)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # vapo's prompts start with BOS (encode_prompts adds it); TRL tokenises the raw prompt text
    # with add_special_tokens=True, so give TRL's copy of the tokenizer a post-processor that
    # prepends BOS (the char tokenizer has none): both sides then feed identical prompt ids.
    added_bos = tokenizer("1")["input_ids"][0] != tokenizer.bos_token_id
    if added_bos:
        from tokenizers.processors import TemplateProcessing

        bos = tokenizer.bos_token
        tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.bos_token_id)])
    if tokenizer("1")["input_ids"][0] != tokenizer.bos_token_id:
        raise RuntimeError("could not make TRL's tokenizer start prompts with BOS as vapo does")
    rng = random.Random(args.seed)
    n_problems = args.prompts * (args.iterations + 2)
    problems = [task.sample(rng, "train") for _ in range(n_problems)]
    dataset = Dataset.from_dict({"prompt": [p.prompt for p in problems], "pid": list(range(n_problems))})
    stats: dict[str, list] = {"gen": [], "accuracy": []}

    def task_reward(prompts: list[str], completions: list[str], pid: list[int], **_: Any) -> list[float]:
        rewards = [task.score(problems[i], c) for i, c in zip(pid, completions, strict=True)]
        stats["accuracy"].append(sum(r.correct for r in rewards) / len(rewards))
        return [r.score for r in rewards]

    batch = args.prompts * args.group_size
    config = GRPOConfig(
        output_dir=str(out_dir), use_cpu=True, bf16=False, fp16=False, report_to="none",
        logging_strategy="no", save_strategy="no", disable_tqdm=True, seed=args.seed,
        max_steps=args.iterations + 1, per_device_train_batch_size=batch, gradient_accumulation_steps=1,
        num_generations=args.group_size, max_completion_length=args.max_new_tokens,
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, epsilon=0.2, epsilon_high=0.2,
        loss_type="grpo", scale_rewards="group", mask_truncated_completions=False,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", dataloader_num_workers=0, remove_unused_columns=False, shuffle_dataset=True,
        generation_kwargs={"min_new_tokens": args.max_new_tokens} if fixed else None,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=task_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)  # no end-of-training metrics print

    # Benchmark-only: time TRL's generation and count the completion tokens (incl. EOS) it made.
    original = trainer._generate_single_turn

    def timed_generate(*a: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = original(*a, **kw)
        stats["gen"].append((time.perf_counter() - t0, sum(len(c) for c in out[0])))
        return out

    trainer._generate_single_turn = timed_generate
    info = {"bos_added_by_post_processor": added_bos, "config": {
        k: getattr(getattr(config, k), "value", getattr(config, k)) for k in (
            "per_device_train_batch_size", "gradient_accumulation_steps", "generation_batch_size", "steps_per_generation",
            "num_generations", "max_completion_length", "temperature", "top_p", "top_k", "beta", "num_iterations",
            "epsilon", "epsilon_high", "loss_type", "scale_rewards", "learning_rate", "lr_scheduler_type", "optim",
            "max_grad_norm", "generation_kwargs", "use_vllm", "bf16", "fp16", "use_cpu")}}
    return trainer, {"stats": stats, "info": info}


# --------------------------------------------------------------------------------------------
# One variant: the three sides interleaved
# --------------------------------------------------------------------------------------------
def _summary(rows: list[dict[str, float]]) -> dict[str, Any]:
    sec = [r["seconds"] for r in rows]
    tok = [r["tokens"] for r in rows]
    return {
        "seconds": sec, "median_seconds": statistics.median(sec), "min_seconds": min(sec), "max_seconds": max(sec),
        "tokens": tok, "median_tokens": statistics.median(tok),
        "tokens_per_s": statistics.median(t / s for t, s in zip(tok, sec, strict=True)),
        "gen_seconds": [r["gen_seconds"] for r in rows],
        "accuracy": [r["accuracy"] for r in rows],
        "mean_length": [r["mean_length"] for r in rows],
        **({"phases": [r["phases"] for r in rows]} if "phases" in rows[0] else {}),
    }


def run_variant(args: argparse.Namespace, model_dir: Path, work: Path, fixed: bool) -> dict[str, Any]:
    from transformers import TrainerCallback

    name = "fixed" if fixed else "natural"
    grpo = build_vapo("grpo", args, model_dir, work / f"{name}-vapo-grpo")
    vapo = build_vapo("vapo", args, model_dir, work / f"{name}-vapo-vapo")
    rows: dict[str, list[dict[str, float]]] = {"trl_grpo": [], "vapo_grpo": [], "vapo_vapo": []}
    holder: dict[str, Any] = {}

    class Interleave(TrainerCallback):
        """Times each TRL optimizer step; between steps runs the vapo iterations (untimed for TRL)."""

        def __init__(self) -> None:
            self.mark = 0.0

        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.mark = time.perf_counter()

        def on_step_end(self, _args: Any, state: Any, *_: Any, **__: Any) -> None:
            trl_sec = time.perf_counter() - self.mark
            st = holder["stats"]
            gen_sec, gen_tok = st["gen"][-1]
            rows["trl_grpo"].append({"seconds": trl_sec, "tokens": float(gen_tok), "gen_seconds": gen_sec,
                                     "accuracy": st["accuracy"][-1],
                                     "mean_length": gen_tok / (args.prompts * args.group_size)})
            order = (("vapo_grpo", grpo), ("vapo_vapo", vapo))
            if state.global_step % 2 == 0:
                order = order[::-1]
            with vapo_no_eos(fixed):
                for key, tr in order:
                    rows[key].append(run_vapo_iteration(tr))
            r = {k: v[-1]["seconds"] for k, v in rows.items()}
            print(f"  [{name}] round {state.global_step}{' (warm-up)' if state.global_step == 1 else ''}: "
                  + "  ".join(f"{k} {s:.2f}s ({rows[k][-1]['tokens']:.0f} tok)" for k, s in r.items()), flush=True)
            self.mark = time.perf_counter()

    trl, extra = build_trl(args, model_dir, work / f"{name}-trl", fixed, Interleave(), lr=grpo.cfg.optim.actor_lr)
    holder["stats"] = extra["stats"]
    trl.train()
    timed = {k: v[1:] for k, v in rows.items()}  # round 1 is the warm-up
    out = {k: _summary(v) for k, v in timed.items()}
    med = {k: out[k]["median_seconds"] for k in out}
    per_round_trl = [t["seconds"] / g["seconds"] for t, g in zip(timed["trl_grpo"], timed["vapo_grpo"], strict=True)]
    per_round_vapo = [v["seconds"] / g["seconds"] for v, g in zip(timed["vapo_vapo"], timed["vapo_grpo"], strict=True)]
    out["ratio_trl_over_vapo_grpo"] = med["trl_grpo"] / med["vapo_grpo"]
    out["ratio_trl_over_vapo_grpo_per_round_median"] = statistics.median(per_round_trl)
    out["ratio_vapo_over_vapo_grpo"] = med["vapo_vapo"] / med["vapo_grpo"]
    out["ratio_vapo_over_vapo_grpo_per_round_median"] = statistics.median(per_round_vapo)
    out["ratio_tokens_per_s_vapo_grpo_over_trl"] = out["vapo_grpo"]["tokens_per_s"] / out["trl_grpo"]["tokens_per_s"]
    out["warmup"] = {k: v[0] for k, v in rows.items()}
    out["trl"] = extra["info"]
    out["vapo_grpo_config"] = grpo.cfg.to_dict()
    out["vapo_vapo_config"] = vapo.cfg.to_dict()
    return out


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=32, help="prompts per iteration")
    p.add_argument("--group-size", type=int, default=8, help="answers per prompt (G ≥ 2, TRL's num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=160, help="max answer length in tokens")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per side (after one warm-up)")
    p.add_argument("--size", default="tiny", help="built-in model size")
    p.add_argument("--task", default="running_sum", help="built-in task")
    p.add_argument("--sft-steps", type=int, default=300, help="warm-start SFT steps (cached by vapo; 0 = random init)")
    p.add_argument("--variants", default="natural,fixed", help="comma list of: natural (stop at EOS), fixed (no EOS)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="small smoke run: 4 prompts × 4 answers × 48 tokens, 2 iterations")
    p.add_argument("--out", type=Path, default=None, help="result JSON (default benchmarks/results/bench_vs_trl[_quick].json)")
    args = p.parse_args(argv)
    if args.quick:
        args.prompts, args.group_size, args.max_new_tokens, args.iterations = 4, 4, 48, 2
    if min(args.prompts, args.max_new_tokens, args.iterations) < 1:
        p.error("--prompts, --max-new-tokens and --iterations must be ≥ 1")
    if args.group_size < 2:
        p.error("--group-size must be ≥ 2 (TRL's GRPOTrainer needs at least 2 generations per prompt)")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in ("natural", "fixed")]
    if bad or not variants:
        p.error(f"--variants: unknown {bad}; use natural, fixed or natural,fixed")
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = args.out or RESULTS / ("bench_vs_trl_quick.json" if args.quick else "bench_vs_trl.json")

    import transformers
    import trl

    result: dict[str, Any] = {
        "benchmark": "one RL iteration: vapo grpo preset vs TRL GRPOTrainer; vapo preset vs grpo preset",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "setup": {"prompts": args.prompts, "group_size": args.group_size, "max_new_tokens": args.max_new_tokens,
                  "iterations": args.iterations, "size": args.size, "task": args.task, "seed": args.seed},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "trl": trl.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine(), "processor": platform.processor()},
        "targets": {"trl_over_vapo_grpo_at_least": 3.0, "vapo_over_grpo_at_most": 1.6},
    }
    with tempfile.TemporaryDirectory(prefix="vapo-bench-trl-") as tmp:
        work = Path(tmp)
        print(f"warm start: {args.size} model, {args.sft_steps} SFT steps on {args.task} ...", flush=True)
        result["warm_start"] = prepare_model(args, work / "model")
        for v in variants:
            print(f"variant {v}: {args.prompts} prompts × {args.group_size} answers × ≤{args.max_new_tokens} tokens, "
                  f"{args.iterations} timed rounds", flush=True)
            result[v] = run_variant(args, work / "model", work, fixed=(v == "fixed"))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, default=str))

    print(f"\n{'variant':<8} {'side':<10} {'s/iter (median)':>16} {'tokens/iter':>12} {'tokens/s':>9} {'gen s':>7}")
    for v in variants:
        r = result[v]
        for side in ("trl_grpo", "vapo_grpo", "vapo_vapo"):
            s = r[side]
            print(f"{v:<8} {side:<10} {s['median_seconds']:>16.3f} {s['median_tokens']:>12.0f} {s['tokens_per_s']:>9.0f} "
                  f"{statistics.median(s['gen_seconds']):>7.3f}")
        print(f"{v:<8} TRL / vapo-grpo  = {r['ratio_trl_over_vapo_grpo']:.2f}× (per-round median "
              f"{r['ratio_trl_over_vapo_grpo_per_round_median']:.2f}×; tokens/s ratio {r['ratio_tokens_per_s_vapo_grpo_over_trl']:.2f}×)"
              f"   target ≥ 3")
        print(f"{v:<8} vapo / vapo-grpo = {r['ratio_vapo_over_vapo_grpo']:.2f}× (per-round median "
              f"{r['ratio_vapo_over_vapo_grpo_per_round_median']:.2f}×)   target ≤ 1.6")
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
