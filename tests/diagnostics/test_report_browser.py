"""A real `vapo diagnose` report, opened in headless Chromium: it loads offline, shows every
section, and every embedded image decodes.

Needs the distribution's ``chromium`` (CI installs it). Set VAPO_NO_BROWSER=1 to skip on a machine
without one; without that variable a missing browser is a failure, not a silent skip.
"""

import os
import re
import shutil
import subprocess

import pytest

from vapo.diagnostics.report import SECTIONS

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("VAPO_NO_BROWSER") == "1":
        pytest.skip("VAPO_NO_BROWSER=1 and no Chromium on PATH")
    pytest.fail("no headless browser found (tried: " + ", ".join(BROWSERS) + "); install Debian's `chromium` "
                "(`apt-get install chromium`) or set VAPO_NO_BROWSER=1 to skip this test")


def _run(browser, tmp_path, *args):
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_report_renders_every_section_and_image(micro_runs, tmp_path):
    browser = _browser()
    run, _ = micro_runs["vapo"]
    report = run / "diagnostics" / "step_2" / "report.html"
    src = report.read_text()
    n_img = src.count("<img ")
    assert n_img >= len(SECTIONS)
    assert "http://" not in src and "https://" not in src  # self-contained: readable offline

    res = _run(browser, tmp_path, "--dump-dom", report.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    for key, title, _ in SECTIONS:
        assert f'id="sec-{key}"' in dom, key
        assert title.replace("&", "&amp;") in dom, title
    # The report's load handler counts images that decoded (naturalWidth > 0).
    status = re.search(r'id="img-status" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert status, "the page's load handler did not run"
    loaded, total = map(int, status.groups())
    assert total == n_img and loaded == total, f"{loaded}/{total} images decoded"
    assert 'data-decoded="no"' not in dom

    shot = tmp_path / "report.png"
    res = _run(browser, tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    assert res.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, res.stderr[-2000:]


def test_a_broken_image_is_detected(micro_runs, tmp_path):
    """The check above can fail: corrupt one embedded PNG and the page reports it undecoded."""
    browser = _browser()
    run, _ = micro_runs["vapo"]
    src = (run / "diagnostics" / "step_2" / "report.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(src.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1))
    dom = _run(browser, tmp_path, "--dump-dom", broken.as_uri()).stdout
    loaded, total = map(int, re.search(r'data-loaded="(\d+)" data-total="(\d+)"', dom).groups())
    assert loaded == total - 1
