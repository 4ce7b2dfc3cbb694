"""Exact token MDPs with sparse terminal reward, and their dynamic-programming ground truth.

The testbed of the theory lab (docs/theory.md, "Testbed").

Model
-----
A prompt ``k ∈ {0..K-1}`` is drawn with probability ``prompt_probs[k]``. The answer is a
sequence of tokens; each token is one of three action classes

* ``STEP = 0``    a correct reasoning step,
* ``MISTAKE = 1`` a mistake,
* ``END = 2``     the end-of-answer token (it is a real response token: it has a mask of 1).

The compressed state before token ``t`` (0-based) is ``s = (k, t, m)`` with ``m`` the number of
mistakes *that count* so far, capped at ``M = tolerance + 1`` (every ``m > tolerance`` is the
same: the answer is already wrong). Transitions are deterministic:
STEP → ``(k, t+1, m)``; MISTAKE → ``(k, t+1, min(m + counts[k, t], M))``; END → terminal.
``counts[k, t]`` says whether a mistake at position t matters (all True by default; a
"critical-token" MDP has a single True position per prompt). After ``max_len`` tokens without
END the answer is truncated (terminal, reward 0).

Reward (sparse, only at the end, 0/1): END at position ``t`` with ``m`` mistakes gives
``1[t + 1 >= required[k] and m <= tolerance]`` — prompt k needs an answer of at least
``required[k]`` tokens (heterogeneous lengths). γ = 1.

``allowed[k, t, a]`` masks actions. ``fixed_length=True`` forces END exactly at position
``required[k] - 1`` (every answer has length ``required[k]``); then success = "no counting
mistake", which makes per-length analysis exact.

Policies are logits ``z[K, L, M+1, 3]`` (float64) over the compressed state; masked actions get
probability 0. Tabular softmax: the logits *are* the parameters. Log-linear softmax:
``z = φ @ θ`` with features ``φ[K, L, M+1, 3, F]`` shared across prompts
(:class:`LogLinearPolicy`, :func:`loglinear_features`); its gradient is the logit gradient
contracted with φ.

Public API (all numpy float64; ``L = mdp.max_len``, ``M1 = mdp.n_m = tolerance + 2``)
------------------------------------------------------------------------------------------
* :func:`make_mdp` (required, max_len=None, tolerance=0, fixed_length=False, critical=None,
  prompt_probs=None) -> :class:`TokenMDP`
* :func:`init_logits` (mdp, mistake_prob, end_prob=0.0) -> z [K, L, M1, 3];
  :func:`mistake_prob_for_success` (mdp, p) -> [K] per-token mistake probability giving
  success p on a fixed-length/critical MDP (the "difficulty" dial).
* :func:`action_probs` (mdp, z) -> π [K, L, M1, 3]
* :func:`solve` (mdp, z) -> :class:`Solution` with π, V [K, L+1, M1] (column L = terminal = 0),
  Q, A [K, L, M1, 3], occupancy d [K, L+1, M1] (probability of visiting s, including ρ(k)),
  J, J_k [K], length pmfs [K, L+1] (index = length in tokens; truncated answers at L) split by
  correct/wrong, and ``grad_logits`` = ∂J/∂z [K, L, M1, 3] (policy-gradient theorem with the
  exact occupancy: ∂J/∂z_{s,a} = d(s) π(a|s) A(s,a)).
* :func:`backward_values` (mdp, π, end_value, trunc_value) -> (U [K, L+1, M1], u [K, L, M1, 3]):
  exact expectation of any terminal functional f(end state) — V^π is the case f = reward.
* :func:`sample` (mdp, z, n or prompts, rng) -> :class:`Trajectories` with ``prompts [B]``,
  ``actions [B, T]`` (-1 at padding), ``t_idx/m_idx [B, T]`` (the state before each token),
  ``mask [B, T]``, ``token_rewards [B, T]`` (reward on the last real token), ``lengths [B]``,
  ``success [B]``; ``.gather(table[K, L+1, M1]) -> [B, T]`` (0 at padding) and ``.torch()``
  for vapo.algos (float64 tensors).

Chain MDPs (torch float64, differentiable; the policy sees (prompt, position) only)
------------------------------------------------------------------------------------
* :class:`ChainMDP` / :func:`make_chain`: tabular softmax logits [K, L, V], one correct token
  of V per position; ``.success``, ``.entropy``, ``.values`` (V^π on the correct path),
  ``.grad`` (∇ mean_k p_k) — used by the exploration and pathways experiments.
* :class:`LogLinearChain` / :func:`make_loglinear_chain`: a log-linear policy with features
  shared across prompts and a hidden realisable rule — used by the generalization experiment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vapo.errors import VapoError

STEP, MISTAKE, END = 0, 1, 2
N_ACTIONS = 3
ACTION_NAMES = ("step", "mistake", "end")


@dataclass(frozen=True)
class TokenMDP:
    """See the module docstring. Arrays: required [K] int, counts [K, L] bool,
    allowed [K, L, 3] bool, prompt_probs [K] float64."""

    required: np.ndarray
    max_len: int
    tolerance: int
    counts: np.ndarray
    allowed: np.ndarray
    prompt_probs: np.ndarray
    fixed_length: bool

    @property
    def n_prompts(self) -> int:
        return int(self.required.shape[0])

    @property
    def n_m(self) -> int:  # number of mistake levels 0..tolerance+1
        return self.tolerance + 2

    @property
    def next_m(self) -> np.ndarray:
        """[K, L, M1] int: the mistake level after a MISTAKE token in state (k, t, m)."""
        m = np.arange(self.n_m)[None, None, :]
        return np.minimum(m + self.counts[:, :, None].astype(int), self.n_m - 1)

    @property
    def end_reward(self) -> np.ndarray:
        """[K, L, M1] reward of END in state (k, t, m): 1[t+1 >= required and m <= tol]."""
        t = np.arange(self.max_len)[None, :, None]
        m = np.arange(self.n_m)[None, None, :]
        return ((t + 1 >= self.required[:, None, None]) & (m <= self.tolerance)).astype(np.float64)

    @property
    def distance_to_end(self) -> np.ndarray:
        """[K, L+1] tokens left after the one at position t on a length-`required` answer,
        |required − 1 − t| (0 at the final token); the 'distance from the reward'."""
        t = np.arange(self.max_len + 1)[None, :]
        return np.abs(self.required[:, None] - 1 - t).astype(np.float64)


def make_mdp(required, max_len: int | None = None, tolerance: int = 0, fixed_length: bool = False,
             critical=None, prompt_probs=None) -> TokenMDP:
    """Build a TokenMDP.

    Args:
        required: [K] ints >= 1, the minimal correct answer length of each prompt.
        max_len: L, tokens before truncation (default: max(required) if fixed_length else
            2·max(required)).
        tolerance: counting mistakes allowed in a correct answer.
        fixed_length: force END at position required[k] − 1 (and nowhere else).
        critical: None, or [K] positions: only a mistake at that position counts.
        prompt_probs: [K] prompt distribution (default uniform).
    """
    req = np.asarray(required, dtype=np.int64).reshape(-1)
    where = "vapo.theory.mdp.make_mdp"
    if req.size == 0 or (req < 1).any():
        raise VapoError("required lengths must be a non-empty list of ints >= 1", where=where,
                        fix="pass e.g. required=[4, 8, 16]")
    L = int(max_len if max_len is not None else (req.max() if fixed_length else 2 * req.max()))
    if L < req.max():
        raise VapoError(f"max_len={L} is below the longest required length {req.max()}",
                        where=where, fix="raise max_len")
    if tolerance < 0:
        raise VapoError("tolerance must be >= 0", where=where, fix="pass tolerance=0")
    K = req.size
    t = np.arange(L)[None, :]
    if critical is None:
        counts = np.ones((K, L), dtype=bool)
    else:
        crit = np.asarray(critical, dtype=np.int64).reshape(-1)
        if crit.shape != req.shape or (crit < 0).any() or (crit >= req).any():
            raise VapoError("critical must give one position in [0, required[k]) per prompt",
                            where=where, fix="pass e.g. critical=[r // 2 for r in required]")
        counts = t == crit[:, None]
    allowed = np.ones((K, L, N_ACTIONS), dtype=bool)
    if fixed_length:
        last = t == (req[:, None] - 1)
        allowed[:, :, END] = last
        allowed[:, :, STEP] = ~last
        allowed[:, :, MISTAKE] = ~last
    if prompt_probs is None:
        rho = np.full(K, 1.0 / K)
    else:
        rho = np.asarray(prompt_probs, dtype=np.float64)
        if rho.shape != (K,) or (rho < 0).any() or abs(rho.sum() - 1) > 1e-9:
            raise VapoError("prompt_probs must be a [K] probability vector", where=where,
                            fix="pass non-negative numbers summing to 1")
    return TokenMDP(req, L, int(tolerance), counts, allowed, rho, bool(fixed_length))


# ---------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------


def init_logits(mdp: TokenMDP, mistake_prob, end_prob=0.0) -> np.ndarray:
    """Tabular logits [K, L, M1, 3] with P(MISTAKE) = mistake_prob (scalar or [K]) and
    P(END) = end_prob (scalar or [K]) wherever all actions are allowed; masked actions are
    renormalised away by `action_probs`."""
    K, L, M1 = mdp.n_prompts, mdp.max_len, mdp.n_m
    q = np.broadcast_to(np.asarray(mistake_prob, dtype=np.float64), (K,))
    e = np.broadcast_to(np.asarray(end_prob, dtype=np.float64), (K,))
    if ((q <= 0) | (q + e >= 1) | (e < 0)).any():
        raise VapoError("need 0 < mistake_prob, 0 <= end_prob, mistake_prob + end_prob < 1",
                        where="init_logits", fix="lower the probabilities")
    z = np.zeros((K, L, M1, N_ACTIONS))
    z[..., STEP] = np.log1p(-q - e)[:, None, None]
    z[..., MISTAKE] = np.log(q)[:, None, None]
    z[..., END] = np.log(np.maximum(e, 1e-300))[:, None, None]
    return z


def mistake_prob_for_success(mdp: TokenMDP, success) -> np.ndarray:
    """[K] per-token mistake probability q with (1 − q)^n_k = success, n_k = number of
    positions where a mistake counts and STEP/MISTAKE are allowed (exact for fixed-length or
    critical-token MDPs with tolerance 0)."""
    p = np.broadcast_to(np.asarray(success, dtype=np.float64), (mdp.n_prompts,))
    n = (mdp.counts & mdp.allowed[:, :, MISTAKE]
         & (np.arange(mdp.max_len)[None, :] < mdp.required[:, None])).sum(1)
    return 1.0 - p ** (1.0 / np.maximum(n, 1))


def action_probs(mdp: TokenMDP, logits: np.ndarray) -> np.ndarray:
    """π [K, L, M1, 3] = softmax of logits over the allowed actions (0 elsewhere)."""
    z = np.where(mdp.allowed[:, :, None, :], logits, -np.inf)
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(-1, keepdims=True)


def loglinear_features(mdp: TokenMDP) -> np.ndarray:
    """Shared features φ [K, L, M1, 3, F], F = 3·(K + 3): for each action a, the block
    e_a ⊗ [onehot(k), t/required_k, (t/required_k)², 1[m > 0]] — a per-prompt bias plus a
    position and mistake profile shared by all prompts."""
    K, L, M1 = mdp.n_prompts, mdp.max_len, mdp.n_m
    frac = np.arange(L)[None, :] / mdp.required[:, None]  # [K, L]
    base = np.zeros((K, L, M1, K + 3))
    base[..., :K] = np.eye(K)[:, None, None, :]
    base[..., K] = frac[:, :, None]
    base[..., K + 1] = frac[:, :, None] ** 2
    base[..., K + 2] = (np.arange(M1) > 0)[None, None, :]
    F0 = K + 3
    phi = np.zeros((K, L, M1, N_ACTIONS, N_ACTIONS * F0))
    for a in range(N_ACTIONS):
        phi[:, :, :, a, a * F0:(a + 1) * F0] = base
    return phi


@dataclass
class LogLinearPolicy:
    """π(a|s) ∝ exp θ·φ(s, a). features: [K, L, M1, 3, F]; theta: [F]."""

    features: np.ndarray
    theta: np.ndarray

    def logits(self, theta: np.ndarray | None = None) -> np.ndarray:
        return self.features @ (self.theta if theta is None else theta)

    def grad(self, grad_logits: np.ndarray) -> np.ndarray:
        """Chain rule: ∂J/∂θ = Σ_{s,a} ∂J/∂z_{s,a} φ(s, a) -> [F]."""
        return np.einsum("klma,klmaf->f", grad_logits, self.features)


# ---------------------------------------------------------------------------------------
# Dynamic programming
# ---------------------------------------------------------------------------------------


def _mistake_matrix(mdp: TokenMDP) -> np.ndarray:
    """[K, L, M1, M1] one-hot transition of the mistake level after a MISTAKE token."""
    return np.eye(mdp.n_m)[mdp.next_m]


def backward_values(mdp: TokenMDP, pi: np.ndarray, end_value: np.ndarray,
                    trunc_value: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact E[f | s] and E[f | s, a] for a terminal functional f.

    f is ``end_value[k, t, m]`` when END is taken in (k, t, m), ``trunc_value[k, m]`` when the
    answer is truncated at L (default 0). Bellman recursion with γ = 1 (Sutton & Barto eq. 3.14):
    U(s) = Σ_a π(a|s) u(s, a), u(s, END) = f, u(s, a) = U(next(s, a)).

    Returns: U [K, L+1, M1] (column L = truncation value), u [K, L, M1, 3].
    """
    K, L, M1 = mdp.n_prompts, mdp.max_len, mdp.n_m
    P = _mistake_matrix(mdp)
    U = np.zeros((K, L + 1, M1))
    if trunc_value is not None:
        U[:, L] = trunc_value
    u = np.zeros((K, L, M1, N_ACTIONS))
    for t in range(L - 1, -1, -1):
        nxt = U[:, t + 1]  # [K, M1]
        u[:, t, :, STEP] = nxt
        u[:, t, :, MISTAKE] = np.einsum("kmn,kn->km", P[:, t], nxt)
        u[:, t, :, END] = end_value[:, t]
        U[:, t] = (pi[:, t] * u[:, t]).sum(-1)
    return U, u


