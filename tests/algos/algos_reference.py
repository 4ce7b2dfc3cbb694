"""Naive float64 Python-loop references for vapo.algos (one sequence, one token at a time).

Deliberately written with plain Python floats and loops, independent of the vectorised code.
"""

from __future__ import annotations

import math

import torch


def _f(x) -> list:
    return x.detach().to(torch.float64).tolist()


def gae_ref(rewards, values, mask, gamma, lam):
    """Per-sequence GAE over the real tokens only (masked positions skipped, hold 0)."""
    r, v, m = _f(rewards), _f(values), mask.bool().tolist()
    b, t_len = len(m), (len(m[0]) if m else 0)
    gs = [float(gamma)] * b if not isinstance(gamma, torch.Tensor) or gamma.dim() == 0 else _f(gamma)
    ls = [float(lam)] * b if not isinstance(lam, torch.Tensor) or lam.dim() == 0 else _f(lam)
    adv = [[0.0] * t_len for _ in range(b)]
    ret = [[0.0] * t_len for _ in range(b)]
    for i in range(b):
        idx = [t for t in range(t_len) if m[i][t]]
        a_next, v_next = 0.0, 0.0  # terminal after the last real token
        for t in reversed(idx):
            delta = r[i][t] + gs[i] * v_next - v[i][t]
            a = delta + gs[i] * ls[i] * a_next
            adv[i][t], ret[i][t] = a, a + v[i][t]
            a_next, v_next = a, v[i][t]
    return torch.tensor(adv, dtype=torch.float64), torch.tensor(ret, dtype=torch.float64)


def group_ref(scores, group_index, mask, kind, eps=1e-6):
    s, g = _f(scores), group_index.tolist()
    m = mask.bool().tolist()
    out = []
    for i in range(len(s)):
        members = [s[j] for j in range(len(s)) if g[j] == g[i]]
        n = len(members)
        mean = sum(members) / n
        if n == 1 or max(members) == min(members):
            a = 0.0
        elif kind == "grpo":
            std = math.sqrt(sum((x - mean) ** 2 for x in members) / (n - 1))
            a = (s[i] - mean) / (std + eps)
        elif kind == "dr_grpo":
            a = s[i] - mean
        elif kind == "rloo":
            a = s[i] - (sum(members) - s[i]) / (n - 1)
        else:
            raise ValueError(kind)
        out.append([a if mt else 0.0 for mt in m[i]])
    return torch.tensor(out, dtype=torch.float64).reshape(mask.shape)


def ppo_clip_ref(logp, old, adv, mask, eps_low, eps_high, c=None):
    """Per-token loss matrix of the clipped objective (dual clip for A < 0)."""
    lp, ol, a, m = _f(logp), _f(old), _f(adv), mask.bool().tolist()
    out = []
    for i in range(len(m)):
        row = []
        for t in range(len(m[i])):
            if not m[i][t]:
                row.append(0.0)
                continue
            rho = math.exp(lp[i][t] - ol[i][t])
            clipped = min(max(rho, 1 - eps_low), 1 + eps_high)
            loss = -min(rho * a[i][t], clipped * a[i][t])
            if c is not None and a[i][t] < 0:
                loss = min(loss, -c * a[i][t])
            row.append(loss)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64).reshape(mask.shape)


def agg_ref(loss_mat, mask, mode, norm_len=None):
    lm, m = _f(loss_mat), mask.bool().tolist()
    b = len(m)
    t_len = len(m[0]) if b else 0
    if mode == "token-mean":
        n = sum(sum(row) for row in m)
        return sum(lm[i][t] for i in range(b) for t in range(t_len) if m[i][t]) / max(n, 1)
    if mode == "seq-mean-token-mean":
        means = []
        for i in range(b):
            vals = [lm[i][t] for t in range(t_len) if m[i][t]]
            if vals:
                means.append(sum(vals) / len(vals))
        return sum(means) / max(len(means), 1)
    if mode == "seq-mean-token-sum-norm":
        total = sum(lm[i][t] for i in range(b) for t in range(t_len) if m[i][t])
        return total / (b * (norm_len if norm_len is not None else t_len))
    raise ValueError(mode)


def cov_ref(logp, adv, mask):
    """Token covariance terms (A_i - mean A)(logp_i - mean logp) over real tokens; 0 elsewhere."""
    lp, a, m = _f(logp), _f(adv), mask.bool().tolist()
    real = [(i, t) for i in range(len(m)) for t in range(len(m[i])) if m[i][t]]
    if not real:
        return [[0.0] * len(row) for row in m]
    ma = sum(a[i][t] for i, t in real) / len(real)
    ml = sum(lp[i][t] for i, t in real) / len(real)
    out = [[0.0] * len(row) for row in m]
    for i, t in real:
        out[i][t] = (a[i][t] - ma) * (lp[i][t] - ml)
    return out


