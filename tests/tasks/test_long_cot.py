"""repeat_add, the long chain-of-thought regime: correct solutions, the sloppy-teacher slip model
(a slip is the deciding token: one slip makes the answer wrong), disjoint splits, and answer
lengths that span >= 10x and reach >= 512 tokens of the built-in tokenizer, within the context of
every built-in model size."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.errors import ConfigError
from vapo.models import build_char_tokenizer
from vapo.models.policy import MODEL_SIZES
from vapo.tasks import SPLITS, TASKS, get_task, sample_problems

LINE = re.compile(r"(\d+):(\d)\+(\d)=(\d)")


def parse(text: str) -> tuple[list[tuple[int, int, int, int]], str]:
    """(countdown, value, digit, new value) per line, and the text after the marker."""
    *lines, last = text.split("\n")
    assert last.startswith("#### ")
    rows = []
    for line in lines:
        m = LINE.fullmatch(line)
        assert m, line
        rows.append(tuple(int(g) for g in m.groups()))
    return rows, last[5:]


@pytest.fixture(scope="module")
def task():
    return get_task("repeat_add")


def test_registered_with_long_defaults(task):
    assert "repeat_add" in TASKS
    assert task.splits["train"] == task.splits["heldout"] == (4, 64)
    assert task.splits["long"][0] > task.splits["train"][1]
    with pytest.raises(ConfigError):
        get_task("repeat_add", train_sizes=[4, 64], long_sizes=[60, 70])


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**9), split=st.sampled_from(SPLITS))
def test_solution_is_the_naive_computation(task, seed, split):
    """Every line is one addition modulo 10 from the previous line's value (the prompt's start on
    the first), the countdown runs n..1, and the answer is (start + digit * n) % 10."""
    p = task.sample(random.Random(seed), split)
    m = re.fullmatch(r"\((\d)\+(\d)\*(\d+)\)%10=", p.prompt)
    assert m
    v0, d, n = (int(g) for g in m.groups())
    assert n == p.size and (v0, d) == (p.meta["start"], p.meta["digit"])
    rows, ans = parse(p.solution)
    assert [r[0] for r in rows] == list(range(n, 0, -1))
    v = v0
    for _, a, b, w in rows:  # naive reference: integer addition, then the last digit
        assert (a, b) == (v, d) and w == int(str(a + b)[-1])
        v = w
    assert ans == p.answer == str(eval(p.prompt[:-1]))  # the prompt is a Python expression of the answer
    assert task.score(p, p.solution).correct


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 10**9), slip=st.sampled_from([0.0, 0.05, 0.3, 0.9]))
def test_sloppy_teacher_slips_by_one_and_a_lone_slip_decides(task, seed, slip):
    """Same format as the solution; each new value is (value + digit ± at most 1) % 10 and later lines
    continue from what was written; slip 0 is the solution; the answer is right exactly when the
    slips cancel modulo 10 (so a single slip is always fatal)."""
    rng = random.Random(seed)
    p = task.sample(rng, "train")
    text = task.slipped_solution(p, rng, slip)
    if slip == 0.0:
        assert text == p.solution
    rows, ans = parse(text)
    ref, _ = parse(p.solution)
    assert [r[0] for r in rows] == [r[0] for r in ref]
    v, net, n_slips = p.meta["start"], 0, 0
    for _, a, b, w in rows:
        assert a == v and b == p.meta["digit"]
        delta = (w - (a + b)) % 10
        assert delta in (0, 1, 9)
        net += {0: 0, 1: 1, 9: -1}[delta]
        n_slips += delta != 0
        v = w
    assert ans == str(v)
    assert task.score(p, text).correct == (net % 10 == 0)
    if n_slips == 1:
        assert not task.score(p, text).correct


def test_sloppy_teacher_slips_at_the_requested_rate(task):
    rng = random.Random(0)
    lines = slips = 0
    for p in sample_problems(task, random.Random(1), 300):
        rows, _ = parse(task.slipped_solution(p, rng, 0.1))
        lines += len(rows)
        slips += sum((w - a - b) % 10 != 0 for _, a, b, w in rows)
    assert lines > 5000
    assert 0.09 < slips / lines < 0.11, slips / lines


def test_splits_disjoint(task):
    rng = random.Random(3)
    s = {split: sample_problems(task, rng, 1500, split) for split in SPLITS}
    train, held = {p.prompt for p in s["train"]}, {p.prompt for p in s["heldout"]}
    assert train and held and not train & held
    lo, hi = task.splits["train"]
    assert all(lo <= p.size <= hi for p in s["train"] + s["heldout"])
    assert min(p.size for p in s["long"]) > hi
    assert {p.size for p in s["train"]} == set(range(lo, hi + 1))  # the whole range is drawn


def test_lengths_span_10x_reach_512_tokens_and_fit_the_context(task):
    """Measured in tokens of the built-in tokenizer (EOS not counted): the shortest training answer
    to the longest is >= 10x and the longest is >= 512 tokens; the long split is longer still; BOS +
    prompt + answer + EOS of every split fits every built-in size's context."""
    tok = build_char_tokenizer()
    rng = random.Random(5)
    n_tok = {split: [] for split in SPLITS}
    full = []
    for split in SPLITS:
        lo, hi = task.splits[split]
        for size in range(lo, hi + 1):
            p = task.generate(rng, size)
            n_tok[split].append(len(tok(p[2], add_special_tokens=False)["input_ids"]))
            full.append(1 + len(tok(p[0], add_special_tokens=False)["input_ids"]) + n_tok[split][-1] + 1)
    assert n_tok["train"] == [len(task.generate(random.Random(0), s)[2]) for s in range(4, 65)]  # tokens = characters
    assert max(n_tok["train"]) >= 512
    assert max(n_tok["train"]) >= 10 * min(n_tok["train"])
    assert min(n_tok["long"]) > max(n_tok["train"])
    sizes = [random.Random(k).randint(4, 64) for k in range(2001)]  # train sizes are drawn uniformly
    median = sorted(len(task.generate(rng, n)[2]) for n in sizes)[len(sizes) // 2]
    assert median >= 200, median  # the long regime: a median answer of >= 200 tokens
    for name, s in MODEL_SIZES.items():
        assert max(full) <= s.max_position_embeddings, name
