"""Micro grid files for the compare tests: a few seconds of training per cell."""

from __future__ import annotations

import textwrap

MICRO_BASE = """\
base:
  sft.steps: 10
  sft.batch_size: 8
  rollout.prompts_per_iter: 4
  rollout.group_size: 2
  rollout.max_new_tokens: 24
  train.iterations: 2
  train.eval_every: 1
  train.checkpoint_every: 1
  eval.prompts: 4
  eval.samples: 1
  optim.minibatches: 1
  algo.critic.pretrain_min_steps: 1
  algo.critic.pretrain_patience: 1
  algo.critic.probe_answers: 8
  algo.critic.probe_continuations: 2
"""


def write_grid(path, variants: str, seeds: str = "[0, 1]", extra: str = "") -> str:
    """A grid file with the micro budget; ``variants`` is the YAML list body."""
    text = f"name: {path.stem}\nseeds: {seeds}\n{MICRO_BASE}quick:\n  set: {{}}\n{extra}variants:\n" + textwrap.indent(
        textwrap.dedent(variants), "  ")
    path.write_text(text)
    return str(path)