def clip_cov_ref(logp, old, adv, mask, eps_low, eps_high, ratio, lb, ub, seed):
    """Per-token loss matrix of Clip-Cov; the random draw is torch.randperm(#candidates) from a
    generator seeded with `seed`, over candidates in row-major order (the draw is the input)."""
    lp, ol, a, m = _f(logp), _f(old), _f(adv), mask.bool().tolist()
    cov = cov_ref(logp, adv, mask)
    n_real = sum(sum(row) for row in m)
    loss = [[0.0] * len(row) for row in m]
    cand = []
    for i in range(len(m)):
        for t in range(len(m[i])):
            if not m[i][t]:
                continue
            rho = math.exp(lp[i][t] - ol[i][t])
            l1 = -a[i][t] * rho
            l2 = -a[i][t] * min(max(rho, 1 - eps_low), 1 + eps_high)
            loss[i][t] = max(l1, l2)
            if not l2 > l1 and lb < cov[i][t] < ub:
                cand.append((i, t))
    n_clip = max(int(ratio * n_real), 1)
    chosen = []
    if cand:
        perm = torch.randperm(len(cand), generator=torch.Generator().manual_seed(seed)).tolist()
        chosen = [cand[j] for j in perm[: min(n_clip, len(cand))]]
    for i, t in chosen:
        loss[i][t] = 0.0
    return torch.tensor(loss, dtype=torch.float64).reshape(mask.shape), len(chosen), len(cand)


def kl_cov_ref(logp, old, adv, mask, ratio, coef):
    """Per-token loss matrix of KL-Cov: -rho A everywhere, + coef |log rho| on the top-k covariance tokens."""
    lp, ol, a, m = _f(logp), _f(old), _f(adv), mask.bool().tolist()
    cov = cov_ref(logp, adv, mask)
    real = [(i, t) for i in range(len(m)) for t in range(len(m[i])) if m[i][t]]
    loss = [[0.0] * len(row) for row in m]
    for i, t in real:
        loss[i][t] = -a[i][t] * math.exp(lp[i][t] - ol[i][t])
    top = []
    if real:
        k = max(1, int(len(real) * ratio))
        top = sorted(real, key=lambda it: cov[it[0]][it[1]], reverse=True)[:k]
        for i, t in top:
            loss[i][t] += coef * abs(lp[i][t] - ol[i][t])
    return torch.tensor(loss, dtype=torch.float64).reshape(mask.shape), len(top)


def grpo_passk_ref(scores, group_index, eps=1e-6):
    """verl's grpo_passk as a loop: only each group's (unique) best response gets
    (max - second max) / (unbiased std + eps). Assumes the maximum is unique or tied at the top."""
    s, g = _f(scores), group_index.tolist()
    out = [0.0] * len(s)
    for gid in sorted(set(g)):
        rows = [i for i in range(len(s)) if g[i] == gid]
        vals = sorted((s[i] for i in rows), reverse=True)
        mean = sum(s[i] for i in rows) / len(rows)
        std = math.sqrt(sum((s[i] - mean) ** 2 for i in rows) / (len(rows) - 1))
        best = max(rows, key=lambda i: s[i])
        out[best] = (vals[0] - vals[1]) / (std + eps)
    return out


def passk_ref(scores, group_index, k, eps=1e-6):
    """Analytic pass@k advantages by enumerating every k-subset of each group: a response's
    advantage is (mean pass@k reward of the subsets containing it - mean over all subsets) /
    (std over all subsets + eps)."""
    import itertools

    s, g = _f(scores), group_index.tolist()
    out = [0.0] * len(s)
    for gid in sorted(set(g)):
        rows = [i for i in range(len(s)) if g[i] == gid]
        subsets = list(itertools.combinations(rows, k))
        rew = {sub: float(any(s[i] > 0 for i in sub)) for sub in subsets}
        mean = sum(rew.values()) / len(subsets)
        std = math.sqrt(sum((r - mean) ** 2 for r in rew.values()) / len(subsets))
        if std == 0:
            continue
        for i in rows:
            mine = [rew[sub] for sub in subsets if i in sub]
            out[i] = (sum(mine) / len(mine) - mean) / (std + eps)
    return out
