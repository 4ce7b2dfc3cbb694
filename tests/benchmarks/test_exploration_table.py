"""benchmarks/exploration_table.py: each mechanism against its base, paired by seed, with Holm over
the planned pairs, read from run directories and from the compressed files `vapo compare` commits."""

import gzip
import json

import pytest
from scipy import stats


def _write(path, rows, gz=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def _cell(out, name, p1, p8, long1, entropies, gz=False):
    evals = [{"iteration": 0, "split": "heldout", "accuracy": 0.0, "pass_at_k": {"1": 0.0, "8": 0.0}},
             {"iteration": 10, "split": "heldout", "accuracy": p1, "pass_at_k": {"1": p1, "8": p8}},
             {"iteration": 10, "split": "long", "accuracy": long1, "pass_at_k": {"1": long1, "8": 2 * long1}}]
    metrics = [{"iteration": i + 1, "entropy": e} for i, e in enumerate(entropies)]
    if gz:
        (out / "metrics").mkdir(exist_ok=True)
        _write(out / "metrics" / f"{name}.eval.jsonl.gz", evals, gz=True)
        _write(out / "metrics" / f"{name}.jsonl.gz", metrics, gz=True)
    else:
        (out / name).mkdir()
        _write(out / name / "eval.jsonl", evals)
        _write(out / name / "metrics.jsonl", metrics)
        (out / name / "summary.json").write_text("{}")


def test_pairs_each_mechanism_with_its_base_and_corrects_over_the_family(tmp_path, capsys, load_script):
    et = load_script("exploration_table")
    base = {0: 0.50, 1: 0.60, 2: 0.70}
    mech = {0: 0.55, 1: 0.62, 2: 0.78}  # diffs .05 .02 .08
    other = {0: 0.40, 1: 0.61, 2: 0.69}  # diffs -.10 .01 -.01
    for s in range(3):
        gz = s == 2  # one seed read from the committed files
        _cell(tmp_path, f"vapo-s{s}", base[s], 0.9, 0.1, [1.0] * 10 + [0.5] * 10, gz)
        _cell(tmp_path, f"vapo_x_0.02-s{s}", mech[s], 0.95, 0.2, [1.0] * 18 + [0.2, 0.4], gz)
        _cell(tmp_path, f"vapo_y-s{s}", other[s], 0.85, 0.1, [0.3] * 20, gz)
    _cell(tmp_path, "grpo_z-s0", 0.5, 0.5, 0.5, [0.1])  # base absent: not a planned pair
    _cell(tmp_path, "vapo_y-s3", 0.9, 0.9, 0.9, [0.1])
    (tmp_path / "vapo_y-s3" / "summary.json").unlink()  # still running: left out
    t = et.table(tmp_path)
    assert t["variants"] == ["grpo_z", "vapo", "vapo_x_0.02", "vapo_y"]
    rows = t["pairs"]["pass1"]
    assert [(r["variant"], r["base"]) for r in rows] == [("vapo_x_0.02", "vapo"), ("vapo_y", "vapo")]
    d = [0.05, 0.02, 0.08]
    assert rows[0]["diffs"] == pytest.approx(d)
    p = stats.ttest_rel([mech[s] for s in range(3)], [base[s] for s in range(3)]).pvalue
    p2 = rows[1]["p_t"]
    assert rows[0]["p_t"] == pytest.approx(p)
    lo, hi = sorted([p, p2])
    assert sorted([rows[0]["p_holm"], rows[1]["p_holm"]]) == pytest.approx([min(1, 2 * lo), max(min(1, 2 * lo), min(1, hi))])
    # the corrected interval is the paired t interval at level 1 - 0.05/2, wider than the 95% one
    half = stats.t.ppf(1 - 0.0125, 2) * stats.tstd(d) / 3 ** 0.5
    assert rows[0]["lo_corr"] == pytest.approx(sum(d) / 3 - half) and rows[0]["hi_corr"] == pytest.approx(sum(d) / 3 + half)
    assert rows[0]["lo_corr"] < rows[0]["lo"] and rows[0]["family"] == 2
    # final entropy: the mean of the last 10% of iterations (2 of 20)
    assert t["cells"]["vapo_x_0.02-s1"]["entropy"] == pytest.approx(0.3)
    assert t["cells"]["vapo-s0"]["entropy"] == pytest.approx(0.5)
    assert t["pairs"]["entropy"][0]["diffs"] == pytest.approx([-0.2] * 3)
    assert t["pairs"]["passk"][0]["diffs"] == pytest.approx([0.05] * 3)
    assert t["pairs"]["long_passk"][0]["diffs"] == pytest.approx([0.2] * 3)
    assert et.main([str(tmp_path), "--plot", str(tmp_path / "e.png"), "--json", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "| vapo_x_0.02 − vapo | 3 | +5.0 / +2.0 / +8.0 | +5.0 |" in out
    assert (tmp_path / "e.png").stat().st_size > 0 and json.loads((tmp_path / "t.json").read_text())["k"] == 8


def test_explicit_base_and_bad_input(tmp_path, capsys, load_script):
    et = load_script("exploration_table")
    for s in range(2):
        _cell(tmp_path, f"ref-s{s}", 0.5, 0.6, 0.1, [0.2])
        _cell(tmp_path, f"mine-s{s}", 0.6 + s / 10, 0.7, 0.1, [0.2])
    t = et.table(tmp_path, bases={"mine": "ref"})
    assert t["pairs"]["pass1"][0]["diffs"] == pytest.approx([0.1, 0.2])
    assert et.main([str(tmp_path / "none")]) == 2
    assert et.main([str(tmp_path), "--base", "mine"]) == 2
    assert "VARIANT=BASE" in capsys.readouterr().err
