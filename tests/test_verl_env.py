"""The verl tests' own environment: bin/_verl_env.sh builds it once and reuses it (pip and venv are
stand-ins here, so nothing is downloaded), and VAPO_REQUIRE_VERL=1 turns a missing verl into a
failure of tests/integrations/test_verl.py instead of a skip."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAPO_", "PYTHON", "PIP_"))}
    return {**env, **extra}


# ------------------------------------------------------------------------- VAPO_REQUIRE_VERL


def _pytest_test_verl(tmp_path, **env: str) -> subprocess.CompletedProcess:
    """tests/integrations/test_verl.py in a fresh pytest, with an `import verl` that fails."""
    stub = tmp_path / "stub" / "verl"
    stub.mkdir(parents=True, exist_ok=True)
    (stub / "__init__.py").write_text("raise ImportError('no verl (test)')\n")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs",
           str(ROOT / "tests" / "integrations" / "test_verl.py")]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=_clean_env(PYTHONPATH=f"{tmp_path / 'stub'}{os.pathsep}{ROOT}", **env))


def test_require_verl_turns_the_skip_into_a_failure(tmp_path):
    r = _pytest_test_verl(tmp_path, VAPO_REQUIRE_VERL="1")
    assert r.returncode not in (0, 5), r.stdout + r.stderr  # a collection error: exit 2
    assert "VAPO_REQUIRE_VERL=1 but verl is not installed (no verl (test))" in r.stdout, r.stdout + r.stderr
    r = _pytest_test_verl(tmp_path)  # a skip (alone in its run, pytest says "no tests": exit 5)
    assert r.returncode in (0, 5), r.stdout + r.stderr
    assert "1 skipped" in r.stdout and "verl is not installed (no verl (test))" in r.stdout, r.stdout


# ------------------------------------------------------------------------- bin/_verl_env.sh


def _exe(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


class Setup:
    """A checkout (the script and a pyproject.toml) and stand-ins for python -m venv and pip that
    log their calls; everything else runs the real interpreter."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "checkout"
        (self.root / "bin").mkdir(parents=True)
        (self.root / "vapo").mkdir()
        (self.root / "vapo" / "__init__.py").write_text("")
        shutil.copy(ROOT / "bin" / "_verl_env.sh", self.root / "bin")
        shutil.copy(ROOT / "pyproject.toml", self.root)
        self.venv = tmp_path / "cache" / "venv-verl"
        self.log = tmp_path / "calls.log"
        stubs = tmp_path / "stubs"
        stubs.mkdir()
        venv_python = _exe(stubs / "venv-python",
                           'if [ "$1" = -m ] && [ "$2" = pip ]; then shift 2; echo "pip $*" >> "$STUB_LOG"; '
                           f'exit "${{STUB_PIP_RC:-0}}"; fi\nexec "{sys.executable}" "$@"')
        self.python = _exe(stubs / "python",
                           f'if [ "$1" = -m ] && [ "$2" = venv ]; then echo "venv" >> "$STUB_LOG"; '
                           f'mkdir -p "$3/bin" && touch "$3/pyvenv.cfg" && cp "{venv_python}" "$3/bin/python"; '
                           f'exit $?; fi\nexec "{sys.executable}" "$@"')

    def run(self, vapo_here: bool = True, **env: str) -> subprocess.CompletedProcess:
        """Run the script; `vapo_here`: the environment's `vapo` is this checkout's."""
        self.log.write_text("")
        env = {"PYTHON": str(self.python), "VAPO_VERL_VENV": str(self.venv), "STUB_LOG": str(self.log),
               **({"PYTHONPATH": str(self.root)} if vapo_here else {}), **env}
        return subprocess.run(["bash", str(self.root / "bin" / "_verl_env.sh")], capture_output=True, text=True,
                              timeout=120, env=_clean_env(**env))

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines()


FULL = ["pip install -q --disable-pip-version-check --upgrade pip",
        "pip install -q --disable-pip-version-check torch==2.13.0"]


def test_first_run_builds_then_the_environment_is_reused(tmp_path):
    s = Setup(tmp_path)
    r = s.run()
    assert r.returncode == 0, r.stderr
    install = f"pip install -q --disable-pip-version-check -e {s.root.resolve()}[dev,verl]"
    assert s.calls() == ["venv", *FULL, install]  # torch first, then the package with its extras
    for step in ("create the virtualenv", "install torch==2.13.0 (CPU)", "install vapo[dev,verl]"):
        assert any(line.startswith(f"[vapo] verl env: {step}") and line.endswith(" s") for line in
                   r.stderr.splitlines()), (step, r.stderr)
    r = s.run()
    assert r.returncode == 0 and s.calls() == [] and "ready" in r.stderr, r.stderr


def test_another_checkout_only_repoints_the_editable_install(tmp_path):
    s = Setup(tmp_path)
    assert s.run().returncode == 0
    r = s.run(vapo_here=False)  # the environment imports some other checkout's vapo (or none)
    assert r.returncode == 0, r.stderr
    (call,) = s.calls()  # the cheap step only (with --no-build-isolation where setuptools is there)
    assert call.startswith("pip install -q") and call.endswith(f" --no-deps -e {s.root.resolve()}"), call


def test_a_changed_pyproject_reinstalls_into_the_same_environment(tmp_path):
    s = Setup(tmp_path)
    assert s.run().returncode == 0
    with open(s.root / "pyproject.toml", "a") as f:
        f.write("\n# changed\n")
    r = s.run()
    assert r.returncode == 0, r.stderr
    assert s.calls()[:2] == FULL and "venv" not in s.calls()


def test_a_failed_install_fails_loudly_and_is_retried_next_time(tmp_path):
    s = Setup(tmp_path)
    r = s.run(STUB_PIP_RC="1")
    assert r.returncode != 0
    assert "FAILED: upgrade pip (exit 1)" in r.stderr and f"rm -rf '{s.venv}'" in r.stderr, r.stderr
    assert not (s.venv / ".vapo-verl-stamp").exists()
    r = s.run()
    assert r.returncode == 0 and s.calls()[:2] == FULL, r.stderr


def test_an_environment_whose_python_is_gone_is_rebuilt(tmp_path):
    s = Setup(tmp_path)
    assert s.run().returncode == 0
    (s.venv / "bin" / "python").unlink()
    r = s.run()
    assert r.returncode == 0, r.stderr
    assert "remove the old environment (its Python does not run" in r.stderr
    assert s.calls()[:3] == ["venv", *FULL]


def test_a_directory_that_is_not_a_virtualenv_is_never_deleted(tmp_path):
    s = Setup(tmp_path)
    s.venv.mkdir(parents=True)
    (s.venv / "precious.txt").write_text("keep")
    r = s.run()
    assert r.returncode != 0 and "is not a virtualenv: not deleting it" in r.stderr, r.stderr
    assert (s.venv / "precious.txt").read_text() == "keep"


def test_no_python_fails_with_what_to_do(tmp_path):
    s = Setup(tmp_path)
    r = s.run(PYTHON=str(tmp_path / "no-such-python"))
    assert r.returncode != 0 and "FAILED: no working Python interpreter" in r.stderr and "(set PYTHON)" in r.stderr
