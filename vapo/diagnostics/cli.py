"""The `vapo diagnose` command (mounted by vapo/cli.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vapo.diagnostics.report import findings


def diagnose_command(
    run: Annotated[Path, typer.Argument(help="run directory made by `vapo train` (runs/<name>)")],
    step: Annotated[int | None, typer.Option(help="checkpoint step to diagnose (default: the latest)")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default: RUN/diagnostics/step_N)")] = None,
    prefixes: Annotated[int, typer.Option(min=1, help="prefix states probed for critic and advantage error (more = tighter CIs, slower)")] = 96,
    continuations: Annotated[int, typer.Option(min=1, help="Monte-Carlo continuations per prefix state (more = tighter CIs, slower)")] = 16,
    batch_prompts: Annotated[int, typer.Option(min=1, help="prompts of the regenerated batch (× the run's group size answers)")] = 16,
    checkpoints: Annotated[int, typer.Option(min=1, help="at most this many checkpoints evaluated for generalisation")] = 4,
    eval_prompts: Annotated[int, typer.Option(min=1, help="problems per split per checkpoint for generalisation")] = 24,
    quick: Annotated[bool, typer.Option(help="small estimate counts (seconds; wide CIs), for smoke tests")] = False,
    seed: Annotated[int, typer.Option(help="random seed of the regenerated batch and continuations")] = 0,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Measure where value-based RL breaks on a run: critic error, advantage quality (by λ), length
    weighting, exploration and generalisation, against Monte-Carlo ground truth. Writes
    diagnostics.json and a self-contained report.html."""
    from vapo.diagnostics.run import Budget, diagnose  # lazy: torch (vapo.cli imports this module)

    budget = Budget.quick() if quick else Budget(prefixes=prefixes, continuations=continuations, batch_prompts=batch_prompts,
                                                 checkpoints=checkpoints, eval_prompts=eval_prompts)
    if quick:  # explicit counts still win over --quick's
        given = {k: v for k, v, d in (("prefixes", prefixes, 96), ("continuations", continuations, 16),
                                       ("batch_prompts", batch_prompts, 16), ("checkpoints", checkpoints, 4),
                                       ("eval_prompts", eval_prompts, 24)) if v != d}
        budget = replace(budget, **given)
    result = diagnose(run, step=step, out=out, budget=budget, seed=seed, progress=not quiet)
    console = Console()
    t = Table(title=f"vapo diagnose: {result['preset']} on {result['task']}, step {result['step']} "
                    f"({result['timings']['total']:.0f} s)")
    t.add_column("section")
    t.add_column("finding")
    for title, line in findings(result):
        t.add_row(title, line)
    console.print(t)
    console.print(f"report: {result['out']}/report.html   numbers: {result['out']}/diagnostics.json")
