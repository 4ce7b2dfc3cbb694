"""What a task is: problems with a checkable answer, a strict verifier, and three splits.

    Problem(prompt, answer, solution, size, split, meta)     one instance
    Reward(score, correct, parsed, reason)                    the verifier's verdict
    Task: name, splits, sample(rng, split) -> Problem, score(problem, text) -> Reward

Splits: "train" (what SFT and RL sample), "heldout" (same size range as train, disjoint
instances: a hash of the instance decides which side it falls on) and "long" (sizes beyond the
training range, for length generalisation). A response ends its chain of thought with a line
``#### <answer>``; the verifier reads what follows the *last* ``####``.

Adding a task takes a few lines: subclass :class:`ProceduralTask`, write ``generate`` and
decorate the class with ``@register_task("name")`` (see vapo/tasks/procedural.py).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from vapo.errors import ConfigError, VapoError, unknown_name_error
from vapo.registry import Registry

MARKER = "####"
SPLITS: tuple[str, ...] = ("train", "heldout", "long")


@dataclass(frozen=True)
class Problem:
    """One task instance.

    prompt: the text given to the model (the tokenizer adds BOS).
    answer: the canonical final answer.
    solution: one full correct response (chain of thought + "#### " + answer), the SFT
        demonstration; the model's EOS is not part of it.
    size: the task's length knob (digits, terms, ...), used for length buckets.
    split: "train", "heldout" or "long".
    """

    prompt: str
    answer: str
    solution: str
    size: int
    split: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Reward:
    """score in [0, 1]; correct = the final answer matched; parsed = the text read after the
    marker (None when there was none); reason: "correct", "no_marker", "empty_answer",
    "malformed_answer", "wrong_answer" or "not_text"."""

    score: float
    correct: bool
    parsed: str | None
    reason: str


@runtime_checkable
class Task(Protocol):
    name: str
    splits: dict[str, tuple[int, int]]

    def sample(self, rng: random.Random, split: str = "train") -> Problem: ...

    def score(self, problem: Problem, response_text: str) -> Reward: ...


# ---------------------------------------------------------------------------------- verifier
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]*)")


def final_answer(text: Any) -> tuple[str | None, str]:
    """The stripped text after the last ``####`` and a reason: ("...", "ok"), (None, "no_marker"),
    (None, "not_text"), ("", "empty_answer"). Never raises."""
    if not isinstance(text, str):
        return None, "not_text"
    i = text.rfind(MARKER)
    if i < 0:
        return None, "no_marker"
    ans = text[i + len(MARKER) :].strip()
    return ans, ("ok" if ans else "empty_answer")


def score_integer_answer(response_text: Any, answer: str) -> Reward:
    """Strict verifier for integer answers: the text after the last ``####`` (whitespace stripped)
    must be a canonical integer (no leading zeros, no "+", no "-0", ASCII digits only) equal to
    ``answer``. Anything else scores 0 with a reason; never raises on any input."""
    try:
        parsed, why = final_answer(response_text)
        if why != "ok":
            return Reward(0.0, False, parsed, why)
        if not _CANONICAL_INT.fullmatch(parsed) or parsed == "-0":
            return Reward(0.0, False, parsed, "malformed_answer")
        if parsed != answer:
            return Reward(0.0, False, parsed, "wrong_answer")
        return Reward(1.0, True, parsed, "correct")
    except Exception:  # defensive: a verifier must never take down a training run
        return Reward(0.0, False, None, "malformed_answer")


# ---------------------------------------------------------------------------------- splits
def instance_unit(task_name: str, key: str) -> float:
    """A stable pseudo-random number in [0, 1) for an instance key (independent of Python's
    hash seed), used to partition instances between train and held-out."""
    h = hashlib.blake2b(f"{task_name}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def is_heldout(task_name: str, key: str, heldout_frac: float) -> bool:
    return instance_unit(task_name, key) < heldout_frac


def check_split(split: str, where: str) -> None:
    if split not in SPLITS:
        raise unknown_name_error("split", split, SPLITS, where=where)


# ---------------------------------------------------------------------------------- procedural base
class ProceduralTask:
    """Base for generated tasks: subclasses set ``name``, ``train_sizes`` and ``long_sizes``
    defaults and implement ``generate(rng, size) -> (prompt, answer, solution, meta)``.

    The train and held-out splits draw sizes uniformly from ``train_sizes`` and keep an instance
    only if its hash puts it on their side (``heldout_frac`` of instances are held out), so no
    held-out prompt is ever a training prompt. "long" draws from ``long_sizes`` (all above the
    training range). Scoring is :func:`score_integer_answer`; override ``score`` for other answers.
    """

    name: str = "procedural"
    train_sizes: tuple[int, int] = (1, 1)
    long_sizes: tuple[int, int] = (2, 2)
    max_attempts = 10_000

    def __init__(self, train_sizes: tuple[int, int] | list[int] | None = None,
                 long_sizes: tuple[int, int] | list[int] | None = None, heldout_frac: float = 0.1):
        where = f"task.kwargs ({self.name})"
        tr = tuple(train_sizes) if train_sizes is not None else tuple(type(self).train_sizes)
        lo = tuple(long_sizes) if long_sizes is not None else tuple(type(self).long_sizes)
        for label, r in (("train_sizes", tr), ("long_sizes", lo)):
            if len(r) != 2 or not all(isinstance(x, int) for x in r) or not (self.min_size <= r[0] <= r[1]):
                raise ConfigError(f"{label} must be two integers [lo, hi] with {self.min_size} <= lo <= hi, got {list(r)}",
                                  where=f"{where}.{label}", fix=f"e.g. {label}: {list(getattr(type(self), label))}")
        if lo[0] <= tr[1]:
            raise ConfigError(f"long_sizes {list(lo)} must start above train_sizes {list(tr)}",
                              where=f"{where}.long_sizes", fix=f"e.g. long_sizes: [{tr[1] + 1}, {tr[1] + 2}]")
        if not 0.0 < heldout_frac < 1.0:
            raise ConfigError(f"heldout_frac must be in (0, 1), got {heldout_frac}", where=f"{where}.heldout_frac",
                              fix="e.g. heldout_frac: 0.1")
        self.train_sizes, self.long_sizes, self.heldout_frac = tr, lo, float(heldout_frac)

    min_size = 1

    @property
    def splits(self) -> dict[str, tuple[int, int]]:
        return {"train": self.train_sizes, "heldout": self.train_sizes, "long": self.long_sizes}

    def generate(self, rng: random.Random, size: int) -> tuple[str, str, str, dict[str, Any]]:
        raise NotImplementedError

    def sample(self, rng: random.Random, split: str = "train") -> Problem:
        """One problem of ``split``; deterministic given the state of ``rng``."""
        check_split(split, where=f"{self.name}.sample(split=...)")
        lo, hi = self.splits[split]
        for _ in range(self.max_attempts):
            size = rng.randint(lo, hi)
            prompt, answer, solution, meta = self.generate(rng, size)
            if split == "long" or is_heldout(self.name, prompt, self.heldout_frac) == (split == "heldout"):
                return Problem(prompt, answer, solution, size, split, meta)
        raise VapoError(f"could not draw a {split} problem in {self.max_attempts} tries", where=f"{self.name}.sample",
                        fix="widen train_sizes or change heldout_frac")

    def score(self, problem: Problem, response_text: str) -> Reward:
        return score_integer_answer(response_text, problem.answer)

    def describe(self) -> str:
        doc = (type(self).__doc__ or "").strip().splitlines()[0]
        return (f"{self.name}: {doc} sizes train/heldout {list(self.train_sizes)}, long {list(self.long_sizes)}, "
                f"{self.heldout_frac:.0%} of instances held out")


# ---------------------------------------------------------------------------------- registry
TASKS: Registry[Callable[..., Task]] = Registry("task", where="task.name")


# name prefix -> factory(name, **kwargs) for families of tasks named "<prefix><member>" (e.g.
# "rg:" for reasoning-gym datasets, registered by vapo.tasks.gym)
TASK_PREFIXES: Registry[Callable[..., Task]] = Registry("task name prefix", where="task.name")


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: ``@register_task("my_task")`` on a Task class (or factory) makes
    ``get_task("my_task", **kwargs)`` build it. Registering a taken name raises VapoError."""
    return TASKS.register(name)


