"""Critics for the theory lab: controlled ones (error is a dial) and fitted ones (MC vs TD(λ)).

All value tables have the shape of V^π: ``[K, L+1, M1]`` float64 over compressed states
(k, t, m) of a :class:`vapo.theory.mdp.TokenMDP`; column L (truncation) is terminal and is
treated as 0 by GAE (docs/contracts.md: V after the last real token is 0).
"""

from __future__ import annotations

import numpy as np
import torch

from vapo.algos import masked_gae
from vapo.errors import unknown_name_error
from vapo.theory.mdp import TokenMDP, action_probs, sample

BIAS_PROFILES = ("none", "offset", "distance", "rm_like")


def controlled_critic(mdp: TokenMDP, V: np.ndarray, profile: str = "none", level: float = 0.0,
                      scale: float = 16.0, noise_std: float = 0.0, prior: float | None = None,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """V̂ = V^π + bias(profile; t, l) + frozen per-state noise.

    Profiles (d = distance from the end of a length-`required` answer, mdp.distance_to_end):
      none      V̂ = V
      offset    V̂ = V + level                           (a pure baseline shift)
      distance  V̂ = V + level·min(1, d/scale)           (error grows with distance from the reward)
      rm_like   V̂ = V + level·(1 − exp(−d/scale))·(c − V), c = `prior` (default the mean of V at
                the prompt states): a reward model used as critic, accurate at the last token and
                ≈ the constant c far from it; level ∈ [0, 1] is the unlearned fraction.
    noise_std: a N(0, noise_std²) draw per state (one fixed function, like a fitted critic's
    error), from `rng`.
    Returns [K, L+1, M1] float64.
    """
    if profile not in BIAS_PROFILES:
        raise unknown_name_error("critic bias profile", profile, BIAS_PROFILES, where="controlled_critic")
    d = mdp.distance_to_end[:, :, None]
    if profile == "none":
        out = V.copy()
    elif profile == "offset":
        out = V + level
    elif profile == "distance":
        out = V + level * np.minimum(1.0, d / scale)
    else:
        c = float((mdp.prompt_probs * V[:, 0, 0]).sum()) if prior is None else prior
        out = V + level * (1.0 - np.exp(-d / scale)) * (c - V)
    if noise_std > 0:
        rng = rng if rng is not None else np.random.default_rng(0)
        out = out + noise_std * rng.standard_normal(out.shape)
    return out


def rm_like_init(mdp: TokenMDP, V: np.ndarray, prior: float = 0.0) -> np.ndarray:
    """A critic initialised from a reward model: exact at the final token of each answer
    (distance 0), the constant `prior` everywhere else. [K, L+1, M1]."""
    out = np.full_like(V, prior)
    last = mdp.distance_to_end == 0
    out[last] = V[last]
    return out


def state_features(mdp: TokenMDP) -> np.ndarray:
    """Features for a linear critic, [K, L+1, M1, F], F = K + 4: onehot(k), d/l, (d/l)²,
    1[m > tolerance] (already wrong), bias — a small function class shared across positions."""
    K, L1, M1 = mdp.n_prompts, mdp.max_len + 1, mdp.n_m
    dl = (mdp.distance_to_end / mdp.required[:, None])[:, :, None]
    f = np.zeros((K, L1, M1, K + 4))
    f[..., :K] = np.eye(K)[:, None, None, :]
    f[..., K] = dl
    f[..., K + 1] = dl**2
    f[..., K + 2] = (np.arange(M1) > mdp.tolerance)[None, None, :]
    f[..., K + 3] = 1.0
    return f


def fit_critic(mdp: TokenMDP, logits: np.ndarray, init: np.ndarray, lam, iters: int,
               batch: int, lr: float, rng: np.random.Generator, checkpoints=(),
               features: np.ndarray | None = None):
    """Fit a critic to the fixed policy by regression on λ-returns (TD(λ); λ = 1: MC returns).

    Each iteration samples `batch` answers, computes targets R_t = GAE_λ(V̂)_t + V̂_t with
    `vapo.algos.masked_gae` (the critic target of PPO/VAPO, VAPO §3.1) and moves the critic
    toward them:
      tabular (features None): V̂(s) += lr · mean over visits of (R_t − V̂(s));
      linear  (features [K, L+1, M1, F]): w += lr · mean_t (R_t − w·φ_t) φ_t / mean|φ|², with w
              initialised by least squares to `init`.
    `lam` may be a list: then one critic per λ is fitted on the *same* sampled answers.
    Returns {iteration: V̂ [K, L+1, M1]} (iteration 0 = init, plus each checkpoint), or
    {λ: that dict} when `lam` is a list.
    """
    lams = list(lam) if isinstance(lam, (list, tuple)) else [lam]
    tables, ws, snaps = [], [], []
    for _ in lams:
        if features is None:
            tables.append(init.copy())
            ws.append(None)
        else:
            w = np.linalg.lstsq(features.reshape(-1, features.shape[-1]), init.reshape(-1), rcond=None)[0]
            ws.append(w)
            tables.append(features @ w)
        snaps.append({0: tables[-1].copy()})
    pi = action_probs(mdp, logits)
    for it in range(1, iters + 1):
        tr = sample(mdp, logits, batch, rng, pi=pi)
        tt = tr.torch()
        m = tr.mask > 0
        k = np.broadcast_to(tr.prompts[:, None], m.shape)[m]
        t, mm = tr.t_idx[m], tr.m_idx[m]
        c = np.zeros_like(init)
        np.add.at(c, (k, t, mm), 1.0)
        for i, lm in enumerate(lams):
            vals = tr.gather(tables[i])
            _, ret = masked_gae(tt["token_rewards"], torch.from_numpy(vals), tt["response_mask"], 1.0, lm)
            err = ret.numpy()[m] - vals[m]
            if ws[i] is None:
                s = np.zeros_like(init)
                np.add.at(s, (k, t, mm), err)
                tables[i] = tables[i] + lr * np.where(c > 0, s / np.maximum(c, 1), 0.0)
            else:
                phi = features[k, t, mm]
                ws[i] = ws[i] + lr * (err[:, None] * phi).mean(0) / (phi**2).sum(1).mean()
                tables[i] = features @ ws[i]
            if it in checkpoints:
                snaps[i][it] = tables[i].copy()
    return {lm: sn for lm, sn in zip(lams, snaps, strict=True)} if isinstance(lam, (list, tuple)) else snaps[0]
