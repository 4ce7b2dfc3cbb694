"""Metric sinks, each checked by reading back what it wrote: metrics.jsonl, TensorBoard's event
reader, the W&B offline run file, and MLflow's client on the local store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vapo.config import resolve_config
from vapo.errors import ConfigError
from vapo.train import sinks as sinks_mod
from vapo.train.sinks import make_sinks, scalars, validate_sinks

RECORDS = [{"iteration": i, "reward": i / 10, "truncated": i == 2, "by_size": {"3": 0.5 * i}, "note": "x"} for i in (1, 2, 3)]
SUMMARY = {"iterations": 3, "final": {"heldout": 0.75}, "run_dir": "somewhere"}


def _cfg(*sinks: str):
    return resolve_config("vapo", None, [f"logging.sinks=[{', '.join(sinks)}]", "logging.project=byo-test"])


def _log_all(cfg, run_dir: Path) -> None:
    with make_sinks(cfg, run_dir) as s:
        s.log_config(cfg.to_dict())
        for r in RECORDS:
            s.log_metrics(r, step=r["iteration"])
        s.log_summary(SUMMARY)


def test_scalars_flatten_and_skip_non_numbers():
    assert scalars({"a": 1, "b": {"c": 2.5, "d": "x"}, "e": True, "f": float("nan"), "g": None}) == {"a": 1.0, "b/c": 2.5, "e": 1.0}


def test_jsonl_writes_records_as_they_are(tmp_path):
    _log_all(_cfg("jsonl"), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == RECORDS


def test_tensorboard_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the logging extra (tensorboard) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _log_all(_cfg("jsonl", "tensorboard"), tmp_path)
    ea = EventAccumulator(str(tmp_path / "tensorboard"))
    ea.Reload()
    assert [(e.step, round(e.value, 6)) for e in ea.Scalars("reward")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [e.value for e in ea.Scalars("by_size/3")] == [0.5, 1.0, 1.5]
    assert [e.value for e in ea.Scalars("truncated")] == [0.0, 1.0, 0.0]
    assert [e.value for e in ea.Scalars("summary/final/heldout")] == [0.75]
    assert {"config/text_summary", "summary/text_summary"} <= set(ea.Tags()["tensors"])
    assert "note" not in ea.Tags()["scalars"]


def wandb_records(path: Path) -> list:
    """Records of a W&B transaction log (``run-<id>.wandb``): a 7-byte header (":W&B", magic,
    version), then LevelDB-log chunks in 32 KiB blocks, each ``crc32c(4) length(2) type(1) data``
    (type 1 full, 2 first, 3 middle, 4 last), each record a ``wandb_internal.Record`` protobuf."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        n, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + n]
        pos += 7 + n
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
        else:
            break
    return [pb.Record.FromString(c) for c in out]


def test_wandb_offline_read_back(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the logging extra (wandb) is not installed")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    _log_all(_cfg("jsonl", "wandb"), tmp_path)
    files = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and files[0].name == f"run-{(tmp_path / 'wandb_run_id').read_text().strip()}.wandb"
    recs = wandb_records(files[0])
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in recs if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], h["reward"], h["by_size/3"]) for h in history] == [(1, 0.1, 0.5), (2, 0.2, 1.0), (3, 0.3, 1.5)]
    config = {i.key: json.loads(i.value_json) for r in recs if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert config["rollout"]["group_size"] == 8 and config["preset"] == "vapo"
    summary = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
               for r in recs if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert summary["summary/final/heldout"] == 0.75
    run = next(r.run for r in recs if r.WhichOneof("record_type") == "run")
    assert run.project == "byo-test"


def test_mlflow_local_store_read_back_and_resume(tmp_path):
    pytest.importorskip("mlflow", reason="the logging extra (mlflow) is not installed")
    from mlflow.tracking import MlflowClient

    cfg = _cfg("jsonl", "mlflow")
    _log_all(cfg, tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["rollout.group_size"] == "8"
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "reward")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert run.data.metrics["summary/final/heldout"] == 0.75
    assert client.get_experiment(run.info.experiment_id).name == "byo-test"
    assert client.download_artifacts(run_id, "summary.json") and (tmp_path / "mlartifacts").is_dir()
    # a resumed run continues the same MLflow run
    with make_sinks(cfg, tmp_path, resume_step=3) as s:
        s.log_metrics({"reward": 0.4}, step=4)
    assert [m.step for m in client.get_metric_history(run_id, "reward")] == [1, 2, 3, 4]


def test_bad_sink_lists_are_refused(tmp_path):
    with pytest.raises(ConfigError, match='unknown sink "tensorbord"|unknown sink \'tensorbord\''):
        validate_sinks(_cfg("jsonl", "tensorbord"))
    with pytest.raises(ConfigError, match="must include jsonl") as e:
        validate_sinks(_cfg("tensorboard"))
    assert "jsonl, tensorboard" in e.value.fix
    with pytest.raises(ConfigError, match="twice"):
        validate_sinks(_cfg("jsonl", "jsonl"))


def test_a_tracker_that_is_not_installed_fails_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(sinks_mod, "_installed", lambda module: module != "mlflow")
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="the mlflow sink needs the mlflow package") as e:
        make_sinks(_cfg("jsonl", "tensorboard", "mlflow"), run_dir)
    assert "pip install 'vapo[logging]'" in e.value.fix
    assert not run_dir.exists()


def test_eval_results_go_to_trackers_not_to_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard", reason="the logging extra (tensorboard) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with make_sinks(_cfg("jsonl", "tensorboard"), tmp_path) as s:
        s.log_eval({"heldout": {"accuracy": 0.25, "pass_at_k": {"1": 0.25, "2": 0.5}, "split": "heldout"}}, step=0)
    assert not (tmp_path / "metrics.jsonl").exists()
    ea = EventAccumulator(str(tmp_path / "tensorboard"))
    ea.Reload()
    assert [e.value for e in ea.Scalars("eval/heldout/pass_at_k/2")] == [0.5]
