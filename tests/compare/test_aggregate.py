"""Aggregation on hand-written run directories: threshold, steps and answers to threshold per seed
(with dynamic sampling's extra rounds), collapse and NaN detection, paired comparisons with Holm's
correction, the per-problem bootstrap, ablation drops and their rank correlation with the
paper's, the compact metrics and re-deriving a report from compare.json, all checked against
numbers computed by hand or by vapo.stats on the same inputs."""

from __future__ import annotations

import gzip
import json

import pytest
from compare_helpers import write_grid
from scipy import stats

from vapo.compare import load_grid
from vapo.compare.aggregate import aggregate, reaggregate
from vapo.compare.report import render_markdown, write_outputs
from vapo.compare.runner import plan_cells, write_compact_metrics
from vapo.stats import bootstrap_mean_ci, holm, two_level_bootstrap

# final held-out accuracy per (variant, seed); curves reach it linearly from 0.5 at iteration 0
FINAL = {
    "vapo": (0.80, 0.84), "vapo_no_value_pretrain": (0.60, 0.62), "vapo_no_clip_higher": (0.75, 0.77),
    "vapo_no_pos_nll": (0.79, 0.83), "dapo": (0.70, 0.72),
}


def _fake_run(run, cfg_yaml, final, gen_rounds=1, nan=False, warm=0.5, problems=None):
    """``problems`` {split: (ids, correct)} of the final evaluation (absent: an older run without them)."""
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
                row = {"iteration": it, "split": split, "accuracy": acc if split == "heldout" else acc / 2,
                       "by_size": {"2": acc, "3": acc}, "samples": 4}
                if problems and it == 2:
                    row.update(seed=problems["seed"], problem_ids=problems[split][0], problem_correct=problems[split][1])
                f.write(json.dumps(row) + "\n")
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
    assert v["vapo"]["steps_to_threshold"]["per_seed"] == {"0": 2, "1": 2}
    assert v["vapo"]["samples_to_threshold"]["per_seed"] == {"0": 16, "1": 16}
    # dapo seed 0 (final 0.70) never reaches 0.71; seed 1 at iteration 2 with 3 rounds per iteration → 48
    assert v["dapo"]["reached"] == "1 of 2" and v["dapo"]["samples_to_threshold"]["per_seed"] == {"0": None, "1": 48}
    # no ratio to dapo over the one dapo seed that reached it
    assert v["vapo"]["samples_rel_dapo"] is None and "not every seed" in v["vapo"]["rel_dapo_note"]
    # no_value_pretrain seed 0 starts above the threshold (warm start 0.9): reached at iteration 0
    # with 0 answers; seed 1 (0.5 → 0.62) never reaches it
    nvp = v["vapo_no_value_pretrain"]
    assert nvp["reached"] == "1 of 2" and nvp["steps_to_threshold"]["per_seed"] == {"0": 0, "1": None}
    md = render_markdown(res, [], res and fake[1])
    assert "0 / — (1 of 2 seeds reached it)" in md  # per seed, never a mean over the survivors


def test_ratio_to_dapo_needs_every_seed_of_both(tmp_path):
    finals = {"vapo": (0.80, 0.84), "dapo": (0.75, 0.77), "grpo": (0.72, 0.74)}
    grid = load_grid(write_grid(tmp_path / "a.yaml", "".join(f"- {v}\n" for v in finals)))
    out = tmp_path / "out"
    for c in grid.cells:
        _fake_run(out / c.name, c.config.to_yaml(), finals[c.variant.name][c.seed],
                  gen_rounds=3 if c.variant.name == "dapo" else 1)
    res = aggregate(grid, plan_cells(grid, out))
    v = res["variants"]
    # threshold 0.73 (grpo's mean): vapo and dapo reach it at iteration 2 on both seeds → 16 vs 48 answers
    assert v["vapo"]["samples_rel_dapo"] == pytest.approx(32 / 96) and v["vapo"]["rel_dapo_note"] == "2 seeds"
    assert v["dapo"]["samples_rel_dapo"] is None


