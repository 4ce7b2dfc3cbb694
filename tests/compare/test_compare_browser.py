"""The compare report of the micro grid, opened in headless Chromium: it loads offline, shows every
section, every embedded plot decodes, and the diagnose findings link to their reports.

Uses the diagnose report test's browser helpers (Chromium required; VAPO_NO_BROWSER=1 skips)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "diagnostics"))
import test_report_browser as diag_browser  # noqa: E402  (helpers beside the diagnose report test)

SECTIONS = ("variants", "curves", "sizes", "pairs", "paper", "diagnose")


def test_compare_report_renders_in_chromium(micro_compare, tmp_path):
    browser = diag_browser._browser()
    _, out, _, _ = micro_compare
    report = out / "compare.html"
    src = report.read_text()
    n_img = src.count("<img ")
    assert n_img >= 2 and "http://" not in src and "https://" not in src
    res = diag_browser._run(browser, tmp_path, "--dump-dom", diag_browser.probed_copy(report).as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    for key in SECTIONS:
        assert f'id="sec-{key}"' in dom, key
    status = re.search(r'id="img-status" data-loaded="(\d+)" data-total="(\d+)"', dom)
    assert status, "the page's load handler did not run"
    loaded, total = map(int, status.groups())
    assert total == n_img and loaded == total, f"{loaded}/{total} images decoded"
    for v in ("vapo", "grpo"):
        link = re.search(rf'id="diag-{v}".*?<a href="([^"]+)">report</a>', dom, re.S)
        assert link and (out / link.group(1)).is_file(), v
