"""A real `vapo diagnose` report, opened in headless Chromium: it loads offline, shows every
section, and every embedded image decodes.

Needs a Chromium on PATH: bin/test installs Debian's ``chromium`` where it can (root + apt-get,
see bin/_browser.sh). Where none can be had, these tests are skipped with the reason; CI sets
VAPO_REQUIRE_BROWSER=1, which makes a missing browser a failure. VAPO_NO_BROWSER=1 skips them.
"""

import os
import re
import shutil
import subprocess

import pytest

from vapo.diagnostics.report import SECTIONS

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> tuple[str | None, str]:
    """(path of a headless-capable browser or None, why there is none)."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path, ""
    if os.environ.get("VAPO_NO_BROWSER") == "1":
        return None, "VAPO_NO_BROWSER=1"
    return None, os.environ.get("VAPO_BROWSER_MISSING") or (
        f"no Chromium on PATH (tried: {', '.join(BROWSERS)}); bin/test installs Debian's chromium when run as root "
        "with apt-get, or install it yourself (apt-get install chromium)")


def _browser() -> str:
    path, why = find_browser()
    if path:
        return path
    if os.environ.get("VAPO_REQUIRE_BROWSER") == "1":
        pytest.fail(f"VAPO_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def browser():
    """Requested before ``micro_runs``, so a skipped browser test costs no training run."""
    return _browser()


def _run(browser, tmp_path, *args):
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-extensions", "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=5000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


# Marks, once the page has loaded, how many images decoded (naturalWidth > 0), so that
# --dump-dom shows it. Injected into a copy of the report: the shipped page carries no test code.
PROBE = """<script>window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){var g=im[i].complete&&im[i].naturalWidth>0;im[i].setAttribute('data-decoded',g?'yes':'no');if(g)ok++;}
var d=document.createElement('div');d.id='img-status';d.setAttribute('data-loaded',ok);d.setAttribute('data-total',im.length);
d.textContent='images decoded: '+ok+'/'+im.length;document.body.appendChild(d);});</script>"""


def probed_copy(report):
    """A copy of ``report`` beside it (relative links keep working) with PROBE before </head>."""
    src = report.read_text()
    assert src.count("</head>") == 1 and "<script" not in src, "the report should ship no script"
    copy = report.with_name(report.stem + ".probe.html")
    copy.write_text(src.replace("</head>", PROBE + "</head>"))
    return copy


def test_report_renders_every_section_and_image(browser, micro_runs, tmp_path):
    run, _ = micro_runs["vapo"]
    report = run / "diagnostics" / "step_2" / "report.html"
    src = report.read_text()
    n_img = src.count("<img ")
    assert n_img >= len(SECTIONS)
    assert "http://" not in src and "https://" not in src  # self-contained: readable offline

    res = _run(browser, tmp_path, "--dump-dom", probed_copy(report).as_uri())
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


def test_a_broken_image_is_detected(browser, micro_runs, tmp_path):
    """The check above can fail: corrupt one embedded PNG and the page reports it undecoded."""
    run, _ = micro_runs["vapo"]
    src = (run / "diagnostics" / "step_2" / "report.html").read_text()
    broken = tmp_path / "broken.html"
    broken.write_text(src.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1))
    dom = _run(browser, tmp_path, "--dump-dom", probed_copy(broken).as_uri()).stdout
    loaded, total = map(int, re.search(r'data-loaded="(\d+)" data-total="(\d+)"', dom).groups())
    assert loaded == total - 1
