"""Tasks from data files: jsonl, parquet, or a directory saved with ``datasets`` (``save_to_disk``).

Options (``task.kwargs`` of ``task.name=file``):
    path           the training data: ``.jsonl``/``.json``/``.ndjson`` (one JSON object per line),
                   ``.parquet``, or a ``datasets`` directory (a Dataset, or a DatasetDict whose
                   "train" split is read, and whose "test" or "validation" split, if any, is the
                   held-out data unless ``heldout_path`` is given).
    heldout_path   held-out data in any of those formats (optional; else a seeded split of ``path``).
    long_path      data for the "long" split (optional; else it falls back to held-out).
    fields         column names of the fields below, e.g. ``{prompt: question, size: bucket}``;
                   a field not mapped is read from the column of its own name.
    heldout_frac   share of ``path``'s rows held out when there is no ``heldout_path`` (0.1).
    split_seed     seed of that split (0): a row is held out when a hash of (seed, prompt) says so,
                   so the split does not depend on the order of the rows.
    verifier       "math_verify" (default: normalised exact match, then math-verify's equivalence,
                   e.g. ``1/2`` = ``0.5`` = ``\\frac{1}{2}``) or "exact" (normalised exact match only).
    (How long one answer's verification may take is the run's one setting ``task.verify_timeout``,
    enforced around every verifier call by vapo.tasks.guard; ``task.kwargs.verify_timeout`` is
    refused.)

Fields of a row:
    prompt      (str, required)  the text given to the model
    answer      (str or number, required)  the reference final answer. A text containing
                "####" is a worked solution in the GSM8K convention: the answer is what follows
                the last "####" and the whole text is the demonstration.
    solution    (str, optional)  a full demonstration; "#### <answer>" is appended when it has no
                marker, and it must end in the same answer. Without one: "#### <answer>".
    split       (optional)  "train", "heldout" or "long"; overrides the seeded split.
    size        (int, optional)  the length bucket; default: the number of lines of the solution.
    id, difficulty  (optional)  kept in ``Problem.meta``.

Every bad row raises :class:`DataError` naming the file and the line (jsonl) or row (parquet,
datasets); a mapped column missing from a whole table is named with the columns it has.

Scoring reads the text after the last ``####`` and compares it with the answer after
normalisation (whitespace, case, a trailing period, surrounding ``$``, ``\\boxed{}``, thousands
separators), then with math-verify when ``verifier`` is "math_verify".
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
from pathlib import Path
from typing import Any

from vapo.errors import ConfigError, DataError, VapoError, did_you_mean
from vapo.tasks.base import (
    MARKER,
    SPLITS,
    Problem,
    Reward,
    check_split,
    final_answer,
    is_heldout,
    register_task,
    task_from_config,
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


def _math_equal(gold: str, pred: str, timeout: float | None = 5.0) -> bool:
    """math_verify's equivalence within ``timeout`` seconds; False when it fails in any way."""
    from math_verify import parse, verify  # optional extra: vapo[math]

    main = threading.current_thread() is threading.main_thread()  # its timeouts use SIGALRM
    t = max(1, round(timeout)) if (main and timeout) else None
    logger = logging.getLogger("math_verify")
    level = logger.level
    try:
        logger.setLevel(logging.ERROR)
        g = parse(gold, parsing_timeout=t)
        p = parse(pred, parsing_timeout=t)
        return bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=t))
    except Exception:
        return False
    finally:
        logger.setLevel(level)