def occupancy(mdp: TokenMDP, pi: np.ndarray) -> np.ndarray:
    """d [K, L+1, M1]: probability that the answer visits state (k, t, m) (including ρ(k));
    column L is the probability of being truncated with m mistakes."""
    K, L, M1 = mdp.n_prompts, mdp.max_len, mdp.n_m
    P = _mistake_matrix(mdp)
    d = np.zeros((K, L + 1, M1))
    d[:, 0, 0] = mdp.prompt_probs
    for t in range(L):
        dt = d[:, t]
        d[:, t + 1] = dt * pi[:, t, :, STEP] + np.einsum("km,kmn->kn", dt * pi[:, t, :, MISTAKE], P[:, t])
    return d


@dataclass
class Solution:
    """Exact quantities of one policy on one MDP (see module docstring for shapes)."""

    pi: np.ndarray
    V: np.ndarray
    Q: np.ndarray
    A: np.ndarray
    d: np.ndarray
    J: float
    J_k: np.ndarray
    length_pmf_correct: np.ndarray
    length_pmf_wrong: np.ndarray
    grad_logits: np.ndarray

    @property
    def length_pmf(self) -> np.ndarray:  # [K, L+1], joint with ρ(k)
        return self.length_pmf_correct + self.length_pmf_wrong

    def mean_length(self, correct: bool | None = None) -> float:
        """E[length | correct] (None: all answers)."""
        pmf = self.length_pmf if correct is None else (
            self.length_pmf_correct if correct else self.length_pmf_wrong)
        n = np.arange(pmf.shape[1])
        tot = pmf.sum()
        return float((pmf * n).sum() / tot) if tot > 0 else float("nan")


