"""`vapo compare` end to end on a micro grid: every cell is an ordinary run directory, the reports
hold what the run directories say, and a second call reuses every finished cell."""

from __future__ import annotations

import json
import math

import pytest

from vapo.stats import two_level_bootstrap


def test_micro_grid_runs_every_cell_and_reports(micro_compare):
    grid, out, res, seconds = micro_compare
    assert res is not None
    for v in ("vapo", "grpo"):
        for s in (0, 1):
            run = out / f"{v}-s{s}"
            assert (run / "summary.json").is_file(), (run, (out / "logs" / f"{v}-s{s}.log").read_text()[-3000:])
            assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    status = json.loads((out / "status.json").read_text())
    assert {c["result"] for c in status.values()} == {"finished"}
    # The aggregate is the two-level bootstrap of the per-problem results the cells recorded.
    last = {}
    for v in ("vapo", "grpo"):
        for s in (0, 1):
            rows = [json.loads(line) for line in (out / f"{v}-s{s}" / "eval.jsonl").read_text().splitlines()]
            last[(v, s)] = [r for r in rows if r["split"] == "heldout" and r["iteration"] == 2][0]
            assert last[(v, s)]["seed"] == 1234 + s and len(last[(v, s)]["problem_ids"]) == 4
            assert sum(last[(v, s)]["problem_correct"]) == pytest.approx(4 * last[(v, s)]["accuracy"])
    for s in (0, 1):  # the variants of a seed answer the same problems
        assert last[("vapo", s)]["problem_ids"] == last[("grpo", s)]["problem_ids"]
    # different seeds draw different evaluation sets (4 problems each; equal sets would be a coincidence)
    assert last[("vapo", 0)]["problem_ids"] != last[("vapo", 1)]["problem_ids"]
    for v in ("vapo", "grpo"):
        finals = [json.loads((out / f"{v}-s{s}" / "summary.json").read_text())["final"]["heldout"] for s in (0, 1)]
        got = res["variants"][v]["heldout"]
        assert got["values"] == pytest.approx(finals)
        assert got["mean"] == pytest.approx(sum(finals) / 2)
        ref = two_level_bootstrap([last[(v, s)]["problem_correct"] for s in (0, 1)])  # samples = 1 per problem
        assert (got["lo"], got["hi"]) == (ref["lo"], ref["hi"])
        assert 0.0 <= got["lo"] <= got["hi"] <= 1.0
        assert res["variants"][v]["finished"] == 2 and res["variants"][v]["crashes"] == 0
    # compact per-iteration metrics and evaluations beside the report, one pair of files per cell
    import gzip

    for v in ("vapo", "grpo"):
        for s in (0, 1):
            rows = [json.loads(line) for line in gzip.open(out / "metrics" / f"{v}-s{s}.jsonl.gz", "rt")]
            assert [r["iteration"] for r in rows] == [1, 2] and "accuracy" in rows[0]
            assert (out / "metrics" / f"{v}-s{s}.eval.jsonl.gz").is_file()
    # The cells ran the validated config: the seed, preset and micro budget are in each config.yaml.
    import yaml

    cfg = yaml.safe_load((out / "grpo-s1" / "config.yaml").read_text())
    assert cfg["seed"] == 1 and cfg["preset"] == "grpo" and cfg["train"]["iterations"] == 2
    assert cfg["algo"]["advantage"]["estimator"] == "grpo"
    # One pair, compared on both splits; threshold = the weakest baseline (grpo is the only one).
    assert len(res["pairs"]) == 1 and res["pairs"][0]["heldout"]["seeds"] == [0, 1]
    assert res["pairs"][0]["heldout"]["bootstrap"]["available"] is True
    assert res["evidence"]["per_problem"] == "recorded" and res["evidence"]["eval_sets"].startswith("drawn per seed")
    assert res["threshold"]["value"] == pytest.approx(res["variants"]["grpo"]["heldout"]["mean"])
    assert "grpo" in res["threshold"]["source"]
    # Diagnose ran on one seed per variant; its findings are linked from the reports.
    for v in ("vapo", "grpo"):
        d = res["variants"][v]["diagnose"]
        assert d is not None and len(d["findings"]) == 5
    md = (out / "compare.md").read_text()
    assert "vapo-s0/diagnostics/step_2/report.html" in md
    html = (out / "compare.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "http://" not in html and "https://" not in html
    # every embedded plot is a PNG that decodes (the browser test checks the same in Chromium)
    import base64
    import io
    import re

    import matplotlib.image as mpimg

    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', html):
        assert mpimg.imread(io.BytesIO(base64.b64decode(b64)), format="png").shape[0] > 50
    j = json.loads((out / "compare.json").read_text())
    assert set(j["variants"]) == {"vapo", "grpo"}
    # the critic-free variant has no critic EV; vapo's comes from training metrics and from diagnose
    assert set(j["variants"]["grpo"]["ev_train"]["per_seed"].values()) == {None}
    assert j["variants"]["grpo"]["ev_mc_after_rl"] is None
    ev_seeds = 0
    for s in (0, 1):
        rows = [json.loads(line) for line in (out / f"vapo-s{s}" / "metrics.jsonl").read_text().splitlines()]
        ev_seeds += any(math.isfinite(r["explained_variance"]) for r in rows)  # NaN when returns are constant
    assert sum(x is not None for x in j["variants"]["vapo"]["ev_train"]["per_seed"].values()) == ev_seeds
    after = j["variants"]["vapo"]["ev_mc_after_rl"]
    assert after is None or (after["source"].startswith("vapo diagnose") and after["seed"] == 0)
    # No NaN in losses or gradients, so no cell is a collapse unless accuracy fell below its warm start.
    assert j["variants"]["vapo"]["nan_cells"] == 0


def test_second_call_reuses_finished_cells(micro_compare):
    from vapo.compare import run_compare

    grid, out, _, _ = micro_compare
    before = {p: p.stat().st_mtime_ns for p in out.glob("*-s*/summary.json")}
    assert len(before) == 4
    res = run_compare(grid, jobs=2, quick=True, out=out, progress=False)
    assert res is not None
    assert {p: p.stat().st_mtime_ns for p in out.glob("*-s*/summary.json")} == before
    status = json.loads((out / "status.json").read_text())
    assert {c["result"] for c in status.values()} == {"reused"}