FIELDS = ("prompt", "answer", "solution", "split", "size", "id", "difficulty")
VERIFIERS = ("math_verify", "exact")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def read_rows(path: str | Path, *, where: str = "task.kwargs.path") -> tuple[list[tuple[str, Any]], list[str] | None, dict[str, Any]]:
    """The raw rows of a data file as ``(location, row)`` pairs, the table's column names (None for
    jsonl, whose rows may differ) and, for a ``datasets`` DatasetDict, its other splits by name
    (its "train" split gives the rows).

    Locations are ``file:line`` for jsonl and ``file row N`` (1-based) otherwise.
    """
    p = Path(path)
    if p.is_dir():
        return _read_datasets_dir(p, where)
    if not p.is_file():
        raise DataError(f"{p} does not exist", where=where,
                        fix="point it at a .jsonl or .parquet file or a directory saved with datasets' save_to_disk")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional extra: vapo[data]
        except ImportError as e:
            raise ConfigError("reading parquet needs pyarrow", where=where, fix="pip install 'vapo[data]'") from e
        try:
            table = pq.read_table(p)
        except Exception as e:
            raise DataError(f"not a readable parquet file: {type(e).__name__}: {e}", where=str(p),
                            fix="re-write it with pyarrow or pandas (to_parquet)") from e
        return [(f"{p} row {i + 1}", r) for i, r in enumerate(table.to_pylist())], list(table.column_names), {}
    if suffix not in JSONL_SUFFIXES:
        raise DataError(f"unsupported file type {p.suffix!r}", where=str(p),
                        fix="use jsonl (one {\"prompt\": ..., \"answer\": ...} object per line), parquet, "
                            "or a directory saved with datasets' save_to_disk")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text: {e}", where=str(p), fix="save the file as UTF-8") from e
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        loc = f"{p}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg} at column {e.colno})", where=loc,
                            fix="each line must be one JSON object, e.g. {\"prompt\": \"2+2=\", \"answer\": \"4\"}") from e
        rows.append((loc, row))
    return rows, None, {}


def _read_datasets_dir(p: Path, where: str) -> tuple[list[tuple[str, Any]], list[str], dict[str, Any]]:
    try:
        import datasets  # optional extra: vapo[data]
    except ImportError as e:
        raise ConfigError(f"{p} is a directory: reading a saved dataset needs the datasets package", where=where,
                          fix="pip install 'vapo[data]', or point the path at a .jsonl/.parquet file") from e
    try:
        ds = datasets.load_from_disk(str(p))
    except Exception as e:
        raise DataError(f"not a dataset saved with save_to_disk: {type(e).__name__}: {e}", where=str(p),
                        fix="save it with Dataset.save_to_disk(dir) or DatasetDict.save_to_disk(dir)") from e
    others: dict[str, Any] = {}
    label = str(p)
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise DataError(f"the DatasetDict has no 'train' split (splits: {', '.join(ds)})", where=str(p),
                            fix="name the training split 'train'")
        others = {k: v for k, v in ds.items() if k != "train"}
        ds, label = ds["train"], f"{p} [train]"
    return [(f"{label} row {i + 1}", r) for i, r in enumerate(ds)], list(ds.column_names), others


