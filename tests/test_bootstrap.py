"""bin/_browser.sh, the one routine that provides Chromium for the browser tests, on a machine
without one: installed with apt-get as root, otherwise a printed reason (and, under
VAPO_REQUIRE_BROWSER=1, a failure of the browser tests). apt-get and id are stand-ins here."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _stub(d: Path, name: str, body: str) -> None:
    p = d / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IEXEC)


def _ensure(tmp_path, uid, apt=None, **env):
    """Run vapo_ensure_browser with PATH = stubs + the system's basic tools (no browser)."""
    stubs = tmp_path / "stubs"
    stubs.mkdir(exist_ok=True)
    _stub(stubs, "id", f"echo {uid}")
    if apt is not None:
        _stub(stubs, "apt-get", apt)
    tools = tmp_path / "tools"  # only what the routine needs, so no real browser or apt-get is visible
    tools.mkdir(exist_ok=True)
    for t in ("mktemp", "tail", "rm", "cat"):
        src = next((Path(d) / t for d in ("/usr/bin", "/bin") if (Path(d) / t).exists()), None)
        if src and not (tools / t).exists():
            (tools / t).symlink_to(src)
    script = f'PATH="{stubs}:{tools}"; source "{ROOT}/bin/_browser.sh"; vapo_ensure_browser; ' \
             'echo "found=$(vapo_find_browser || true)"; echo "missing=${VAPO_BROWSER_MISSING:-}"'
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAPO_")}
    return subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, env={**clean, **env}, timeout=30)


def test_root_with_apt_get_installs_chromium(tmp_path):
    # the stand-in apt-get "installs" a chromium into the stub directory
    r = _ensure(tmp_path, 0, apt=f'[ "$1" = install ] && printf "#!/bin/sh\\n" > "{tmp_path}/stubs/chromium" '
                                f'&& chmod +x "{tmp_path}/stubs/chromium"; exit 0')
    assert r.returncode == 0
    assert "installing Debian's chromium" in r.stderr
    assert f"found={tmp_path}/stubs/chromium" in r.stdout and "missing=\n" in r.stdout + "\n"


@pytest.mark.parametrize("uid,apt,why", [
    (1000, None, "not root"), (0, None, "no apt-get"), (0, "echo 'E: Unable to locate package chromium'; exit 100",
                                                         "apt-get install chromium failed: E: Unable to locate package"),
])
def test_impossible_install_prints_why_and_the_tests_skip(tmp_path, uid, apt, why):
    r = _ensure(tmp_path, uid, apt=apt)
    assert r.returncode == 0
    assert why in r.stderr and "the browser tests will be skipped" in r.stderr
    assert "found=\n" in r.stdout and why in r.stdout  # the reason travels to pytest in VAPO_BROWSER_MISSING


def test_a_failed_install_is_remembered_and_not_retried(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    r = _ensure(tmp_path, 0, apt="echo 'E: no network'; exit 100", VENV=str(venv))
    assert "apt-get install chromium failed: E: no network" in r.stderr
    assert (venv / ".vapo-chromium-failed").read_text().strip() == "apt-get install chromium failed: E: no network"
    r = _ensure(tmp_path, 0, apt="echo called > \"$0.called\"; exit 100", VENV=str(venv))
    assert "not retried" in r.stderr and "installing" not in r.stderr
    assert not (tmp_path / "stubs" / "apt-get.called").exists()
    r = _ensure(tmp_path, 0, apt="echo called > \"$0.called\"; exit 100", VENV=str(venv), VAPO_REQUIRE_BROWSER="1")
    assert (tmp_path / "stubs" / "apt-get.called").exists()  # CI always tries


def test_ci_switch_makes_a_missing_browser_a_failure(tmp_path):
    r = _ensure(tmp_path, 1000, VAPO_REQUIRE_BROWSER="1", VAPO_NO_BROWSER="1")
    assert "VAPO_REQUIRE_BROWSER=1, so the browser tests will fail" in r.stderr
    test = ROOT / "tests" / "diagnostics" / "test_report_browser.py"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAPO_")}
    env.update(PATH=str(tmp_path / "tools") + os.pathsep + str(Path(os.sys.executable).parent), PYTHONPATH=str(ROOT),
               VAPO_REQUIRE_BROWSER="1", VAPO_BROWSER_MISSING="no Chromium (test)")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pytest, test_report_browser as t\n"
            "try:\n    t._browser()\nexcept pytest.fail.Exception as e:\n    print('FAIL', e)\n"
            "except pytest.skip.Exception as e:\n    print('SKIP', e)\n")
    out = subprocess.run([os.sys.executable, "-c", code, str(test.parent)], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.startswith("FAIL VAPO_REQUIRE_BROWSER=1 but no Chromium (test)"), out.stdout + out.stderr
    del env["VAPO_REQUIRE_BROWSER"]
    out = subprocess.run([os.sys.executable, "-c", code, str(test.parent)], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.startswith("SKIP no Chromium (test)"), out.stdout + out.stderr
