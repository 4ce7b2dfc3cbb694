"""Starting, continuing and finishing a run: the phases around the RL loop, and the loop.

``start_run`` / ``resume_run`` → warm start, evaluation, value pretraining → :func:`train_loop`
(``Trainer.iterate`` per iteration, then the callbacks, then metrics.jsonl, evaluation and
checkpoints on schedule) → final evaluation, checkpoint, plots, summary.

Callbacks (:class:`Callback`) are how other code joins the loop without the loop knowing it:
the diagnostics (``vapo.diagnostics.hook.DiagnosticsCallback``, for ``diagnose_every``), tests,
metric sinks.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from vapo.config import Config, check_trainable, fork_differences, load_config_file
from vapo.errors import ConfigError, VapoError
from vapo.models import validate_model
from vapo.train import distributed
from vapo.train.batch import Experience
from vapo.train.checkpoint import (
    checkpoint_finished,
    latest_good_checkpoint,
    list_checkpoints,
    verify_checkpoint,
)
from vapo.train.evaluate import SPLITS, eval_seed, evaluate_split
from vapo.train.faults import DivergenceError
from vapo.train.plots import make_plots
from vapo.train.rundir import RunLock, append_jsonl, new_run_dir, plan_run_dir, read_jsonl
from vapo.train.sinks import JsonlSink, Sinks, make_sinks, validate_sinks
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


def _evaluate(trainer: Trainer, ui: UI, sinks: Sinks | None = None) -> dict[str, Any]:
    out = {}
    with trainer.dist.full_params(trainer.policy):  # under torchrun: rank 0 evaluates, the others wait
        if trainer.dist.is_writer:
            out = _evaluate_splits(trainer, ui)
    trainer.policy.train()
    out = trainer.dist.broadcast(out)
    if sinks is not None:
        sinks.log_eval(out, trainer.iteration)
    return out


def _evaluate_splits(trainer: Trainer, ui: UI) -> dict[str, Any]:
    cfg = trainer.cfg
    task_id = ui.add_task(f"eval @ {trainer.iteration}", total=len(SPLITS))
    out = {}
    for split in SPLITS:
        r = evaluate_split(
            trainer.policy, trainer.tokenizer, trainer.task, split, prompts=cfg.eval.prompts, samples=cfg.eval.samples,
            temperature=cfg.eval.temperature, top_p=cfg.eval.top_p, max_new_tokens=cfg.rollout.max_new_tokens,
            seed=eval_seed(cfg.seed), verify_timeout=cfg.task.verify_timeout,
        )
        r["iteration"] = trainer.iteration
        append_jsonl(trainer.run_dir / "eval.jsonl", r)
        out[split] = r
        ui.update(task_id, advance=1, info=f"{split} acc {r['accuracy']:.3f}")
    return out


def train_loop(trainer: Trainer, ui: UI, flag: StopFlag, callbacks: Sequence[Callback] = (),
               sinks: Sinks | None = None) -> bool:
    """RL iterations until done or interrupted; returns True when all iterations ran. Each
    iteration's metrics row goes to ``sinks`` (metrics.jsonl alone when None)."""
    cfg = trainer.cfg
    if sinks is None:  # under torchrun rank 0 alone logs
        sinks = Sinks([JsonlSink(trainer.run_dir)] if trainer.dist.is_writer else [])
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
        try:
            m, exp = trainer.iterate()
        except DivergenceError as e:
            raise _diverged(trainer, e) from None
        if trainer.uses_critic and cfg.algo.critic.probe_every and trainer.iteration % cfg.algo.critic.probe_every == 0:
            m.update(_probe_metrics(trainer))
        for cb in callbacks:
            cb.on_iteration_end(trainer, exp, m)
        sinks.log_metrics(m, step=trainer.iteration)
        ui.update(task_id, advance=1, info="  ".join(f.format(m[k]) for k, f in _LIVE if k in m))
        it = trainer.iteration
        if cfg.train.eval_every and it % cfg.train.eval_every == 0 and it < n:
            _evaluate(trainer, ui, sinks)
        if cfg.train.checkpoint_every and it % cfg.train.checkpoint_every == 0 and it < n:
            trainer.save_checkpoint()
    for cb in callbacks:
        cb.on_loop_end(trainer)
    return True


def _diverged(trainer: Trainer, e: DivergenceError) -> VapoError:
    """The run stops: keep the last finite weights in a checkpoint (the skipped steps left them
    untouched), log the event, and say what diverged and where the weights are."""
    ck = trainer.run_dir / "checkpoints" / f"step_{trainer.iteration}"
    if not trainer.dist.broadcast(ck.is_dir()):  # rank 0's view: every process takes part in the save, or none
        trainer.save_checkpoint()
    if trainer.dist.is_writer:
        append_jsonl(trainer.run_dir / "events.jsonl", {"phase": "diverged", "iteration": trainer.iteration,
                                                        "message": e.what, "time": time.time()})
    return VapoError(f"{e.what}. The run stopped; checkpoint {ck} holds its weights at iteration {trainer.iteration} "
                     "(finite: no skipped update was applied)", where=e.where, fix=e.fix)


