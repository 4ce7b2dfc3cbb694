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


def test_status_keeps_the_record_of_cells_another_grid_ran_into_the_same_out(tmp_path):
    from types import SimpleNamespace

    from vapo.compare.runner import STATUS_FILE, _read_status, _write_status

    def plan(name: str, result: str, attempts: list) -> SimpleNamespace:
        variant, seed = name.rsplit("-s", 1)
        cell = SimpleNamespace(name=name, variant=SimpleNamespace(name=variant), seed=int(seed))
        return SimpleNamespace(cell=cell, run_dir=tmp_path / name, result=result, history=attempts)

    first = [plan("grpo-s7", "finished", [{"action": "start", "cpu_s": 600.0}]),
             plan("vapo-s7", "interrupted", [{"action": "start", "cpu_s": 10.0}])]
    _write_status(tmp_path, first)
    # a second grid into the same --out: a subset of seeds, or a fork grid, with one cell in common
    _write_status(tmp_path, [plan("vapo-s7", "finished", [{"action": "start", "cpu_s": 10.0},
                                                           {"action": "resume", "cpu_s": 90.0}]),
                             plan("fork-s7", "finished", [{"action": "start", "cpu_s": 200.0}])])
    status = _read_status(tmp_path)
    assert set(status) == {"grpo-s7", "vapo-s7", "fork-s7"}, status
    assert status["grpo-s7"]["attempts"] == [{"action": "start", "cpu_s": 600.0}]  # kept as it was
    assert [a["action"] for a in status["vapo-s7"]["attempts"]] == ["start", "resume"]  # this grid's record
    assert (tmp_path / STATUS_FILE).is_file()


def test_a_resumed_cell_starts_its_line_at_the_iterations_it_already_has(tmp_path, capsys):
    job = _job(tmp_path, "vapo-s3", 0.1)
    job.kind = "resume"
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "metrics.jsonl").write_text("".join(f'{{"iteration": {i}}}\n' for i in range(7)))
    assert Pool(1, 1, True, "resumed grid").run([job], lambda j: None)
    out = capsys.readouterr().out.splitlines()
    first = next(s for s in out if "vapo-s3 (resume)" in s)
    assert " 7/20" in first and " 0/20" not in first, out