@register_task("file")
class FileTask:
    """Problems read from data files (see the module docstring for the options)."""

    name = "file"

    def __init__(self, path: str | Path | None = None, heldout_path: str | Path | None = None,
                 long_path: str | Path | None = None, fields: dict[str, str] | None = None,
                 heldout_frac: float = 0.1, split_seed: int = 0, verifier: str = "math_verify",
                 verify_timeout: float | None = None):
        if path is None:
            raise ConfigError("the file task needs a path", where="task.kwargs.path",
                              fix="set task.kwargs.path to a .jsonl or .parquet file or a saved datasets directory")
        if not 0.0 < heldout_frac < 1.0:
            raise ConfigError(f"heldout_frac must be in (0, 1), got {heldout_frac}", where="task.kwargs.heldout_frac",
                              fix="e.g. heldout_frac: 0.1")
        fields = dict(fields or {})
        for k, v in fields.items():
            if k not in FIELDS:
                raise ConfigError(f"unknown field {k!r} in the field mapping.{did_you_mean(k, FIELDS)}",
                                  where="task.kwargs.fields", fix=f"map any of: {', '.join(FIELDS)}")
            if not isinstance(v, str) or not v:
                raise ConfigError(f"the column for {k!r} must be a non-empty string, got {v!r}",
                                  where=f"task.kwargs.fields.{k}", fix="give the column name in the data")
        if verifier not in VERIFIERS:
            raise ConfigError(f"unknown verifier {verifier!r}.{did_you_mean(str(verifier), VERIFIERS)}",
                              where="task.kwargs.verifier", fix=f"use one of: {', '.join(VERIFIERS)}")
        if verifier == "math_verify":
            try:
                import math_verify  # noqa: F401  (optional extra: vapo[math])
            except ImportError as e:
                raise ConfigError("verifier 'math_verify' needs the math-verify package", where="task.kwargs.verifier",
                                  fix="pip install 'vapo[math]', or set task.kwargs.verifier=exact") from e
        if verify_timeout is not None and not verify_timeout > 0:
            raise ConfigError(f"verify_timeout must be > 0, got {verify_timeout}", where="task.kwargs.verify_timeout",
                              fix="e.g. verify_timeout: 5")
        self.path = Path(path)
        self.fields = {k: fields.get(k, k) for k in FIELDS}
        self.mapped = set(fields)
        self.heldout_frac = float(heldout_frac)
        self.split_seed = int(split_seed)
        self.verifier = verifier
        # math-verify's own per-call timeouts (None: none; the guard's task.verify_timeout bounds the call)
        self.verify_timeout = None if verify_timeout is None else float(verify_timeout)
        self.sources: dict[str, str] = {}
        self.rows: dict[str, list[Problem]] = {s: [] for s in SPLITS}
        rows, columns, extra = read_rows(self.path, where="task.kwargs.path")
        held = None if heldout_path is not None else next((k for k in ("test", "validation") if k in extra), None)
        if not rows:
            raise DataError("the file has no rows", where=str(self.path),
                            fix="add one row (JSON object) per problem with prompt and answer fields")
        # rows without a split field: all train when held-out data comes from elsewhere, else the seeded split
        self._add_rows(rows, columns, "train" if heldout_path is not None or held is not None else None)
        if heldout_path is not None:
            self._load(Path(heldout_path), "task.kwargs.heldout_path", default_split="heldout")
            self.sources["heldout"] = str(heldout_path)
        elif held is not None:
            self._add_rows([(f"{self.path} [{held}] row {i + 1}", r) for i, r in enumerate(extra[held])],
                           list(extra[held].column_names), "heldout")
            self.sources["heldout"] = f"{self.path} [{held}]"
        if long_path is not None:
            self._load(Path(long_path), "task.kwargs.long_path", default_split="long")
            self.sources["long"] = str(long_path)
        self.fallback: dict[str, str] = {}
        if not self.rows["train"]:
            raise DataError("the data has no training rows", where=str(self.path),
                            fix="add rows without a 'split' field or with \"split\": \"train\"")
        if not self.rows["heldout"]:
            self.fallback["heldout"] = "train"
        if not self.rows["long"]:
            self.fallback["long"] = "heldout" if self.rows["heldout"] else "train"

    # ------------------------------------------------------------------ loading
    def _load(self, path: Path, where: str, default_split: str) -> None:
        rows, columns, _ = read_rows(path, where=where)
        if not rows:
            raise DataError("the file has no rows", where=str(path),
                            fix="add one row (JSON object) per problem with prompt and answer fields")
        self._add_rows(rows, columns, default_split)

    def _add_rows(self, rows: list[tuple[str, Any]], columns: list[str] | None, default_split: str | None) -> None:
        if columns is not None:
            need = ["prompt", "answer"] + sorted(self.mapped - {"prompt", "answer"})
            for f in need:
                if self.fields[f] not in columns:
                    src = rows[0][0].rsplit(" row ", 1)[0]
                    raise DataError(f"no column {self.fields[f]!r} for the {f!r} field (columns: {', '.join(columns)})",
                                    where=src, fix=f"map it with task.kwargs.fields.{f}=<column>")
        for where, row in rows:
            prob = self._parse_row(row, where, default_split)
            self.rows[prob.split].append(prob)

    def _get(self, row: dict[str, Any], field: str) -> Any:
        return row.get(self.fields[field])

    def _parse_row(self, row: Any, where: str, default_split: str | None) -> Problem:
        f = self.fields
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", where=where,
                            fix="each line must be one JSON object with prompt and answer fields")
        mapping_fix = " (or map the column with task.kwargs.fields)"
        prompt = self._get(row, "prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"missing or empty {f['prompt']!r} (the prompt; must be a non-empty string)", where=where,
                            fix=f"add \"{f['prompt']}\": \"...\" to this row" + mapping_fix)
        answer = self._get(row, "answer")
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise DataError(f"missing or invalid {f['answer']!r} (the answer; got {type(answer).__name__}, need a string or number)",
                            where=where, fix=f"add \"{f['answer']}\": \"...\" to this row" + mapping_fix)
        answer = str(answer).strip()
        solution = self._get(row, "solution")
        if MARKER in answer:  # GSM8K convention: a worked solution ending in "#### <answer>"
            worked = answer
            answer, why = final_answer(worked)
            if why != "ok" or "\n" in answer:
                raise DataError(f"the answer's text after the last {MARKER!r} is {answer!r}: not one non-empty line",
                                where=where, fix=f"end the worked answer with '{MARKER} <final answer>'")
            if solution is None:
                solution = worked
        if not answer or "\n" in answer:
            raise DataError(f"{f['answer']!r} {answer!r} must be one non-empty line", where=where,
                            fix="put only the final answer in the answer field and the working in 'solution'")
        if solution is None:
            solution = f"{MARKER} {answer}"
        elif not isinstance(solution, str):
            raise DataError(f"{f['solution']!r} must be a string, got {type(solution).__name__}", where=where,
                            fix="remove it or make it the full worked solution text")
        elif MARKER not in solution:
            solution = f"{solution.rstrip()}\n{MARKER} {answer}"
        else:
            parsed, _ = final_answer(solution)
            if parsed is None or not self._matches(answer, parsed):
                raise DataError(f"the solution's final answer {parsed!r} does not match the answer {answer!r}",
                                where=where, fix=f"end the solution with '{MARKER} {answer}'")
        split = self._get(row, "split")
        if split is None:
            split = default_split or ("heldout" if is_heldout(f"file:{self.split_seed}", prompt, self.heldout_frac) else "train")
        elif split not in SPLITS:
            raise DataError(f"unknown split {split!r}", where=where, fix=f"use one of {', '.join(SPLITS)} or leave it out")
        size = self._get(row, "size")
        if size is None:
            size = max(1, solution.count("\n") + 1)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DataError(f"{f['size']!r} (the length bucket) must be a non-negative integer, got {size!r}", where=where,
                            fix="remove it (the solution's line count is used) or give an integer")
        used = {f[k] for k in ("prompt", "answer", "solution", "split", "size")}
        meta = {k: v for k, v in row.items() if k not in used}
        for k in ("id", "difficulty"):
            if f[k] in row:
                meta[k] = row[f[k]]
        meta["source"] = where
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
        return self.verifier == "math_verify" and _math_equal(answer, parsed, self.verify_timeout)

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
        src = "".join(f"; {s} from {v}" for s, v in self.sources.items())
        fb = "".join(f"; {s} falls back to {t}" for s, t in self.fallback.items())
        limit = "" if self.verify_timeout is None else f" ({self.verify_timeout:g} s timeout)"
        how = "normalised exact match" + (f", then math-verify{limit}" if self.verifier == "math_verify" else "")
        held = "" if "heldout" in self.sources else f"; held out: {self.heldout_frac:.0%} by seeded hash (split_seed {self.split_seed})"
        return f"file: {self.path} ({counts} rows{src}{held}{fb}); {how}"


def validate_task(cfg: Any) -> Any:
    """Build the task of ``cfg.task`` (reading and checking all its data) or raise a VapoError
    naming the file and row; call it before creating a run directory."""
    return task_from_config(cfg.task)
