"""`vapo compare GRID`: variants × seeds at an equal sample budget, run as ordinary run
directories, compared paired by seed (vapo.stats) and set beside the papers' numbers.

    grid.py       grid files: parsing and validation (every cell's config) before anything runs
    runner.py     one `vapo train` subprocess per cell, --jobs at a time, reuse/resume/restart;
                  compact gzip metrics per cell (<out>/metrics/)
    aggregate.py  run directories (or an earlier compare.json) → per-variant numbers, paired
                  comparisons with Holm's correction, ablation drops, the evidence behind them
    paper.py      the VAPO and DAPO papers' AIME24 numbers
    report.py     terminal table, compare.json, compare.md, compare.html
"""

from vapo.compare.cli import run_compare
from vapo.compare.grid import Cell, Grid, Variant, load_grid

__all__ = ["Cell", "Grid", "Variant", "load_grid", "run_compare"]
