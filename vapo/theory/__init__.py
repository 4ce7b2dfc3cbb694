"""Theory lab: exact token MDPs with dynamic-programming ground truth, and the experiments that
test each claim about VAPO's limits (docs/theory.md). Imports only torch/numpy/scipy/matplotlib
and vapo.algos / vapo.errors — never a neural model.

Run ``vapo theory list`` / ``vapo theory NAME`` / ``vapo theory all``.
"""

from vapo.theory.framework import (
    EXPERIMENTS,
    Experiment,
    ExperimentResult,
    Verdict,
    get_experiment,
    load_experiments,
    register_experiment,
)

__all__ = ["EXPERIMENTS", "Experiment", "ExperimentResult", "Verdict", "get_experiment",
           "load_experiments", "register_experiment"]
