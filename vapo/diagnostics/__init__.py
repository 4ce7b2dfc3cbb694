"""Diagnostics: measure where value-based RL breaks on a run, against Monte-Carlo ground truth.

`vapo diagnose RUN` (:func:`vapo.diagnostics.run.diagnose`) reports five sections — critic error,
advantage quality by λ, length weighting, exploration, generalisation — as diagnostics.json and a
self-contained report.html; :func:`vapo.diagnostics.hook.during_training` is the cheap subset
logged every ``diagnose_every`` iterations. See docs/diagnostics.md.
"""

from vapo.diagnostics.common import Batch, RewardSettings, generate_batch, length_edges
from vapo.diagnostics.mc import MCEstimate, mc_values

__all__ = ["Batch", "MCEstimate", "RewardSettings", "generate_batch", "length_edges", "mc_values"]
