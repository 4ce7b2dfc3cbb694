"""End to end from a Hugging Face model directory: tiny random Qwen2 (ChatML template, no BOS) and
Llama (BOS, no pad token) with byte-level BPE tokenizers, the example word problems, two RL
iterations of `vapo train` and `vapo eval` on the result, for the vapo and grpo presets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "models"))
from tiny_hf import make_tiny_model  # noqa: E402

from vapo.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = [
    "--set", "task.name=file", "--set", f"task.kwargs.path={ROOT / 'examples/data/word_problems.jsonl'}",
    "--set", "task.kwargs.fields.prompt=question", "--set", "sft.steps=2", "--set", "sft.batch_size=4",
    "--set", "rollout.prompts_per_iter=4", "--set", "rollout.group_size=4", "--set", "rollout.max_new_tokens=12",
    "--set", "eval.prompts=4", "--set", "eval.samples=2", "--set", "algo.critic.pretrain_steps=2",
    "--set", "algo.critic.pretrain_min_steps=1", "--set", "algo.critic.pretrain_patience=1",
    "--set", "train.threads=1", "--set", "sft.cache=false", "--iterations", "2", "--quiet",
]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("byo_models")
    return {k: make_tiny_model(k, root / k) for k in ("qwen", "llama")}


def _train(args: list[str]):
    return CliRunner().invoke(app, ["train", *args], catch_exceptions=False)


@pytest.mark.parametrize("kind,preset", [("qwen", "vapo"), ("qwen", "grpo"), ("llama", "vapo"), ("llama", "grpo")])
def test_train_and_eval_from_a_model_directory(tiny_models, tmp_path, kind, preset):
    runs = tmp_path / "runs"
    r = _train(["--preset", preset, "--name", "byo", "--set", f"model.path={tiny_models[kind]}",
                "--set", f"train.runs_dir={runs}", *TINY_RUN])
    assert r.exit_code == 0, r.output
    run = runs / "byo"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2]
    assert all(0 < m["response_length"] <= 12 for m in metrics)
    assert ("explained_variance" in metrics[-1]) == (preset == "vapo")
    ckpt = run / "checkpoints" / "step_2"
    tok_cfg = json.loads((ckpt / "policy" / "tokenizer_config.json").read_text())
    assert tok_cfg["vapo_prompt"] == {"chat": True, "system": None}  # the prompt format travels with the checkpoint
    assert (ckpt / "critic").is_dir() == (preset == "vapo")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 2 and set(summary["final"]) == {"heldout", "long"}
    e = CliRunner().invoke(app, ["eval", str(run), "--prompts", "3", "--samples", "2"], catch_exceptions=False)
    assert e.exit_code == 0, e.output
    assert "heldout: accuracy" in e.output and "pass@k" in e.output
