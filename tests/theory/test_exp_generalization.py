"""Claim 4 (generalisation): exact success/values, quick run, verdict flips."""

from __future__ import annotations

import itertools
import json

import torch

from vapo.theory import exp_generalization as E
from vapo.theory.framework import EXPERIMENTS
from vapo.theory.mdp import make_loglinear_chain


def _tiny():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    return make_loglinear_chain(3, (1, 3), a, b, 3, 4, 4, E.L0, g), g


def test_exact_success_matches_brute_force_enumeration():
    prob, g = _tiny()
    theta = torch.randn(prob.phi.shape[-1], generator=g, dtype=torch.float64)
    pi = torch.softmax(prob.phi @ theta, dim=-1)  # [K, L, V]
    got = prob.success(theta)
    for k in range(3):
        lk = int(prob.lengths[k])
        total = 0.0
        for seq in itertools.product(range(3), repeat=lk):
            pr = 1.0
            for t, a in enumerate(seq):
                pr *= float(pi[k, t, a])
            if all(a == int(prob.correct[k, t]) for t, a in enumerate(seq)):
                total += pr
        assert abs(total - float(got[k])) < 1e-12
    v = prob.values(theta)
    assert torch.allclose(v[:, 0], got)  # V at the prompt state = success probability


def test_spearman_is_scipy_and_nan_on_constant_input():
    assert abs(E.spearman([1, 2, 3, 4], [10, 20, 40, 30]) - 0.8) < 1e-12  # 1 - 6·2/(4·15)
    assert E.spearman([1, 2, 3], [5, 5, 5]) != E.spearman([1, 2, 3], [5, 5, 5])  # NaN


def test_verdict_is_recomputed_from_the_saved_evidence(tmp_path):
    res = EXPERIMENTS["generalization"].run(seed=0, out_dir=tmp_path, quick=True)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["verdict"] == E.rule(E.evidence(data["results"]))[0] == res.verdict.status
    assert set(data["results"]["by_n"]) == {str(n) for n in res.sizes["n_train"]}


def test_verdict_flips_with_evidence():
    good = {"gap_small_n": 0.5, "gap_small_n_se": 0.05, "gap_large_n": 0.1,
            "success_at_L0": 0.8, "success_at_longest": 0.3}
    assert E.rule(good)[0] == "supported"
    reversed_ = {"gap_small_n": 0.1, "gap_small_n_se": 0.05, "gap_large_n": 0.5,
                 "success_at_L0": 0.3, "success_at_longest": 0.8}
    assert E.rule(reversed_)[0] == "refuted"
    half = {**good, "success_at_longest": 0.79}
    assert E.rule(half)[0] == "inconclusive"
