"""Which checkpoints `vapo diagnose` evaluates for generalisation, for every --checkpoints ≥ 1."""

import subprocess
import sys
from pathlib import Path

import pytest

from vapo.diagnostics.generalisation import pick_checkpoints

FOUND = [(s, Path(f"step_{s}")) for s in (0, 10, 20, 30, 40)]


def test_one_checkpoint_is_the_diagnosed_step_else_the_last():
    assert pick_checkpoints(FOUND, 1, must=20) == [(20, Path("step_20"))]
    assert pick_checkpoints(FOUND, 1) == [(40, Path("step_40"))]
    assert pick_checkpoints(FOUND[:1], 1, must=0) == FOUND[:1]


@pytest.mark.parametrize("max_n", [2, 3, 4, 5, 9])
def test_spread_keeps_first_last_and_the_diagnosed_step(max_n):
    got = pick_checkpoints(FOUND, max_n, must=30)
    steps = [s for s, _ in got]
    assert len(got) == min(max_n, len(FOUND)) and steps == sorted(set(steps))
    assert 0 in steps and 30 in steps
    assert 40 in [s for s, _ in pick_checkpoints(FOUND, max_n)]  # without a diagnosed step: the last


def test_zero_is_refused():
    with pytest.raises(ValueError, match="at least one"):
        pick_checkpoints(FOUND, 0)
    r = subprocess.run([sys.executable, "-m", "vapo.cli", "diagnose", "nowhere", "--checkpoints", "0"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "checkpoints" in r.stderr
