"""Running a grid: one `vapo train` subprocess per cell, ``--jobs`` at a time.

Each cell is an ordinary run directory ``<out>/<variant>-s<seed>/`` made by ``vapo train``. What
the runner does with a cell depends on what is on disk (so a killed compare continues where it
stopped):

- ``summary.json`` present → finished: reused as it is (after checking it ran the same config);
- a complete checkpoint but no summary → ``vapo train --resume`` (exact continuation);
- a directory without a checkpoint (stopped during the warm start or value pretraining) → moved
  to ``<out>/.abandoned/`` (never deleted) and started again;
- nothing → ``vapo train``.

Subprocesses give crash isolation (a cell that fails is recorded with its exit code and log, the
others go on), parallel cells (CPU threads split between them with ``train.threads``), and clean
interrupts: Ctrl-C or SIGTERM makes every running cell checkpoint at the end of its iteration and
exit; on Linux a cell also gets SIGTERM if the compare process itself is killed (PR_SET_PDEATHSIG),
so no orphan keeps writing into the grid.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

import vapo
from vapo.compare.grid import Cell, Grid, check_same_config
from vapo.errors import VapoError
from vapo.train.checkpoint import checkpoint_finished, list_checkpoints
from vapo.train.rundir import read_jsonl
from vapo.train.ui import UI, progress_ui

STATUS_FILE = "status.json"
METRICS_DIR = "metrics"  # <out>/metrics/<cell>.jsonl.gz, .eval.jsonl.gz, .events.jsonl.gz: the curves, small enough to commit


def _pdeathsig() -> Callable[[], None] | None:
    """preexec_fn that asks Linux to SIGTERM the child when its parent dies (None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def child_env(threads: int) -> dict[str, str]:
    """The environment of a cell: this process's `vapo` first on the path, torch threads pinned."""
    env = dict(os.environ)
    root = str(Path(vapo.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return env


def usable_cores() -> int:
    """Cores this process may run on (respects taskset/cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def vapo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vapo.cli", *args]


@dataclass
class Job:
    """One subprocess to run: a cell (train / resume) or a diagnosis."""

    key: str
    cmd: list[str]
    log: Path
    kind: str  # start | resume | restart | diagnose
    run_dir: Path
    total: int = 0  # iterations, for the progress display
    proc: subprocess.Popen | None = None
    t0: float = 0.0
    rc: int | None = None
    seconds: float = 0.0
    cpu: float = 0.0
    after: Path | None = None  # a checkpoint this job starts from: it waits until that is complete
    after_key: str | None = None  # the job that writes it

    @property
    def ready(self) -> bool:
        """Nothing to wait for: no checkpoint to start from, or it is completely written."""
        return self.after is None or checkpoint_finished(self.after)


@dataclass
class CellPlan:
    cell: Cell
    run_dir: Path
    action: str  # reuse | start | resume | restart
    config_file: Path
    result: str = "pending"  # finished | reused | crashed | interrupted | pending
    rc: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _read_status(out: Path) -> dict[str, Any]:
    p = out / STATUS_FILE
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}


def _write_status(out: Path, plans: list[CellPlan]) -> None:
    """status.json: this grid's cells, and unchanged the record of cells that other grids run
    into the same ``--out`` (a fork grid beside its source's, a subset of seeds)."""
    mine = {p.cell.name for p in plans}
    data = {k: v for k, v in _read_status(out).items() if k not in mine}
    data |= {p.cell.name: {"variant": p.cell.variant.name, "seed": p.cell.seed, "run_dir": str(p.run_dir),
                           "result": p.result, "attempts": p.history} for p in plans}
    tmp = out / f".{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, out / STATUS_FILE)


def plan_cells(grid: Grid, out: Path) -> list[CellPlan]:
    """Decide what to do with each cell from what is on disk; raises before anything starts when a
    cell's directory holds a run of another config."""
    previous = _read_status(out)
    plans = []
    for cell in grid.cells:
        run_dir = out / cell.name
        action = "start"
        if run_dir.exists():
            saved = run_dir / "config.yaml"
            if saved.is_file():
                check_same_config(cell, yaml.safe_load(saved.read_text()) or {}, run_dir)
            if (run_dir / "summary.json").is_file():
                action = "reuse"
            elif list_checkpoints(run_dir):
                action = "resume"
            else:
                action = "restart"
        hist = list(previous.get(cell.name, {}).get("attempts", []))
        plans.append(CellPlan(cell, run_dir, action, out / ".cells" / f"{cell.name}.yaml", history=hist))
    return plans


def _cell_job(plan: CellPlan, out: Path, threads: int) -> Job:
    cfg = plan.cell.config
    log = out / "logs" / f"{plan.cell.name}.log"
    after = after_key = None
    if plan.action == "resume":
        cmd = vapo_cmd("train", "--resume", str(plan.run_dir), "--quiet")
    else:
        cmd = vapo_cmd("train", "--preset", plan.cell.variant.preset, "--config", str(plan.config_file),
                       "--set", f"train.runs_dir={out}", "--set", f"train.threads={threads}",
                       "--seed", str(plan.cell.seed), "--name", plan.cell.name, "--quiet")
        if plan.cell.variant.fork is not None:  # continue the source cell of this seed from the start of RL
            after_key = f"{plan.cell.variant.fork}-s{plan.cell.seed}"
            after = out / after_key / "checkpoints" / "step_0"
            cmd[cmd.index("train") + 1:cmd.index("train") + 1] = ["--fork", str(after)]
    return Job(plan.cell.name, cmd, log, plan.action, plan.run_dir, total=cfg.train.iterations,
               after=after, after_key=after_key)


def _iterations_done(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    if not p.is_file():
        return 0
    with open(p, "rb") as f:
        return sum(1 for line in f if line.strip())


def _reap(proc: subprocess.Popen) -> tuple[int | None, float]:
    """(exit code or None while running, CPU seconds of the finished child: user + system).

    os.wait4 returns the child's resource usage, so a cell's CPU time is measured however loaded
    the machine is (its wall time is not)."""
    if proc.returncode is not None:
        return proc.returncode, 0.0
    try:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
    except ChildProcessError:
        return proc.poll(), 0.0
    if pid == 0:
        return None, 0.0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, ru.ru_utime + ru.ru_stime


class Pool:
    """Runs jobs ``jobs`` at a time with a progress display; Ctrl-C/SIGTERM stop every job cleanly."""

    def __init__(self, jobs: int, threads: int, progress: bool, title: str):
        self.jobs, self.threads, self.progress, self.title = jobs, threads, progress, title
        self.stopping = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            self.stopping = True
            for j in self._running:
                if j.proc is not None and j.proc.poll() is None:
                    j.proc.send_signal(signal.SIGINT)  # the trainer checkpoints the iteration and exits
        else:  # a second signal: stop now
            for j in self._running:
                if j.proc is not None and j.proc.poll() is None:
                    j.proc.terminate()

    def run(self, queue: list[Job], on_done: Callable[[Job], None], on_start: Callable[[Job], None] | None = None) -> bool:
        """Run every job (unless interrupted); returns False when interrupted."""
        self._running: list[Job] = []
        pending = list(queue)
        preexec = _pdeathsig()
        env = child_env(self.threads)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        rows: dict[str, Any] = {}
        try:
            # bars on a terminal; plain lines when output is a file or a pipe (a grid is never silent for long)
            with progress_ui(self.progress, width=34) as ui:
                overall = ui.add_task(self.title, total=len(queue), info="", every_advance=True, eta_from_start=True)
                while self._running or (pending and not self.stopping):
                    self._fail_blocked(pending, on_done, ui, overall)
                    while pending and len(self._running) < self.jobs and not self.stopping:
                        j = next((j for j in pending if j.ready), None)
                        if j is None:  # the rest wait for a checkpoint a running job will write
                            break
                        pending.remove(j)
                        j.log.parent.mkdir(parents=True, exist_ok=True)
                        if on_start is not None:
                            on_start(j)
                        with open(j.log, "a") as f:
                            f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {j.kind}: {' '.join(j.cmd)}\n")
                        f = open(j.log, "a")  # noqa: SIM115 (kept open for the child's lifetime)
                        j.proc = subprocess.Popen(j.cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                                  start_new_session=True, preexec_fn=preexec)
                        f.close()  # the child holds its own descriptor
                        j.t0 = time.time()
                        self._running.append(j)
                        # a resumed cell starts at the iterations it already has, not at 0
                        done = _iterations_done(j.run_dir) if j.kind != "diagnose" else 0
                        rows[j.key] = ui.add_task(f"  {j.key} ({j.kind})", total=j.total or 1, completed=done,
                                                  info="")
                    time.sleep(0.2)
                    for j in list(self._running):
                        rc, j.cpu = _reap(j.proc)
                        if j.kind != "diagnose":
                            ui.update(rows[j.key], completed=_iterations_done(j.run_dir))
                        if rc is None:
                            continue
                        j.rc, j.seconds = rc, time.time() - j.t0
                        self._running.remove(j)
                        on_done(j)
                        ui.update(rows[j.key], visible=False)
                        ui.update(overall, advance=1, info=f"last: {j.key} {'ok' if rc == 0 else f'exit {rc}'}")
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return not self.stopping

    def _fail_blocked(self, pending: list[Job], on_done: Callable[[Job], None], ui: UI, overall: Any) -> None:
        """A job that waits for a checkpoint no running or pending job will write fails, said in its log."""
        coming = {j.key for j in self._running} | {j.key for j in pending}
        for j in [j for j in pending if not j.ready and j.after_key not in coming]:
            pending.remove(j)
            j.log.parent.mkdir(parents=True, exist_ok=True)
            with open(j.log, "a") as f:
                f.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} not started: it continues {j.after}, which "
                        f"cell {j.after_key} did not write (see its log); rerun the grid once that cell has run\n")
            j.rc = 2
            on_done(j)
            ui.update(overall, advance=1, info=f"last: {j.key} not started ({j.after_key} has no step_0)")


def run_cells(grid: Grid, out: Path, *, jobs: int = 1, progress: bool = True) -> tuple[list[CellPlan], bool]:
    """Run every cell that is not finished. Returns the plans (with results) and whether the grid
    ran to the end (False when interrupted)."""
    if jobs < 1:
        raise VapoError(f"--jobs must be ≥ 1, got {jobs}", where="vapo compare --jobs", fix="pass --jobs 1 or more")
    plans = plan_cells(grid, out)  # raises before anything is created when a cell is inconsistent
    out.mkdir(parents=True, exist_ok=True)
    (out / ".cells").mkdir(exist_ok=True)
    threads = max(1, usable_cores() // jobs)
    by_key = {p.cell.name: p for p in plans}
    queue = []
    for p in plans:
        p.config_file.write_text(p.cell.config.to_yaml())
        if p.action == "reuse":
            p.result = "reused"
            continue
        queue.append(_cell_job(p, out, threads))

    def on_start(j: Job) -> None:
        p = by_key[j.key]
        if j.kind == "restart" and p.run_dir.exists():  # never delete: set the stopped attempt aside
            dest = out / ".abandoned" / f"{p.cell.name}-{int(time.time())}"
            dest.parent.mkdir(exist_ok=True)
            os.rename(p.run_dir, dest)

    def on_done(j: Job) -> None:
        p = by_key[j.key]
        finished = (p.run_dir / "summary.json").is_file()
        p.rc = j.rc
        p.result = "finished" if j.rc == 0 and finished else ("interrupted" if j.rc == 0 or pool.stopping else "crashed")
        p.history.append({"action": j.kind, "exit_code": j.rc, "seconds": round(j.seconds, 2), "cpu_s": round(j.cpu, 2),
                          "result": p.result,
                          "ended": time.time(), "log": str(j.log)})
        _write_status(out, plans)

    pool = Pool(jobs, threads, progress, f"{grid.name}: {len(queue)} of {len(plans)} cells to run")
    _write_status(out, plans)
    complete = pool.run(queue, on_done, on_start)
    _write_status(out, plans)
    for p in plans:
        if (p.run_dir / "summary.json").is_file():
            write_compact_metrics(p.run_dir, out / METRICS_DIR, p.cell.name)
    return plans, complete


def _compact(x: Any) -> Any:
    """Numbers rounded to 6 significant digits, non-finite → None; strings kept only in lists
    (problem ids); other values dropped (returned as ...)."""
    if isinstance(x, bool):
        return int(x)
    if isinstance(x, int):
        return x
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        d = {str(k): _compact(v) for k, v in x.items()}
        return {k: v for k, v in d.items() if v is not ...}
    if isinstance(x, list | tuple):
        return [v if isinstance(v, str) else _compact(v) for v in x]
    return ...


def _write_gz(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:  # mtime 0: same bytes for same rows
        for r in rows:
            f.write((json.dumps(r, separators=(",", ":")) + "\n").encode())
    os.replace(tmp, path)


def write_compact_metrics(run_dir: Path, dest: Path, cell: str) -> dict[str, Path]:
    """The numeric columns of a cell's metrics.jsonl (one row per RL iteration) and its
    evaluations (eval.jsonl: accuracy, by size, pass@k, per-problem correct answers) as
    ``dest/<cell>.jsonl.gz`` and ``dest/<cell>.eval.jsonl.gz``: what the curves and the
    per-problem bootstrap need, a few kB per cell, so that a grid's report can be re-derived
    from the repository. The split name of an evaluation is kept. The cell's events.jsonl (warm
    start, value-pretraining rounds with the critic's figures against Monte-Carlo values, the
    fresh-probe critic quality) goes as it is to ``dest/<cell>.events.jsonl.gz``."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    for src, name in (("metrics.jsonl", f"{cell}.jsonl.gz"), ("eval.jsonl", f"{cell}.eval.jsonl.gz")):
        rows = read_jsonl(run_dir / src)
        if not rows:
            continue
        compact = []
        for r in rows:
            c = _compact(r)
            if "split" in r:
                c["split"] = r["split"]
            compact.append(c)
        paths[src] = dest / name
        _write_gz(paths[src], compact)
    events = read_jsonl(run_dir / "events.jsonl")
    if events:
        paths["events.jsonl"] = dest / f"{cell}.events.jsonl.gz"
        _write_gz(paths["events.jsonl"], events)
    return paths


def diagnose_runs(targets: list[tuple[str, Path]], out: Path, *, jobs: int, quick: bool, progress: bool) -> dict[str, Path]:
    """`vapo diagnose` on the latest checkpoint of each run (reused when already there).

    Returns {variant: diagnostics directory} for those that produced a diagnostics.json."""
    done: dict[str, Path] = {}
    queue = []
    for variant, run_dir in targets:
        ckpts = list_checkpoints(run_dir)
        if not ckpts:
            continue
        step = ckpts[-1][0]
        d = run_dir / "diagnostics" / f"step_{step}"
        if (d / "diagnostics.json").is_file():
            done[variant] = d
            continue
        args = ["diagnose", str(run_dir), "--quiet"] + (["--quick"] if quick else [])
        queue.append(Job(variant, vapo_cmd(*args), out / "logs" / f"diagnose-{run_dir.name}.log", "diagnose", d))
    if queue:
        threads = max(1, usable_cores() // jobs)

        def on_done(j: Job) -> None:
            if j.rc == 0 and (j.run_dir / "diagnostics.json").is_file():
                done[j.key] = j.run_dir

        Pool(jobs, threads, progress, f"vapo diagnose: {len(queue)} runs").run(queue, on_done)
    return done
