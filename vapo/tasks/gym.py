"""reasoning-gym tasks: ``--task rg:<name>`` (or ``task.name=rg`` with ``task.kwargs.dataset``).

reasoning-gym (``pip install 'vapo[gym]'``) generates verifiable problems for about a hundred
tasks (arithmetic, algebra, logic, puzzles, ...) and scores an answer with each task's own
``score_answer``. Here:

    train     ``size`` problems drawn with ``seed`` (and the options in ``config``)
    heldout   ``heldout_size`` problems drawn with another seed, minus any whose question is
              also a training question
    long      ``long_size`` problems with the options in ``long_config`` (e.g. more terms) when
              it is given; otherwise the held-out problems (``describe()`` says so)

The prompt is the question followed by ``instruction`` (how to mark the final answer); the
reward is the dataset's own score of the text after the response's last ``####`` (in [0, 1];
correct when it is 1). ``size_key`` names a metadata field that serves as the length bucket
(e.g. "num_terms" for basic_arithmetic); without it every problem has size 1.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import sys
import time
from typing import Any

from vapo.cache import cache_root
from vapo.errors import ConfigError, did_you_mean
from vapo.tasks.base import (
    MARKER,
    SPLITS,
    Problem,
    Reward,
    check_split,
    final_answer,
    register_task,
    register_task_prefix,
)

PREFIX = "rg:"
SEED_GAP = 1_000_003
DEFAULT_INSTRUCTION = f"\nGive only the final answer on the last line, after '{MARKER} '."
CACHE_AFTER_S = 5.0  # a build that takes longer is cached under <cache>/gym (what was generated, not the scorer)


def _say(text: str) -> None:
    print(f"[vapo] {text}", file=sys.stderr, flush=True)


def _reasoning_gym() -> Any:
    try:
        import reasoning_gym  # optional extra: vapo[gym]
    except ImportError as e:
        raise ConfigError("reasoning-gym tasks need the reasoning-gym package", where="task.name",
                          fix="pip install 'vapo[gym]'") from e
    return reasoning_gym


def dataset_names() -> list[str]:
    """The names reasoning-gym can generate (what ``rg:<name>`` accepts)."""
    return sorted(_reasoning_gym().factory.DATASETS)


@register_task("rg")
class GymTask:
    """A reasoning-gym dataset as a vapo task (see the module docstring)."""

    def __init__(self, dataset: str | None = None, size: int = 1000, heldout_size: int = 200, seed: int = 0,
                 config: dict[str, Any] | None = None, long_config: dict[str, Any] | None = None, long_size: int = 200,
                 instruction: str = DEFAULT_INSTRUCTION, size_key: str | None = None):
        if dataset is not None:  # importing reasoning-gym and generating its problems can take a while
            _say(f"building reasoning-gym task {PREFIX}{dataset} ...")
        rg = _reasoning_gym()
        if dataset is None:
            raise ConfigError("the rg task needs a dataset name", where="task.kwargs.dataset",
                              fix="use --task rg:<name>, e.g. --task rg:basic_arithmetic")
        names = dataset_names()
        if dataset not in names:
            raise ConfigError(f"unknown reasoning-gym dataset {dataset!r}.{did_you_mean(dataset, names)}",
                              where="task.name", fix=f"use one of: {', '.join(names)}")
        for label, n in (("size", size), ("heldout_size", heldout_size), ("long_size", long_size)):
            if not isinstance(n, int) or n < 1:
                raise ConfigError(f"{label} must be a positive integer, got {n!r}", where=f"task.kwargs.{label}",
                                  fix=f"e.g. {label}: 200")
        self.name = PREFIX + dataset
        self.dataset_name = dataset
        self.instruction = instruction
        self.size_key = size_key
        self.datasets: dict[str, Any] = {}
        self.rows: dict[str, list[Problem]] = {s: [] for s in SPLITS}
        self.fallback: dict[str, str] = {}
        # reasoning-gym draws item i from Random(seed + i): far-apart seeds keep the splits' items distinct
        plans = [("train", size, seed, config or {}), ("heldout", heldout_size, seed + SEED_GAP, config or {})]
        if long_config is not None:
            plans.append(("long", long_size, seed + 2 * SEED_GAP, {**(config or {}), **long_config}))
        else:
            self.fallback["long"] = "heldout"
        ident = json.dumps([dataset, plans, instruction, size_key, getattr(rg, "__version__", "?")], sort_keys=True,
                           default=repr)
        cached = cache_root() / "gym" / f"{dataset}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}.pkl"
        t0 = time.perf_counter()
        for split, n, s, opts in plans:
            try:
                self.datasets[split] = rg.create_dataset(dataset, size=n, seed=s, **opts)
            except Exception as e:  # reasoning-gym validates its own options with asserts/TypeErrors
                key = "long_config" if split == "long" else "config"
                raise ConfigError(f"reasoning-gym could not build {dataset!r} for the {split} split: "
                                  f"{type(e).__name__}: {e}", where=f"task.kwargs.{key}",
                                  fix=f"check the options of reasoning_gym's {dataset} config") from e
        if cached.is_file():
            try:
                self.rows = pickle.loads(cached.read_bytes())
                _say(f"{self.name}: problems loaded from the cache {cached}")
            except Exception:  # a damaged or foreign cache file: generate again
                self.rows = {s: [] for s in SPLITS}
        if not any(self.rows.values()):
            _say(f"{self.name}: generating " + ", ".join(f"{n} {split}" for split, n, _, _ in plans) + " problems")
            self._generate(plans)
            took = time.perf_counter() - t0
            note = ""
            if took > CACHE_AFTER_S:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".tmp{time.time_ns()}")
                tmp.write_bytes(pickle.dumps(self.rows))
                tmp.replace(cached)
                note = f"; cached in {cached}"
            _say(f"{self.name}: built in {took:.0f} s{note}")
        if not self.rows["heldout"]:
            raise ConfigError("every held-out problem is also a training problem", where="task.kwargs",
                              fix="this dataset has few distinct problems: lower size or raise the difficulty in config")

    def _generate(self, plans: list[tuple[str, int, int, dict[str, Any]]]) -> None:
        seen: set[str] = set()
        for split, _, _, _ in plans:
            ds = self.datasets[split]
            for i in range(len(ds)):
                entry = ds[i]
                q = entry["question"]
                if split == "train":
                    seen.add(q)
                elif split == "heldout" and q in seen:
                    continue
                self.rows[split].append(self._problem(entry, split, i))

    def _problem(self, entry: dict[str, Any], split: str, index: int) -> Problem:
        answer = str(entry["answer"]).strip()
        size = 1
        if self.size_key is not None:
            v = entry.get("metadata", {}).get(self.size_key)
            if isinstance(v, int) and not isinstance(v, bool):
                size = v
            else:
                raise ConfigError(f"metadata field {self.size_key!r} is not an integer in {self.dataset_name} (got {v!r})",
                                  where="task.kwargs.size_key",
                                  fix=f"use an integer field of: {', '.join(sorted(entry.get('metadata', {})))}")
        return Problem(entry["question"] + self.instruction, answer, f"{MARKER} {answer}", size, split,
                       {"entry": entry, "source": f"{self.name} {split} #{index}", "dataset_split": split})

    @property
    def splits(self) -> dict[str, tuple[int, int]]:
        out = {}
        for s in SPLITS:
            sizes = [p.size for p in self.rows[self.fallback.get(s, s)]]
            out[s] = (min(sizes), max(sizes))
        return out

    def sample(self, rng: random.Random, split: str = "train") -> Problem:
        check_split(split, where=f"{self.name}.sample(split=...)")
        rows = self.rows[self.fallback.get(split, split)]
        return rows[rng.randrange(len(rows))]

    def score(self, problem: Problem, response_text: str) -> Reward:
        """The dataset's own score of the text after the last ``####``; never raises."""
        try:
            parsed, why = final_answer(response_text)
            if why != "ok":
                return Reward(0.0, False, parsed, why)
            ds = self.datasets[problem.meta["dataset_split"]]
            score = float(ds.score_answer(answer=parsed, entry=problem.meta["entry"]))
            score = min(max(score, 0.0), 1.0)
            return Reward(score, score >= 1.0, parsed, "correct" if score >= 1.0 else "wrong_answer")
        except Exception:
            return Reward(0.0, False, None, "malformed_answer")

    def describe(self) -> str:
        counts = ", ".join(f"{s} {len(self.rows[s])}" for s in SPLITS)
        fb = "".join(f"; {s} falls back to {t}" for s, t in self.fallback.items())
        return f"{self.name}: reasoning-gym {self.dataset_name} ({counts} problems{fb}); scored by its score_answer"


@register_task_prefix(PREFIX)
def make_gym_task(name: str, **kwargs: Any) -> GymTask:
    """``rg:<dataset>`` → :class:`GymTask` (the form ``--task rg:<name>`` takes)."""
    if not name.startswith(PREFIX) or len(name) == len(PREFIX):
        raise ConfigError(f"{name!r} is not of the form rg:<dataset>", where="task.name", fix="e.g. rg:basic_arithmetic")
    if "dataset" in kwargs:
        raise ConfigError("task.kwargs.dataset conflicts with the dataset named in task.name", where="task.kwargs.dataset",
                          fix="name the dataset once: --task rg:<name>")
    return GymTask(dataset=name[len(PREFIX):], **kwargs)
