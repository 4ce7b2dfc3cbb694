"""`vapo diagnose RUN`: measure where value-based RL breaks on one run, against Monte-Carlo truth.

Reads ``runs/<name>/`` (config.yaml, metrics.jsonl, eval.jsonl, checkpoints/step_N/{policy,
critic}, checkpoints/critic_init) and writes ``<out>/diagnostics.json`` (every number) and
``<out>/report.html`` (self-contained). Sections (see each module's docstring):

1. critic error vs MC values            (vapo.diagnostics.critic)
2. advantage quality vs MC advantages   (vapo.diagnostics.advantage)
3. length weighting of the loss          (vapo.diagnostics.weighting)
4. exploration                           (vapo.diagnostics.exploration)
5. generalisation per checkpoint        (vapo.diagnostics.generalisation)

Where the time goes: the MC continuations of sections 1–2 (2·prefixes states × continuations
sequences) and the per-checkpoint evaluations of section 5; ``Budget`` holds the knobs.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vapo.config import load_config_file
from vapo.diagnostics import advantage as adv_mod
from vapo.diagnostics import critic as critic_mod
from vapo.diagnostics import exploration as expl_mod
from vapo.diagnostics import generalisation as gen_mod
from vapo.diagnostics import weighting as weight_mod
from vapo.diagnostics.common import (
    bucket_labels,
    bucket_of,
    check_positive,
    generate_batch,
    length_edges,
)
from vapo.diagnostics.mc import mc_values, probe_positions, spread_rows
from vapo.diagnostics.report import write_outputs
from vapo.errors import VapoError
from vapo.models import Critic, load_policy_and_tokenizer, response_values
from vapo.tasks import task_from_config
from vapo.train import adapter
from vapo.train.batch import forward_rows
from vapo.train.checkpoint import readable_checkpoints
from vapo.train.collect import RewardSettings
from vapo.train.rundir import read_jsonl
from vapo.train.ui import progress_ui

logger = logging.getLogger("vapo.diagnostics")

REL_POSITIONS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)
SECTION_TITLES = {
    "critic": "1. Critic error",
    "advantage": "2. Advantage quality",
    "weighting": "3. Length weighting",
    "exploration": "4. Exploration",
    "generalisation": "5. Generalisation",
}


@dataclass(frozen=True)
class Budget:
    """Estimate counts: more = tighter CIs and more time.

    prefixes: prefix states probed in sections 1–2 (spread over responses × REL_POSITIONS; section
        2 also probes each state's successor, so 2·prefixes MC values are estimated).
    continuations: M, MC continuations per prefix state.
    batch_prompts: prompts of the regenerated batch (× the run's group size G answers).
    checkpoints: at most this many checkpoints evaluated in section 5.
    eval_prompts, eval_samples: problems per split and answers per problem in section 5.
    """

    prefixes: int = 96
    continuations: int = 16
    batch_prompts: int = 16
    checkpoints: int = 4
    eval_prompts: int = 24
    eval_samples: int = 2

    @classmethod
    def quick(cls) -> Budget:
        return cls(prefixes=16, continuations=4, batch_prompts=4, checkpoints=2, eval_prompts=4, eval_samples=1)


def _load_run(run: Path, step: int | None) -> tuple[Any, int, Path, list[tuple[int, Path]]]:
    run = Path(run)
    if not run.is_dir():
        raise VapoError(f"run directory {run} does not exist", where="vapo diagnose RUN",
                        fix="pass a directory made by `vapo train` (runs/<name>)")
    if not (run / "config.yaml").is_file():
        raise VapoError(f"{run} has no config.yaml", where="vapo diagnose RUN", fix="pass a directory made by `vapo train`")
    cfg = load_config_file(run / "config.yaml")
    # Only checkpoints whose files match their manifest (a damaged one is skipped, and said).
    found, skipped = readable_checkpoints(run, log=logger.warning)
    bad = [f"{p.name}: {why}" for p, why in skipped]
    if not found:
        raise VapoError(f"no complete checkpoint in {run / 'checkpoints'}" + (f" ({'; '.join(bad)})" if bad else ""),
                        where="vapo diagnose RUN",
                        fix="train the run until its first checkpoint (step_0 is written after value pretraining)")
    if step is None:
        step, ckpt = found[-1]
    else:
        match = [p for s, p in found if s == step]
        if not match:
            why = [b for b in bad if b.startswith(f"step_{step}:")]
            raise VapoError(f"no good checkpoint step_{step} in {run / 'checkpoints'}" + (f" ({why[0]})" if why else ""),
                            where="--step", fix=f"use one of: {', '.join(str(s) for s, _ in found)}")
        ckpt = match[0]
    return cfg, step, ckpt, found


def _load_critic(path: Path) -> Any | None:
    return Critic.from_pretrained(path).eval() if path.is_dir() else None


def _run_advantages(cfg: Any, batch: Any, values: torch.Tensor | None) -> torch.Tensor:
    """The run's own advantages [B, T] on ``batch`` (through vapo.train.adapter, as the trainer
    computes them; no in-reward KL: the regenerated batch has no reference log-probs)."""
    a = cfg.algo
    mask = batch.response_mask
    scores = batch.scores.float()
    rewards = adapter.token_rewards(a.model_copy(update={"kl": a.kl.model_copy(update={"coef": 0.0})}), scores, mask)
    adv = adapter.advantage_output(a, rewards, mask, values=values, scores=scores, group_index=batch.group_index).advantages
    return adv


@torch.no_grad()
def _all_values(critic: Any, batch: Any, max_tokens: int) -> torch.Tensor:
    """The critic's values [B, T] of ``batch``, over the trainer's micro-batches."""
    values, _ = forward_rows(response_values, critic, batch, device=next(critic.parameters()).device, max_tokens=max_tokens)
    return values


def diagnose(run: Path, *, step: int | None = None, out: Path | None = None, budget: Budget = Budget(),
             seed: int = 0, progress: bool = True, html: bool = True) -> dict[str, Any]:
    """Run every section on checkpoint ``step`` (default: the latest) of ``run`` and write the report.

    Returns the diagnostics dictionary (what diagnostics.json holds).
    """
    for name in ("prefixes", "continuations", "batch_prompts", "checkpoints", "eval_prompts", "eval_samples"):
        check_positive(name, getattr(budget, name), where=f"vapo diagnose --{name.replace('_', '-')}")
    t_start = time.perf_counter()
    run = Path(run)
    cfg, step, ckpt, found = _load_run(run, step)
    out = Path(out) if out is not None else run / "diagnostics" / f"step_{step}"
    out.mkdir(parents=True, exist_ok=True)
    task = task_from_config(cfg.task)
    policy, tokenizer = load_policy_and_tokenizer(ckpt / "policy")
    policy.eval()
    critic = _load_critic(ckpt / "critic") if cfg.algo.critic.enabled else None
    settings = RewardSettings.from_config(cfg)
    edges = length_edges(settings.max_new_tokens)
    labels = bucket_labels(edges)
    G = cfg.rollout.group_size
    timings: dict[str, float] = {}
    result: dict[str, Any] = {
        "run": str(run), "step": step, "checkpoint": str(ckpt), "preset": cfg.preset, "task": cfg.task.name,
        "budget": asdict(budget), "seed": seed, "length_buckets": {"edges": edges, "labels": labels},
        "rel_positions": list(REL_POSITIONS), "has_critic": critic is not None,
        "settings": asdict(settings),
    }
    gen = torch.Generator().manual_seed(seed + 17)
    with progress_ui(progress) as ui:
        # ---- the regenerated batch (sections 1–4 use it)
        t0 = time.perf_counter()
        tid = ui.add_task("regenerate batch", total=1)
        batch = generate_batch(policy, tokenizer, task, settings, n_prompts=budget.batch_prompts, group_size=G, seed=seed)
        ui.update(tid, advance=1, info=f"{len(batch.lengths)} answers, mean length {batch.lengths.float().mean():.0f}")
        values = _all_values(critic, batch, cfg.optim.micro_batch_tokens) if critic is not None else None
        timings["batch"] = time.perf_counter() - t0

        # ---- section 3: length weighting
        t0 = time.perf_counter()
        norm_len = adapter.norm_len(cfg)
        run_adv = _run_advantages(cfg, batch, values)
        tid = ui.add_task("3 length weighting", total=1)
        shares = weight_mod.weight_shares(batch.response_mask, batch.lengths, edges, labels, norm_len)
        norms = weight_mod.bucket_grad_norms(policy, batch, run_adv, edges, labels, norm_len)
        ui.update(tid, advance=1)
        result["weighting"] = {"shares": shares, "grad_norms": norms, "run_mode": cfg.algo.policy_loss.agg_mode,
                               "norm_len": norm_len, "batch_responses": len(batch.lengths),
                               "note": "batch regenerated with the checkpoint's policy (runs do not store batches); "
                                       "gradient of the surrogate at ratio 1, NLL/KL terms excluded"}
        result["weighting"]["finding"] = weight_mod.finding(result["weighting"], cfg.algo.policy_loss.agg_mode, labels)
        timings["weighting"] = time.perf_counter() - t0

        # ---- sections 1–2: MC values at prefixes and their successors
        t0 = time.perf_counter()
        lengths = batch.lengths.numpy()
        n_rows = max(1, math.ceil(budget.prefixes / len(REL_POSITIONS)))
        rows = spread_rows(lengths, n_rows)
        p_rows, p_ts, p_rel = probe_positions(lengths, rows, REL_POSITIONS)
        K = len(p_rows)
        all_rows, all_ts = np.concatenate([p_rows, p_rows]), np.concatenate([p_ts, p_ts + 1])
        tid = ui.add_task("1-2 MC continuations", total=2 * K)
        mc = mc_values(policy, tokenizer, task, batch, all_rows, all_ts, continuations=budget.continuations,
                       settings=settings, generator=gen, on_progress=lambda n: ui.update(tid, advance=n))
        v_mc, var_mc = mc.mean[:K], mc.var_mean[:K]
        a_mc, a_noise = mc.mean[K:] - mc.mean[:K], mc.var_mean[K:] + mc.var_mean[:K]
        p_bucket = bucket_of(lengths[p_rows], edges)
        timings["mc"] = time.perf_counter() - t0
        probes = {"rows": p_rows.tolist(), "t": p_ts.tolist(), "rel": p_rel.tolist(), "length": lengths[p_rows].tolist(),
                  "bucket": p_bucket.tolist(), "v_mc": v_mc.tolist(), "v_mc_lo": mc.lo[:K].tolist(),
                  "v_mc_hi": mc.hi[:K].tolist(), "v_mc_next": mc.mean[K:].tolist(), "a_mc": a_mc.tolist(),
                  "a_mc_var": a_noise.tolist(), "continuations": budget.continuations}
        t0 = time.perf_counter()
        crit: dict[str, Any] = {"has_critic": critic is not None, "probes": probes}
        if critic is not None:
            v_c = np.array([float(values[r, t]) for r, t in zip(p_rows, p_ts, strict=True)])
            probes["v_critic"] = v_c.tolist()
            crit["current"] = critic_mod.critic_error_report(v_c, v_mc, var_mc, p_rel, p_bucket, labels)
            crit["finding"] = critic_mod.finding(crit["current"], "critic")
            crit["pretraining"] = _pretraining_probe(run, step, found, cfg, task, tokenizer, settings, budget, seed,
                                                     ui, labels, edges, reuse=(batch, p_rows, p_ts, p_rel, p_bucket, v_mc, var_mc))
        else:
            crit["finding"] = "no critic in this run (critic-free preset): nothing to compare; MC values still in probes"
        result["critic"] = crit
        advs = adv_mod.estimator_advantages(batch, values, cfg.algo.advantage)
        result["advantage"] = adv_mod.advantage_report(advs, p_rows, p_ts, a_mc, a_noise, p_bucket, labels)
        result["advantage"]["has_critic"] = critic is not None
        result["advantage"]["run_estimator"] = cfg.algo.advantage.estimator
        result["advantage"]["run_lambda"] = cfg.algo.advantage.lam_actor
        result["advantage"]["finding"] = adv_mod.finding(result["advantage"], critic is not None)
        timings["critic_advantage"] = time.perf_counter() - t0

        # ---- section 4: exploration
        metrics = read_jsonl(run / "metrics.jsonl")
        evals = read_jsonl(run / "eval.jsonl")
        result["exploration"] = expl_mod.exploration_report(metrics, evals, batch.correct.numpy(), batch.scores.numpy(),
                                                            batch.group_index.numpy())
        result["exploration"]["finding"] = expl_mod.finding(result["exploration"])

        # ---- section 5: generalisation per checkpoint
        t0 = time.perf_counter()
        picked = gen_mod.pick_checkpoints(found, budget.checkpoints, must=step)
        tid = ui.add_task("5 checkpoints", total=len(picked))
        per: dict[str, Any] = {}
        for s, path in picked:
            pol = policy if s == step else load_policy_and_tokenizer(path / "policy")[0].eval()
            per[str(s)] = gen_mod.evaluate_checkpoint(pol, tokenizer, task, cfg, prompts=budget.eval_prompts,
                                                      samples=budget.eval_samples, seed=1234)
            ui.update(tid, advance=1, info=f"step {s}")
        result["generalisation"] = {"checkpoints": per, "eval_series": gen_mod.eval_series(evals),
                                    "prompts": budget.eval_prompts, "samples": budget.eval_samples}
        result["generalisation"]["finding"] = gen_mod.finding(result["generalisation"])
        timings["generalisation"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    result["timings"] = timings

    write_outputs(result, out, html=html)
    result["out"] = str(out)
    return result


def _pretraining_probe(run: Path, step: int, found: list[tuple[int, Path]], cfg: Any, task: Any, tokenizer: Any,
                       settings: RewardSettings, budget: Budget, seed: int, ui: Any, labels: list[str],
                       edges: list[int], reuse: tuple) -> dict[str, Any] | None:
    """The critic before (checkpoints/critic_init) and after (step_0/critic) value pretraining, both
    against MC values of the policy they were trained for (the warm-start policy of step_0)."""
    init_dir = run / "checkpoints" / "critic_init"
    step0 = [p for s, p in found if s == 0]
    if not init_dir.is_dir() or not step0 or not (step0[0] / "critic").is_dir():
        return None

    before, after = _load_critic(init_dir), _load_critic(step0[0] / "critic")
    if step == 0:
        batch, rows, ts, rel, bucket, v_mc, var_mc = reuse
    else:
        pol0 = load_policy_and_tokenizer(step0[0] / "policy")[0].eval()
        n_prompts = max(1, budget.batch_prompts // 2)
        batch = generate_batch(pol0, tokenizer, task, settings, n_prompts=n_prompts, group_size=cfg.rollout.group_size,
                               seed=seed + 1)
        lengths = batch.lengths.numpy()
        rows = spread_rows(lengths, max(1, math.ceil(budget.prefixes / 2 / len(REL_POSITIONS))))
        rows, ts, rel = probe_positions(lengths, rows, REL_POSITIONS)
        bucket = bucket_of(lengths[rows], edges)
        tid = ui.add_task("1 MC (π at step 0)", total=len(rows))
        mc = mc_values(pol0, tokenizer, task, batch, rows, ts, continuations=budget.continuations, settings=settings,
                       generator=torch.Generator().manual_seed(seed + 29), on_progress=lambda n: ui.update(tid, advance=n))
        v_mc, var_mc = mc.mean, mc.var_mean
    out = {"n_prefixes": len(rows), "policy": "step_0"}
    for name, c in (("before", before), ("after", after)):
        v = critic_mod.critic_values_at(c, batch, rows, ts, max_tokens=cfg.optim.micro_batch_tokens)
        out[name] = critic_mod.critic_error_report(v, v_mc, var_mc, rel, bucket, labels)
    return out
