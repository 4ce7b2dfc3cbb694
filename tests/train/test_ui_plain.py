"""Progress without a terminal: plain lines per phase, every tenth of it, and a heartbeat."""

from __future__ import annotations

import io

from vapo.train.ui import PlainLines, progress_ui


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_phase_prints_its_start_every_tenth_and_its_end():
    out, clock = io.StringIO(), Clock()
    p = PlainLines(out, every_s=30.0, clock=clock)
    tid = p.add_task("RL vapo", total=40)
    for i in range(40):
        clock.t += 1.0
        p.update(tid, advance=1, info=f"acc {i / 40:.2f}")
    lines = out.getvalue().splitlines()
    # start, then every 4 steps (a tenth of 40): 4, 8, ..., 40
    assert len(lines) == 1 + 10, lines
    assert lines[0].startswith("[vapo] RL vapo  0/40")
    assert lines[1].startswith("[vapo] RL vapo  4/40  acc 0.07  elapsed 0m04s  eta 0m36s")
    assert lines[-1].startswith("[vapo] RL vapo  40/40  acc 0.97  elapsed 0m40s")
    assert "eta" not in lines[-1]


def test_slow_steps_print_every_interval_and_the_heartbeat_fills_long_gaps():
    out, clock = io.StringIO(), Clock()
    p = PlainLines(out, every_s=30.0, clock=clock)
    tid = p.add_task("SFT warm start", total=1500, info="")
    clock.t += 31.0
    p.update(tid, advance=1, info="loss 2.000")  # 1 step < a tenth, but 31 s since the last line
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("[vapo] SFT warm start  1/1500  loss 2.000  elapsed 0m31s")
    assert "eta" not in last  # one step gives no rate yet
    n = len(out.getvalue().splitlines())
    clock.t += 10.0
    p.heartbeat()  # 10 s of silence: nothing
    assert len(out.getvalue().splitlines()) == n
    clock.t += 25.0
    p.heartbeat()  # 35 s of silence: the running phase's state
    last = out.getvalue().splitlines()[-1]
    assert len(out.getvalue().splitlines()) == n + 1 and last.endswith("(still running)") and "1/1500" in last
    p.update(tid, completed=1500)
    clock.t += 100.0
    p.heartbeat()  # the phase ended: a heartbeat has nothing to say about it
    assert out.getvalue().splitlines()[-1].startswith("[vapo] SFT warm start  1500/1500")


def test_progress_ui_uses_plain_lines_when_asked_and_bars_are_off_when_disabled(capsys):
    with progress_ui(True, plain=True) as ui:
        tid = ui.add_task("eval @ 0", total=3)
        ui.update(tid, advance=3, info="long acc 0.5")
    assert "[vapo] eval @ 0  3/3  long acc 0.5" in capsys.readouterr().out
    with progress_ui(False) as ui:
        assert ui.plain is None
        ui.update(ui.add_task("quiet", total=2), advance=2)
    assert "quiet" not in capsys.readouterr().out


def test_the_eta_counts_from_the_first_step_not_from_a_slow_start():
    out, clock = io.StringIO(), Clock()
    p = PlainLines(out, every_s=1e9, clock=clock)
    tid = p.add_task("  vapo-s5 (start)", total=20)
    clock.t += 480.0  # the cell builds its warm start: no iteration for 8 minutes
    p.update(tid, completed=1)
    for _ in range(3):
        clock.t += 10.0  # then 10 s per iteration
        p.update(tid, advance=1)
    line = next(x for x in out.getvalue().splitlines() if "  4/20" in x)
    # 3 iterations in the 30 s since the first: the 16 left take 2m40s (counting the warm start
    # in the rate would say 510 s / 4 x 16 = 34 minutes)
    assert line.endswith("elapsed 8m30s  eta 2m40s"), line


def test_a_grid_row_prints_every_cell_that_ends_and_measures_its_rate_from_the_start():
    # two cells run side by side from the start and end together at 600 s: the first to end must not
    # make the rate look like 1 cell per second (the first-advance rate would give eta ~0 here)
    out, clock = io.StringIO(), Clock()
    p = PlainLines(out, every_s=30.0, clock=clock)
    grid = p.add_task("grid", total=40, every_advance=True, eta_from_start=True)
    cell = p.add_task("  cell", total=20)
    clock.t += 600.0
    p.update(cell, advance=20)
    p.update(grid, advance=1, info="last: a-s0 ok")
    clock.t += 1.0
    p.update(grid, advance=1, info="last: a-s1 exit 1")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("[vapo] grid")]
    # the start line, then one line per ended cell (not every fourth: a tenth of 40), the failure seen
    assert len(lines) == 3, lines
    assert "1/40  last: a-s0 ok" in lines[1] and "2/40  last: a-s1 exit 1" in lines[2]
    # 601 s for 2 cells, 38 to go: 601 / 2 * 38 = 11,419 s
    assert lines[2].endswith("eta 3h10m"), lines[2]
    # a phase row keeps the first-advance rate and prints every tenth
    p2 = PlainLines(io.StringIO(), every_s=1e9, clock=clock)
    tid = p2.add_task("RL", total=40)
    clock.t += 100.0
    p2.update(tid, advance=1)
    clock.t += 1.0
    p2.update(tid, advance=1)
    assert p2.stream.getvalue().count("\n") == 1  # only the start line: 2 < a tenth of 40
