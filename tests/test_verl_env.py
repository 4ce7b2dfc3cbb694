"""VAPO_REQUIRE_VERL=1 turns a missing verl into a failure of tests/integrations/test_verl.py
instead of a skip."""

import os
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
