"""Aggregation on hand-written run directories: threshold, steps and answers to threshold (with
dynamic sampling's extra rounds), collapse and NaN detection, ablation drops and their rank
correlation with the paper's, all checked against numbers computed by hand."""

from __future__ import annotations

import json

import pytest
from compare_helpers import write_grid
from scipy import stats

from vapo.compare import load_grid
from vapo.compare.aggregate import aggregate
from vapo.compare.report import render_markdown, write_outputs
from vapo.compare.runner import plan_cells

# final held-out accuracy per (variant, seed); curves reach it linearly from 0.5 at iteration 0
FINAL = {
    "vapo": (0.80, 0.84), "vapo_no_value_pretrain": (0.60, 0.62), "vapo_no_clip_higher": (0.75, 0.77),
    "vapo_no_pos_nll": (0.79, 0.83), "dapo": (0.70, 0.72),
}


def _fake_run(run, cfg_yaml, final, gen_rounds=1, nan=False, warm=0.5):
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(cfg_yaml)
    with open(run / "metrics.jsonl", "w") as f:
        for it in (1, 2):
            f.write(json.dumps({"iteration": it, "accuracy": 0.5, "gen_rounds": gen_rounds,
                                "policy_loss": float("nan") if nan and it == 2 else 0.1,
                                "explained_variance": float("nan")}) + "\n")
    with open(run / "eval.jsonl", "w") as f:
        for it, acc in ((0, warm), (1, (warm + final) / 2), (2, final)):
            for split in ("heldout", "long"):
                f.write(json.dumps({"iteration": it, "split": split, "accuracy": acc if split == "heldout" else acc / 2,
                                    "by_size": {"2": acc, "3": acc}}) + "\n")
    (run / "summary.json").write_text(json.dumps({
        "final": {"heldout": final, "long": final / 2}, "warm_start": {"heldout": warm, "long": warm / 2},
        "final_by_size": {"heldout": {"2": final, "3": final}, "long": {"7": final / 2}}, "seconds": 10.0}))


@pytest.fixture()
def fake(tmp_path):
    grid = load_grid(write_grid(tmp_path / "a.yaml", "".join(f"- {v}\n" for v in FINAL)))
    out = tmp_path / "out"
    for c in grid.cells:
        f = FINAL[c.variant.name][c.seed]
        _fake_run(out / c.name, c.config.to_yaml(), f, gen_rounds=3 if c.variant.name == "dapo" else 1,
                  nan=c.name == "vapo_no_pos_nll-s1", warm=0.9 if c.name == "vapo_no_value_pretrain-s0" else 0.5)
    plans = plan_cells(grid, out)
    assert {p.action for p in plans} == {"reuse"}
    for p in plans:
        p.result = "reused"
    return grid, out, aggregate(grid, plans)


def test_threshold_steps_and_samples(fake):
    _, _, res = fake
    # the only baseline is dapo: threshold = its mean final (0.71)
    assert res["threshold"]["value"] == pytest.approx(0.71) and "dapo" in res["threshold"]["source"]
    v = res["variants"]
    # vapo seed 0: curve 0.5, 0.65, 0.8 → first ≥ 0.71 at iteration 2 → 2 × 4 prompts × 2 answers = 16
    assert v["vapo"]["steps_to_threshold"]["values"] == [2, 2]
    assert v["vapo"]["samples_to_threshold"]["values"] == [16, 16]
    # dapo seed 0 (final 0.70) never reaches 0.71; seed 1 at iteration 2 with 3 rounds per iteration → 48
    assert v["dapo"]["reached"] == "1/2" and v["dapo"]["samples_to_threshold"]["values"] == [48]
    assert v["vapo"]["samples_rel_dapo"] == pytest.approx(16 / 48)
    # no_value_pretrain seed 0 starts above the threshold (warm start 0.9): reached at iteration 0
    # with 0 answers; seed 1 (0.5 → 0.62) never reaches it
    nvp = v["vapo_no_value_pretrain"]
    assert nvp["reached"] == "1/2" and nvp["steps_to_threshold"]["values"] == [0] and nvp["samples_rel_dapo"] == 0.0


def test_collapse_nan_and_by_size(fake):
    _, _, res = fake
    v = res["variants"]
    assert v["vapo_no_value_pretrain"]["collapses"] == 1  # 0.9 → 0.6 is a drop of more than 0.10
    assert v["vapo_no_pos_nll"]["nan_cells"] == 1 and v["vapo_no_pos_nll"]["collapses"] == 1
    assert v["vapo"]["nan_cells"] == 0 and v["vapo"]["collapses"] == 0  # NaN explained variance is not a failure
    ref = stats.t.interval(0.95, 1, loc=0.82, scale=stats.sem([0.80, 0.84]))
    got = v["vapo"]["by_size"]["heldout"]["3"]
    assert (got["lo"], got["hi"]) == pytest.approx(ref)
    assert v["vapo"]["long"]["mean"] == pytest.approx(0.41)