def solve(mdp: TokenMDP, logits: np.ndarray) -> Solution:
    """Exact V^π, Q^π, A^π, occupancy, J, ∇_z J and the length/return distributions."""
    pi = action_probs(mdp, logits)
    R = mdp.end_reward
    V, Q = backward_values(mdp, pi, R)
    A = np.where(mdp.allowed[:, :, None, :], Q - V[:, :-1, :, None], 0.0)
    d = occupancy(mdp, pi)
    J_k = V[:, 0, 0]
    J = float((mdp.prompt_probs * J_k).sum())
    ends = d[:, :-1] * pi[..., END]  # [K, L, M1] P(END at t in state m)
    K, L = mdp.n_prompts, mdp.max_len
    correct = np.zeros((K, L + 1))
    wrong = np.zeros((K, L + 1))
    correct[:, 1:] = (ends * R).sum(-1)
    wrong[:, 1:] = (ends * (1 - R)).sum(-1)
    wrong[:, L] += d[:, L].sum(-1)  # truncated answers: length L, reward 0
    # Policy-gradient theorem with exact occupancy (Sutton et al. 2000, thm 1), softmax logits:
    grad = d[:, :-1, :, None] * pi * A
    return Solution(pi, V, Q, A, d, J, J_k, correct, wrong, grad)


