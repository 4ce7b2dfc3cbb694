"""Training: supervised warm start, value pretraining, the RL loop, checkpoints, evaluation.

``Callback``, ``start_run``, ``resume_run`` and ``fork_run`` (vapo.train.run) are loaded on first use, so that
importing a light submodule (e.g. ``vapo.train.sinks``, which vapo.config reads to check
``logging.sinks``) does not load the models and the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Callback", "fork_run", "resume_run", "start_run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("vapo.train.run"), name)
    raise AttributeError(f"module 'vapo.train' has no attribute {name!r}")
