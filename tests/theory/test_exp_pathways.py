"""Claim 6 (pathways): exact testbed pieces, quick run, verdict flips."""

from __future__ import annotations

import json

import torch

from vapo.theory import exp_pathways as E
from vapo.theory.framework import EXPERIMENTS
from vapo.theory.mdp import make_chain


def test_exact_values_and_gradient():
    mdp = make_chain(3, 4, 3, (0.1, 0.6), seed=1)
    logits = mdp.init_logits + 0.3 * torch.randn(mdp.init_logits.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = mdp.values(logits)
    assert torch.allclose(v[:, 0], mdp.success(logits))
    for k in range(3):
        assert float(v[k, int(mdp.lengths[k])]) == 0.0  # terminal
    grad = mdp.grad(logits)
    eps = 1e-6
    d = torch.zeros_like(logits)
    d[0, 0, 1] = eps
    fd = (mdp.success(logits + d).mean() - mdp.success(logits - d).mean()) / (2 * eps)
    assert abs(float(fd) - float(grad[0, 0, 1])) < 1e-7


def test_gae_with_exact_critic_and_lambda0_is_exact_advantage():
    """Sanity of the testbed: with V̂ = V^π, GAE(λ=0) = δ = A^π exactly (MSE 0)."""
    mdp = make_chain(4, 6, 3, (0.1, 0.6), seed=2)
    v = mdp.values(mdp.init_logits)
    noise = (torch.zeros(mdp.init_logits.shape[:2], dtype=torch.float64),) * 2
    E.BASELINES["_lam0"] = ("gae", dict(lam_actor=0.0, alpha=0.05))
    try:
        out = E.evaluate_batch(mdp.init_logits, mdp, v, noise, 0.0, 4.0, 3, 4, torch.Generator().manual_seed(0))
    finally:
        del E.BASELINES["_lam0"]
    assert out["_lam0"][0] < 1e-20


def test_verdict_is_recomputed_from_the_saved_evidence(tmp_path):
    res = EXPERIMENTS["pathways"].run(seed=0, out_dir=tmp_path, quick=True)
    data = json.loads((tmp_path / "results.json").read_text())
    status, kept = E.rule(E.evidence(data["results"]))
    assert data["verdict"] == status == res.verdict.status
    assert set(kept) == set(E.PATHWAYS) and data["verdict_numbers"]["kept_on_testbed"] == kept


def _ev(mse, cos, diff, se=0.01):
    s = {"gae_fixed_0.95": {"mse": 1.0, "cos": 0.5}, "gae_adaptive": {"mse": 0.8, "cos": 0.5}}
    for n in E.PATHWAYS:
        s[n] = {"mse": mse, "cos": cos, "cos_diff_vs_best_baseline": diff, "cos_diff_se": se}
    return {"summary": s, "baseline_mse": {"gae_fixed_0.95": 1.0, "gae_adaptive": 0.8},
            "baseline_cos": {"gae_fixed_0.95": 0.5, "gae_adaptive": 0.5}}


def test_verdict_flips_with_evidence():
    assert E.rule(_ev(0.5, 0.55, 0.05))[0] == "supported"
    assert E.rule(_ev(0.9, 0.45, -0.05))[0] == "refuted"
    assert E.rule(_ev(0.5, 0.40, -0.10))[0] == "inconclusive"  # better MSE, worse gradient
