"""The `vapo` command line: train, eval, diagnose, theory.

Every command turns a :class:`vapo.errors.VapoError` into a one- or two-line message on stderr
and exit code 2 (no traceback).

Each command imports its implementation when it runs (the ``# lazy: torch`` imports below): torch,
transformers and the trainer take seconds to import, and `vapo --help` or a refused config answers
in about half a second without them.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from vapo.config import describe_fields, resolve_config
from vapo.diagnostics.cli import diagnose_command
from vapo.errors import VapoError

app = typer.Typer(
    name="vapo",
    help="Value-based RL (VAPO and baselines) for long chain-of-thought reasoning: train, see, understand.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _quiet_libraries() -> None:
    """The CLI draws its own progress bars: silence Hugging Face's per-save/load bars."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers reads it when it is imported
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # imported already: the variable came too late for it
        hf_logging.disable_progress_bar()


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print VapoErrors for people (no traceback) and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _quiet_libraries()
        try:
            return fn(*args, **kwargs)
        except VapoError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None

    return wrapper


def _config_epilog() -> str:
    lines = ["Config fields (set with --set key=value, or in a YAML file passed with --config):", ""]
    for key, default, desc in describe_fields():
        lines.append(f"  {key} = {default}  —  {desc}")
    # typer/click rewrap epilogs unless paragraphs are marked with \b
    return "\b\n" + "\n".join(lines)


def _training_callbacks() -> list[Any]:
    """The callbacks `vapo train` runs the loop with: the in-training diagnostics (diagnose_every)."""
    from vapo.diagnostics.hook import DiagnosticsCallback  # lazy: torch

    return [DiagnosticsCallback()]