def test_ablation_drops_and_spearman(fake):
    _, _, res = fake
    rows = {r["preset"]: r for r in res["ablation"]["rows"]}
    assert set(rows) == {"vapo_no_value_pretrain", "vapo_no_clip_higher", "vapo_no_pos_nll"}
    assert rows["vapo_no_value_pretrain"]["drop"]["mean"] == pytest.approx(21.0)  # 82 − 61 points
    assert rows["vapo_no_value_pretrain"]["paper_drop"] == pytest.approx(49.4)
    assert rows["vapo_no_clip_higher"]["paper_drop"] == pytest.approx(14.4)
    ours = [rows[k]["drop"]["mean"] for k in ("vapo_no_value_pretrain", "vapo_no_clip_higher", "vapo_no_pos_nll")]
    paper = [49.4, 14.4, 6.4]
    assert res["ablation"]["spearman"]["rho"] == pytest.approx(stats.spearmanr(ours, paper).statistic)
    # pairs: with two seeds t(0.975, 1) = 12.7, so even 82 vs 61 points do not separate:
    # vapo [0.566, 1.074] and no_value_pretrain [0.483, 0.737] overlap
    pair = {(p["a"], p["b"]): p for p in res["pairs"]}
    assert len(pair) == 10
    a = stats.t.interval(0.95, 1, loc=0.82, scale=stats.sem([0.80, 0.84]))
    b = stats.t.interval(0.95, 1, loc=0.61, scale=stats.sem([0.60, 0.62]))
    assert a[0] < b[1]
    assert pair[("vapo", "vapo_no_value_pretrain")]["heldout"]["separated"] is False
    assert pair[("vapo", "vapo_no_value_pretrain")]["heldout"]["diff"]["mean"] == pytest.approx(0.21)


def test_reports_are_written_and_escaped(fake, tmp_path):
    grid, out, res = fake
    res["description"] = "<script>alert(1)</script>"
    res["variants"]["vapo"]["diagnose"] = {"report": str(out / "vapo-s0" / "r.html"), "seed": 0, "step": 2,
                                           "findings": [["1. Critic error", "bias <b>+0.1</b>"]], "dir": ""}
    paths = write_outputs(res, out)
    html = paths["html"].read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
    assert "bias &lt;b&gt;+0.1&lt;/b&gt;" in html and '<a href="vapo-s0/r.html">' in html  # autoescaped, relative
    assert html.count("data:image/png;base64,") == 3  # curves, by size, ablation drops
    md = render_markdown(res, ["curves.png"], out)
    assert "| vapo |" in md and "Spearman" in md and "(vapo-s0/r.html)" in md
    j = json.loads(paths["json"].read_text())
    assert j["variants"]["vapo"]["heldout"]["mean"] == pytest.approx(0.82)


def test_size_buckets():
    from vapo.compare.aggregate import bucket_sizes, size_key

    few = bucket_sizes({"2", "3", "10"})
    assert few == [("2", ["2"]), ("3", ["3"]), ("10", ["10"])]  # few sizes: one column each, numeric order
    many = bucket_sizes({str(n) for n in range(4, 65)})  # repeat_add's training sizes
    assert len(many) == 6 and [m for _, ms in many for m in ms] == [str(n) for n in range(4, 65)]
    assert many[0] == ("4–14", [str(n) for n in range(4, 15)]) and many[-1][0] == "55–64"  # width 61 / 6
    assert sorted([lab for lab, _ in many][::-1], key=size_key) == [lab for lab, _ in many]


def test_bucket_accuracy_is_the_mean_over_its_sizes(tmp_path):
    grid = load_grid(write_grid(tmp_path / "a.yaml", "- vapo\n- dapo\n"))
    out = tmp_path / "out"
    for c in grid.cells:
        _fake_run(out / c.name, c.config.to_yaml(), 0.8)
        s = json.loads((out / c.name / "summary.json").read_text())
        s["final_by_size"]["heldout"] = {str(n): (0.5 if n < 15 else 1.0) for n in range(4, 65)}
        (out / c.name / "summary.json").write_text(json.dumps(s))
    plans = plan_cells(grid, out)
    res = aggregate(grid, plans)
    b = res["variants"]["vapo"]["by_size"]["heldout"]
    assert list(b)[0] == "4–14" and b["4–14"]["mean"] == pytest.approx(0.5) and b["55–64"]["mean"] == pytest.approx(1.0)
    assert len(b) == 6


def test_threshold_skips_a_collapsed_baseline(tmp_path):
    # ppo collapses (0.6 → 0.2): its final accuracy is below every warm start, so it cannot be the threshold
    finals = {"vapo": 0.80, "dapo": 0.70, "ppo": 0.20}
    grid = load_grid(write_grid(tmp_path / "a.yaml", "".join(f"- {v}\n" for v in finals)))
    out = tmp_path / "out"
    for c in grid.cells:
        _fake_run(out / c.name, c.config.to_yaml(), finals[c.variant.name] + 0.01 * c.seed, warm=0.6)
    res = aggregate(grid, plan_cells(grid, out))
    assert res["variants"]["ppo"]["collapses"] == 2
    assert res["threshold"]["value"] == pytest.approx(0.705)
    assert "dapo" in res["threshold"]["source"] and "ppo collapsed" in res["threshold"]["source"]
    # with ppo's 0.205 every variant would "reach" it at iteration 0 (warm start 0.6)
    assert 0 not in res["variants"]["vapo"]["steps_to_threshold"]["values"]
