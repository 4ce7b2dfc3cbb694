"""`vapo theory NAME`: run one theory-lab experiment, all of them (+ one HTML page), or list them."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Annotated

import typer

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
    from rich.console import Console
    from rich.markup import escape

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
    """One self-contained page (PNGs embedded as base64) with every experiment's claim,
    hypothesis, decision rule, verdict, deciding numbers, seed, sizes and timing."""
    e = html.escape
    rows = "".join(
        f"<tr><td><a href='#{e(r.name)}'>{e(r.name)}</a></td><td class='{r.verdict.status}'>{r.verdict.status}</td>"
        f"<td>{e(r.verdict.line)}</td><td>{r.seconds:.1f}</td></tr>" for r in results)
    parts = []
    for r in results:
        imgs = "".join(
            f"<img src='data:image/png;base64,{base64.b64encode(Path(p).read_bytes()).decode()}'/>"
            for p in r.plots if Path(p).exists())
        parts.append(
            f"<h2 id='{e(r.name)}'>{e(r.name)} — <span class='{r.verdict.status}'>{r.verdict.status}</span></h2>"
            f"<p><b>Claim.</b> {e(r.claim)}</p><p><b>Hypothesis.</b> {e(r.hypothesis)}</p>"
            f"<p><b>Decision rule.</b> {e(r.decision_rule_text)}</p><p><b>Verdict.</b> {e(r.verdict.line)}</p>"
            f"<details><summary>deciding numbers, seed {r.seed}, sizes</summary><pre>"
            f"{e(json.dumps({'numbers': r.verdict.numbers, 'sizes': r.sizes}, indent=1, default=str))}</pre></details>"
            f"{imgs}")
    page = f"""<!doctype html><html><head><meta charset='utf-8'><title>vapo theory lab</title><style>
body{{font-family:sans-serif;max-width:1400px;margin:auto;padding:1em}} img{{max-width:100%}}
td{{border-bottom:1px solid #ddd;padding:4px;vertical-align:top}} .supported{{color:#080}}
.refuted{{color:#b00}} .inconclusive{{color:#b70}} pre{{font-size:11px;background:#f6f6f6;overflow:auto}}
</style></head><body><h1>vapo theory lab — verdicts</h1>
<p>Exact token MDPs with dynamic-programming ground truth; each experiment fixed its hypothesis and
decision rule in code before computing; verdicts are computed from the results.</p>
<table><tr><th>experiment</th><th>verdict</th><th>deciding numbers</th><th>s</th></tr>{rows}</table>
{''.join(parts)}</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path
