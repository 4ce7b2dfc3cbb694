"""Tasks from a jsonl file: one problem per line, ``{"prompt": ..., "answer": ..., "solution": ...}``.

Fields (one JSON object per line; blank lines are skipped):
    prompt    (str, required)    the text given to the model
    answer    (str or number, required)   the reference final answer
    solution  (str, optional)    a full demonstration; "#### <answer>" is appended when it has
                                 no marker, and it must end in the same answer as ``answer``.
                                 Without one the demonstration is just "#### <answer>".
    split     (optional)         "train", "heldout" or "long"; rows without it are divided
                                 between train and heldout by a hash of the prompt.
    size      (int, optional)    length bucket; default: the number of lines of the solution.

Malformed rows raise :class:`DataError` naming the file and line. When the file has no "long"
rows, the "long" split falls back to the held-out rows (and ``describe()`` says so).

Scoring reads the text after the last ``####`` and compares it with the answer after
normalisation (whitespace, case, a trailing period, surrounding ``$``, ``\\boxed{}``,
thousands separators). If that fails and ``math_verify`` is installed (``pip install
vapo[math]``), it decides mathematical equivalence (``1/2`` = ``0.5`` = ``\\frac{1}{2}``).
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from pathlib import Path

from vapo.errors import ConfigError, DataError, VapoError
from vapo.tasks.base import (
    MARKER,
    SPLITS,
    Problem,
    Reward,
    check_split,
    final_answer,
    is_heldout,
    register_task,
)


def normalise_answer(s: str) -> str:
    """Canonical form for exact-match comparison (see the module docstring)."""
    prev = None
    while s != prev:  # peel wrappers until nothing changes: "$\\boxed{12}$." -> "12"
        prev, s = s, s.strip().rstrip(".").strip()
        m = re.fullmatch(r"\\boxed\{(.*)\}", s, flags=re.S)
        if m:
            s = m.group(1)
        if len(s) >= 2 and s[0] == "$" and s[-1] == "$":
            s = s[1:-1]
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    return " ".join(s.split()).lower()


def _math_equal(gold: str, pred: str) -> bool:
    """math_verify's equivalence; False when it is not installed or fails in any way."""
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    main = threading.current_thread() is threading.main_thread()  # its timeouts use SIGALRM
    timeout = 5 if main else None
    logger = logging.getLogger("math_verify")
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        g = parse(gold, parsing_timeout=timeout)
        p = parse(pred, parsing_timeout=timeout)
        return bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=timeout))
    except Exception:
        return False
    finally:
        logger.setLevel(level)


