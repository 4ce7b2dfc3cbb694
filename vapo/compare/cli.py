"""`vapo compare GRID`: validate the grid, run the cells, diagnose one seed per variant, report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from vapo.compare.grid import load_grid
from vapo.errors import VapoError

console = Console()


def default_out(grid_name: str, quick: bool) -> Path:
    """runs/<grid> (runs/<grid>-quick for --quick, so a reduced budget never mixes with the full one)."""
    return Path("runs") / (f"{grid_name}-quick" if quick else grid_name)


def run_compare(grid_path: str | Path, *, jobs: int = 1, quick: bool = False, out: str | Path | None = None,
                diagnose: bool = True, progress: bool = True, extra_set: Sequence[str] = ()) -> dict[str, Any] | None:
    """Run (or continue) a grid and write its reports; returns the results, or None when interrupted.

    Every cell's config is validated before any directory is created or any cell starts."""
    # lazy: torch, so that a bad grid is refused before it loads
    from vapo.compare.aggregate import aggregate  # lazy: torch
    from vapo.compare.report import print_terminal, write_outputs  # lazy: torch
    from vapo.compare.runner import diagnose_runs, run_cells  # lazy: torch

    if jobs < 1:
        raise VapoError(f"--jobs must be ≥ 1, got {jobs}", where="vapo compare --jobs", fix="pass --jobs 1 or more")
    grid = load_grid(grid_path, quick=quick, extra_set=extra_set)
    out = Path(out) if out is not None else default_out(grid.name, quick)
    n_seeds = len(grid.seeds)
    console.print(f"[bold]vapo compare[/] {grid.path}: {len(grid.variants)} variants × {n_seeds} seed"
                  f"{'s' if n_seeds != 1 else ''} = {len(grid.cells)} cells, {jobs} at a time → {out}"
                  + (f"\n{grid.quick_note}" if quick else "")
                  + (f"\n--set for every cell: {' '.join(grid.extra_set)}" if grid.extra_set else ""))
    plans, complete = run_cells(grid, out, jobs=jobs, progress=progress)
    if not complete:
        console.print("[yellow]interrupted: running cells saved a checkpoint; run the same command again to continue "
                      "(finished cells are reused, stopped ones resumed)")
        return None
    diags: dict[str, Path] = {}
    if diagnose and grid.diagnose:
        targets = []
        for v in grid.variants:
            first = next((p for p in plans if p.cell.variant.name == v.name and (p.run_dir / "summary.json").is_file()), None)
            if first is not None:
                targets.append((v.name, first.run_dir))
        diags = diagnose_runs(targets, out, jobs=jobs, quick=quick, progress=progress)
    res = aggregate(grid, plans, diags)
    paths = write_outputs(res, out)
    print_terminal(res)
    crashed = [p.cell.name for p in plans if p.result == "crashed"]
    if crashed:
        console.print(f"[red]{len(crashed)} cell(s) crashed: {', '.join(crashed)} (logs in {out / 'logs'}); "
                      "run the same command again to retry them")
    console.print(f"reports: {paths['html']}  {paths['md']}  {paths['json']}")
    return res
