"""Reward faults: a verifier that raises, hangs or returns a non-number gives reward 0, is counted
by kind and logged once; good answers keep their reward."""

import math
import random
import signal
import threading
import time

import pytest

from vapo.tasks import Problem, Reward, get_task
from vapo.tasks.guard import FAULT_KINDS, GuardedVerifier

P = Problem("2+2=", "4", "#### 4", 1, "train")
RELEASE = threading.Event()  # lets verifier threads abandoned by the worker-thread path finish


class Faulty:
    """A user-defined task whose verifier misbehaves depending on the answer text."""

    name = "faulty"

    def score(self, problem, text):
        if text == "raise":
            raise ZeroDivisionError("division by zero in the user's checker")
        if text == "sleep":
            RELEASE.wait(30)
        if text == "spin":
            while not RELEASE.is_set():
                pass
        if text == "swallow":  # catches everything it can: the timeout must still get through
            while not RELEASE.is_set():
                try:
                    time.sleep(0.01)
                except Exception:
                    pass
        if text == "none":
            return None
        if text == "str":
            return Reward("1", True, "4", "correct")
        if text == "nan":
            return Reward(math.nan, True, "4", "correct")
        if text == "inf":
            return Reward(-math.inf, False, "4", "wrong_answer")
        ok = text == "#### 4"
        return Reward(1.0 if ok else 0.0, ok, text, "correct" if ok else "wrong_answer")


CASES = [("raise", "exception"), ("sleep", "timeout"), ("spin", "timeout"), ("swallow", "timeout"),
         ("none", "bad_return"), ("str", "not_a_number"), ("nan", "non_finite"), ("inf", "non_finite")]


def _run(guard, texts, in_thread=False):
    if not in_thread:
        return guard.score_batch([(P, t) for t in texts])
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("r", guard.score_batch([(P, t) for t in texts])))
    th.start()
    th.join(60)
    return out["r"]


@pytest.mark.parametrize("in_thread", [False, True], ids=["main-thread-timer", "worker-thread"])
def test_every_fault_gives_reward_0_and_is_counted_and_logged_once(in_thread):
    RELEASE.clear()
    lines = []
    guard = GuardedVerifier(Faulty(), timeout_s=0.2, log=lines.append)
    texts = ["#### 4"] + [t for t, _ in CASES] + ["#### 5", "raise", "#### 4"]
    t0 = time.perf_counter()
    rewards = _run(guard, texts, in_thread)
    assert time.perf_counter() - t0 < 10  # three hangs of 0.2 s each, not 3 × 30 s
    assert [r.score for r in rewards] == [1.0] + [0.0] * len(CASES) + [0.0, 0.0, 1.0]
    assert all(type(r.score) is float for r in rewards)
    for (_, kind), r in zip(CASES, rewards[1:], strict=False):
        assert r.reason == f"verifier_{kind}" and not r.correct
    assert rewards[-3].reason == "wrong_answer"  # an honest wrong answer is not a fault
    m = guard.metrics()
    assert m == {"reward_faults": len(CASES) + 1, "reward_faults_exception": 2, "reward_faults_timeout": 3,
                 "reward_faults_bad_return": 1, "reward_faults_not_a_number": 1, "reward_faults_non_finite": 2}
    assert len(lines) == len(FAULT_KINDS)  # one example per kind
    assert any("ZeroDivisionError: division by zero in the user's checker" in ln and "'raise'" in ln for ln in lines)
    # The next batch counts afresh; totals accumulate; nothing is logged twice.
    guard.score_batch([(P, "none")])
    assert guard.metrics()["reward_faults"] == 1 and guard.totals["bad_return"] == 2 and len(lines) == len(FAULT_KINDS)
    RELEASE.set()


def test_signal_state_is_restored_and_an_outer_timer_is_left_alone():
    RELEASE.clear()
    before = signal.getsignal(signal.SIGALRM)
    guard = GuardedVerifier(Faulty(), timeout_s=0.2, log=lambda s: None)
    guard.score_batch([(P, "sleep"), (P, "#### 4")])
    assert signal.getsignal(signal.SIGALRM) is before and signal.getitimer(signal.ITIMER_REAL)[0] == 0
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        r = guard.score_batch([(P, "sleep"), (P, "#### 4")])  # falls back to threads: the outer timer keeps running
        assert [x.reason for x in r] == ["verifier_timeout", "correct"]
        assert 0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 1.5
        time.sleep(1.6)
        assert fired == [1]
    finally:
        RELEASE.set()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_keyboard_interrupt_is_not_swallowed():
    class Stop:
        def score(self, problem, text):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        GuardedVerifier(Stop()).score_batch([(P, "x")])


@pytest.mark.parametrize("name", ["rewrite_sum", "running_sum", "addition", "multiply"])
def test_built_in_tasks_score_the_same_through_the_guard(name):
    task = get_task(name)
    rng = random.Random(0)
    probs = [task.sample(rng) for _ in range(30)]
    texts = [p.solution if i % 3 else p.solution + "1" for i, p in enumerate(probs)]
    guard = GuardedVerifier(task, log=pytest.fail)
    got = guard.score_batch(list(zip(probs, texts, strict=True)))
    assert got == [task.score(p, t) for p, t in zip(probs, texts, strict=True)]
    assert guard.metrics()["reward_faults"] == 0


def test_file_task_with_math_verify_through_the_guard(tmp_path):
    pytest.importorskip("math_verify", reason="math-verify is an optional extra (pip install vapo[math])")
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "half", "answer": "1/2", "split": "train"}\n')
    task = get_task("file", path=str(f))
    p = task.rows["train"][0]
    guard = GuardedVerifier(task, timeout_s=20, log=pytest.fail)
    r = guard.score_batch([(p, "#### 0.5"), (p, "#### \\frac{1}{2}"), (p, "#### 3"), (p, "no marker")])
    assert [x.correct for x in r] == [True, True, False, False]


def test_bad_timeout_is_refused():
    with pytest.raises(ValueError):
        GuardedVerifier(Faulty(), timeout_s=0)
