"""``rewrite_sum``: evaluate a +/- chain by rewriting it one operation at a time.

    "7-1+3-5="  ->  "6+3-5\\n9-5\\n#### 4"

Each line is the previous line (the prompt's expression for the first) with its first two terms
replaced by their value, so every step is local: one single-digit fact (every partial sum stays in
0..9) and a copy of the tail. The chain of thought grows quadratically with the number of terms
(size 2: 6 characters, size 6: 34, size 8: 60), a >5x spread within the default training range
2..6; errors compound with length.

Headroom for RL comes from a sloppy teacher (``sft.teacher_slip``, see :meth:`slipped_solution`):
the warm start imitates demonstrations whose every step slips by one with a small probability, so
it has learned the procedure *and* the slips; RL has to learn to be more careful than its teacher,
and that pays most on the longest chains. (The micro model needs ~2,000 clean SFT steps for sizes
up to 10, and when it falls short its errors are systematic — copying long tails — which RL from
128 answers per step did not repair in our measurements.)
"""

from __future__ import annotations

import random
from typing import Any

from vapo.tasks.base import ProceduralTask, register_task


def _expr(terms: list[int]) -> str:
    return str(terms[0]) + "".join(f"{t:+d}" for t in terms[1:])


@register_task("rewrite_sum")
class RewriteSum(ProceduralTask):
    """Evaluate a chain of single-digit +/- terms by rewriting it, one operation per line.

    size = number of terms. The first term is 0..9; each later term is +d or -d (d in 1..9),
    drawn uniformly among those that keep the partial sum in 0..9.
    """

    name = "rewrite_sum"
    train_sizes = (2, 6)
    long_sizes = (7, 8)
    min_size = 2

    def generate(self, rng: random.Random, size: int) -> tuple[str, str, str, dict[str, Any]]:
        terms = [rng.randint(0, 9)]
        total = terms[0]
        for _ in range(size - 1):
            options = [d for d in range(1, 10) if total + d <= 9] + [-d for d in range(1, 10) if total - d >= 0]
            t = rng.choice(options)
            terms.append(t)
            total += t
        return _expr(terms) + "=", str(total), _rewrite(terms), {"terms": terms}

    def slipped_solution(self, problem: Any, rng: random.Random, slip: float) -> str:
        """A demonstration from a sloppy teacher: each rewrite (and the final sum) is off by one
        with probability ``slip``; later lines carry on consistently from the slipped value, so the
        final answer is wrong. Slips keep every partial sum in 0..9 (the format never changes)."""
        terms = problem.meta["terms"]
        deltas, v = [], terms[0]
        for j in range(1, len(terms)):
            d = 0
            if rng.random() < slip:
                later = [sum(terms[j : i + 1]) for i in range(j, len(terms))]  # what step j and later add
                options = [sign for sign in (-1, 1) if all(0 <= v + x + sign <= 9 for x in later)]
                d = rng.choice(options) if options else 0
            deltas.append(d)
            v += terms[j] + d
        return _rewrite(terms, deltas)


def _rewrite(terms: list[int], deltas: list[int] | None = None) -> str:
    """The rewrite chain of ``terms``; ``deltas[j - 1]`` is added to the result of step j (slips)."""
    deltas = deltas or [0] * (len(terms) - 1)
    lines, v = [], terms[0]
    for j in range(1, len(terms)):
        v += terms[j] + deltas[j - 1]
        if j < len(terms) - 1:
            lines.append(_expr([v, *terms[j + 1 :]]))
    lines.append(f"#### {v}")
    return "\n".join(lines)
