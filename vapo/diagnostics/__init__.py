"""Diagnostics: measure where value-based RL breaks on a run, against Monte-Carlo ground truth.

`vapo diagnose RUN` (:func:`vapo.diagnostics.run.diagnose`) reports five sections — critic error,
advantage quality by λ, length weighting, exploration, generalisation — as diagnostics.json and a
self-contained report.html; :class:`vapo.diagnostics.hook.DiagnosticsCallback` is the cheap subset
logged every ``diagnose_every`` iterations (a training-loop callback). See docs/diagnostics.md.
"""

from vapo.diagnostics.common import generate_batch, length_edges
from vapo.diagnostics.mc import MCEstimate, mc_values
from vapo.train.batch import Experience
from vapo.train.collect import RewardSettings

__all__ = ["Experience", "MCEstimate", "RewardSettings", "generate_batch", "length_edges", "mc_values"]
