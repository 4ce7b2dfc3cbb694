"""Numerical faults: NaN/Inf in a loss, a gradient, the advantages or the values.

An update whose inputs or gradients are not finite is skipped (no optimizer step: the weights and
the Adam moments stay as they were) and logged with the offending statistics; after
``max_bad`` consecutive skipped updates the run stops with :class:`DivergenceError`, which says
what diverged (the caller saves a checkpoint first: its weights are the last finite ones).

    bad = find_nonfinite(advantages=(exp.advantages, mask), values=(exp.values, mask))
    bad += find_nonfinite(loss=total)                       # per micro-batch, before backward
    bad += grad_nonfinite(policy.named_parameters(), "actor")  # after backward, before step
    if guard.record(bad, where="actor update", iteration=it):  # True: skip this step
        optimizer.zero_grad(set_to_none=True)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from vapo.errors import VapoError


class DivergenceError(VapoError):
    """Training diverged: too many consecutive updates had NaN/Inf values."""


@dataclass(frozen=True)
class NonFinite:
    """Statistics of one tensor that holds NaN or Inf (over its masked entries when masked).

    name: which tensor; numel: entries checked; nan / posinf / neginf: counts;
    finite_min / finite_max: range of the finite entries (None when none is finite).
    """

    name: str
    numel: int
    nan: int
    posinf: int
    neginf: int
    finite_min: float | None
    finite_max: float | None

    def describe(self) -> str:
        rng = "no finite entry" if self.finite_min is None else f"finite range [{self.finite_min:.4g}, {self.finite_max:.4g}]"
        return f"{self.name}: {self.nan} NaN, {self.posinf} +Inf, {self.neginf} -Inf of {self.numel} ({rng})"


def tensor_nonfinite(name: str, t: torch.Tensor, mask: torch.Tensor | None = None) -> NonFinite | None:
    """Statistics of ``t`` (any shape; with ``mask`` of the same shape only entries where
    ``mask`` is non-zero count) when it holds NaN or Inf, else None."""
    t = t.detach()
    if mask is not None:
        t = t[mask.to(device=t.device).bool()]
    finite = torch.isfinite(t)
    if bool(finite.all()):
        return None
    t = t.float()
    good = t[finite]
    return NonFinite(
        name=name, numel=t.numel(), nan=int(torch.isnan(t).sum()), posinf=int((t == float("inf")).sum()),
        neginf=int((t == float("-inf")).sum()),
        finite_min=float(good.min()) if good.numel() else None, finite_max=float(good.max()) if good.numel() else None,
    )


def find_nonfinite(**tensors: torch.Tensor | tuple[torch.Tensor, torch.Tensor | None] | None) -> list[NonFinite]:
    """``find_nonfinite(loss=l, advantages=(adv, mask))``: the offending ones among the named
    tensors (a ``(tensor, mask)`` pair checks the masked entries only; None is skipped)."""
    out = []
    for name, v in tensors.items():
        if v is None:
            continue
        t, mask = v if isinstance(v, tuple) else (v, None)
        bad = tensor_nonfinite(name, t, mask)
        if bad is not None:
            out.append(bad)
    return out


def grad_nonfinite(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], prefix: str = "grad") -> list[NonFinite]:
    """One summary over all gradients (``<prefix>.grad``, named after the first offending
    parameter) when any gradient holds NaN or Inf, else []."""
    bad = [(n, tensor_nonfinite(n, p.grad)) for n, p in named_parameters if p.grad is not None]
    bad = [(n, b) for n, b in bad if b is not None]
    if not bad:
        return []
    tot = {k: sum(getattr(b, k) for _, b in bad) for k in ("numel", "nan", "posinf", "neginf")}
    mins = [b.finite_min for _, b in bad if b.finite_min is not None]
    maxs = [b.finite_max for _, b in bad if b.finite_max is not None]
    return [NonFinite(name=f"{prefix}.grad ({len(bad)} tensors, first {bad[0][0]})", **tot,
                      finite_min=min(mins) if mins else None, finite_max=max(maxs) if maxs else None)]


class BadUpdateGuard:
    """Counts consecutive skipped updates; raises DivergenceError at ``max_bad`` of them.

    Args:
        max_bad: consecutive skipped updates that stop the run (>= 1).
    """

    def __init__(self, max_bad: int = 3):
        if max_bad < 1:
            raise ValueError(f"max_bad must be >= 1, got {max_bad}")
        self.max_bad = max_bad
        self.consecutive = 0
        self.skipped_total = 0
        self.last: list[dict[str, Any]] = []

    def record(self, bad: list[NonFinite], *, where: str, iteration: int) -> bool:
        """Record one update's check. Returns True when the update must be skipped (``bad`` is
        not empty); a finite update resets the consecutive count.

        Raises:
            DivergenceError: this is the ``max_bad``-th consecutive skipped update.
        """
        if not bad:
            self.consecutive = 0
            return False
        self.consecutive += 1
        self.skipped_total += 1
        self.last = [{"where": where, "iteration": iteration, **asdict(b)} for b in bad]
        if self.consecutive >= self.max_bad:
            raise DivergenceError(
                f"training diverged: {self.consecutive} consecutive updates skipped for NaN/Inf; the last, at iteration "
                f"{iteration} ({where}): " + "; ".join(b.describe() for b in bad),
                where="train.max_bad_updates",
                fix="lower optim.actor_lr / optim.critic_lr or optim.grad_clip, check the task's rewards, and resume "
                    "from the checkpoint just saved (its weights are the last finite ones)",
            )
        return True


__all__ = ["BadUpdateGuard", "DivergenceError", "NonFinite", "find_nonfinite", "grad_nonfinite", "tensor_nonfinite"]
