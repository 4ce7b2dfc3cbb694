"""``rewrite_sum``: evaluate a +/- chain by rewriting it one operation at a time.

    "7-1+3-5="  ->  "6+3-5\\n9-5\\n#### 4"

Each line is the previous line (the prompt's expression for the first) with its first two terms
replaced by their value, so every step is local: one single-digit fact (every partial sum stays in
0..9) and a copy of the tail. A ~1M-parameter character model learns this in a couple of hundred
SFT steps, unlike ``running_sum``, where line k has to find the (k+1)-th term in the prompt. The
chain of thought grows quadratically with the number of terms (size 2: 6 characters, size 10:
~80), a >10x spread within the training range; errors compound with length, which leaves room
for RL.
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
    train_sizes = (2, 10)
    long_sizes = (11, 13)
    min_size = 2

    def generate(self, rng: random.Random, size: int) -> tuple[str, str, str, dict[str, Any]]:
        terms = [rng.randint(0, 9)]
        total = terms[0]
        for _ in range(size - 1):
            options = [d for d in range(1, 10) if total + d <= 9] + [-d for d in range(1, 10) if total - d >= 0]
            t = rng.choice(options)
            terms.append(t)
            total += t
        lines, rest = [], list(terms)
        while len(rest) > 2:
            rest = [rest[0] + rest[1], *rest[2:]]
            lines.append(_expr(rest))
        lines.append(f"#### {total}")
        return _expr(terms) + "=", str(total), "\n".join(lines), {"terms": terms}
