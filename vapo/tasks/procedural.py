"""Built-in verifiable tasks with a mechanical chain of thought whose length grows with ``size``.

Each chain-of-thought line is one local step a small character-level model can learn (read one
or two symbols from the prompt, combine them with what the previous line produced); the last line
is ``#### <answer>``. Lengths of the solutions (characters, default train sizes, no EOS):

    running_sum  "7+5-9+3="  ->  "7+5=12\\n12-9=3\\n3+3=6\\n#### 6"          (18 .. ~118)
    addition     "58+67="    ->  "8+7+0=15\\n5+6+1=12\\n#### 125"           (14 .. ~115)
    multiply     "472*7="    ->  "2*7+0=14\\n7*7+1=50\\n4*7+5=33\\n#### 3304" (14 .. ~106)
    repeat_add   "(3+7*5)%10=" -> "5:3+7=0\\n4:0+7=7\\n...\\n1:1+7=8\\n#### 8"   (38 .. 573)

``running_sum`` is the default (:data:`DEFAULT_TASK`): its answer is the last line's result, so
every step is local, a ~1M-parameter model learns the format within a few hundred SFT steps, and
per-step arithmetic errors (which compound with the number of terms) leave room for RL.
``addition`` and ``multiply`` also have to reassemble the digits in reverse for the final line.
``repeat_add`` is the long chain-of-thought regime (answers of 38 to 573 tokens, a sloppy-teacher
slip model whose slips decide the answer; see ``examples/long_cot.yaml`` and docs/long_cot.md).
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


@register_task("repeat_add")
class RepeatAdd(ProceduralTask):
    """The long chain-of-thought regime: add one digit n times modulo 10, one addition per line.

    "(3+7*5)%10=" -> "5:3+7=0\\n4:0+7=7\\n3:7+7=4\\n2:4+7=1\\n1:1+7=8\\n#### 8"

    size = n, the number of additions. Line k reads "<additions left>:<value>+<d>=<new value>":
    a countdown (so the model knows when to stop without counting lines), a copy of the previous
    line's value (the prompt's start value on the first line), the prompt's digit d, and their sum
    modulo 10. Every line is local and short (7-8 characters); the chain of thought grows linearly
    with n, from 38 characters at n=4 to 573 at n=64 (15x), so the default training range reaches
    the regime of answers of hundreds of tokens where credit assignment matters.

    Slip model (``sft.teacher_slip``, :meth:`slipped_solution`): the sloppy teacher writes each
    line's new value off by one (modulo 10) with probability ``slip``, and later lines carry on
    consistently from the slipped value. That digit is the deciding token of the line: the error
    is additive and survives every later step, so after one slip the final answer is wrong (only a
    second, opposite slip can cancel it), and the value of the state drops to ~0 at that token.
    """

    name = "repeat_add"
    train_sizes = (4, 64)
    long_sizes = (65, 80)

    def generate(self, rng: random.Random, size: int) -> tuple[str, str, str, dict[str, Any]]:
        v0, d = rng.randint(0, 9), rng.randint(1, 9)
        meta = {"start": v0, "digit": d}
        answer = str((v0 + d * size) % 10)
        return f"({v0}+{d}*{size})%10=", answer, _repeat_add_lines(v0, d, [0] * size), meta

    def slipped_solution(self, problem: Any, rng: random.Random, slip: float) -> str:
        """A demonstration from a sloppy teacher: each line's new value is off by one (sign at
        random, modulo 10) with probability ``slip``; later lines continue from the written value.
        The format never changes."""
        slips = [rng.choice((-1, 1)) if rng.random() < slip else 0 for _ in range(problem.size)]
        return _repeat_add_lines(problem.meta["start"], problem.meta["digit"], slips)


def _repeat_add_lines(v0: int, d: int, slips: list[int]) -> str:
    """repeat_add's chain of thought; ``slips[i]`` is added (mod 10) to line i's new value."""
    n, v, lines = len(slips), v0, []
    for i, s in enumerate(slips):
        w = (v + d + s) % 10
        lines.append(f"{n - i}:{v}+{d}={w}")
        v = w
    lines.append(f"#### {v}")
    return "\n".join(lines)
