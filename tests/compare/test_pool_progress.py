"""A grid whose output is a file or a pipe prints plain progress lines while it runs, not only at the end."""

from __future__ import annotations

import sys
from pathlib import Path

from vapo.compare.runner import Job, Pool


def _job(tmp_path: Path, key: str, seconds: float) -> Job:
    cmd = [sys.executable, "-c", f"import time; time.sleep({seconds})"]
    return Job(key, cmd, tmp_path / "logs" / f"{key}.log", "start", tmp_path / key, total=20)


def test_pool_prints_plain_lines_per_cell_when_output_is_not_a_terminal(tmp_path, capsys):
    queue = [_job(tmp_path, "grpo-s0", 0.2), _job(tmp_path, "vapo-s0", 0.6)]
    done: list[str] = []
    assert Pool(1, 1, True, "tiny grid: 2 of 2 cells to run").run(queue, lambda j: done.append(j.key))
    out = capsys.readouterr().out.splitlines()
    assert done == ["grpo-s0", "vapo-s0"]
    assert all(line.startswith("[vapo] ") for line in out), out  # plain lines, no bar drawing
    assert out[0].startswith("[vapo] tiny grid: 2 of 2 cells to run") and " 0/2" in out[0]
    # each cell announces itself when it starts, and the grid's line advances as each one ends,
    # in that order: the first cell's end is printed before the second cell starts
    start0 = next(i for i, s in enumerate(out) if "grpo-s0 (start)" in s)
    end0 = next(i for i, s in enumerate(out) if "1/2" in s and "last: grpo-s0 ok" in s)
    start1 = next(i for i, s in enumerate(out) if "vapo-s0 (start)" in s)
    end1 = next(i for i, s in enumerate(out) if "2/2" in s and "last: vapo-s0 ok" in s)
    assert start0 < end0 < start1 < end1, out


def test_pool_draws_nothing_with_progress_off(tmp_path, capsys):
    assert Pool(1, 1, False, "quiet grid").run([_job(tmp_path, "grpo-s0", 0.1)], lambda j: None)
    assert capsys.readouterr().out == ""
