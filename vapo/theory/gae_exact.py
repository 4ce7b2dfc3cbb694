"""Exact statistics of the GAE(λ) advantage estimator on a TokenMDP, by dynamic programming.

For a policy π, a critic V̂ (table [K, L+1, M1], V̂ := 0 at terminal) and λ, GAE
(Schulman et al. 2016, eq. 16; VAPO §3.2) gives along an answer

    Â_t = Σ_{j≥0} λ^j δ_{t+j},   δ_t = r_t + V̂(s_{t+1}) − V̂(s_t)   (γ = 1).

Conditioned on (s_t, a_t) = (s, a): Â_t = δ(s, a) + λ X(s'), X(s') = Σ_j λ^j δ_{t+1+j}, so with
G(s) = E[X | s] and H(s) = E[X² | s] (backward Bellman-style recursions)

    E[Â | s, a]   = δ(s, a) + λ G(s')
    Var[Â | s, a] = λ² (H(s') − G(s')²)
    G(s) = Σ_a π(a|s) (δ(s, a) + λ G(s')),   H(s) = Σ_a π(a|s) (δ² + 2λ δ G(s') + λ² H(s')).

Bias(s, a) = E[Â | s, a] − A^π(s, a). Closed forms (tested): exact critic ⇒ bias 0 for every λ;
λ = 0 ⇒ bias = e(s') − e(s) with e = V̂ − V; λ = 1 ⇒ bias = −e(s) (a baseline shift).
λ may differ per prompt (per-sequence λ of the adaptive rule on fixed-length MDPs) and is
vectorised over a leading grid axis: ``lam`` has shape [Λ, K] (or broadcastable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vapo.theory.mdp import END, MISTAKE, STEP, Solution, TokenMDP, _mistake_matrix


@dataclass
class GaeMoments:
    """mean, bias, var: [Λ, K, L, M1, 3] conditional on (s, a); per-prompt per-token averages
    (weights d(s)π(a|s) / E[length]) bias2_k, var_k, mse_k: [Λ, K]; grad_logits: [Λ, K, L, M1, 3]
    the expected policy-gradient estimate Σ d π E[Â|s,a] ∇_z log π (logit space)."""

    mean: np.ndarray
    bias: np.ndarray
    var: np.ndarray
    bias2_k: np.ndarray
    var_k: np.ndarray
    mse_k: np.ndarray
    grad_logits: np.ndarray


def td_errors(mdp: TokenMDP, vhat: np.ndarray) -> np.ndarray:
    """δ(s, a) [K, L, M1, 3] = r(s, a) + V̂(s') − V̂(s), with V̂ := 0 at terminal states."""
    v = vhat.copy()
    v[:, -1] = 0.0  # truncation is terminal
    P = _mistake_matrix(mdp)
    delta = np.empty(v[:, :-1].shape + (3,))
    delta[..., STEP] = v[:, 1:] - v[:, :-1]
    delta[..., MISTAKE] = np.einsum("ktmn,ktn->ktm", P, v[:, 1:]) - v[:, :-1]
    delta[..., END] = mdp.end_reward - v[:, :-1]
    return delta


def gae_moments(mdp: TokenMDP, sol: Solution, vhat: np.ndarray, lam) -> GaeMoments:
    """Exact conditional mean/bias/variance of GAE(λ) against A^π (module docstring).

    lam: scalar, [Λ] (a grid, same λ for every prompt) or [Λ, K] (per prompt; [1, K] for one
    per-prompt rule). vhat: [K, L+1, M1]. Cost O(Λ·K·L·M1).
    """
    K, L, M1 = mdp.n_prompts, mdp.max_len, mdp.n_m
    lam = np.asarray(lam, dtype=np.float64)
    if lam.ndim == 0:
        lam = lam.reshape(1, 1)
    elif lam.ndim == 1:  # a grid of λ values, the same for every prompt
        lam = lam[:, None]
    lam = np.broadcast_to(lam, (lam.shape[0], K))  # per-prompt λ: pass [1, K]
    n_l = lam.shape[0]
    lam4 = lam[:, :, None, None]  # [Λ, K, 1, 1]
    pi = sol.pi
    P = _mistake_matrix(mdp)
    delta = td_errors(mdp, vhat)
    G = np.zeros((n_l, K, M1))
    H = np.zeros((n_l, K, M1))
    mean = np.zeros((n_l, K, L, M1, 3))
    var = np.zeros((n_l, K, L, M1, 3))
    for t in range(L - 1, -1, -1):
        gn = np.empty((n_l, K, M1, 3))
        hn = np.empty((n_l, K, M1, 3))
        gn[..., STEP], hn[..., STEP] = G, H
        gn[..., MISTAKE] = np.einsum("kmn,lkn->lkm", P[:, t], G)
        hn[..., MISTAKE] = np.einsum("kmn,lkn->lkm", P[:, t], H)
        gn[..., END] = 0.0
        hn[..., END] = 0.0
        dl = delta[None, :, t]
        mu = dl + lam4 * gn
        mean[:, :, t] = mu
        var[:, :, t] = lam4**2 * np.maximum(hn - gn**2, 0.0)
        p = pi[None, :, t]
        G = (p * mu).sum(-1)
        H = (p * (dl**2 + 2 * lam4 * dl * gn + lam4**2 * hn)).sum(-1)
    bias = np.where(mdp.allowed[None, :, :, None, :], mean - sol.A[None], 0.0)
    w = sol.d[:, :-1, :, None] * pi  # [K, L, M1, 3]
    tokens = sol.d[:, :-1].sum((1, 2))  # E[length] per prompt (× ρ_k)
    b2 = (w[None] * bias**2).sum((2, 3, 4)) / tokens
    vk = (w[None] * var).sum((2, 3, 4)) / tokens
    centred = mean - (pi[None] * mean).sum(-1, keepdims=True)
    grad = sol.d[None, :, :-1, :, None] * pi[None] * centred
    return GaeMoments(mean, bias, var, b2, vk, b2 + vk, grad)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b) over all entries (0 if either is 0)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float((a.ravel() @ b.ravel()) / (na * nb)) if na > 0 and nb > 0 else 0.0
