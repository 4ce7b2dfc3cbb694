"""Exact token MDPs with sparse terminal reward, and their dynamic-programming ground truth.

The testbed of the theory lab (docs/theory.md, spec "The testbed: exact token MDPs").

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
"""

from __future__ import annotations

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
