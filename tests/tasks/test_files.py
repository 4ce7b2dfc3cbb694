"""The jsonl file task: loading, split handling, scoring, and errors that name file and line."""

from __future__ import annotations

import json
import random

import pytest

from vapo.errors import ConfigError, DataError
from vapo.tasks import FileTask, get_task, normalise_answer


def _write(tmp_path, rows, name="data.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


def test_loads_and_scores(tmp_path):
    rows = [{"prompt": f"{i}+{i}=", "answer": str(2 * i), "solution": f"{i}+{i}={2 * i}"} for i in range(200)]
    rows.append({"prompt": "what is half?", "answer": "1/2", "split": "long"})
    rows.append({"prompt": "big", "answer": 1234567, "split": "heldout", "size": 9})
    t = get_task("file", path=str(_write(tmp_path, rows)))
    assert isinstance(t, FileTask)
    assert len(t.rows["long"]) == 1 and t.rows["heldout"] and len(t.rows["train"]) + len(t.rows["heldout"]) == 201
    assert not {p.prompt for p in t.rows["train"]} & {p.prompt for p in t.rows["heldout"]}
    p = t.sample(random.Random(0), "train")
    assert p.solution.endswith(f"\n#### {p.answer}") and t.score(p, p.solution).correct
    half = t.sample(random.Random(0), "long")
    assert half.solution == "#### 1/2" and half.size == 1
    assert t.score(half, "so\n#### $\\frac{1}{2}$").correct == _has_math_verify()
    assert t.score(half, "#### 1/2.").correct
    assert not t.score(half, "#### 1/3").correct and t.score(half, "1/2").reason == "no_marker"
    big = next(p for p in t.rows["heldout"] if p.prompt == "big")
    assert big.answer == "1234567" and big.size == 9 and t.score(big, "#### 1,234,567").correct
    assert "file" in t.describe() and t.splits["long"] == (1, 1)


def _has_math_verify() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def test_long_falls_back_to_heldout(tmp_path):
    t = get_task("file", path=str(_write(tmp_path, [{"prompt": f"q{i}", "answer": i} for i in range(100)])))
    assert t.fallback == {"long": "heldout"} and "falls back" in t.describe()
    assert t.sample(random.Random(0), "long") in t.rows["heldout"]


def test_normalise_answer():
    assert normalise_answer("  \\boxed{ 12,345 }. ") == "12345"
    assert normalise_answer("$X + 1$") == "x + 1"
    assert normalise_answer("1,23") == "1,23"


@pytest.mark.parametrize(
    "bad_line,message",
    [
        ('{"prompt": "a", "answer": "1"', "invalid JSON"),
        ('["a", "1"]', "expected a JSON object"),
        ('{"answer": "1"}', "prompt"),
        ('{"prompt": "a"}', "answer"),
        ('{"prompt": "a", "answer": true}', "answer"),
        ('{"prompt": "a", "answer": "1", "solution": 5}', "solution"),
        ('{"prompt": "a", "answer": "1", "solution": "x\\n#### 2"}', "does not match"),
        ('{"prompt": "a", "answer": "1", "split": "dev"}', "unknown split"),
        ('{"prompt": "a", "answer": "1", "size": "big"}', "size"),
    ],
)
def test_errors_name_file_and_line(tmp_path, bad_line, message):
    p = _write(tmp_path, ['{"prompt": "ok", "answer": "1"}', "", bad_line])
    with pytest.raises(DataError, match=message) as e:
        FileTask(p)
    assert e.value.where == f"{p}:3"
    assert str(p) in str(e.value) and ":3" in str(e.value) and e.value.fix


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError):
        get_task("file")
    with pytest.raises(DataError, match="does not exist"):
        FileTask(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="no rows"):
        FileTask(_write(tmp_path, [""], "empty.jsonl"))
    with pytest.raises(DataError, match="unsupported"):
        FileTask(_write(tmp_path, ["a,b"], "data.csv"))
    with pytest.raises(DataError, match="no training rows"):
        FileTask(_write(tmp_path, [{"prompt": "a", "answer": 1, "split": "long"}], "long.jsonl"))
