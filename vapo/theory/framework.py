"""Experiment framework of the theory lab: registry, verdicts, results, output files.

Every experiment states, *before* it computes anything,

* ``claim``           the statement under test (one line, from docs/theory.md / spec),
* ``hypothesis``      what we expect to measure if the claim holds,
* ``decision_rule``   the rule as text, and ``decide(results) -> Verdict`` the same rule as code.

``run(seed, out_dir, quick)`` computes a JSON-able ``results`` dict, calls ``decide`` on it
(the verdict is never written by hand), saves the plots, writes ``results.json`` and returns an
:class:`ExperimentResult`.

Two ways to add an experiment:

1. subclass :class:`Experiment` and decorate it with ``@register_experiment("name")``;
2. a plain module exposing ``NAME``, ``HYPOTHESIS``, ``DECISION_RULE`` and
   ``run(out_dir, quick, seed) -> dict`` (with keys ``verdict`` and ``verdict_line``, the
   verdict computed by the module's own ``decide``), registered with
   :func:`register_module_experiment`.
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


class ModuleExperiment(Experiment):
    """Adapter for an experiment written as a module (NAME, HYPOTHESIS, DECISION_RULE,
    ``run(out_dir, quick, seed) -> payload``); the module's own decide() sets the verdict."""

    def __init__(self, name: str, module: str):
        self.name = name
        self.module_name = module
        self._mod = None

    @property
    def module(self):
        if self._mod is None:
            self._mod = importlib.import_module(self.module_name)
        return self._mod

    @property
    def claim(self) -> str:  # type: ignore[override]
        doc = (self.module.__doc__ or "").strip().splitlines()
        return doc[0] if doc else self.name

    @property
    def hypothesis(self) -> str:  # type: ignore[override]
        return self.module.HYPOTHESIS

    @property
    def decision_rule(self) -> str:  # type: ignore[override]
        return self.module.DECISION_RULE

    def run(self, seed: int = 0, out_dir: Path | None = None, quick: bool = False) -> ExperimentResult:
        t0 = time.perf_counter()
        payload = self.module.run(out_dir, quick=quick, seed=seed)
        numbers = payload.get("evidence") or payload.get("summary") or payload.get("calls") or {}
        verdict = Verdict(payload["verdict"], payload["verdict_line"], json_safe(numbers))
        plots = []
        if out_dir is not None:
            plots = sorted(Path(out_dir).glob("*.png"))
        return ExperimentResult(self.name, self.claim, self.hypothesis, self.decision_rule, verdict,
                                json_safe(payload), plots, time.perf_counter() - t0, seed,
                                json_safe(payload.get("sizes", {})))


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------

EXPERIMENTS: dict[str, Experiment] = {}
# Modules that hold experiments; importing them fills EXPERIMENTS (see `load_experiments`).
_EXPERIMENT_MODULES = ("vapo.theory.exp_value_error", "vapo.theory.exp_adaptive_lambda",
                       "vapo.theory.exp_token_bias")
_MODULE_EXPERIMENTS = {"generalization": "vapo.theory.exp_generalization",
                       "exploration": "vapo.theory.exp_exploration",
                       "pathways": "vapo.theory.exp_pathways"}


def register_experiment(name: str) -> Callable[[type[Experiment]], type[Experiment]]:
    """Class decorator: ``@register_experiment("value_error") class X(Experiment): ...``."""

    def deco(cls: type[Experiment]) -> type[Experiment]:
        if name in EXPERIMENTS and type(EXPERIMENTS[name]) is not cls:
            raise VapoError(f"experiment {name!r} is registered twice", where=cls.__module__,
                            fix="pick a new name")
        cls.name = name
        EXPERIMENTS[name] = cls()
        return cls

    return deco


def register_module_experiment(name: str, module: str) -> None:
    """Register a module-style experiment (imported lazily when run)."""
    EXPERIMENTS.setdefault(name, ModuleExperiment(name, module))


def load_experiments() -> dict[str, Experiment]:
    """Import every experiment module; returns the registry in run order."""
    for m in _EXPERIMENT_MODULES:
        importlib.import_module(m)
    for name, m in _MODULE_EXPERIMENTS.items():
        register_module_experiment(name, m)
    order = ["value_error", "adaptive_lambda", "token_bias", *_MODULE_EXPERIMENTS]
    return {n: EXPERIMENTS[n] for n in order + [n for n in EXPERIMENTS if n not in order]
            if n in EXPERIMENTS}


def get_experiment(name: str) -> Experiment:
    exps = load_experiments()
    if name not in exps:
        raise unknown_name_error("theory experiment", name, list(exps) + ["all", "list"],
                                 where="vapo theory NAME")
    return exps[name]


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


def write_results_json(path: Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False))
    return path


def new_figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.0, 3.8)):
    """A matplotlib figure on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, ax


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