@register_task("file")
class FileTask:
    """Problems read from a jsonl file; answers checked by normalised exact match, then math_verify."""

    name = "file"

    def __init__(self, path: str | Path | None = None, heldout_frac: float = 0.1, math_verify: bool = True):
        if path is None:
            raise ConfigError("the file task needs a path", where="task.kwargs.path",
                              fix="set task.kwargs.path to a jsonl file with prompt/answer fields")
        if not 0.0 < heldout_frac < 1.0:
            raise ConfigError(f"heldout_frac must be in (0, 1), got {heldout_frac}", where="task.kwargs.heldout_frac",
                              fix="e.g. heldout_frac: 0.1")
        self.path = Path(path)
        self.heldout_frac = float(heldout_frac)
        self.use_math_verify = bool(math_verify)
        self.rows: dict[str, list[Problem]] = {s: [] for s in SPLITS}
        self._load()
        self.fallback: dict[str, str] = {}
        if not self.rows["train"]:
            raise DataError("the file has no training rows", where=str(self.path),
                            fix="add rows without a 'split' field or with \"split\": \"train\"")
        if not self.rows["heldout"]:
            self.fallback["heldout"] = "train"
        if not self.rows["long"]:
            self.fallback["long"] = "heldout" if self.rows["heldout"] else "train"

    # ------------------------------------------------------------------ loading
    def _load(self) -> None:
        p = self.path
        if not p.is_file():
            raise DataError(f"{p} does not exist or is not a file", where="task.kwargs.path",
                            fix="point task.kwargs.path at a jsonl file")
        if p.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
            raise DataError(f"unsupported file type {p.suffix!r} (only jsonl is read for now)", where=str(p),
                            fix="convert it to jsonl, one {\"prompt\": ..., \"answer\": ...} object per line")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"not UTF-8 text: {e}", where=str(p), fix="save the file as UTF-8") from e
        n = 0
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            prob = self._parse_row(line, f"{p}:{lineno}")
            self.rows[prob.split].append(prob)
            n += 1
        if n == 0:
            raise DataError("the file has no rows", where=str(p), fix="add one JSON object per line with prompt and answer")

    def _parse_row(self, line: str, where: str) -> Problem:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", where=where,
                            fix="each line must be one JSON object, e.g. {\"prompt\": \"2+2=\", \"answer\": \"4\"}") from e
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", where=where,
                            fix="each line must be one JSON object with prompt and answer fields")
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise DataError("missing or empty 'prompt' (must be a non-empty string)", where=where,
                            fix="add \"prompt\": \"...\" to this row")
        answer = row.get("answer")
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise DataError(f"missing or invalid 'answer' (got {type(answer).__name__}; need a string or number)",
                            where=where, fix="add \"answer\": \"...\" to this row")
        answer = str(answer).strip()
        if not answer or MARKER in answer or "\n" in answer:
            raise DataError(f"'answer' {answer!r} must be one non-empty line without {MARKER!r}", where=where,
                            fix="put only the final answer in 'answer' and the working in 'solution'")
        solution = row.get("solution")
        if solution is None:
            solution = f"{MARKER} {answer}"
        elif not isinstance(solution, str):
            raise DataError(f"'solution' must be a string, got {type(solution).__name__}", where=where,
                            fix="remove it or make it the full worked solution text")
        elif MARKER not in solution:
            solution = f"{solution.rstrip()}\n{MARKER} {answer}"
        else:
            parsed, _ = final_answer(solution)
            if parsed is None or not self._matches(answer, parsed):
                raise DataError(f"the solution's final answer {parsed!r} does not match 'answer' {answer!r}",
                                where=where, fix=f"end the solution with '{MARKER} {answer}'")
        split = row.get("split")
        if split is None:
            split = "heldout" if is_heldout(f"file:{self.path.name}", prompt, self.heldout_frac) else "train"
        elif split not in SPLITS:
            raise DataError(f"unknown split {split!r}", where=where, fix=f"use one of {', '.join(SPLITS)} or leave it out")
        size = row.get("size", max(1, solution.count("\n") + 1))
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DataError(f"'size' must be a non-negative integer, got {size!r}", where=where,
                            fix="remove it (the solution's line count is used) or give an integer")
        meta = {k: v for k, v in row.items() if k not in ("prompt", "answer", "solution", "split", "size")}
        return Problem(prompt, answer, solution, size, split, meta)

    # ------------------------------------------------------------------ Task protocol
    @property
    def splits(self) -> dict[str, tuple[int, int]]:
        out = {}
        for s in SPLITS:
            rows = self.rows[self.fallback.get(s, s)]
            sizes = [r.size for r in rows] or [0]
            out[s] = (min(sizes), max(sizes))
        return out

    def sample(self, rng: random.Random, split: str = "train") -> Problem:
        """A row of ``split`` chosen uniformly (an empty split uses its fallback, see the module doc)."""
        check_split(split, where=f"{self.name}.sample(split=...)")
        rows = self.rows[self.fallback.get(split, split)]
        if not rows:
            raise VapoError(f"no rows for split {split!r}", where=str(self.path), fix="add rows for it")
        return rows[rng.randrange(len(rows))]

    def _matches(self, answer: str, parsed: str) -> bool:
        if normalise_answer(parsed) == normalise_answer(answer):
            return True
        return self.use_math_verify and _math_equal(answer, parsed)

    def score(self, problem: Problem, response_text: str) -> Reward:
        """1 when the text after the last marker matches the answer (normalised, or math_verify);
        0 with a reason otherwise. Never raises."""
        try:
            parsed, why = final_answer(response_text)
            if why != "ok":
                return Reward(0.0, False, parsed, why)
            if self._matches(problem.answer, parsed):
                return Reward(1.0, True, parsed, "correct")
            return Reward(0.0, False, parsed, "wrong_answer")
        except Exception:
            return Reward(0.0, False, None, "malformed_answer")

    def describe(self) -> str:
        counts = ", ".join(f"{s} {len(self.rows[s])}" for s in SPLITS)
        fb = "".join(f"; {s} falls back to {t}" for s, t in self.fallback.items())
        mv = "on" if self.use_math_verify else "off"
        return f"file: {self.path} ({counts} rows{fb}); exact match after normalisation, math_verify {mv}"
