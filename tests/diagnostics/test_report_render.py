"""The `vapo diagnose` report page, rendered from a recorded diagnostics.json: every section
is present, hostile strings from the run are escaped, absent sections say 'not run'."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from vapo.diagnostics.report import SECTIONS, render_html, write_outputs

HERE = Path(__file__).parent
FIXTURE = HERE / "report_fixture_vapo.json"  # diagnostics.json of a micro vapo run, step 2
FIXTURE_NO_CRITIC = HERE / "report_fixture_grpo.json"  # the same for a critic-free grpo run
HOSTILE = "<script>alert('x')</script>&<b>"


@pytest.fixture(scope="module")
def result() -> dict:
    return json.loads(FIXTURE.read_text())


def test_every_section_with_its_finding_plots_and_tables(result):
    page = render_html(result)
    for key, title, _ in SECTIONS:
        m = re.search(f'<section id="sec-{key}">(.*?)</section>', page, re.S)
        assert m, key
        body = m.group(1)
        assert title in body and "Finding:" in body, key
        assert '<img alt="' in body and 'src="data:image/png;base64,' in body, key
        assert "<table>" in body and "<td>" in body, key
    assert "http://" not in page and "https://" not in page  # self-contained


def test_critic_free_run_renders_every_section():
    page = render_html(json.loads(FIXTURE_NO_CRITIC.read_text()))
    critic = re.search(r'<section id="sec-critic">(.*?)</section>', page, re.S).group(1)
    assert "No critic in this run (critic-free preset)." in critic and "<img" not in critic
    adv = re.search(r'<section id="sec-advantage">(.*?)</section>', page, re.S).group(1)
    assert "No critic in this run: GAE rows are absent" in adv and "<td>grpo</td>" in adv
    for key, _, _ in SECTIONS:
        assert f'<section id="sec-{key}">' in page


def test_hostile_strings_are_escaped(result):
    r = copy.deepcopy(result)
    r["run"] = r["preset"] = HOSTILE
    r["critic"]["finding"] = HOSTILE
    r["weighting"]["note"] = HOSTILE
    page = render_html(r)
    assert HOSTILE not in page and "<script>alert" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&lt;b&gt;"
    assert page.count(escaped) >= 5  # title, h1, run, finding, note
    for key, _, _ in SECTIONS:
        assert f'<section id="sec-{key}">' in page


def test_confidence_intervals_keep_their_markup(result):
    page = render_html(result)
    assert re.search(r"<td>-?\d+\.\d{3} <small>\[-?\d+\.\d{3}, -?\d+\.\d{3}\]</small></td>", page)


def test_absent_section_says_not_run(result, tmp_path):
    r = copy.deepcopy(result)
    del r["exploration"]
    write_outputs(r, tmp_path)
    page = (tmp_path / "report.html").read_text()
    sec = re.search(r'<section id="sec-exploration">(.*?)</section>', page, re.S).group(1)
    assert "not run" in sec and "<img" not in sec
    assert json.loads((tmp_path / "diagnostics.json").read_text())["run"] == r["run"]
