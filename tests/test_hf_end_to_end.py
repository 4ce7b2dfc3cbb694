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
    "--set", "eval.prompts=4", "--set", "eval.samples=2", "--set", "algo.critic.probe_answers=8",
    "--set", "algo.critic.probe_continuations=2", "--set", "algo.critic.pretrain_min_steps=1", "--set", "algo.critic.pretrain_patience=1",
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


def _bad(tmp_path, *sets: str):
    runs = tmp_path / "runs"
    r = CliRunner().invoke(app, ["train", "--set", f"train.runs_dir={runs}", *TINY_RUN, *sum((["--set", s] for s in sets), [])])
    assert r.exit_code == 2, r.output
    assert not runs.exists()  # nothing was created
    return r.output


def test_bad_inputs_stop_before_a_run_directory(tiny_models, tmp_path, monkeypatch):
    import shutil

    no_tok = tmp_path / "no_tok"
    shutil.copytree(tiny_models["qwen"], no_tok)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (no_tok / f).unlink(missing_ok=True)
    assert "has no tokenizer" in _bad(tmp_path, f"model.path={no_tok}")

    no_eos = tmp_path / "no_eos"
    shutil.copytree(tiny_models["qwen"], no_eos)
    tc = json.loads((no_eos / "tokenizer_config.json").read_text())
    tc["eos_token"] = None
    (no_eos / "tokenizer_config.json").write_text(json.dumps(tc))
    assert "no EOS token" in _bad(tmp_path, f"model.path={no_eos}")

    broken = make_tiny_model("qwen", tmp_path / "broken_template", chat_template="{{ messages | nosuchfilter }}")
    out = _bad(tmp_path, f"model.path={broken}")
    assert "chat template failed to render" in out and "model.chat_template=false" in out

    short = make_tiny_model("qwen", tmp_path / "short", max_positions=40)
    assert "more than the model's context of 40" in _bad(tmp_path, f"model.path={short}")

    out = _bad(tmp_path, f"model.path={tiny_models['qwen']}", "task.kwargs.fields.prompt=problem")
    assert "'problem'" in out and "word_problems.jsonl:1" in out

    monkeypatch.setattr("vapo.train.sinks._installed", lambda module: module != "wandb")
    out = _bad(tmp_path, f"model.path={tiny_models['qwen']}", "logging.sinks=[jsonl, wandb]")
    assert "the wandb sink needs the wandb package" in out


def test_tensorboard_sink_and_a_reasoning_gym_task_from_the_cli(tiny_models, tmp_path):
    pytest.importorskip("tensorboard", reason="the logging extra (tensorboard) is not installed")
    pytest.importorskip("reasoning_gym", reason="the gym extra (reasoning-gym) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    r = CliRunner().invoke(app, [
        "train", "--preset", "grpo", "--name", "gym", "--task", "rg:basic_arithmetic",
        "--set", "task.kwargs.size=40", "--set", "task.kwargs.heldout_size=10", "--set", f"model.path={tiny_models['qwen']}",
        "--set", f"train.runs_dir={runs}", "--set", "logging.sinks=[jsonl, tensorboard]", "--set", "sft.steps=0",
        "--set", "rollout.prompts_per_iter=4", "--set", "rollout.group_size=2", "--set", "rollout.max_new_tokens=8",
        "--set", "eval.prompts=2", "--set", "eval.samples=1", "--set", "train.threads=1", "--iterations", "2", "--quiet",
    ], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = runs / "gym"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ea = EventAccumulator(str(run / "tensorboard"))
    ea.Reload()
    assert [(e.step, e.value) for e in ea.Scalars("response_length")] == [(m["iteration"], pytest.approx(m["response_length"])) for m in metrics]
    assert [e.step for e in ea.Scalars("eval/heldout/accuracy")] == [0, 2]
    assert "summary/final/heldout" in ea.Tags()["scalars"]
