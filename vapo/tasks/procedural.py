"""Built-in verifiable tasks with a mechanical chain of thought whose length grows with ``size``.

Each chain-of-thought line is one local step a small character-level model can learn (read one
or two symbols from the prompt, combine them with what the previous line produced); the last line
is ``#### <answer>``. Lengths of the solutions (characters, default train sizes, no EOS):

    running_sum  "7+5-9+3="  ->  "7+5=12\\n12-9=3\\n3+3=6\\n#### 6"          (18 .. ~118)
    addition     "58+67="    ->  "8+7+0=15\\n5+6+1=12\\n#### 125"           (14 .. ~115)
    multiply     "472*7="    ->  "2*7+0=14\\n7*7+1=50\\n4*7+5=33\\n#### 3304" (14 .. ~106)

``running_sum`` is the default (:data:`DEFAULT_TASK`): its answer is the last line's result, so
every step is local, a ~1M-parameter model learns the format within a few hundred SFT steps, and
per-step arithmetic errors (which compound with the number of terms) leave room for RL.
``addition`` and ``multiply`` also have to reassemble the digits in reverse for the final line.
"""

from __future__ import annotations

import random
from typing import Any

from vapo.tasks.base import ProceduralTask, register_task

DEFAULT_TASK = "running_sum"


@register_task("running_sum")
class RunningSum(ProceduralTask):
    """Evaluate a chain of single-digit +/- terms, one partial sum per line ("12-5=7").

    size = number of terms. The first term is 1..9, each later term is +d or -d with d in 1..9,
    the sign drawn at random except that a partial sum never goes below 0 (a "-d" that would
    is drawn as "+d"), which keeps every line short and every number unsigned.
    """

    name = "running_sum"
    train_sizes = (3, 15)
    long_sizes = (16, 18)
    min_size = 2

    def generate(self, rng: random.Random, size: int) -> tuple[str, str, str, dict[str, Any]]:
        terms = [rng.randint(1, 9)]
        for _ in range(size - 1):
            total, d = sum(terms), rng.randint(1, 9)
            terms.append(-d if rng.random() < 0.5 and total - d >= 0 else d)
        prompt = str(terms[0]) + "".join(f"{t:+d}" for t in terms[1:]) + "="
        total, lines = terms[0], []
        for t in terms[1:]:
            lines.append(f"{total}{t:+d}={total + t}")
            total += t
        return prompt, str(total), "\n".join(lines) + f"\n#### {total}", {"terms": terms}


@register_task("addition")
class Addition(ProceduralTask):
    """Add two n-digit numbers with written carries, least significant digit first ("7+5+1=13").

    size = n, the number of digits of both operands (leading digits nonzero). Line i reads the
    i-th digits from the right and the carry from line i-1; the answer is the final carry (if
    any) followed by the lines' last digits in reverse order.
    """

    name = "addition"
    train_sizes = (1, 11)
    long_sizes = (12, 13)

    def generate(self, rng: random.Random, size: int) -> tuple[str, str, str, dict[str, Any]]:
        a, b = (rng.randint(10 ** (size - 1), 10**size - 1) for _ in range(2))
        da, db = str(a)[::-1], str(b)[::-1]
        carry, lines = 0, []
        for x, y in zip(da, db, strict=True):
            s = int(x) + int(y) + carry
            lines.append(f"{x}+{y}+{carry}={s}")
            carry = s // 10
        ans = str(a + b)
        return f"{a}+{b}=", ans, "\n".join(lines) + f"\n#### {ans}", {"a": a, "b": b}


@register_task("multiply")
class Multiply(ProceduralTask):
    """Multiply an n-digit number by one digit with written carries ("8*7+3=59").

    size = n, the digits of the first operand; the multiplier is 2..9. Line i computes
    digit_i * m + carry; the answer is the last line's value followed by the earlier lines'
    last digits in reverse order.
    """

    name = "multiply"
    train_sizes = (1, 10)
    long_sizes = (11, 12)

    def generate(self, rng: random.Random, size: int) -> tuple[str, str, str, dict[str, Any]]:
        a, m = rng.randint(10 ** (size - 1), 10**size - 1), rng.randint(2, 9)
        carry, lines = 0, []
        for x in str(a)[::-1]:
            v = int(x) * m + carry
            lines.append(f"{x}*{m}+{carry}={v}")
            carry = v // 10
        ans = str(a * m)
        return f"{a}*{m}=", ans, "\n".join(lines) + f"\n#### {ans}", {"a": a, "m": m}