def objective(mdp: TokenMDP, logits: np.ndarray) -> float:
    """J(z) = Σ_k ρ(k) V^π(k, 0, 0) (for finite differences)."""
    pi = action_probs(mdp, logits)
    V, _ = backward_values(mdp, pi, mdp.end_reward)
    return float((mdp.prompt_probs * V[:, 0, 0]).sum())


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


@dataclass
class Trajectories:
    """B sampled answers, right-padded to T = longest answer (see module docstring)."""

    prompts: np.ndarray
    actions: np.ndarray
    t_idx: np.ndarray
    m_idx: np.ndarray
    mask: np.ndarray
    token_rewards: np.ndarray
    lengths: np.ndarray
    success: np.ndarray

    def gather(self, table: np.ndarray) -> np.ndarray:
        """table [K, L+1, M1] (e.g. V) at each token's state -> [B, T], 0 at padding."""
        return table[self.prompts[:, None], self.t_idx, self.m_idx] * self.mask

    def gather_sa(self, table: np.ndarray) -> np.ndarray:
        """table [K, L, M1, 3] (e.g. A^π) at each (state, token) -> [B, T], 0 at padding."""
        a = np.where(self.mask > 0, self.actions, 0)
        t = np.minimum(self.t_idx, table.shape[1] - 1)
        return table[self.prompts[:, None], t, self.m_idx, a] * self.mask

    def torch(self) -> dict[str, torch.Tensor]:
        """float64 tensors for vapo.algos: token_rewards, response_mask, scores, group_index."""
        return {"token_rewards": torch.from_numpy(self.token_rewards),
                "response_mask": torch.from_numpy(self.mask),
                "scores": torch.from_numpy(self.success.astype(np.float64)),
                "group_index": torch.from_numpy(self.prompts)}


