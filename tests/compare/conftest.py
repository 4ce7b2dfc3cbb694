"""A micro grid (2 variants × 2 seeds, a few seconds of training per cell) and its compare output,
built once per test session."""

from __future__ import annotations

import textwrap
import time

import pytest

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
  algo.critic.pretrain_steps: 2
  algo.critic.pretrain_min_steps: 1
  optim.minibatch_size: 8
"""


def write_grid(path, variants: str, seeds: str = "[0, 1]", extra: str = "") -> str:
    """A grid file with the micro budget; ``variants`` is the YAML list body."""
    text = f"name: {path.stem}\nseeds: {seeds}\n{MICRO_BASE}quick:\n  set: {{}}\n{extra}variants:\n" + textwrap.indent(
        textwrap.dedent(variants), "  ")
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="session")
def micro_compare(tmp_path_factory):
    """(grid file, output directory, results, seconds) of `vapo compare` on vapo × grpo × seeds {0, 1}."""
    import os

    from vapo.compare import run_compare

    root = tmp_path_factory.mktemp("compare")
    os.environ["VAPO_CACHE_DIR"] = str(root / "cache")  # the cells inherit it
    grid = write_grid(root / "micro.yaml", "- vapo\n- grpo\n")
    out = root / "out"
    t0 = time.perf_counter()
    res = run_compare(grid, jobs=2, quick=True, out=out, progress=False)
    return grid, out, res, time.perf_counter() - t0
