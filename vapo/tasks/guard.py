"""Reward faults: a verifier that raises, hangs or returns a non-number costs one answer its
reward, never the run.

:class:`GuardedVerifier` calls ``task.score(problem, text)`` for each answer of a batch with a
per-call timeout and turns every fault into ``Reward(0.0, False, None, "verifier_<kind>")``:

    exception     the verifier raised (any ``Exception``; Ctrl-C and SystemExit still stop the run)
    timeout       it did not return within ``timeout_s`` seconds
    bad_return    it returned something without a ``score`` (e.g. None)
    not_a_number  the score is not a real number (a string, None, a list, ...)
    non_finite    the score is NaN or infinite

Faults are counted by kind (:meth:`GuardedVerifier.metrics` gives ``reward_faults`` and
``reward_faults_<kind>`` for the iteration's metrics line, zeros included so every line has the
same keys) and the first example of each kind is logged once with the problem, the answer text
and the error.

The timeout: in the main thread, a ``SIGALRM`` interval timer (``signal.setitimer``) armed around
each call; it costs two system calls per answer (a few microseconds) and interrupts Python code
and blocking system calls (sleep, I/O). Elsewhere (a worker thread), or when another ``SIGALRM``
timer is already running, each call runs in a daemon thread that is abandoned if it hangs. Neither
can stop a single C call that never checks for signals (e.g. a huge integer power); a verifier
that may do that should bound its own work. ``math_verify`` (used by the file task) sets its own
``SIGALRM`` timeouts, which replace this one for the rest of that call; they bound its own work.

Model output is only ever passed to ``task.score`` as a string; vapo never evaluates it as code.
"""

from __future__ import annotations

import logging
import math
import numbers
import signal
import threading
from collections.abc import Callable, Sequence
from typing import Any

from vapo.tasks.base import Problem, Reward

FAULT_KINDS = ("exception", "timeout", "bad_return", "not_a_number", "non_finite")
logger = logging.getLogger("vapo.tasks.guard")


class _VerifierTimeout(BaseException):
    """Raised inside a hung verifier by the timer. A BaseException, so that a verifier's own
    ``except Exception`` cannot swallow it."""


def _check(result: Any) -> tuple[str | None, str]:
    """(fault kind or None, description) of a verifier's return value."""
    if not hasattr(result, "score"):
        return "bad_return", f"returned {type(result).__name__} {result!r:.80}, not a Reward"
    s = result.score
    if isinstance(s, bool) or not isinstance(s, numbers.Real):
        return "not_a_number", f"score is {type(s).__name__} {s!r:.80}"
    if not math.isfinite(float(s)):
        return "non_finite", f"score is {s}"
    return None, ""


class GuardedVerifier:
    """Scores answers with ``task.score`` under a per-call timeout, counting faults.

    Args:
        task: anything with ``score(problem, text) -> Reward``.
        timeout_s: seconds one call may take (> 0).
        log: called once per fault kind with a one-paragraph description of the first example
            (default: ``logging.warning`` on the ``vapo.tasks.guard`` logger).
    """

    def __init__(self, task: Any, timeout_s: float = 10.0, log: Callable[[str], None] | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.task = task
        self.timeout_s = float(timeout_s)
        self.log = log or logger.warning
        self.totals = dict.fromkeys(FAULT_KINDS, 0)  # over the guard's life
        self.last_kinds: list[str | None] = []  # of the last score_batch call: each item's fault kind, or None
        self.logged: set[str] = set()

    # ------------------------------------------------------------------ public
    def score_batch(self, pairs: Sequence[tuple[Problem, str]]) -> list[Reward]:
        """One Reward per (problem, text) pair, faults replaced by reward 0 (see the module doc)."""
        self.last_kinds = []
        use_alarm = threading.current_thread() is threading.main_thread() and signal.getitimer(signal.ITIMER_REAL)[0] == 0
        if use_alarm:
            old = signal.signal(signal.SIGALRM, self._on_alarm)
            try:
                return [self._one(p, t, self._call_alarm) for p, t in pairs]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        return [self._one(p, t, self._call_thread) for p, t in pairs]

    @property
    def last(self) -> dict[str, int]:
        """Fault counts of the last batch, by kind (zeros included)."""
        return {k: self.last_kinds.count(k) for k in FAULT_KINDS}

    def metrics(self) -> dict[str, int]:
        """Fault counts of the last batch: ``reward_faults`` and ``reward_faults_<kind>``."""
        last = self.last
        return {"reward_faults": sum(last.values()), **{f"reward_faults_{k}": v for k, v in last.items()}}

    # ------------------------------------------------------------------ internals
    _armed = False

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if self._armed:  # a late signal after the call returned is ignored
            self._armed = False
            raise _VerifierTimeout

    def _call_alarm(self, problem: Problem, text: str) -> Any:
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, self.timeout_s)
        try:
            return self.task.score(problem, text)
        finally:
            self._armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _call_thread(self, problem: Problem, text: str) -> Any:
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = self.task.score(problem, text)
            except BaseException as e:  # handed to the caller's thread below
                box["error"] = e

        th = threading.Thread(target=run, name="vapo-verifier", daemon=True)
        th.start()
        th.join(self.timeout_s)
        if th.is_alive():
            raise _VerifierTimeout
        if "error" in box:
            raise box["error"]
        return box["result"]

    def _one(self, problem: Problem, text: str, call: Callable[[Problem, str], Any]) -> Reward:
        self.last_kinds.append(None)  # _fault sets it
        try:
            result = call(problem, text)
        except _VerifierTimeout:
            return self._fault("timeout", f"no result within {self.timeout_s:g} s", problem, text)
        except Exception as e:
            return self._fault("exception", f"{type(e).__name__}: {e}", problem, text)
        kind, desc = _check(result)
        if kind is not None:
            return self._fault(kind, desc, problem, text)
        if not isinstance(result, Reward) or type(result.score) is not float:
            result = Reward(float(result.score), bool(getattr(result, "correct", False)),
                            getattr(result, "parsed", None), str(getattr(result, "reason", "")))
        return result

    def _fault(self, kind: str, desc: str, problem: Problem, text: str) -> Reward:
        self.last_kinds[-1] = kind
        self.totals[kind] += 1
        if kind not in self.logged:
            self.logged.add(kind)
            name = getattr(self.task, "name", type(self.task).__name__)
            self.log(f"verifier fault ({kind}) in task {name!r}: {desc}; the answer gets reward 0 "
                     f"(counted as reward_faults_{kind} in metrics.jsonl; only the first of each kind is shown)\n"
                     f"  prompt: {getattr(problem, 'prompt', problem)!r:.200}\n  answer: {text!r:.200}")
        return Reward(0.0, False, None, f"verifier_{kind}")


__all__ = ["FAULT_KINDS", "GuardedVerifier"]
