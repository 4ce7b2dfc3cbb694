"""A killed `vapo compare` continues: finished cells are reused, a stopped cell resumes from its
checkpoint, a cell stopped before its first checkpoint starts again (the old directory is set
aside, never deleted), and a cell directory of another config is refused before anything runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from compare_helpers import write_grid

from vapo.compare import load_grid, run_compare
from vapo.compare.runner import plan_cells
from vapo.errors import VapoError


def _env(tmp_path):
    return {**os.environ, "VAPO_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}


def test_interrupted_compare_resumes_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))
    # dr_grpo is still pending when the interrupt comes: the compare must stop without starting it
    grid = write_grid(tmp_path / "k.yaml", "- vapo\n- grpo\n- dr_grpo\n", seeds="[0]")
    # a longer RL phase so that the interrupt lands inside the second cell
    text = open(grid).read().replace("train.iterations: 2", "train.iterations: 8")
    open(grid, "w").write(text)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "vapo.cli", "compare", grid, "--out", str(out), "--jobs", "1",
                             "--no-diagnose", "--quiet"], env=_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    marker = out / "grpo-s0" / "checkpoints" / "step_0" / "COMPLETE"  # the second cell has started RL
    t0 = time.time()
    while not marker.is_file():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 900, "the second cell never reached RL"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # as Ctrl-C: the running cell checkpoints its iteration and exits
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "run the same command again" in output
    assert (out / "vapo-s0" / "summary.json").is_file()
    assert not (out / "grpo-s0" / "summary.json").is_file()
    status = json.loads((out / "status.json").read_text())
    assert status["vapo-s0"]["result"] == "finished" and status["grpo-s0"]["result"] == "interrupted"
    assert status["dr_grpo-s0"]["result"] == "pending" and not (out / "dr_grpo-s0").exists()
    done_before = sum(1 for _ in open(out / "grpo-s0" / "metrics.jsonl"))
    assert done_before < 8
    finished_mtime = (out / "vapo-s0" / "summary.json").stat().st_mtime_ns

    res = run_compare(grid, out=out, jobs=1, diagnose=False, progress=False)
    assert res is not None
    assert (out / "vapo-s0" / "summary.json").stat().st_mtime_ns == finished_mtime  # reused, not rerun
    status = json.loads((out / "status.json").read_text())
    assert status["vapo-s0"]["result"] == "reused"
    assert [a["action"] for a in status["grpo-s0"]["attempts"]] == ["start", "resume"]
    assert status["dr_grpo-s0"]["result"] == "finished"
    assert all(a["cpu_s"] > 0 for a in status["grpo-s0"]["attempts"])  # measured with wait4
    events = [json.loads(line) for line in open(out / "grpo-s0" / "events.jsonl")]
    assert any(e.get("phase") == "resume" for e in events)
    its = [json.loads(line)["iteration"] for line in open(out / "grpo-s0" / "metrics.jsonl")]
    assert its == list(range(1, 9))  # every iteration once, continued from the checkpoint
    assert res["variants"]["grpo"]["finished"] == 1 and res["variants"]["grpo"]["crashes"] == 0
    # wall time counts both attempts of the resumed cell
    assert res["variants"]["grpo"]["wall_s"]["mean"] == pytest.approx(
        sum(a["seconds"] for a in status["grpo-s0"]["attempts"]))


def test_cell_without_checkpoint_restarts_and_keeps_the_old_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))
    grid_path = write_grid(tmp_path / "r.yaml", "- grpo\n", seeds="[0]")
    grid = load_grid(grid_path)
    out = tmp_path / "out"
    stale = out / "grpo-s0"
    stale.mkdir(parents=True)
    (stale / "config.yaml").write_text(grid.cells[0].config.to_yaml())
    (stale / "events.jsonl").write_text('{"phase": "sft"}\n')
    assert [p.action for p in plan_cells(grid, out)] == ["restart"]
    res = run_compare(grid_path, out=out, jobs=1, diagnose=False, progress=False)
    assert res is not None and (stale / "summary.json").is_file()
    kept = list((out / ".abandoned").glob("grpo-s0-*"))
    assert len(kept) == 1 and (kept[0] / "events.jsonl").read_text() == '{"phase": "sft"}\n'


def test_a_cell_of_another_config_is_refused_before_anything_runs(tmp_path):
    grid = load_grid(write_grid(tmp_path / "c.yaml", "- grpo\n- vapo\n", seeds="[0]"))
    out = tmp_path / "out"
    other = grid.cells[1].config.to_dict()
    other["algo"]["policy_loss"]["eps_high"] = 0.5
    (out / "vapo-s0").mkdir(parents=True)
    (out / "vapo-s0" / "config.yaml").write_text(yaml.safe_dump(other))
    (out / "vapo-s0" / "summary.json").write_text("{}")
    with pytest.raises(VapoError, match=r"vapo-s0 .* different config.*eps_high: 0\.5 → 0\.28"):
        plan_cells(grid, out)
    # threads and runs_dir are how a cell ran, not what it computed: they may differ
    same = grid.cells[1].config.to_dict()
    same["train"]["threads"], same["train"]["runs_dir"] = 7, "elsewhere"
    (out / "vapo-s0" / "config.yaml").write_text(yaml.safe_dump(same))
    assert [p.action for p in plan_cells(grid, out)] == ["start", "reuse"]


def test_a_cell_saved_before_a_field_existed_is_reused_only_at_that_fields_default(tmp_path):
    """A run from before a field was added ran its default: the same config when the grid asks for
    the default, another one when it asks for something else."""
    grid = load_grid(write_grid(tmp_path / "c.yaml", "- vapo\n", seeds="[0]"))
    out = tmp_path / "out"
    old = grid.cells[0].config.to_dict()
    del old["algo"]["critic"]["surprise_history"]
    (out / "vapo-s0").mkdir(parents=True)
    (out / "vapo-s0" / "config.yaml").write_text(yaml.safe_dump(old))
    (out / "vapo-s0" / "summary.json").write_text("{}")
    assert [p.action for p in plan_cells(grid, out)] == ["reuse"]
    hist = load_grid(write_grid(tmp_path / "h.yaml", "- vapo_surprise_history\n", seeds="[0]"))
    (out / "vapo_surprise_history-s0").mkdir(parents=True)
    (out / "vapo_surprise_history-s0" / "config.yaml").write_text(yaml.safe_dump({**old, "preset": "vapo_surprise_history"}))
    with pytest.raises(VapoError, match="surprise_history: None → True"):
        plan_cells(hist, out)


def test_a_fork_variant_continues_its_source_cells_and_waits_for_them(tmp_path, monkeypatch):
    """Each seed's fork cell starts once its source cell has written step_0 (value pretraining done),
    inherits its start (same step-0 evaluation, value-pretraining events), and a rerun reuses both."""
    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))
    grid = write_grid(tmp_path / "f.yaml", "- vapo\n- name: lam\n  preset: vapo\n  set: {algo.advantage.lam_actor: 0.9}\n"
                                           "  fork: vapo\n", seeds="[0]")
    out = tmp_path / "out"
    res = run_compare(grid, jobs=2, quick=True, out=out, progress=False)
    assert res["variants"]["lam"]["finished"] == 1 and res["variants"]["vapo"]["finished"] == 1
    src, fork = out / "vapo-s0", out / "lam-s0"
    def ev0(run):
        return [r for r in map(json.loads, (run / "eval.jsonl").read_text().splitlines()) if r["iteration"] == 0]

    assert ev0(fork) == ev0(src)
    events = [json.loads(line) for line in (fork / "events.jsonl").read_text().splitlines()]
    assert any(e.get("phase") == "value_pretrain_end" for e in events)
    assert [e["source"] for e in events if e.get("phase") == "fork"] == [str(src / "checkpoints" / "step_0")]
    log = (out / "logs" / "lam-s0.log").read_text()
    assert "--fork" in log and "value pretraining" not in log.lower().split("--fork")[-1].split("\n")[0]
    assert res["variants"]["lam"]["fork"] == "vapo" and res["variants"]["vapo"]["fork"] is None
    assert "`lam` ← `vapo`" in (out / "compare.md").read_text()
    plans = plan_cells(load_grid(grid, quick=True), out)
    assert {p.cell.name: p.action for p in plans} == {"vapo-s0": "reuse", "lam-s0": "reuse"}


def test_a_fork_whose_source_never_wrote_step_0_is_not_started(tmp_path, monkeypatch):
    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path / "cache"))
    # the source cell fails at once (a model path that does not exist), so no checkpoint ever comes
    grid = write_grid(tmp_path / "b.yaml", "- name: broken\n  preset: vapo\n  set: {model.path: /nonexistent/model}\n"
                                           "- name: lam\n  preset: vapo\n  set: {model.path: /nonexistent/model, "
                                           "algo.advantage.lam_actor: 0.9}\n  fork: broken\n", seeds="[0]")
    out = tmp_path / "out"
    try:
        run_compare(grid, jobs=2, quick=True, out=out, progress=False)
    except VapoError:
        pass
    status = json.loads((out / "status.json").read_text())
    assert status["lam-s0"]["result"] == "crashed" and status["lam-s0"]["attempts"][0]["exit_code"] == 2
    assert "did not write" in (out / "logs" / "lam-s0.log").read_text()
