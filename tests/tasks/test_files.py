"""The file task: jsonl, parquet and saved datasets directories, field mapping, splits from files or a
seeded hash, verifiers, and errors that name the file and line or row."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

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
    assert t.score(half, "so\n#### $\\frac{1}{2}$").correct  # math-verify (the default verifier)
    assert t.score(half, "#### 1/2.").correct
    assert not t.score(half, "#### 1/3").correct and t.score(half, "1/2").reason == "no_marker"
    big = next(p for p in t.rows["heldout"] if p.prompt == "big")
    assert big.answer == "1234567" and big.size == 9 and t.score(big, "#### 1,234,567").correct
    assert "file" in t.describe() and t.splits["long"] == (1, 1)


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
        ('{"prompt": "a", "answer": "x\\n####  "}', "not one non-empty line"),
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
    with pytest.raises(DataError, match="unsupported file type"):
        FileTask(_write(tmp_path, ["a,b"], "data.csv"))
    with pytest.raises(DataError, match="no training rows"):
        FileTask(_write(tmp_path, [{"prompt": "a", "answer": 1, "split": "long"}], "long.jsonl"))


# ------------------------------------------------------------------------------ formats, mapping, splits
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def _gsm8k_rows(n=30):
    return [{"id": f"r{i}", "question": f"Sam has {i} pens and buys 2 more. How many pens?",
             "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}", "level": i % 3, "bucket": 1 + i % 4} for i in range(n)]


def test_example_files_jsonl_and_parquet_agree():
    kw = {"fields": {"prompt": "question"}}
    a = FileTask(EXAMPLES / "word_problems.jsonl", **kw)
    b = FileTask(EXAMPLES / "word_problems.parquet", **kw)
    assert sum(len(v) for v in a.rows.values()) == 40
    for s in ("train", "heldout"):
        assert [(p.prompt, p.answer, p.solution, p.size) for p in a.rows[s]] == [(p.prompt, p.answer, p.solution, p.size) for p in b.rows[s]]
    p = a.rows["train"][0]
    assert p.meta["id"].startswith("wp-") and p.meta["difficulty"] in (2, 3) and p.solution.endswith(f"#### {p.answer}")
    assert p.answer.lstrip("-").isdigit() and a.score(p, p.solution).correct
    assert "row" in b.rows["train"][0].meta["source"] and ".jsonl:" in p.meta["source"]


def test_field_mapping_gsm8k_answers_and_buckets(tmp_path):
    path = _write(tmp_path, _gsm8k_rows())
    t = FileTask(path, fields={"prompt": "question", "size": "bucket", "difficulty": "level"})
    p = next(p for s in ("train", "heldout") for p in t.rows[s] if p.meta["id"] == "r5")
    assert p.answer == "7" and p.solution == "5 + 2 = 7\n#### 7" and p.size == 2 and p.meta["difficulty"] == 2
    assert t.splits["train"] == (1, 4)


def test_seeded_split_is_stable_disjoint_and_seed_dependent(tmp_path):
    rows = _gsm8k_rows(300)
    p1 = _write(tmp_path, rows, "a.jsonl")
    p2 = _write(tmp_path, list(reversed(rows)), "b.jsonl")
    kw = {"fields": {"prompt": "question"}, "heldout_frac": 0.2}
    a, b, c = FileTask(p1, **kw), FileTask(p2, **kw), FileTask(p1, split_seed=1, **kw)
    held = {p.prompt for p in a.rows["heldout"]}
    assert held == {p.prompt for p in b.rows["heldout"]}  # order of rows does not matter
    assert held != {p.prompt for p in c.rows["heldout"]}  # the seed does
    assert not held & {p.prompt for p in a.rows["train"]} and 30 < len(held) < 90


def test_heldout_and_long_from_their_own_files(tmp_path):
    train = _write(tmp_path, _gsm8k_rows(10), "train.jsonl")
    held = _write(tmp_path, [{"question": "q?", "answer": "#### 3"}], "held.jsonl")
    long = _write(tmp_path, [{"question": "long q?", "answer": "9"}], "long.jsonl")
    t = FileTask(train, heldout_path=held, long_path=long, fields={"prompt": "question"})
    assert len(t.rows["train"]) == 10 and [p.prompt for p in t.rows["heldout"]] == ["q?"]
    assert [p.prompt for p in t.rows["long"]] == ["long q?"] and not t.fallback
    assert "heldout from" in t.describe()


def test_saved_datasets_directories(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the data extra (datasets) is not installed")
    rows = _gsm8k_rows(20)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    t = FileTask(tmp_path / "ds", fields={"prompt": "question"})
    assert sum(len(v) for v in t.rows.values()) == 20 and "ds row" in t.rows["train"][0].meta["source"]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:15]), "test": datasets.Dataset.from_list(rows[15:])})
    dd.save_to_disk(str(tmp_path / "dd"))
    t = FileTask(tmp_path / "dd", fields={"prompt": "question"})
    assert len(t.rows["train"]) == 15 and len(t.rows["heldout"]) == 5 and "[test]" in t.describe()
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        FileTask(tmp_path)  # a directory, but not a dataset


def test_missing_mapped_column_names_the_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(_gsm8k_rows(5)), path)
    with pytest.raises(DataError, match="no column 'prompt' for the 'prompt' field") as e:
        FileTask(path)
    assert "question" in str(e.value) and "task.kwargs.fields.prompt" in e.value.fix
    with pytest.raises(DataError, match="no column 'lvl'"):
        FileTask(path, fields={"prompt": "question", "difficulty": "lvl"})
    # jsonl: the first row without the field is named with its line
    with pytest.raises(DataError, match="'question'") as e:
        FileTask(_write(tmp_path, [{"question": "a", "answer": 1}, {"q": "b", "answer": 2}]), fields={"prompt": "question"})
    assert e.value.where.endswith(":2")


def test_bad_parquet_row_names_file_and_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _gsm8k_rows(5)
    rows[3]["answer"] = "   "
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match="must be one non-empty line") as e:
        FileTask(path, fields={"prompt": "question"})
    assert e.value.where == f"{path} row 4"


def test_verifier_choice(tmp_path, monkeypatch):
    path = _write(tmp_path, [{"prompt": f"q{i}", "answer": "1/2"} for i in range(20)])
    exact = FileTask(path, verifier="exact")
    mv = FileTask(path)
    p = exact.rows["train"][0]
    assert exact.score(p, "#### 1/2").correct and mv.score(p, "#### 1/2").correct
    assert not exact.score(p, "#### 0.5").correct and mv.score(p, "#### 0.5").correct
    with pytest.raises(ConfigError, match="unknown verifier"):
        FileTask(path, verifier="fuzzy")
    with pytest.raises(ConfigError, match="unknown field 'promt'"):
        FileTask(path, fields={"promt": "x"})
    monkeypatch.setitem(sys.modules, "math_verify", None)  # as if the math extra were not installed
    with pytest.raises(ConfigError, match="needs the math-verify package") as e:
        FileTask(path)
    assert "verifier=exact" in e.value.fix
    FileTask(path, verifier="exact")


def test_validate_task_reads_everything_before_a_run(tmp_path):
    from vapo.config import resolve_config
    from vapo.tasks.files import validate_task

    bad = _write(tmp_path, [{"prompt": "a", "answer": 1}, {"prompt": "b"}])
    cfg = resolve_config("vapo", None, ["task.name=file", f"task.kwargs.path={bad}"])
    with pytest.raises(DataError, match="answer") as e:
        validate_task(cfg)
    assert e.value.where == f"{bad}:2"
