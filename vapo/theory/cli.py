"""`vapo theory NAME`: run one theory-lab experiment, all of them (+ one HTML page), or list them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated

import jinja2
import typer
from rich.console import Console
from rich.markup import escape

from vapo.theory.framework import ExperimentResult, get_experiment, load_experiments


def theory_command(
    name: Annotated[str, typer.Argument(help="experiment name, 'all' for every experiment plus an HTML page, or 'list'")] = "list",
    out: Annotated[Path, typer.Option(help="output directory")] = Path("theory"),
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    quick: Annotated[bool, typer.Option(help="small sizes (seconds), for smoke tests")] = False,
) -> list[ExperimentResult]:
    """Exact token-MDP experiments that test each claim about VAPO's limits, each with a verdict.

    Writes OUT/NAME/results.json and PNG plots and prints the verdict line; 'all' also writes
    OUT/index.html with every experiment's claim, hypothesis, decision rule, verdict and plots.
    """
    console = Console()
    exps = load_experiments()
    if name == "list":
        for n, e in exps.items():
            console.print(f"[bold]{n}[/bold]: {e.claim}")
        return []
    names = list(exps) if name == "all" else [get_experiment(name).name]
    results = []
    for n in names:
        with console.status(f"theory {n} ({'quick' if quick else 'full'}, seed {seed}) ..."):
            res = exps[n].run(seed=seed, out_dir=Path(out) / n, quick=quick)
        results.append(res)
        colour = {"supported": "green", "refuted": "red"}.get(res.verdict.status, "yellow")
        console.print(f"[{colour}]{escape(res.verdict.line)}[/{colour}]  ({res.seconds:.1f} s)", highlight=False)
    if name == "all":
        page = write_html(results, Path(out) / "index.html")
        console.print(f"wrote {page}")
    return results


def write_html(results: list[ExperimentResult], path: Path) -> Path:
    """One self-contained page (templates/index.html.j2, autoescaped; PNGs embedded as base64)
    with every experiment's claim, hypothesis, decision rule, verdict, deciding numbers, seed,
    sizes and timing."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("vapo.theory", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    rows = [{
        "name": r.name, "status": r.verdict.status, "line": r.verdict.line, "seconds": f"{r.seconds:.1f}",
        "claim": r.claim, "hypothesis": r.hypothesis, "decision_rule": r.decision_rule_text, "seed": r.seed,
        "numbers": json.dumps({"numbers": r.verdict.numbers, "sizes": r.sizes}, indent=1, default=str),
        "images": ["data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode()
                   for p in r.plots if Path(p).exists()],
    } for r in results]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(env.get_template("index.html.j2").render(results=rows))
    return path