def sample(mdp: TokenMDP, logits: np.ndarray, n_or_prompts, rng: np.random.Generator,
           pi: np.ndarray | None = None) -> Trajectories:
    """Sample answers: n_or_prompts is an int B (prompts drawn from ρ) or a [B] prompt array."""
    if pi is None:
        pi = action_probs(mdp, logits)
    if np.ndim(n_or_prompts) == 0:
        prompts = rng.choice(mdp.n_prompts, size=int(n_or_prompts), p=mdp.prompt_probs)
    else:
        prompts = np.asarray(n_or_prompts, dtype=np.int64)
    B, L = prompts.shape[0], mdp.max_len
    nm = mdp.next_m
    R = mdp.end_reward
    actions = np.full((B, L), -1, dtype=np.int64)
    m_idx = np.zeros((B, L), dtype=np.int64)
    rewards = np.zeros((B, L))
    lengths = np.full(B, L, dtype=np.int64)
    success = np.zeros(B, dtype=bool)
    m = np.zeros(B, dtype=np.int64)
    alive = np.arange(B)
    u = rng.random((B, L))
    for t in range(L):
        if alive.size == 0:
            break
        k, mm = prompts[alive], m[alive]
        cdf = np.cumsum(pi[k, t, mm], axis=-1)
        a = (u[alive, t][:, None] > cdf[:, :-1]).sum(-1)
        a = np.where(mdp.allowed[k, t, a], a, pi[k, t, mm].argmax(-1))  # guard fp round-off
        actions[alive, t] = a
        m_idx[alive, t] = mm
        ended = a == END
        r = R[k, t, mm] * ended
        rewards[alive, t] = r
        m[alive] = np.where(a == MISTAKE, nm[k, t, mm], mm)
        done = alive[ended]
        lengths[done] = t + 1
        success[done] = r[ended] > 0
        alive = alive[~ended]
    T = int(lengths.max()) if B else 0
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float64)
    t_idx = np.broadcast_to(np.arange(T)[None, :], (B, T)).copy()
    return Trajectories(prompts, actions[:, :T], t_idx, m_idx[:, :T] * (mask > 0), mask,
                        rewards[:, :T], lengths, success)


