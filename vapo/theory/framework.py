"""Experiment framework of the theory lab: registry, verdicts, results, output files.

Every experiment states, *before* it computes anything,

* ``claim``           the statement under test (one line, from docs/theory.md),
* ``hypothesis``      what we expect to measure if the claim holds,
* ``decision_rule``   the rule as text, and ``decide(results) -> Verdict`` the same rule as code.

``run(seed, out_dir, quick)`` computes a JSON-able ``results`` dict, calls ``decide`` on it
(the verdict is never written by hand), saves the plots, writes ``results.json`` and returns an
:class:`ExperimentResult`.

To add an experiment, subclass :class:`Experiment` in a module ``vapo/theory/exp_*.py``,
decorate it with ``@register_experiment("name")`` and list the module in
``_EXPERIMENT_MODULES``. Every experiment's model lives in :mod:`vapo.theory.mdp`.
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vapo.errors import VapoError, unknown_name_error
from vapo.registry import Registry

Status = Literal["supported", "refuted", "inconclusive"]
STATUSES: tuple[str, ...] = ("supported", "refuted", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    """The outcome of a decision rule: status, one printable line, the deciding numbers."""

    status: Status
    line: str
    numbers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise VapoError(f"verdict status must be one of {STATUSES}, got {self.status!r}",
                            where="Verdict", fix="return 'supported', 'refuted' or 'inconclusive'")


@dataclass
class ExperimentResult:
    """Everything one run produced (results.json holds the same, as JSON)."""

    name: str
    claim: str
    hypothesis: str
    decision_rule_text: str
    verdict: Verdict
    results: dict
    plots: list[Path]
    seconds: float
    seed: int
    sizes: dict

    def to_json(self) -> dict:
        return json_safe({
            "name": self.name, "claim": self.claim, "hypothesis": self.hypothesis,
            "decision_rule": self.decision_rule_text, "verdict": self.verdict.status,
            "verdict_line": self.verdict.line, "verdict_numbers": self.verdict.numbers,
            "seed": self.seed, "sizes": self.sizes, "seconds": self.seconds,
            "plots": [p.name for p in self.plots], "results": self.results,
        })


def verdict_from_flags(flags: dict[str, bool]) -> Status:
    """The common 'all / none / some' rule: supported if every flag holds, refuted if none
    does, inconclusive otherwise."""
    if not flags:
        raise VapoError("no evidence flags", where="verdict_from_flags", fix="pass at least one flag")
    n = sum(bool(v) for v in flags.values())
    return "supported" if n == len(flags) else "refuted" if n == 0 else "inconclusive"


class Experiment:
    """Base class. Subclasses set ``name``, ``claim``, ``hypothesis``, ``decision_rule`` (class
    attributes, fixed before any computation) and implement ``sizes``, ``compute``, ``decide``
    and ``plot``."""

    name: str = ""
    claim: str = ""
    hypothesis: str = ""
    decision_rule: str = ""

    def sizes(self, quick: bool) -> dict:  # problem sizes; quick=True: seconds (tests)
        raise NotImplementedError

    def compute(self, sizes: dict, seed: int) -> dict:  # JSON-able numbers, no verdict
        raise NotImplementedError

    def decide(self, results: dict) -> Verdict:  # the decision rule as code
        raise NotImplementedError

    def plot(self, results: dict, out_dir: Path) -> list[Path]:  # PNG files written
        return []

    def run(self, seed: int = 0, out_dir: Path | None = None, quick: bool = False) -> ExperimentResult:
        """Compute, decide (from the results only), plot, write ``out_dir/results.json``."""
        sizes = self.sizes(quick)
        t0 = time.perf_counter()
        results = json_safe(self.compute(sizes, seed))
        verdict = self.decide(results)
        plots: list[Path] = []
        if out_dir is not None:
            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            plots = self.plot(results, out_dir)
        res = ExperimentResult(self.name, self.claim, self.hypothesis, self.decision_rule, verdict,
                               results, plots, time.perf_counter() - t0, seed, sizes)
        if out_dir is not None:
            write_results_json(Path(out_dir) / "results.json", res.to_json())
        return res


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

EXPERIMENTS: Registry[Experiment] = Registry("theory experiment", where="vapo theory NAME")
# Modules that hold experiments, in run order; importing them fills EXPERIMENTS.
_EXPERIMENT_MODULES = ("vapo.theory.exp_value_error", "vapo.theory.exp_adaptive_lambda",
                       "vapo.theory.exp_token_bias", "vapo.theory.exp_generalization",
                       "vapo.theory.exp_exploration", "vapo.theory.exp_pathways")


def register_experiment(name: str) -> Callable[[type[Experiment]], type[Experiment]]:
    """Class decorator: ``@register_experiment("value_error") class X(Experiment): ...``
    registers one instance of the class under ``name``."""

    def deco(cls: type[Experiment]) -> type[Experiment]:
        old = EXPERIMENTS[name] if name in EXPERIMENTS else None
        if old is not None and type(old) is cls:  # module imported again
            return cls
        cls.name = name
        EXPERIMENTS.register(name)(cls())
        return cls

    return deco


def load_experiments() -> dict[str, Experiment]:
    """Import every experiment module; returns ``{name: experiment}`` in run order."""
    for m in _EXPERIMENT_MODULES:
        importlib.import_module(m)

    def rank(item: tuple[str, Experiment]) -> int:  # user-registered experiments come last
        mod = type(item[1]).__module__
        return _EXPERIMENT_MODULES.index(mod) if mod in _EXPERIMENT_MODULES else len(_EXPERIMENT_MODULES)

    return dict(sorted(EXPERIMENTS.items(), key=rank))


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name``; unknown names raise (did-you-mean, 'all', 'list')."""
    load_experiments()
    if name not in EXPERIMENTS:
        raise unknown_name_error("theory experiment", name, EXPERIMENTS.names() + ["all", "list"],
                                 where="vapo theory NAME")
    return EXPERIMENTS.get(name)


# ---------------------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------------------


def json_safe(x: Any) -> Any:
    """Recursively convert numpy/torch scalars and arrays, tuples, Paths to JSON types;
    non-finite floats become None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "detach") and hasattr(x, "tolist"):  # torch tensor
        return json_safe(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


def fmt(x: float | None, spec: str = ".3f") -> str:
    """Format a number for a verdict line; None (a non-finite value after json_safe) or NaN
    prints as 'n/a'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


def write_results_json(path: Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False))
    return path


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.8)):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib  # lazy: matplotlib (~0.5 s to import), for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    fig, ax = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, ax


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
