"""Diagnostics: measure where value-based RL breaks on a run, against Monte-Carlo ground truth.

`vapo diagnose RUN` (:func:`vapo.diagnostics.run.diagnose`) reports five sections — critic error,
advantage quality by λ, length weighting, exploration, generalisation — as diagnostics.json and a
self-contained report.html; :class:`vapo.diagnostics.hook.DiagnosticsCallback` is the cheap subset
logged every ``diagnose_every`` iterations (a training-loop callback). See docs/diagnostics.md.

The names below are loaded on first use, so that the command line (which mounts
``vapo.diagnostics.cli``) does not load torch and scipy before a config is checked.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {"generate_batch": "vapo.diagnostics.common", "length_edges": "vapo.diagnostics.common",
         "MCEstimate": "vapo.diagnostics.mc", "mc_values": "vapo.diagnostics.mc",
         "Experience": "vapo.train.batch", "RewardSettings": "vapo.train.collect"}

__all__ = ["Experience", "MCEstimate", "RewardSettings", "generate_batch", "length_edges", "mc_values"]


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module 'vapo.diagnostics' has no attribute {name!r}")
