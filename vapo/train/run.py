"""Starting, continuing and finishing a run: the phases around the RL loop, and the loop.

``start_run`` / ``resume_run`` → warm start, evaluation, value pretraining → :func:`train_loop`
(``Trainer.iterate`` per iteration, then the callbacks, then metrics.jsonl, evaluation and
checkpoints on schedule) → final evaluation, checkpoint, plots, summary.

Callbacks (:class:`Callback`) are how other code joins the loop without the loop knowing it:
the diagnostics (``vapo.diagnostics.hook.DiagnosticsCallback``, for ``diagnose_every``), tests,
metric sinks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vapo.config import Config, check_trainable, load_config_file
from vapo.errors import ConfigError, VapoError
from vapo.train import distributed
from vapo.train.batch import Experience
from vapo.train.evaluate import SPLITS, evaluate_split
from vapo.train.rundir import append_jsonl, latest_checkpoint, new_run_dir, read_jsonl
from vapo.train.trainer import Trainer
from vapo.train.ui import UI, StopFlag, graceful_interrupts, progress_ui

console = Console()

# Metrics shown live on the RL progress bar.
_LIVE = (("accuracy", "acc {:.2f}"), ("response_length", "len {:.0f}"), ("entropy", "H {:.2f}"),
         ("explained_variance", "EV {:+.2f}"), ("approx_kl", "kl {:.3f}"), ("time_iter", "{:.1f}s/it"))


class Callback:
    """A hook into the training loop; override any of the methods (each default does nothing).

    ``handles``: the config fields this callback implements (e.g. ``{"diagnose_every"}``); a run
    whose config sets such a field without a callback that handles it is refused before it starts.
    """

    handles: frozenset[str] = frozenset()

    def on_loop_start(self, trainer: Trainer) -> None:
        """Before the first RL iteration of this process (after warm start / value pretraining / resume)."""

    def on_iteration_end(self, trainer: Trainer, exp: Experience, metrics: dict[str, Any]) -> None:
        """After ``trainer.iterate()``; ``metrics`` may be extended in place before it is logged."""

    def on_loop_end(self, trainer: Trainer) -> None:
        """After the last RL iteration (not called when the loop was interrupted)."""


def check_callbacks(cfg: Config, callbacks: Sequence[Callback]) -> None:
    """Refuse a config field that only a callback implements when no given callback handles it."""
    handled = set().union(*(cb.handles for cb in callbacks)) if callbacks else set()
    if cfg.diagnose_every and "diagnose_every" not in handled:
        raise ConfigError(
            f"diagnose_every={cfg.diagnose_every} needs the diagnostics callback, and none was given",
            where="start_run/resume_run(callbacks=...)",
            fix="run through `vapo train`, or pass callbacks=[vapo.diagnostics.hook.DiagnosticsCallback()]",
        )


def _evaluate(trainer: Trainer, ui: UI) -> dict[str, Any]:
    out = {}
    with trainer.dist.full_params(trainer.policy):  # under torchrun: rank 0 evaluates, the others wait
        if trainer.dist.is_writer:
            out = _evaluate_splits(trainer, ui)
    trainer.policy.train()
    return trainer.dist.broadcast(out)


def _evaluate_splits(trainer: Trainer, ui: UI) -> dict[str, Any]:
    cfg = trainer.cfg
    task_id = ui.add_task(f"eval @ {trainer.iteration}", total=len(SPLITS))
    out = {}
    for split in SPLITS:
        r = evaluate_split(
            trainer.policy, trainer.tokenizer, trainer.task, split, prompts=cfg.eval.prompts, samples=cfg.eval.samples,
            temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
        )
        r["iteration"] = trainer.iteration
        append_jsonl(trainer.run_dir / "eval.jsonl", r)
        out[split] = r
        ui.update(task_id, advance=1, info=f"{split} acc {r['accuracy']:.3f}")
    return out


def train_loop(trainer: Trainer, ui: UI, flag: StopFlag, callbacks: Sequence[Callback] = ()) -> bool:
    """RL iterations until done or interrupted; returns True when all iterations ran."""
    cfg = trainer.cfg
    n = cfg.train.iterations
    task_id = ui.add_task("RL " + cfg.preset, total=n, completed=trainer.iteration)
    for cb in callbacks:
        cb.on_loop_start(trainer)
    while trainer.iteration < n:
        if trainer.dist.any(flag.requested):
            path = trainer.save_checkpoint()
            if not trainer.dist.is_writer:
                return False
            append_jsonl(trainer.run_dir / "events.jsonl", {"phase": "interrupted", "iteration": trainer.iteration, "time": time.time()})
            ui.log(f"[yellow]interrupted: saved {path}; continue with `vapo train --resume {trainer.run_dir}`")
            return False
        m, exp = trainer.iterate()
        for cb in callbacks:
            cb.on_iteration_end(trainer, exp, m)
        if trainer.dist.is_writer:
            append_jsonl(trainer.run_dir / "metrics.jsonl", m)
        ui.update(task_id, advance=1, info="  ".join(f.format(m[k]) for k, f in _LIVE if k in m))
        it = trainer.iteration
        if cfg.train.eval_every and it % cfg.train.eval_every == 0 and it < n:
            _evaluate(trainer, ui)
        if cfg.train.checkpoint_every and it % cfg.train.checkpoint_every == 0 and it < n:
            trainer.save_checkpoint()
    for cb in callbacks:
        cb.on_loop_end(trainer)
    return True


def _finish(trainer: Trainer, ui: UI, t_start: float) -> dict[str, Any]:
    from vapo.train.plots import make_plots

    final = _evaluate(trainer, ui)
    trainer.save_checkpoint()
    if not trainer.dist.is_writer:
        return trainer.dist.broadcast(None)
    plots = make_plots(trainer.run_dir)
    evals = read_jsonl(trainer.run_dir / "eval.jsonl")
    first = {e["split"]: e for e in evals if e["iteration"] == 0}
    summary = {
        "run_dir": str(trainer.run_dir),
        "preset": trainer.cfg.preset,
        "task": trainer.cfg.task.name,
        "iterations": trainer.iteration,
        "seconds": time.time() - t_start,
        "warm_start": {s: first[s]["accuracy"] for s in first},
        "final": {s: final[s]["accuracy"] for s in final},
        "final_by_size": {s: final[s]["by_size"] for s in final},
        "warm_start_by_size": {s: first[s]["by_size"] for s in first},
        "plots": [str(p) for p in plots],
    }
    import json

    (trainer.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return trainer.dist.broadcast(summary)


def print_summary(summary: dict[str, Any]) -> None:
    t = Table(title=f"{summary['preset']} on {summary['task']}: {summary['iterations']} iterations in {summary['seconds']:.0f}s")
    t.add_column("split")
    t.add_column("warm start", justify="right")
    t.add_column("final", justify="right")
    t.add_column("gain", justify="right")
    t.add_column("longest size: start → final", justify="right")
    for split, acc in summary["final"].items():
        ws = summary["warm_start"].get(split)
        by_f = summary["final_by_size"][split]
        by_w = summary["warm_start_by_size"].get(split, {})
        longest = max(by_f, key=int)
        lw = by_w.get(longest)
        t.add_row(
            split, "-" if ws is None else f"{ws:.3f}", f"{acc:.3f}", "-" if ws is None else f"{acc - ws:+.3f}",
            f"size {longest}: {'-' if lw is None else f'{lw:.2f}'} → {by_f[longest]:.2f}",
        )
    console.print(t)
    console.print(f"run directory: {summary['run_dir']}  (metrics.jsonl, eval.jsonl, checkpoints/, plots/)")


def start_run(cfg: Config, *, name: str | None = None, progress: bool = True,
              callbacks: Sequence[Callback] = ()) -> dict[str, Any] | None:
    """Create runs/<name>, warm-start, pretrain the critic, run RL, evaluate, plot, summarise."""
    check_trainable(cfg)
    check_callbacks(cfg, callbacks)
    dist = distributed.current()
    cfg = _resolve_dist(cfg, dist)
    run_dir = None
    if dist.is_writer:  # rank 0 creates the run directory; the others learn its path
        run_dir = new_run_dir(cfg.train.runs_dir, name, f"{cfg.preset}-{cfg.task.name}-s{cfg.seed}")
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
    run_dir = dist.broadcast(run_dir)
    progress = progress and dist.is_writer
    if dist.is_writer:
        console.print(f"[bold]vapo train[/]: preset {cfg.preset}, task {cfg.task.name}, model {cfg.model.path or cfg.model.size}, "
                  f"{cfg.train.iterations} iterations × {cfg.rollout.prompts_per_iter} prompts × {cfg.rollout.group_size} answers → {run_dir}")
    t_start = time.time()
    trainer = Trainer(cfg, run_dir, progress=progress, dist=dist)
    with graceful_interrupts() as flag, progress_ui(progress) as ui:
        try:
            trainer.build(ui, stop=flag)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted during the warm start: nothing to resume yet (the next run starts over)")
            return None
        if trainer.uses_critic:
            trainer.save_models(run_dir / "checkpoints", critic_init=trainer.critic)
        _evaluate(trainer, ui)
        trainer.pretrain_value(ui, flag)
        if flag.requested:
            console.print("[yellow]interrupted during value pretraining: nothing to resume yet (the warm start is cached)")
            return None
        trainer.save_checkpoint()
        if not train_loop(trainer, ui, flag, callbacks):
            return None
        summary = _finish(trainer, ui, t_start)
    if dist.is_writer:
        print_summary(summary)
    return summary


def _resolve_dist(cfg: Config, dist: distributed.Dist) -> Config:
    """Refuse what does not run under torchrun yet; fix dist.rollout_streams (null: one stream per
    process of this first launch) so that config.yaml records the run's streams."""
    if dist.enabled and cfg.diagnose_every:
        raise ConfigError("diagnose_every is not supported under torchrun (the probes sample from one process)",
                          where="diagnose_every", fix="set diagnose_every=0, or run `vapo diagnose` on a checkpoint")
    if cfg.dist.rollout_streams is None:
        cfg = cfg.model_copy(update={"dist": cfg.dist.model_copy(update={"rollout_streams": dist.world})})
    dist.streams(cfg.dist.rollout_streams)  # refuses a count that does not split over the processes
    if cfg.rollout.prompts_per_iter % cfg.dist.rollout_streams:
        raise ConfigError(f"rollout.prompts_per_iter={cfg.rollout.prompts_per_iter} does not split into "
                          f"{cfg.dist.rollout_streams} rollout streams", where="rollout.prompts_per_iter / dist.rollout_streams",
                          fix=f"use a multiple of {cfg.dist.rollout_streams} prompts")
    return cfg


