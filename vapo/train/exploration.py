"""Exploration in the training loop: final answers, the outcome-exploration reward terms with
their per-prompt answer history, the pass@k credit, and the exploration metrics.

:class:`OutcomeExplorer` runs once per RL iteration on the gathered batch, after collection and
before the forward passes (vapo.train.trainer): it reads each response's final answer (the text
after the last ``####``, vapo.tasks.base.final_answer; a response without one counts as the answer
"<none>"), updates the history N(prompt, answer), shapes ``exp.scores`` as ``algo.exploration``
asks (docs/exploration.md) and returns the iteration's exploration metrics. The history is part of
the trainer's checkpointed state, so a resumed run gives the same bonuses as an uninterrupted one.
Every process of a torchrun job sees the same gathered batch and so keeps the same history.
"""

from __future__ import annotations

from typing import Any

import torch

from vapo.algos.advantages import passk_credit
from vapo.algos.exploration import (
    batch_repeat_penalty,
    distinct_answers_per_group,
    historical_bonus,
    position_bucket_sums,
)
from vapo.config import Config
from vapo.errors import VapoError
from vapo.models import decode_responses
from vapo.tasks.base import final_answer
from vapo.train.batch import Experience

NO_ANSWER = "<none>"
ENTROPY_BUCKETS = 4  # entropy_q1 .. entropy_q4: the four quarters of each response


def final_answers(exp: Experience, tokenizer: Any) -> list[str]:
    """Each response's final answer text (NO_ANSWER when it has no ``####`` line)."""
    texts = decode_responses(tokenizer, exp.response_ids, exp.lengths)
    return [a if a is not None else NO_ANSWER for a, _ in map(final_answer, texts)]


def answer_ids(answers: list[str], group_index: torch.Tensor) -> torch.Tensor:
    """[B] int64 ids, equal within a group exactly when the answers are equal."""
    table: dict[tuple[int, str], int] = {}
    return torch.tensor([table.setdefault((int(g), a), len(table)) for g, a in zip(group_index.tolist(), answers, strict=True)],
                        dtype=torch.int64)


def entropy_by_position(ent: torch.Tensor, mask: torch.Tensor) -> dict[str, tuple[float, float]]:
    """{"entropy_q1": (sum, tokens), ...}: token entropy summed over each quarter of every response
    (vapo.algos.exploration.position_bucket_sums), for a token-weighted mean over micro-batches."""
    sums, counts = position_bucket_sums(ent, mask, ENTROPY_BUCKETS)
    return {f"entropy_q{j + 1}": (float(sums[j]), float(counts[j])) for j in range(ENTROPY_BUCKETS)}


class OutcomeExplorer:
    """The per-prompt final-answer history and the reward shaping of ``algo.exploration``."""

    def __init__(self, cfg: Config):
        self.ex = cfg.algo.exploration
        self.pass_k = cfg.algo.advantage.pass_k
        self.history: dict[str, dict[str, int]] = {}  # prompt -> final answer -> count
        self.iterations = 0

    @property
    def keeps_history(self) -> bool:
        return self.ex.history_coef > 0

    def apply(self, exp: Experience, tokenizer: Any) -> dict[str, float]:
        """Shape ``exp.scores`` in place (pass@k credit, then + history bonus + batch penalty) and
        return the iteration's exploration metrics."""
        if len(exp.problems) != len(exp):
            raise VapoError(f"the batch holds {len(exp.problems)} problems for {len(exp)} responses",
                            where="OutcomeExplorer.apply", fix="collect with rollout_and_score (it keeps the problems)")
        answers = final_answers(exp, tokenizer)
        ids = answer_ids(answers, exp.group_index)
        distinct = distinct_answers_per_group(ids, exp.group_index).to(torch.float64)
        task_scores = exp.scores.clone()
        m: dict[str, float] = {
            "distinct_answers": float(distinct.mean()),
            "distinct_answers_min": float(distinct.min()),
            "no_answer_frac": sum(a == NO_ANSWER for a in answers) / len(answers),
        }
        shaped = exp.scores.to(torch.float64)
        if self.ex.passk_credit:  # replace the 0/1 correctness, keep the other shaping terms (overlong)
            credit = passk_credit(exp.correct, exp.group_index, self.pass_k)
            shaped = shaped - exp.correct.to(torch.float64) + credit
            m["passk_credit_mean"] = float(credit.mean())
        if self.keeps_history:
            prompts = [p.prompt for p in exp.problems]
            m["explore_revisit_frac"] = float(sum(p in self.history for p in set(prompts)) / len(set(prompts)))
            for p, a in zip(prompts, answers, strict=True):
                row = self.history.setdefault(p, {})
                row[a] = row.get(a, 0) + 1
            counts = torch.tensor([self.history[p][a] for p, a in zip(prompts, answers, strict=True)])
            bonus = historical_bonus(counts, self.ex.history_coef)
            shaped = shaped + bonus
            m["explore_history_bonus"] = float(bonus.mean())
            m["explore_history_prompts"] = float(len(self.history))
        if self.ex.batch_coef > 0:
            penalty = batch_repeat_penalty(ids, exp.group_index, self.ex.batch_coef)
            shaped = shaped + penalty
            m["explore_batch_penalty"] = float(penalty.mean())
        exp.scores = shaped.to(exp.scores.dtype)
        if self.ex.passk_credit or self.keeps_history or self.ex.batch_coef > 0:
            m["task_reward"] = float(task_scores.mean())
        self.iterations += 1
        return m

    # ---------------------------------------------------------------- checkpointed state
    def state_dict(self) -> dict[str, Any]:
        """Plain data (str, int, dict): loadable with torch.load(weights_only=True)."""
        return {"history": {p: dict(a) for p, a in self.history.items()}, "iterations": self.iterations}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; None (a checkpoint written before this state existed) starts
        an empty history, which is refused when the history matters."""
        if state is None:
            if self.keeps_history:
                raise VapoError("this checkpoint holds no final-answer history, and algo.exploration.history_coef > 0 needs it",
                                where="checkpoint", fix="resume with the run's own config, or start a new run")
            return
        self.history = {str(p): {str(a): int(n) for a, n in row.items()} for p, row in state["history"].items()}
        self.iterations = int(state["iterations"])


__all__ = ["ENTROPY_BUCKETS", "NO_ANSWER", "OutcomeExplorer", "answer_ids", "entropy_by_position", "final_answers"]