def test_collapse_nan_and_by_size(fake):
    _, _, res = fake
    v = res["variants"]
    assert v["vapo_no_value_pretrain"]["collapses"] == 1  # 0.9 → 0.6 is a drop of more than 0.10
    assert v["vapo_no_pos_nll"]["nan_cells"] == 1 and v["vapo_no_pos_nll"]["collapses"] == 1
    assert v["vapo"]["nan_cells"] == 0 and v["vapo"]["collapses"] == 0  # NaN explained variance is not a failure
    ref = bootstrap_mean_ci([0.80, 0.84])
    got = v["vapo"]["by_size"]["heldout"]["3"]
    assert (got["lo"], got["hi"]) == pytest.approx((ref["lo"], ref["hi"]))
    assert 0.80 <= got["lo"] <= got["hi"] <= 0.84  # inside the seeds' range, so inside [0, 1]
    assert v["vapo"]["long"]["mean"] == pytest.approx(0.41)
    assert "over seeds" in v["vapo"]["heldout"]["method"]  # no per-problem records in these runs


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
    # pairs, paired by seed: vapo − no_value_pretrain = 0.20, 0.22 on seeds 0, 1
    pair = {(p["a"], p["b"]): p for p in res["pairs"]}
    assert len(pair) == 10
    h = pair[("vapo", "vapo_no_value_pretrain")]["heldout"]
    assert h["diffs"] == pytest.approx([0.20, 0.22]) and h["mean"] == pytest.approx(0.21)
    assert h["p_t"] == pytest.approx(stats.ttest_rel([0.80, 0.84], [0.60, 0.62]).pvalue)
    assert h["p_sign_flip"] == pytest.approx(0.5)  # 2 seeds: sums ±0.42, ±0.02 → 2 of 4 patterns
    assert rows["vapo_no_value_pretrain"]["drop"]["diffs"] == pytest.approx([20.0, 22.0])
    assert rows["vapo_no_value_pretrain"]["p_holm"] == h["p_holm"]
    # Holm across the 10 held-out pairs, in the same order
    assert [p["heldout"]["p_holm"] for p in res["pairs"]] == holm([p["heldout"]["p_t"] for p in res["pairs"]])
    assert all(p["heldout"]["p_holm"] is None or p["heldout"]["p_holm"] >= p["heldout"]["p_t"] for p in res["pairs"])
    # these runs predate per-problem records: the bootstrap is unavailable and the report says why
    assert h["bootstrap"]["available"] is False and "not recorded" in h["bootstrap"]["why"]
    assert "not recorded" in res["evidence"]["per_problem"]
    assert res["evidence"]["sign_flip_floor"] == pytest.approx(0.5) and res["evidence"]["paired_seeds_min"] == 2


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
    assert "Holm p" in md and "sign-flip p" in md and "MDE 80%" in md and "## Evidence" in md
    assert "cannot reach 0.05 at any effect size" in md  # two seeds: the sign-flip floor is 0.5
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
    assert 0 not in res["variants"]["vapo"]["steps_to_threshold"]["per_seed"].values()