@app.command(epilog=_config_epilog())
@_friendly
def train(
    preset: Annotated[str | None, typer.Option(help="algorithm preset: ppo, vc_ppo, grpo, dr_grpo, dapo, vapo (default vapo)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (any subset of the fields below)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override a field: --set optim.actor_lr=1e-4 (repeatable)")] = None,
    task: Annotated[str | None, typer.Option(help="task name (shortcut for --set task.name=...)")] = None,
    size: Annotated[str | None, typer.Option(help="built-in model size: tiny or small (shortcut for --set model.size=...)")] = None,
    seed: Annotated[int | None, typer.Option(help="random seed (shortcut for --set seed=...)")] = None,
    iterations: Annotated[int | None, typer.Option(help="RL iterations (shortcut for --set train.iterations=...)")] = None,
    name: Annotated[str | None, typer.Option(help="run name: the run directory is runs/<name> (default: <preset>-<task>-s<seed>, numbered if taken)")] = None,
    resume: Annotated[Path | None, typer.Option(help="continue the run in this directory from its latest checkpoint")] = None,
    fork: Annotated[Path | None, typer.Option(help="start a new run from another run's checkpoint <run>/checkpoints/step_N, with changed RL settings (docs/training.md, 'Forks')")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    nproc: Annotated[int, typer.Option(help="processes on this machine: >1 runs this command under torchrun (FSDP2; docs/distributed.md)")] = 1,
) -> None:
    """Train a policy with RL on a verifiable task (default: VAPO on rewrite_sum, micro model, CPU)."""
    if nproc < 1:
        raise VapoError(f"--nproc {nproc} is not a number of processes", where="vapo train --nproc", fix="pass 1 or more")

    if resume is not None and fork is not None:
        raise VapoError("--resume and --fork are two different starts", where="vapo train",
                        fix="--resume continues a run in place; --fork starts a new run from a checkpoint")
    if resume is not None:
        from vapo.train import resume_run  # lazy: torch

        if any(v is not None for v in (preset, config, set_, task, size, seed, iterations, name)):
            raise VapoError(
                "--resume continues a run with its own saved config; other options cannot change it",
                where="vapo train --resume",
                fix="drop the other options, or start a new run without --resume",
            )
        if nproc > 1:
            _relaunch_under_torchrun(nproc)
            return
        resume_run(resume, progress=not quiet, callbacks=_training_callbacks())
        return
    overrides = list(set_ or [])
    for key, val in (("task.name", task), ("model.size", size), ("seed", seed), ("train.iterations", iterations)):
        if val is not None:
            overrides.append(f"{key}={val}")
    if fork is not None and preset is None and config is None and (fork.parent.parent / "config.yaml").is_file():
        config = fork.parent.parent / "config.yaml"  # a fork starts from its source's config: --set says what changes
    cfg = resolve_config(preset, config, overrides)
    if fork is not None:
        if nproc > 1:
            raise VapoError("--fork starts a new run in one process", where="vapo train --fork --nproc",
                            fix="fork without --nproc, then continue it with `vapo train --resume <fork> --nproc N`")
        from vapo.train import fork_run  # lazy: torch

        fork_run(fork, cfg, name=name, progress=not quiet, callbacks=_training_callbacks())
        return
    if nproc > 1:  # the config is checked above: a bad one fails once, with exit 2, before any process starts
        _relaunch_under_torchrun(nproc)
        return
    from vapo.train import start_run  # lazy: torch

    start_run(cfg, name=name, progress=not quiet, callbacks=_training_callbacks())


def _relaunch_under_torchrun(nproc: int) -> None:
    """`vapo train --nproc N ...`: this same command line, without --nproc, under torchrun."""
    from vapo.train.distributed import launch  # lazy: torch

    if "WORLD_SIZE" in os.environ:
        raise VapoError("--nproc inside torchrun", where="vapo train --nproc", fix="drop --nproc; torchrun sets the processes")
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    code = launch(nproc, argv)
    if code:
        raise typer.Exit(code)


@app.command("eval")
@_friendly
def eval_(
    run: Annotated[Path, typer.Argument(help="a run directory (uses its latest checkpoint) or a checkpoint directory")],
    prompts: Annotated[int | None, typer.Option(help="prompts per split (default: the run's eval.prompts)")] = None,
    samples: Annotated[int | None, typer.Option(help="answers per prompt; pass@k is reported for k ≤ samples")] = None,
    temperature: Annotated[float | None, typer.Option(help="sampling temperature (0 = greedy)")] = None,
    seed: Annotated[int, typer.Option(help="evaluation seed")] = 1234,
) -> None:
    """Held-out and longer-than-trained accuracy by length bucket, and pass@k."""
    from vapo.train.evaluate import eval_command  # lazy: torch

    eval_command(run, prompts=prompts, samples=samples, temperature=temperature, seed=seed)


@app.command()
@_friendly
def theory(
    name: Annotated[str, typer.Argument(help="experiment name, 'all' for every experiment plus an HTML page, or 'list'")] = "list",
    out: Annotated[Path, typer.Option(help="output directory")] = Path("theory"),
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    quick: Annotated[bool, typer.Option(help="small sizes (seconds), for smoke tests")] = False,
) -> None:
    """Exact token-MDP experiments that test each claim about VAPO's limits, each with a verdict."""
    from vapo.theory.cli import theory_command  # lazy: torch

    theory_command(name=name, out=out, seed=seed, quick=quick)


app.command("diagnose")(_friendly(diagnose_command))


@app.command()
@_friendly
def compare(
    grid: Annotated[Path, typer.Argument(help="grid file: named variants × seeds (e.g. examples/ablation.yaml)")],
    jobs: Annotated[int, typer.Option(help="cells run in parallel (CPU threads are split between them)")] = 1,
    quick: Annotated[bool, typer.Option(help="the grid's reduced budget (its `quick:` section), for a first look")] = False,
    out: Annotated[Path | None, typer.Option(help="output directory: one run directory per cell, reports (default runs/<grid>)")] = None,
    no_diagnose: Annotated[bool, typer.Option("--no-diagnose", help="skip `vapo diagnose` on one seed per variant")] = False,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override for every cell, after the grid's base and quick and before each variant's own set (repeatable), e.g. --set train.device=cuda")] = None,
) -> None:
    """Run a grid of presets and ablations × seeds and compare them paired by seed (Holm-corrected), beside the papers' numbers."""
    from vapo.compare.cli import run_compare  # lazy: torch

    if run_compare(grid, jobs=jobs, quick=quick, out=out, diagnose=not no_diagnose, progress=not quiet,
                   extra_set=set_ or ()) is None:
        raise typer.Exit(130)


def main() -> None:
    try:
        app()
    except VapoError as e:  # errors raised outside a command body (e.g. while building help)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
