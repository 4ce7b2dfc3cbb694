"""The micro grid (2 variants × 2 seeds) and its compare output, built once per test session."""

from __future__ import annotations

import time

import pytest
from compare_helpers import write_grid


@pytest.fixture(scope="session")
def micro_compare(tmp_path_factory):
    """(grid file, output directory, results, seconds) of `vapo compare` on vapo × grpo × seeds {0, 1}."""
    import os

    from vapo.compare import run_compare

    root = tmp_path_factory.mktemp("compare")
    os.environ["VAPO_CACHE_DIR"] = str(root / "cache")  # the cells inherit it
    grid = write_grid(root / "micro.yaml", "- vapo\n- grpo\n")
    out = root / "out"
    t0 = time.perf_counter()
    res = run_compare(grid, jobs=2, quick=True, out=out, progress=True)  # the progress display runs too
    return grid, out, res, time.perf_counter() - t0