def _problem_grid(tmp_path, same_ids=True):
    """vapo and dapo × seeds 0, 1 with per-problem records: 4 problems per seed and split, 4 answers each."""
    grid = load_grid(write_grid(tmp_path / "p.yaml", "- vapo\n- dapo\n"))
    out = tmp_path / "out"
    correct = {("vapo", 0): [4, 3, 4, 2], ("dapo", 0): [3, 3, 2, 2], ("vapo", 1): [4, 4, 1, 3], ("dapo", 1): [4, 2, 1, 1]}
    for c in grid.cells:
        cc = correct[(c.variant.name, c.seed)]
        ids = [f"{c.seed}{i}" + ("x" if not same_ids and c.variant.name == "dapo" else "") for i in range(4)]
        _fake_run(out / c.name, c.config.to_yaml(), sum(cc) / 16,
                  problems={"seed": 1234 + c.seed, "heldout": (ids, cc), "long": (ids, [x // 2 for x in cc])})
    return grid, out, correct


def test_per_problem_two_level_bootstrap(tmp_path):
    grid, out, correct = _problem_grid(tmp_path)
    res = aggregate(grid, plan_cells(grid, out))
    acc = {k: [x / 4 for x in v] for k, v in correct.items()}
    h = res["pairs"][0]["heldout"]
    ref = two_level_bootstrap([[a - b for a, b in zip(acc[("vapo", s)], acc[("dapo", s)], strict=True)] for s in (0, 1)])
    assert h["bootstrap"]["available"] and (h["bootstrap"]["lo"], h["bootstrap"]["hi"]) == (ref["lo"], ref["hi"])
    v = res["variants"]["vapo"]["heldout"]
    ref = two_level_bootstrap([acc[("vapo", 0)], acc[("vapo", 1)]])
    assert (v["lo"], v["hi"]) == (ref["lo"], ref["hi"]) and v["method"].startswith("two-level")
    assert v["problems_per_seed"] == [4, 4]
    ev = res["evidence"]
    assert ev["per_problem"] == "recorded" and ev["eval_sets"].startswith("drawn per seed")
    # the bootstrap is in the report as an interval
    md = render_markdown(res, [], out)
    assert f"[{100 * h['bootstrap']['lo']:+.1f}, {100 * h['bootstrap']['hi']:+.1f}]" in md


def test_per_problem_bootstrap_refuses_different_problem_sets(tmp_path):
    grid, out, _ = _problem_grid(tmp_path, same_ids=False)
    res = aggregate(grid, plan_cells(grid, out))
    b = res["pairs"][0]["heldout"]["bootstrap"]
    assert b["available"] is False and "different problems" in b["why"]


def test_compact_metrics_and_rederived_report(tmp_path):
    grid, out, _ = _problem_grid(tmp_path)
    plans = plan_cells(grid, out)
    res = aggregate(grid, plans)
    for p in plans:
        write_compact_metrics(p.run_dir, out / "metrics", p.cell.name)
    rows = [json.loads(line) for line in gzip.open(out / "metrics" / "vapo-s0.jsonl.gz", "rt")]
    assert [r["iteration"] for r in rows] == [1, 2] and rows[0]["explained_variance"] is None  # NaN → null
    ev = [json.loads(line) for line in gzip.open(out / "metrics" / "vapo-s0.eval.jsonl.gz", "rt")]
    last = [r for r in ev if r["iteration"] == 2 and r["split"] == "heldout"][0]
    assert last["problem_ids"] == ["00", "01", "02", "03"] and last["problem_correct"] == [4, 3, 4, 2]
    assert not (out / "metrics" / "vapo-s0.events.jsonl.gz").exists()  # the fake run has no events.jsonl
    (out / "vapo-s0" / "events.jsonl").write_text('{"phase": "value_pretrain_end", "critic_quality": {"ev": 0.1}}\n')
    assert "events.jsonl" in write_compact_metrics(out / "vapo-s0", out / "metrics", "vapo-s0")
    assert [json.loads(line) for line in gzip.open(out / "metrics" / "vapo-s0.events.jsonl.gz", "rt")] == [
        {"phase": "value_pretrain_end", "critic_quality": {"ev": 0.1}}]
    first = (out / "metrics" / "vapo-s0.jsonl.gz").read_bytes()
    write_compact_metrics(out / "vapo-s0", out / "metrics", "vapo-s0")
    assert (out / "metrics" / "vapo-s0.jsonl.gz").read_bytes() == first  # same rows, same bytes
    # compare.json + metrics/ alone give back the same statistics
    old = json.loads(json.dumps(res))
    again = reaggregate(old, out / "metrics")
    for split in ("heldout", "long"):
        for p, q in zip(res["pairs"], again["pairs"], strict=True):
            for key in ("diffs", "p_t", "p_holm", "p_sign_flip", "mde80", "lo", "hi"):
                assert q[split][key] == p[split][key]
            assert q[split]["bootstrap"] == p[split]["bootstrap"]
    assert again["variants"]["vapo"]["heldout"] == res["variants"]["vapo"]["heldout"]
    assert again["variants"]["vapo"]["samples_to_threshold"] == res["variants"]["vapo"]["samples_to_threshold"]
    # without the metrics the per-problem bootstrap is unavailable, and says so
    bare = reaggregate(old)
    assert bare["pairs"][0]["heldout"]["bootstrap"]["available"] is False


def test_critic_columns_per_seed_from_the_fresh_probe(tmp_path):
    """ev ÷ achievable and ev_vs_mc come from summary.json's critic_quality, per seed; a seed
    without them (or with achievable_ev ≤ 0) is n/a for that seed, not dropped silently."""
    grid = load_grid(write_grid(tmp_path / "a.yaml", "- vapo\n- grpo\n"))
    out = tmp_path / "out"
    cq = {0: {"ev": {"value": 0.12}, "achievable_ev": {"value": 0.30}, "ev_vs_mc": {"value": 0.55, "lo": 0.4, "hi": 0.7}},
          1: {"ev": {"value": 0.05}, "achievable_ev": {"value": 0.0}, "ev_vs_mc": {"value": 0.1}}}
    for c in grid.cells:
        _fake_run(out / c.name, c.config.to_yaml(), 0.7)
        if c.variant.name == "vapo":
            s = json.loads((out / c.name / "summary.json").read_text())
            s["critic_quality"] = cq[c.seed]
            (out / c.name / "summary.json").write_text(json.dumps(s))
    res = aggregate(grid, plan_cells(grid, out))
    v = res["variants"]
    assert v["vapo"]["ev_share_pretrain"]["per_seed"] == {"0": pytest.approx(0.4), "1": None}
    assert v["vapo"]["ev_mc_pretrain"]["per_seed"]["0"]["value"] == 0.55
    md = render_markdown(res, [], out)
    assert "critic ev ÷ achievable per seed" in md and "40% / —" in md
    assert all(x is None for x in v["grpo"]["ev_share_pretrain"]["per_seed"].values())