def resume_run(run_dir: Path, *, progress: bool = True, callbacks: Sequence[Callback] = ()) -> dict[str, Any] | None:
    """Continue a run from its latest checkpoint, exactly as if it had not stopped."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise VapoError(f"{run_dir} has no config.yaml", where="--resume", fix="pass a directory made by `vapo train`")
    cfg = load_config_file(cfg_path)
    check_trainable(cfg, str(cfg_path))
    check_callbacks(cfg, callbacks)
    dist = distributed.current()
    cfg = _resolve_dist(cfg, dist)
    progress = progress and dist.is_writer
    step, ckpt = latest_checkpoint(run_dir)
    if step >= cfg.train.iterations and (run_dir / "summary.json").is_file():
        raise VapoError(f"{run_dir} already finished all {cfg.train.iterations} iterations", where="--resume",
                        fix="start a new run (e.g. with more --iterations)")
    # Metrics logged after the checkpoint will be produced again: set them aside, never delete.
    for fname in ("metrics.jsonl", "eval.jsonl") if dist.is_writer else ():
        path = run_dir / fname
        rows = read_jsonl(path)
        keep = [r for r in rows if r.get("iteration", 0) <= step]
        if len(keep) < len(rows):
            stamp = int(time.time())
            path.rename(run_dir / f"{fname}.before-resume-{stamp}")
            for r in keep:
                append_jsonl(path, r)
    if dist.is_writer:
        console.print(f"[bold]vapo train --resume[/]: {run_dir} from {ckpt.name} ({step}/{cfg.train.iterations} iterations)")
        append_jsonl(run_dir / "events.jsonl", {"phase": "resume", "iteration": step, "time": time.time()})
    dist.barrier()  # the logs are set aside before any process goes on
    t_start = time.time()
    trainer = Trainer(cfg, run_dir, progress=progress, dist=dist)
    trainer.load_checkpoint(ckpt)
    with graceful_interrupts() as flag, progress_ui(progress) as ui:
        if not train_loop(trainer, ui, flag, callbacks):
            return None
        summary = _finish(trainer, ui, t_start)
    if dist.is_writer:
        print_summary(summary)
    return summary