def register_task_prefix(prefix: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Decorator: ``@register_task_prefix("rg:")`` on ``factory(name, **kwargs)`` makes
    ``get_task("rg:<member>", **kwargs)`` call it with the whole name."""
    return TASK_PREFIXES.register(prefix)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task registered as ``name`` with ``kwargs`` (the config's ``task.kwargs``); a
    name starting with a registered prefix (``rg:<dataset>``: a reasoning-gym task) goes to that
    prefix's factory."""
    for prefix, make in TASK_PREFIXES.items():
        if name.startswith(prefix):
            return make(name, **kwargs)
    factory = TASKS.get(name)
    try:
        return factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"bad options for task {name!r}: {e}", where="task.kwargs",
                          fix="see `vapo.tasks.TASKS[name]` for the accepted options") from e


def task_from_config(task_cfg: Any) -> Task:
    """The task of a config's ``task`` section (``name``, ``kwargs``): what training, evaluation,
    the diagnostics and ``vapo compare`` all build."""
    return get_task(task_cfg.name, **task_cfg.kwargs)


def sample_problems(task: Task, rng: random.Random, n: int, split: str = "train") -> list[Problem]:
    """``n`` problems of ``split`` drawn in order from ``rng``: the one problem sampler (training
    prompts, the warm start's demonstrations, evaluation sets and the diagnostics' batches)."""
    return [task.sample(rng, split) for _ in range(n)]