def _probe_metrics(trainer: Trainer) -> dict[str, float]:
    """The critic probe during RL (algo.critic.probe_every): the policy has moved, so the MC values
    are re-estimated on a fresh probe; ``critic/*`` metrics and the probe's cost ``time_probe``."""
    t0 = time.perf_counter()
    q = trainer.probe_critic(trainer.draw_probe())
    m = {f"critic/{k}": q[k] for k in ("ev", "achievable_ev", "ev_vs_mc", "rmse_vs_mc", "bias_vs_mc")}
    for rho, f in q["by_position"].items():
        m[f"critic/rmse_vs_mc@{rho}"], m[f"critic/bias_vs_mc@{rho}"] = f["rmse_vs_mc"], f["bias_vs_mc"]
    m["time_probe"] = time.perf_counter() - t0
    return m


def _critic_quality(run_dir: Path) -> dict[str, Any] | None:
    """The critic's figures at the end of value pretraining (events.jsonl), None without it."""
    ends = [r for r in read_jsonl(run_dir / "events.jsonl") if r.get("phase") == "value_pretrain_end"]
    return ends[-1]["critic_quality"] if ends else None


def _finish(trainer: Trainer, ui: UI, t_start: float, sinks: Sinks | None = None) -> dict[str, Any]:
    final = _evaluate(trainer, ui, sinks)
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
    cq = _critic_quality(trainer.run_dir)
    if cq is not None:
        summary["critic_quality"] = cq

    (trainer.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if sinks is not None:
        sinks.log_summary(summary)
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


def _from_start(trainer: Trainer, callbacks: Sequence[Callback], t_start: float, sinks: Sinks) -> dict[str, Any] | None:
    """Warm start, evaluation, value pretraining, RL, final evaluation: a new run, or a resumed one
    that was stopped before its first checkpoint (started over from its config)."""
    run_dir = trainer.run_dir
    with graceful_interrupts() as flag, progress_ui(trainer.progress) as ui:
        try:
            trainer.build(ui, stop=flag)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted during the warm start: `vapo train --resume {run_dir}` starts it over")
            return None
        if trainer.uses_critic:
            trainer.save_models(run_dir / "checkpoints", critic_init=trainer.critic)
        _evaluate(trainer, ui, sinks)
        try:
            trainer.pretrain_value(ui, flag)
        except DivergenceError as e:  # no checkpoint exists yet: nothing to keep but the warm start's cache
            if trainer.dist.is_writer:
                append_jsonl(run_dir / "events.jsonl", {"phase": "diverged", "iteration": 0, "message": e.what, "time": time.time()})
            raise VapoError(f"value pretraining diverged: {e.what}", where=e.where,
                            fix="lower optim.critic_lr or optim.grad_clip, check the task's rewards, and start a new run") from None
        if flag.requested:
            console.print(f"[yellow]interrupted during value pretraining: `vapo train --resume {run_dir}` starts it over "
                          "(the warm start is cached)")
            return None
        trainer.save_checkpoint()
        if not train_loop(trainer, ui, flag, callbacks, sinks):
            return None
        return _finish(trainer, ui, t_start, sinks)


def _writer_only(dist: distributed.Dist, make: Callable[[], Any]) -> Any:
    """``make()`` on rank 0 (the run lock, the metric sinks: rank 0 alone writes and logs), on the
    other processes a stand-in: no lock, and sinks that log nothing."""
    return make() if dist.is_writer else contextlib.nullcontext(Sinks([]))


def start_run(cfg: Config, *, name: str | None = None, progress: bool = True,
              callbacks: Sequence[Callback] = ()) -> dict[str, Any] | None:
    """Create runs/<name>, warm-start, pretrain the critic, run RL, evaluate, plot, summarise.

    Everything that can be checked (config, run name, task options and data, model) is checked
    before the run directory exists: a bad invocation leaves nothing behind. The run directory is
    locked for the life of the run (a second process on it is refused). Under torchrun every
    process runs this; rank 0 alone creates the run directory, holds the lock and logs to the
    metric sinks (the evaluation, the critic probe and the summary are rank 0's, broadcast)."""
    check_trainable(cfg)
    check_callbacks(cfg, callbacks)
    validate_sinks(cfg)
    dist = distributed.current()
    cfg = _resolve_dist(cfg, dist)
    progress = progress and dist.is_writer
    default = f"{cfg.preset}-{cfg.task.name.replace(':', '-')}-s{cfg.seed}"
    planned = dist.broadcast(plan_run_dir(cfg.train.runs_dir, name, default) if dist.is_writer else None)
    trainer = Trainer(cfg, planned, progress=progress, dist=dist)  # builds the task: bad task options or data fail here
    validate_model(cfg, trainer.task)  # config.json and tokenizer, without the weights
    run_dir = dist.broadcast(new_run_dir(cfg.train.runs_dir, name, default) if dist.is_writer else None)
    trainer.run_dir = run_dir
    with _writer_only(dist, lambda: RunLock(run_dir)), _writer_only(dist, lambda: make_sinks(cfg, run_dir)) as sinks:
        if dist.is_writer:
            (run_dir / "config.yaml").write_text(cfg.to_yaml())
            sinks.log_config(cfg.to_dict())
            console.print(f"[bold]vapo train[/]: preset {cfg.preset}, task {cfg.task.name}, model {cfg.model.path or cfg.model.size}, "
                          f"{cfg.train.iterations} iterations × {cfg.rollout.prompts_per_iter} prompts × {cfg.rollout.group_size} answers → {run_dir}")
        summary = _from_start(trainer, callbacks, time.time(), sinks)
    if summary is not None and dist.is_writer:
        print_summary(summary)
    return summary


def fork_run(checkpoint: Path, cfg: Config, *, name: str | None = None, progress: bool = True,
             callbacks: Sequence[Callback] = ()) -> dict[str, Any] | None:
    """A new run that continues another run's checkpoint ``<run>/checkpoints/step_N`` with ``cfg``.

    The fork inherits everything the checkpoint holds (warm start, value-pretrained critic,
    optimizers, random streams) and the source run's logs up to step N (its evaluation at step N
    included), then runs iterations N+1.. with its own config. ``cfg`` may differ from the source
    run's config only in vapo.config.FORKABLE_FIELDS (what the RL updates do, how the process
    runs); anything else is refused before the run directory exists. A fork whose config equals
    the source's reproduces the source's remaining iterations exactly (the checkpoint's resume
    guarantee), so variants forked from one checkpoint differ only by what they change, measured
    on one shared value pretraining. The source run is only read."""
    checkpoint = Path(checkpoint)
    source_dir = checkpoint.parent.parent
    step = next((s for s, p in list_checkpoints(source_dir, finished=False) if p.name == checkpoint.name), None)
    if step is None or checkpoint.parent.name != "checkpoints" or not (source_dir / "config.yaml").is_file():
        raise VapoError(f"{checkpoint} is not a checkpoint of a run directory", where="vapo train --fork",
                        fix="pass <run>/checkpoints/step_N of a run made by `vapo train` (step_0: the start of RL)")
    if not checkpoint_finished(checkpoint):
        raise VapoError(f"{checkpoint} was not completely written", where="vapo train --fork",
                        fix="fork from another checkpoint of that run (`ls <run>/checkpoints`)")
    source = load_config_file(source_dir / "config.yaml")
    check_trainable(cfg)
    check_callbacks(cfg, callbacks)
    validate_sinks(cfg)
    dist = distributed.current()
    if dist.enabled:
        raise VapoError("--fork starts a new run in one process", where="vapo train --fork",
                        fix="fork without torchrun, then continue it with `vapo train --resume <fork> --nproc N`")
    cfg = _resolve_dist(cfg, dist)
    changed, refused = fork_differences(source, cfg)
    if refused:
        raise ConfigError(f"a fork of {source_dir} may change what RL does from step {step} on, not the state the "
                          f"checkpoint holds; this config also changes: " + "; ".join(refused[:6])
                          + (f" (and {len(refused) - 6} more)" if len(refused) > 6 else ""),
                          where="vapo train --fork",
                          fix="change only algo.advantage/policy_loss/exploration/dynamic_sampling/overlong, the critic's "
                              "RL-time settings and train.* schedule fields (vapo.config.FORKABLE_FIELDS); for anything "
                              "else start a new run")
    if step >= cfg.train.iterations:
        raise ConfigError(f"the checkpoint is at iteration {step}, the fork would run {cfg.train.iterations} iterations",
                          where="train.iterations", fix=f"set train.iterations above {step}")
    verify_checkpoint(checkpoint)  # every file against its manifest, before anything is created
    default = f"{source_dir.name}-fork"
    run_dir = new_run_dir(cfg.train.runs_dir, name, default)
    try:
        shutil.copytree(checkpoint, run_dir / "checkpoints" / checkpoint.name)
        init = source_dir / "checkpoints" / "critic_init"
        if init.is_dir():  # the critic before value pretraining, which `vapo diagnose` compares against
            shutil.copytree(init, run_dir / "checkpoints" / "critic_init")
        for fname in ("metrics.jsonl", "eval.jsonl", "events.jsonl"):
            for r in read_jsonl(source_dir / fname):  # [] when the source has no such file
                if r.get("iteration", 0) <= step:
                    append_jsonl(run_dir / fname, r)
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        append_jsonl(run_dir / "events.jsonl", {"phase": "fork", "iteration": step, "source": str(checkpoint),
                                                "changed": changed, "time": time.time()})
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # this process created it: nothing is left half-made
        raise
    console.print(f"[bold]vapo train --fork[/]: {run_dir} continues {checkpoint} with "
                  + ("; ".join(changed) if changed else "the same config"))
    return resume_run(run_dir, progress=progress, callbacks=callbacks)


def _set_aside(run_dir: Path, step: int, final: bool = False) -> None:
    """Lines of metrics.jsonl / eval.jsonl logged after iteration ``step`` (and a torn last line)
    will be produced again: move the file aside (never deleted) and keep the lines up to ``step``.
    ``final``: ``step`` is the last iteration, whose checkpoint follows the final evaluation, which
    the resumed run repeats: its eval lines are set aside too."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for fname, upto in (("metrics.jsonl", step), ("eval.jsonl", step - 1 if final else step)):
        path = run_dir / fname
        if not path.is_file():
            continue
        rows = read_jsonl(path)
        keep = [r for r in rows if r.get("iteration", 0) <= upto]
        n_lines = sum(1 for line in path.read_text().splitlines() if line.strip())
        if len(keep) == n_lines:
            continue
        aside, n = run_dir / f"{fname}.before-resume-{stamp}", 2
        while aside.exists():  # two resumes within a second
            aside, n = run_dir / f"{fname}.before-resume-{stamp}-{n}", n + 1
        path.rename(aside)
        path.touch()
        for r in keep:
            append_jsonl(path, r)


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
    """Continue a run from its latest good checkpoint, exactly as if it had not stopped.

    A checkpoint that fails its manifest check is skipped (said, and logged in events.jsonl) for
    the previous good one; a run stopped before its first checkpoint starts over from its saved
    config.yaml. Lines logged after the checkpoint are set aside and produced again."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise VapoError(f"{run_dir} has no config.yaml", where="--resume", fix="pass a directory made by `vapo train`")
    cfg = load_config_file(cfg_path)
    check_trainable(cfg, str(cfg_path))
    check_callbacks(cfg, callbacks)
    validate_sinks(cfg)
    dist = distributed.current()
    cfg = _resolve_dist(cfg, dist)
    progress = progress and dist.is_writer
    writer = dist.is_writer
    with _writer_only(dist, lambda: RunLock(run_dir)):
        found = latest_good_checkpoint(run_dir, log=lambda line: console.print(f"[yellow]{line}") if writer else None)
        trainer = Trainer(cfg, run_dir, progress=progress, dist=dist)
        t_start = time.time()
        if found is None:
            validate_model(cfg, trainer.task)
            if writer:
                _set_aside(run_dir, -1)
                console.print(f"[bold]vapo train --resume[/]: {run_dir} was stopped before its first checkpoint: "
                              "starting it over from its config.yaml")
                append_jsonl(run_dir / "events.jsonl", {"phase": "restart", "iteration": 0, "time": time.time()})
            dist.barrier()  # the logs are set aside before any process goes on
            with _writer_only(dist, lambda: make_sinks(cfg, run_dir)) as sinks:
                if writer:
                    sinks.log_config(cfg.to_dict())
                summary = _from_start(trainer, callbacks, t_start, sinks)
        else:
            step, ckpt, skipped = found
            if step >= cfg.train.iterations and (run_dir / "summary.json").is_file():
                raise VapoError(f"{run_dir} already finished all {cfg.train.iterations} iterations", where="--resume",
                                fix="start a new run (e.g. with more --iterations)")
            if writer:
                _set_aside(run_dir, step, final=step >= cfg.train.iterations)
                console.print(f"[bold]vapo train --resume[/]: {run_dir} from {ckpt.name} ({step}/{cfg.train.iterations} iterations)")
                append_jsonl(run_dir / "events.jsonl", {"phase": "resume", "iteration": step, "time": time.time(),
                                                        "skipped_checkpoints": {p.name: why for p, why in skipped}})
            dist.barrier()  # the logs are set aside before any process goes on
            trainer.load_checkpoint(ckpt)
            with graceful_interrupts() as flag, progress_ui(progress) as ui, \
                    _writer_only(dist, lambda: make_sinks(cfg, run_dir, resume_step=step)) as sinks:
                if not train_loop(trainer, ui, flag, callbacks, sinks):
                    return None
                summary = _finish(trainer, ui, t_start, sinks)
    if summary is not None and dist.is_writer:
        print_summary(summary)
    return summary
