"""Run directories: names cannot escape runs/, validation creates nothing, one process per run."""

import gzip
import json
import os
import subprocess
import sys
import time

import pytest

from vapo.errors import VapoError
from vapo.train.rundir import RunLock, check_run_name, new_run_dir, plan_run_dir


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", ".hidden", "a\x00b", "x" * 201, "é"])
def test_names_that_could_escape_or_confuse_are_refused(tmp_path, name):
    with pytest.raises(VapoError, match="not a plain name"):
        check_run_name(name)
    with pytest.raises(VapoError, match="not a plain name"):
        new_run_dir(tmp_path / "runs", name, "d")
    assert not (tmp_path / "runs").exists()  # nothing created
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("name", ["run1", "vapo-rewrite_sum-s0", "a.b", "-x"])
def test_plain_names_are_accepted(name):
    assert check_run_name(name) == name


def test_a_bad_default_name_is_refused_too(tmp_path):
    with pytest.raises(VapoError):
        plan_run_dir(tmp_path, None, "vapo-../../etc-s0")


def test_plan_creates_nothing_and_agrees_with_new_run_dir(tmp_path):
    root = tmp_path / "runs"
    p = plan_run_dir(root, None, "d")
    assert p == root / "d" and not root.exists()
    assert new_run_dir(root, None, "d") == p
    assert plan_run_dir(root, None, "d") == root / "d-2"
    with pytest.raises(VapoError, match="already exists"):
        plan_run_dir(root, "d", "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(VapoError, match="not a directory"):
        plan_run_dir(tmp_path / "file", "a", "x")


_HOLD = "import sys,time; from vapo.train.rundir import RunLock; l=RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)"


def test_a_second_process_is_refused_and_a_dead_holder_does_not_block(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    env = {**os.environ, "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(VapoError, match=rf"in use by another process \(pid {proc.pid}\)"):
            RunLock(run).acquire()
    finally:
        proc.kill()  # SIGKILL: no clean-up runs, the lock file stays
        proc.wait()
    assert (run / ".lock").is_file()
    deadline = time.time() + 5
    while True:
        try:
            lock = RunLock(run).acquire()
            break
        except VapoError:
            assert time.time() < deadline
            time.sleep(0.05)
    assert (run / ".lock").read_text().strip() == str(os.getpid())
    # within one process, a second lock object on the same run is refused as well (flock is per open file)
    with pytest.raises(VapoError, match="in use"):
        RunLock(run).acquire()
    lock.release()
    with RunLock(run):
        pass


def _cfg(tmp_path, *extra):
    from vapo.config import resolve_config

    return resolve_config("grpo", overrides=[f"train.runs_dir={tmp_path / 'runs'}", "model.size=micro", *extra])


@pytest.mark.parametrize("bad, match", [
    (["task.name=file", "task.kwargs={path: missing.jsonl}"], "missing.jsonl does not exist"),
    (["task.name=file", "task.kwargs={path: DATA}"], r"bad\.jsonl:2"),
    (["task.name=nope"], "unknown task"),
    (["model.size=huge"], "unknown model size"),
    (["model.path=MODEL_NO_CONFIG"], "config.json"),
    (["model.path=MISSING_DIR"], "nowhere does not exist"),
])
def test_a_bad_task_data_or_model_fails_in_start_run_before_any_directory_exists(tmp_path, bad, match):
    from vapo.train import start_run

    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "1+1?", "answer": "2"}\nnot json\n')
    (tmp_path / "model").mkdir()
    subs = {"DATA": str(data), "MODEL_NO_CONFIG": str(tmp_path / "model"), "MISSING_DIR": str(tmp_path / "nowhere")}
    for k, v in subs.items():
        bad = [b.replace(k, v) for b in bad]
    with pytest.raises(VapoError, match=match):
        start_run(_cfg(tmp_path, *bad), progress=False)
    assert not (tmp_path / "runs").exists()  # not even runs/


def test_resume_of_a_run_in_use_is_refused_and_changes_nothing(tmp_path):
    from vapo.train import resume_run

    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(_cfg(tmp_path).to_yaml())
    with RunLock(run):
        before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
        with pytest.raises(VapoError, match="in use by another process"):
            resume_run(run, progress=False)
        assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_resume_sets_aside_the_lines_it_will_produce_again(tmp_path):
    """Lines after the checkpoint (and a torn last line) move to a file of their own, never lost;
    resuming from the final checkpoint also sets aside the final evaluation, which it repeats."""
    from vapo.train.run import _set_aside
    from vapo.train.rundir import append_jsonl, read_jsonl

    def fill():
        for name in ("metrics.jsonl", "eval.jsonl"):
            (tmp_path / name).unlink(missing_ok=True)
            for it in range(0, 5):
                append_jsonl(tmp_path / name, {"iteration": it})
        with open(tmp_path / "metrics.jsonl", "a") as f:
            f.write('{"iteration": 5, "rew')  # torn by a kill

    fill()
    _set_aside(tmp_path, 2)
    assert [r["iteration"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    assert [r["iteration"] for r in read_jsonl(tmp_path / "eval.jsonl")] == [0, 1, 2]
    aside = sorted(p.name for p in tmp_path.glob("metrics.jsonl.before-resume-*"))
    assert len(aside) == 1 and (tmp_path / aside[0]).read_text().endswith('{"iteration": 5, "rew')
    fill()
    _set_aside(tmp_path, 4, final=True)  # within the same second: a second, distinct file
    assert len(list(tmp_path.glob("metrics.jsonl.before-resume-*"))) == 2
    assert [r["iteration"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert [r["iteration"] for r in read_jsonl(tmp_path / "eval.jsonl")] == [0, 1, 2, 3]
    _set_aside(tmp_path, 4)  # nothing to set aside: nothing moves
    assert len(list(tmp_path.glob("*.before-resume-*"))) == 4


def test_read_jsonl_reads_gzip_and_refuses_a_bad_middle_line(tmp_path):
    """The compact metrics `vapo compare` writes (.jsonl.gz) read like the run's own files: a torn
    last line is skipped, a broken line before it is an error naming the file and line."""
    from vapo.train.rundir import read_jsonl

    rows = [{"iteration": i, "reward": 0.5 * i} for i in range(3)]
    body = "".join(json.dumps(r) + "\n" for r in rows)
    gz = tmp_path / "cell.jsonl.gz"
    gz.write_bytes(gzip.compress((body + '{"iteration": 3, "rew').encode()))
    assert read_jsonl(gz) == rows
    plain = tmp_path / "cell.jsonl"
    plain.write_text(body)
    assert read_jsonl(plain) == read_jsonl(gz)
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(('{"iteration": 0}\nnot json\n' + body).encode()))
    with pytest.raises(VapoError, match="line 2"):
        read_jsonl(bad)