# =======================================================================================
# Chain MDPs: the policy depends on (prompt, position) only
# =======================================================================================
#
# A chain MDP is the fixed-length special case of the model above in which the policy does
# not see the mistake count: prompt k needs exactly l_k tokens, one of V tokens is correct at
# each position, the reward is 1 iff every token is correct. Because the policy at (k, t)
# ignores earlier tokens, success and V^π on the correct path are products of per-position
# probabilities — exact in closed form and differentiable by autograd (torch float64). The
# V − 1 wrong tokens are kept distinct (not merged into one MISTAKE class) because the
# softmax over V logits, and so the PPO dynamics, depend on V.


@dataclass(frozen=True)
class ChainMDP:
    """K prompts; prompt k needs l_k tokens, the correct token at every position is 0; the
    policy is tabular softmax logits [K, L, V] over (prompt, position).

    lengths: [K] int; vocab: V; init_logits: [K, L, V] float64 tensor the policy starts from
    (positions ≥ l_k are unused and masked everywhere).
    """

    lengths: torch.Tensor
    vocab: int
    init_logits: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:  # [K, L] float64, 1 on each prompt's real positions
        L = self.init_logits.shape[1]
        return (torch.arange(L)[None, :] < self.lengths[:, None]).to(torch.float64)

    def success(self, logits: torch.Tensor) -> torch.Tensor:
        """[K] exact success probability p_k = Π_{t<l_k} π(0 | k, t)."""
        logp0 = torch.log_softmax(logits, dim=-1)[..., 0]
        return torch.exp((logp0 * self.mask).sum(dim=1))

    def entropy(self, logits: torch.Tensor) -> float:
        """Mean over prompts and real positions of the policy's entropy (nats)."""
        logp = torch.log_softmax(logits, dim=-1)
        ent = -(logp.exp() * logp).sum(-1)
        return float((ent * self.mask).sum() / self.mask.sum())

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        """[K, L+1] V^π(k, t, ok) on the correct path; column l_k (terminal) and beyond: 0."""
        logp0 = torch.log_softmax(logits, dim=-1)[..., 0] * self.mask
        v = torch.exp(torch.flip(torch.cumsum(torch.flip(logp0, [1]), 1), [1])) * self.mask
        return torch.cat([v, torch.zeros(v.shape[0], 1, dtype=v.dtype)], dim=1)

    def grad(self, logits: torch.Tensor) -> torch.Tensor:
        """[K, L, V] exact ∇ of J = mean_k p_k with respect to the logits (autograd)."""
        th = logits.clone().requires_grad_(True)
        self.success(th).mean().backward()
        return th.grad.detach()


