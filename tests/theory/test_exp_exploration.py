"""Claim 5 (exploration): zero-signal formula vs simulation, quick run, verdict flips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vapo.theory import exp_exploration as E
from vapo.theory.framework import EXPERIMENTS


@pytest.mark.parametrize("p,g", [(0.0, 4), (1.0, 3), (0.3, 1), (0.2, 5), (0.5, 16), (0.9, 8)])
def test_zero_signal_formula_matches_simulation_and_enumeration(p, g):
    f = float(E.zero_signal_fraction(p, g))
    # exact enumeration of all 2^G outcomes
    exact = 0.0
    for bits in range(2**g):
        k = bin(bits).count("1")
        if k in (0, g):
            exact += p**k * (1 - p) ** (g - k)
    assert abs(f - exact) < 1e-12
    sim = E.simulate_zero_signal(p, g, 40_000, np.random.default_rng(0))
    se = max(np.sqrt(f * (1 - f) / 40_000), 1e-9)
    assert abs(sim - f) <= 4.5 * se + 1e-12


def test_check_zero_signal_detects_a_wrong_formula(monkeypatch):
    ok = E.check_zero_signal([0.1, 0.5], [2, 4], 20_000, seed=0)
    assert ok["max_abs_z"] < E.Z_FORMULA
    monkeypatch.setattr(E, "zero_signal_fraction", lambda p, g: np.asarray(p) ** g)  # wrong
    bad = E.check_zero_signal([0.1, 0.5], [2, 4], 20_000, seed=0)
    assert bad["max_abs_z"] > E.Z_FORMULA


def test_verdict_is_recomputed_from_the_saved_evidence(tmp_path):
    res = EXPERIMENTS["exploration"].run(seed=0, out_dir=tmp_path, quick=True)
    data = json.loads((tmp_path / "results.json").read_text())["results"]
    for r in data["runs"].values():
        assert all(0.0 <= s <= 1.0 for s in r["final_success"])
    assert res.verdict.status == E.rule(data["zero_signal"]["max_abs_z"], list(data["calls"].values()))


def test_verdict_flips_with_evidence():
    assert E.rule(1.0, ["supported", "supported", "inconclusive"]) == "supported"
    assert E.rule(1.0, ["refuted", "refuted", "supported"]) == "refuted"
    assert E.rule(9.0, ["supported", "supported", "supported"]) == "refuted"  # formula fails
    assert E.rule(1.0, ["supported", "inconclusive", "refuted"]) == "inconclusive"


def test_compare_calls_direction():
    a = np.array([1.0, 1.1, 0.9, 1.05])
    assert E._compare(a, a - 0.5)["call"] == "supported"
    assert E._compare(a - 0.5, a)["call"] == "refuted"
    assert E._compare(a, a[::-1])["call"] == "inconclusive"


# ------------------------------------------------------------------ the exploration mechanisms


def test_chain_answer_is_the_first_wrong_position():
    import torch

    tokens = torch.tensor([[0, 0, 0, 0], [0, 2, 0, 1], [3, 0, 0, 0], [0, 0, 1, 0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    assert E.chain_answers(tokens, mask).tolist() == [4, 1, 0, 4]  # wrong tokens past the mask do not count


def test_mechanism_calls_and_rule_flip():
    up = {"call": "supported", "diff": 0.05}
    flat = {"call": "inconclusive", "diff": 0.0}
    down = {"call": "refuted", "diff": -0.05}
    ceiling = {"call": "supported", "diff": 1e-4}  # significant but negligible: no effect
    assert E.mechanism_call(flat, ceiling) == "no effect"
    assert E.mechanism_call(flat, up) == "helps"
    assert E.mechanism_call(down, up) == "hurts"
    assert E.mechanism_call(flat, down) == "hurts"
    assert E.mechanism_call(up, flat) == "no effect"
    assert E.mechanisms_rule({"a": "helps", "b": "helps", "c": "no effect"}) == "supported"
    assert E.mechanisms_rule({"a": "hurts", "b": "hurts", "c": "helps"}) == "refuted"
    assert E.mechanisms_rule({"a": "hurts", "b": "no effect", "c": "helps", "d": "no effect"}) == "inconclusive"
