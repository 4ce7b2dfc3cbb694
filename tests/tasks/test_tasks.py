"""Procedural tasks: determinism, split disjointness, chain-of-thought length spread, and a strict
verifier that accepts every demonstration and never raises."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.errors import ConfigError, VapoError
from vapo.tasks import (
    DEFAULT_TASK,
    SPLITS,
    TASKS,
    Problem,
    ProceduralTask,
    Reward,
    Task,
    get_task,
    register_task,
    sample_problems,
    score_integer_answer,
)

PROCEDURAL = ["running_sum", "addition", "multiply"]
ALLOWED = set(chr(i) for i in range(32, 127)) | {"\n"}


@pytest.fixture(scope="module", params=PROCEDURAL)
def task(request):
    return get_task(request.param)


@pytest.fixture(scope="module")
def samples(task):
    rng = random.Random(1234)
    return {s: sample_problems(task, rng, 400, s) for s in SPLITS}


def test_registry_and_default():
    assert set(PROCEDURAL) <= set(TASKS) and "file" in TASKS
    assert DEFAULT_TASK in PROCEDURAL
    with pytest.raises(VapoError, match="running_sum"):
        get_task("running_sun")
    with pytest.raises(ConfigError):
        get_task("addition", no_such_option=1)
    with pytest.raises(ConfigError):
        get_task("addition", train_sizes=[5, 12], long_sizes=[10, 14])


def test_protocol_and_describe(task):
    assert isinstance(task, Task)
    assert task.name in task.describe()
    assert set(task.splits) == set(SPLITS)


def test_deterministic_given_seed(task):
    for split in SPLITS:
        a = sample_problems(task, random.Random(7), 30, split)
        b = sample_problems(task, random.Random(7), 30, split)
        c = sample_problems(task, random.Random(8), 30, split)
        assert a == b and a != c
        assert [p.meta for p in a] == [p.meta for p in b]


def test_split_disjoint_and_sizes(task, samples):
    train = {p.prompt for p in samples["train"]}
    heldout = {p.prompt for p in samples["heldout"]}
    assert not train & heldout
    # exhaustive check on the smallest size, where collisions would be most likely
    lo = task.splits["train"][0]
    small_train = {p.prompt for p in samples["train"] if p.size == lo}
    small_held = {p.prompt for p in samples["heldout"] if p.size == lo}
    assert small_train and small_held and not small_train & small_held
    tr_lo, tr_hi = task.splits["train"]
    assert task.splits["heldout"] == task.splits["train"]
    assert task.splits["long"][0] > tr_hi
    for split, probs in samples.items():
        lo, hi = task.splits[split]
        assert all(p.split == split and lo <= p.size <= hi for p in probs)
    assert {p.size for p in samples["train"]} == set(range(tr_lo, tr_hi + 1))
    assert min(len(p.solution) for p in samples["long"]) > 0.8 * max(len(p.solution) for p in samples["train"])


def test_length_spread_and_alphabet(task, samples):
    lens = [len(p.solution) for p in samples["train"]]
    assert max(lens) >= 5 * min(lens), (min(lens), max(lens))
    assert max(lens) <= 125 and 12 <= min(lens) <= 25
    assert max(len(p.solution) for p in samples["long"]) <= 200
    for probs in samples.values():
        for p in probs:
            assert set(p.prompt) <= ALLOWED and set(p.solution) <= ALLOWED
            assert p.solution.endswith(f"\n#### {p.answer}")


def test_solutions_are_correct_and_score_one(task, samples):
    for probs in samples.values():
        for p in probs:
            r = task.score(p, p.solution)
            assert r == Reward(1.0, True, p.answer, "correct")
            assert task.score(p, p.solution + "\n  ").correct  # trailing whitespace is fine
    # the answers are what the arithmetic says, independently of the chain of thought
    for p in samples["train"][:100]:
        expr = p.prompt.rstrip("=")
        assert int(p.answer) == eval(expr, {"__builtins__": {}})  # prompts are plain +,-,* arithmetic


def test_chain_of_thought_lines_are_true_equations(task, samples):
    for p in samples["train"][:200]:
        *steps, last = p.solution.split("\n")
        assert last == f"#### {p.answer}" and len(steps) >= 1
        for line in steps:
            lhs, rhs = line.split("=")
            assert eval(lhs, {"__builtins__": {}}) == int(rhs), line


@pytest.mark.parametrize(
    "text,reason",
    [
        ("", "no_marker"),
        ("12+3=15", "no_marker"),
        ("1+2=3\n####", "empty_answer"),
        ("1+2=3\n#### ", "empty_answer"),
        ("#### 015", "malformed_answer"),
        ("#### +15", "malformed_answer"),
        ("#### -0", "malformed_answer"),
        ("#### 15 apples", "malformed_answer"),
        ("#### 15\n1+1=2", "malformed_answer"),
        ("#### 1 5", "malformed_answer"),
        ("#### \u0661\u0665", "malformed_answer"),  # Arabic-Indic digits are not ASCII digits
        ("#### 15.0", "malformed_answer"),
        ("#### 16", "wrong_answer"),
        ("#### 15\n#### 16", "wrong_answer"),  # the last marker counts
        ("#### 16\n#### 15", "correct"),
        ("work\n####15", "correct"),
    ],
)
def test_strict_verifier(text, reason):
    r = score_integer_answer(text, "15")
    assert r.reason == reason and r.correct == (reason == "correct") and r.score == float(reason == "correct")


def test_truncated_solutions_score_zero(task, samples):
    for p in samples["train"][:50]:
        cut = p.solution.rfind("#### ")
        for n in range(0, cut + 5):  # every truncation up to and including the bare marker
            assert task.score(p, p.solution[:n]).score == 0.0
        if len(p.answer) > 1:  # a truncated answer is a different number
            assert not task.score(p, p.solution[:-1]).correct


@pytest.fixture(scope="module")
def file_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("file_task") / "t.jsonl"
    path.write_text('{"prompt": "1+2=", "answer": "3"}\n')
    return get_task("file", path=str(path))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet="0123456789-+# \n\t\u00a0x"), st.binary(), st.none(), st.integers()))
def test_score_never_raises(file_task, text):
    p = Problem("1+2=", "3", "1+2=3\n#### 3", 1, "train")
    for t in (get_task("running_sum"), file_task):
        r = t.score(p, text)
        assert isinstance(r, Reward) and r.score in (0.0, 1.0)
        if not isinstance(text, str):
            assert r.score == 0.0 and r.reason == "not_text"




def test_user_task_in_a_few_lines():
    @register_task("test_copy_digits")
    class CopyDigits(ProceduralTask):
        """Repeat a number."""

        name = "test_copy_digits"
        train_sizes = (1, 6)
        long_sizes = (7, 8)

        def generate(self, rng, size):
            n = str(rng.randint(10 ** (size - 1), 10**size - 1))
            return f"copy {n}:", n, f"#### {n}", {}

    try:
        t = get_task("test_copy_digits")
        p = t.sample(random.Random(0), "heldout")
        assert t.score(p, p.solution).correct and p.split == "heldout"
        with pytest.raises(VapoError, match="already registered"):
            register_task("test_copy_digits")(lambda: t)
        with pytest.raises(VapoError, match="split"):
            t.sample(random.Random(0), "test")
    finally:
        TASKS.pop("test_copy_digits")


# ---------------------------------------------------------------------------------- sloppy teacher
def _rewrite_lines_consistent(prompt_terms: list[int], text: str) -> tuple[bool, list[int]]:
    """Check a rewrite chain's format and return each step's deviation from the true partial sum:
    line j must be  v_j <tail of the prompt from term j+1>  with 0 <= v_j <= 9."""
    lines = text.split("\n")
    assert lines[-1].startswith("#### ")
    values = []
    for j, line in enumerate(lines[:-1], start=1):
        tail = "".join(f"{t:+d}" for t in prompt_terms[j + 1 :])
        assert line.endswith(tail) and line[: len(line) - len(tail)].isdigit(), (line, tail)
        values.append(int(line[: len(line) - len(tail)]))
    values.append(int(lines[-1][5:]))
    return all(0 <= v <= 9 for v in values), values


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), slip=st.sampled_from([0.0, 0.2, 0.5, 0.9]))
def test_sloppy_teacher_keeps_the_format_and_slips_by_one(seed, slip):
    """rewrite_sum's slip model: same format as the true solution, every value in 0..9, each step
    off by at most one from (previous written value + term), and slip 0 gives the true solution."""
    task = get_task("rewrite_sum")
    rng = random.Random(seed)
    p = task.sample(rng, "train")
    text = task.slipped_solution(p, rng, slip)
    if slip == 0.0:
        assert text == p.solution
    terms = p.meta["terms"]
    ok, values = _rewrite_lines_consistent(terms, text)
    assert ok
    prev = terms[0]
    for j, v in enumerate(values, start=1):
        assert abs(v - (prev + terms[j])) <= 1
        prev = v
    assert task.score(p, text).correct == (values[-1] == sum(terms))


def test_sloppy_teacher_slips_at_the_requested_rate():
    task = get_task("rewrite_sum")
    rng = random.Random(0)
    steps = slips = 0
    for _ in range(3000):
        p = task.sample(rng, "train")
        _, values = _rewrite_lines_consistent(p.meta["terms"], task.slipped_solution(p, rng, 0.2))
        prev = p.meta["terms"][0]
        for j, v in enumerate(values, start=1):
            steps += 1
            slips += v != prev + p.meta["terms"][j]
            prev = v
    # Slips that would leave 0..9 later are skipped, so the rate is a little under 0.2.
    assert 0.15 < slips / steps <= 0.2, slips / steps