def make_chain(n_prompts: int, max_len: int, vocab: int, p_range: tuple[float, float], seed: int) -> ChainMDP:
    """Prompts with lengths in [max_len/4, max_len] and initial success p_k log-uniform in
    p_range: the correct token's probability is q_k = p_k^(1/l_k) at every position."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, max_len // 4), max_len + 1, (n_prompts,), generator=g)
    lo, hi = math.log(p_range[0]), math.log(p_range[1])
    p0 = torch.exp(lo + (hi - lo) * torch.rand(n_prompts, generator=g, dtype=torch.float64))
    q = p0 ** (1.0 / lengths.to(torch.float64))
    logit_c = torch.log(q * (vocab - 1) / (1 - q))  # softmax([c, 0, ..., 0])[0] = q
    logits = torch.zeros(n_prompts, max_len, vocab, dtype=torch.float64)
    logits[:, :, 0] = logit_c[:, None]
    return ChainMDP(lengths=lengths, vocab=vocab, init_logits=logits)


def chain_loglinear_features(x: torch.Tensor, t_over: torch.Tensor, vocab: int) -> torch.Tensor:
    """Logit features of a log-linear chain policy. x: [K, d] prompt features; t_over: [L]
    (t / length_scale). Returns φ [K, L, V, F] with F = V·d + V + V:
    φ(k, t, a) = [x_k ⊗ e_a, (t/L0)·e_a, e_a], so logits = φ @ θ with θ [F]."""
    k, d = x.shape
    L = t_over.shape[0]
    eye = torch.eye(vocab, dtype=torch.float64)
    fx = x[:, None, :, None] * eye[None, :, None, :]  # [K, V(a), d, V(slot)]
    fx = fx.reshape(k, vocab, d * vocab)
    ft = t_over[:, None, None] * eye[None]  # [L, V, V]
    parts = [
        fx[:, None].expand(k, L, vocab, d * vocab),
        ft[None].expand(k, L, vocab, vocab),
        eye[None, None].expand(k, L, vocab, vocab),
    ]
    return torch.cat(parts, dim=-1)


class LogLinearChain:
    """A chain MDP whose policy is log-linear with features shared across prompts, so that
    it can generalise to unseen prompts: prompt k has features x_k [d] and length l_k; the
    correct token at position t is c_k(t) = argmax_a [(A x_k)_a + (t/L0)·b_a] for a hidden
    rule (A, b) — realisable by the policy class. Exact success and V^π (torch float64).

    Args:
        x: [K, d]; lengths: [K] int; rule_a: [V, d]; rule_b: [V]; vocab: V;
        max_len: L (≥ every l_k); length_scale: L0 of the position feature t/L0.
    """

    def __init__(self, x: torch.Tensor, lengths: torch.Tensor, rule_a: torch.Tensor,
                 rule_b: torch.Tensor, vocab: int, max_len: int, length_scale: int):
        self.x, self.lengths, self.vocab, self.max_len = x, lengths, vocab, max_len
        self.length_scale = length_scale
        t = torch.arange(max_len, dtype=torch.float64)
        self.t_over = t / length_scale
        score = (x @ rule_a.T)[:, None, :] + self.t_over[None, :, None] * rule_b[None, None, :]
        self.correct = score.argmax(-1)  # [K, L]
        self.mask = (t[None, :] < lengths[:, None]).to(torch.float64)  # [K, L]
        self.phi = chain_loglinear_features(x, self.t_over, vocab)  # [K, L, V, F]

    def logp_correct(self, theta: torch.Tensor) -> torch.Tensor:
        """[K, L] log π(c_k(t) | k, t) (0 at positions ≥ l_k)."""
        logp = torch.log_softmax(self.phi @ theta, dim=-1)
        return logp.gather(-1, self.correct[..., None]).squeeze(-1) * self.mask

    def success(self, theta: torch.Tensor) -> torch.Tensor:
        """[K] exact p_k."""
        return torch.exp(self.logp_correct(theta).sum(1))

    def values(self, theta: torch.Tensor) -> torch.Tensor:
        """[K, L] exact V^π on the correct path: Π_{u ≥ t} π(c_k(u)); 0 beyond l_k."""
        lp = self.logp_correct(theta)
        return torch.exp(torch.flip(torch.cumsum(torch.flip(lp, [1]), 1), [1])) * self.mask

    def critic_features(self) -> torch.Tensor:
        """[K, L, d + 3] = [x_k, t/L0, (l_k − t)/L0, 1]."""
        k, L = self.mask.shape
        t = torch.arange(L, dtype=torch.float64)
        rem = (self.lengths[:, None].to(torch.float64) - t[None]) / self.length_scale
        return torch.cat([self.x[:, None, :].expand(k, L, -1),
                          (t / self.length_scale)[None, :, None].expand(k, L, 1),
                          rem[..., None], torch.ones(k, L, 1, dtype=torch.float64)], dim=-1)


def make_loglinear_chain(n: int, lengths: tuple[int, int] | int, rule_a, rule_b, vocab: int, d: int,
                         max_len: int, length_scale: int, g: torch.Generator) -> LogLinearChain:
    """n prompts with standard-normal features and lengths uniform in [lo, hi] (or fixed)."""
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if isinstance(lengths, int):
        ls = torch.full((n,), lengths)
    else:
        ls = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=g)
    return LogLinearChain(x, ls, rule_a, rule_b, vocab, max_len, length_scale)
