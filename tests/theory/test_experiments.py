"""Every experiment: quick runs write valid JSON (no NaN) + PNG + a verdict that the decision
function recomputes from the saved results; verdicts flip on planted counter-evidence; CLI/HTML."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vapo.errors import VapoError
from vapo.theory.cli import theory_command, write_html
from vapo.theory.framework import EXPERIMENTS, STATUSES, load_experiments, write_results_json
from vapo.theory.mdp import make_mdp, sample

load_experiments()


ALL = ["value_error", "adaptive_lambda", "token_bias", "generalization", "exploration", "exploration_mechanisms",
       "pathways"]


def _no_nan(token: str):
    raise ValueError(f"results.json holds {token}, which is not JSON")


def test_every_experiment_is_registered_in_run_order():
    assert list(load_experiments()) == ALL


def test_non_finite_numbers_are_written_as_null(tmp_path):
    path = write_results_json(tmp_path / "r.json", {"a": float("nan"), "b": [np.inf, 1.5], "c": np.float32(2)})
    assert json.loads(path.read_text(), parse_constant=_no_nan) == {"a": None, "b": [None, 1.5], "c": 2.0}
    with pytest.raises(ValueError, match="NaN"):
        json.loads('{"a": NaN}', parse_constant=_no_nan)


@pytest.mark.parametrize("name", ALL)
def test_quick_run_writes_results_png_and_valid_verdict(name, tmp_path):
    exp = EXPERIMENTS[name]
    res = exp.run(seed=0, out_dir=tmp_path / name, quick=True)
    data = json.loads((tmp_path / name / "results.json").read_text(), parse_constant=_no_nan)
    assert data["verdict"] in STATUSES and data["verdict"] == res.verdict.status
    assert data["hypothesis"] and data["decision_rule"] and data["claim"]
    assert exp.decide(data["results"]).status == data["verdict"]  # recomputed from the saved numbers
    assert res.plots and all(p.stat().st_size > 1000 for p in res.plots)
    if name == "adaptive_lambda":
        assert 0 < data["results"]["recommended_alpha_tiny"] < 10


def _value_error_results(near, far, short, long, pre_ratio):
    def row(few_mean, by_d, init=0.5):
        return {"init": {"mean_abs_bias": init}, "few_updates": {"mean_abs_bias": few_mean, "abs_bias_by_distance": by_d},
                "pretrained": {"mean_abs_bias": init * pre_ratio}}
    return {"lengths": [16, 1024],
            "critics": {"TD(0)": {"16": row(short, [0, near, far]), "1024": row(long, [0, near, far])},
                        "MC (λ=1)": {"16": row(0.1, [0, 0.1, 0.1]), "1024": row(0.1, [0, 0.1, 0.1])}}}


def test_value_error_verdict_flips():
    d = EXPERIMENTS["value_error"].decide
    assert d(_value_error_results(0.1, 0.5, 0.1, 0.4, 0.1)).status == "supported"
    assert d(_value_error_results(0.5, 0.1, 0.4, 0.1, 0.9)).status == "refuted"
    assert d(_value_error_results(0.1, 0.5, 0.1, 0.4, 0.9)).status == "inconclusive"


def _adaptive_results(rho, ex_alpha, ex_fixed):
    s = {"exact": {"spearman_l_lambda_star": None, "excess_best_alpha": 0.0, "excess_best_fixed": 0.0}}
    for c in ("a", "b", "c"):
        s[c] = {"spearman_l_lambda_star": rho, "best_alpha": 0.01, "excess_best_alpha": ex_alpha,
                "best_fixed_lambda": 0.5, "excess_best_fixed": ex_fixed, "excess_paper_alpha_0.05": 0.1,
                "excess_fixed_0.95": 0.2}
    return {"summary": s, "recommended_alpha_tiny": 0.01}


def test_adaptive_lambda_verdict_flips():
    d = EXPERIMENTS["adaptive_lambda"].decide
    assert d(_adaptive_results(0.95, 0.01, 0.05)).status == "supported"
    assert d(_adaptive_results(-0.9, 0.05, 0.01)).status == "refuted"
    assert d(_adaptive_results(0.95, 0.05, 0.01)).status == "inconclusive"


def _token_results(cos_stm, cos_b1, grow_stm, cos_sum=1.0):
    c = {"seq-mean-token-sum-norm": cos_sum, "seq-mean-token-mean": cos_stm, "token-mean B=1": cos_b1,
         "token-mean B=4": 0.99, "token-mean B=inf": 1.0}
    curve = lambda g: {"mean_len_wrong": [10.0, 10.0 + g]}  # noqa: E731
    return {"cos_to_grad_J": c, "mean_len_wrong_0": 10.0, "batches": [1, 4],
            "drift": {"seq-mean-token-sum-norm": curve(1.0), "seq-mean-token-mean": curve(grow_stm),
                      "token-mean B=4": curve(1.0), "token-mean B=inf": curve(1.0)}}


def test_token_bias_verdict_flips():
    d = EXPERIMENTS["token_bias"].decide
    assert d(_token_results(0.7, 0.7, 5.0)).status == "supported"
    assert d(_token_results(0.9999, 1.0, 1.0)).status == "refuted"
    assert d(_token_results(0.7, 0.7, 0.0)).status == "inconclusive"
    assert d(_token_results(0.7, 0.7, 5.0, cos_sum=0.9)).status == "inconclusive"  # sanity failed


def test_token_weights_model_matches_vapo_algos_batches():
    """w_B(n) = B·E[1/(n+S)] is what token-mean gives a length-n answer in a batch of B."""
    from vapo.algos import token_weights
    from vapo.theory.exp_token_bias import per_length_weights, token_mean_weights

    pmf = np.array([0.0, 0.2, 0.3, 0.5])
    B = 3
    w = token_mean_weights(pmf, B)
    rng = np.random.default_rng(0)
    lens = rng.choice(4, p=pmf, size=(40_000, B))
    tot = np.zeros(4)
    cnt = np.zeros(4)
    for row in lens[:4000]:
        mask = (torch.arange(3)[None, :] < torch.as_tensor(row)[:, None]).double()
        tw = token_weights(mask, "token-mean")[:, 0].numpy()
        np.add.at(tot, row, tw * B)
        np.add.at(cnt, row, 1)
    emp = tot[1:] / cnt[1:]
    assert np.allclose(emp, w[1:], rtol=0.03)
    assert np.allclose(per_length_weights(5, "seq-mean-token-mean")[1:], 1 / np.arange(1, 6))


def test_cli_unknown_name_and_html(tmp_path):
    with pytest.raises(VapoError, match="value_error"):
        theory_command("value_eror", out=tmp_path)
    res = theory_command("token_bias", out=tmp_path, quick=True)
    page = write_html(res, tmp_path / "index.html").read_text()
    assert "token_bias" in page and "data:image/png;base64," in page and res[0].verdict.status in page


def test_sampled_batches_fit_vapo_algos_contract():
    mdp = make_mdp([3, 6])
    from vapo.theory.mdp import init_logits

    tr = sample(mdp, init_logits(mdp, 0.1, 0.2), 50, np.random.default_rng(0))
    t = tr.torch()
    assert t["token_rewards"].dtype == torch.float64 and t["response_mask"].shape == t["token_rewards"].shape
    assert torch.all(t["token_rewards"] * (1 - t["response_mask"]) == 0)


def test_html_page_escapes_hostile_text_and_keeps_every_experiment(tmp_path):
    from vapo.theory.framework import ExperimentResult, Verdict

    hostile = "<script>alert('x')</script>&"
    res = [ExperimentResult(n, hostile, hostile, hostile, Verdict("inconclusive", hostile, {"k": hostile}),
                            {}, [], 0.5, 0, {"n": 1}) for n in ("exp_a", "exp_b")]
    page = write_html(res, tmp_path / "index.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;" in page
    for n in ("exp_a", "exp_b"):
        assert f'<section id="{n}">' in page and f'href="#{n}"' in page
