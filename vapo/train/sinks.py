"""Metric sinks: ``metrics.jsonl`` plus the trackers people already watch, all inside the run directory.

    logging.sinks = [jsonl, tensorboard, wandb, mlflow]     (jsonl is required: plots, resume and
                                                             diagnostics read metrics.jsonl)

    jsonl        <run>/metrics.jsonl, one JSON object per iteration (every value as logged)
    tensorboard  <run>/tensorboard/   event files (scalars; config and summary as text)
    wandb        <run>/wandb/         an offline W&B run (``WANDB_MODE=offline``; ``wandb sync`` uploads it)
    mlflow       <run>/mlflow.db      a local MLflow store (SQLite, MLflow's recommended local backend;
                 <run>/mlartifacts/   artifacts) — ``mlflow ui --backend-store-uri sqlite:///<run>/mlflow.db``

Trackers receive the numeric scalars of each record (nested dicts flattened with "/", booleans as
0/1); non-numeric values stay in metrics.jsonl only. The run config is logged once (W&B config,
MLflow params + config.json artifact, a TensorBoard text), and the summary at the end.

:func:`validate_sinks` checks the names and that each tracker's package is installed, so a
missing package stops ``vapo train`` before a run directory exists.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
import uuid
from pathlib import Path
from typing import Any

from vapo.errors import ConfigError, did_you_mean
from vapo.train.rundir import append_jsonl

# sink name -> (module that must be importable, pip extra)
SINKS: dict[str, str | None] = {"jsonl": None, "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def validate_sinks(cfg: Any) -> list[str]:
    """The configured sink names, checked: known, no repeats, jsonl present, packages installed."""
    names = list(cfg.logging.sinks)
    for n in names:
        if n not in SINKS:
            raise ConfigError(f"unknown sink {n!r}.{did_you_mean(str(n), SINKS)}", where="logging.sinks",
                              fix=f"use any of: {', '.join(SINKS)}, e.g. --set 'logging.sinks=[jsonl, tensorboard]'")
    if len(set(names)) != len(names):
        raise ConfigError(f"logging.sinks names a sink twice: {names}", where="logging.sinks", fix="list each sink once")
    if "jsonl" not in names:
        raise ConfigError("logging.sinks must include jsonl (metrics.jsonl is what plots, resume and diagnostics read)",
                          where="logging.sinks", fix=f"e.g. --set 'logging.sinks=[jsonl, {', '.join(names) or 'tensorboard'}]'")
    for n in names:
        module = SINKS[n]
        if module is not None and not _installed(module):
            raise ConfigError(f"the {n} sink needs the {module} package, which is not installed", where="logging.sinks",
                              fix=f"pip install 'vapo[logging]' (or pip install {module}), or remove {n} from logging.sinks")
    return names


def scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric scalars of ``record``, nested dicts flattened as ``a/b``; bools as 0/1."""
    out: dict[str, float] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(scalars(v, key + "/"))
        elif isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, int | float) and math.isfinite(v):
            out[key] = float(v)
    return out


# ---------------------------------------------------------------------------------------- sinks
class JsonlSink:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"

    def log_config(self, config: dict[str, Any]) -> None:
        pass  # config.yaml is written by the run itself

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        append_jsonl(self.path, metrics)

    def log_summary(self, summary: dict[str, Any]) -> None:
        pass  # summary.json is written by the run itself

    def close(self) -> None:
        pass


class TensorBoardSink:
    def __init__(self, run_dir: Path, resume_step: int | None):
        from torch.utils.tensorboard import SummaryWriter  # optional extra: vapo[logging]

        # purge_step drops events logged after the checkpoint a resumed run restarts from
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step)

    def log_config(self, config: dict[str, Any]) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```", 0)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        for k, v in scalars(metrics).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_summary(self, summary: dict[str, Any]) -> None:
        step = int(summary.get("iterations", 0))
        for k, v in scalars(summary).items():
            self.writer.add_scalar(f"summary/{k}", v, step)
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=2) + "\n```", step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    ID_FILE = "wandb_run_id"

    def __init__(self, run_dir: Path, project: str):
        import wandb  # optional extra: vapo[logging]

        id_file = run_dir / self.ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id + "\n")
        os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, name=run_dir.name, id=run_id, dir=str(run_dir), mode="offline",
                              resume="allow", reinit="create_new", settings=wandb.Settings(console="off", x_disable_stats=True))

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(scalars(metrics), step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for k, v in scalars(summary, "summary/").items():
            self.run.summary[k] = v

    def close(self) -> None:
        import wandb  # optional extra: vapo[logging]

        self.run.finish()
        # the transaction log is written by W&B's service process; shutting it down flushes the file
        wandb.teardown()


class MlflowSink:
    ID_FILE = "mlflow_run_id"

    def __init__(self, run_dir: Path, project: str):
        from mlflow.tracking import MlflowClient  # optional extra: vapo[logging]

        d = run_dir.resolve()
        self.uri = f"sqlite:///{d / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=self.uri)
        id_file = run_dir / self.ID_FILE
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
        else:
            exp = self.client.get_experiment_by_name(project)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                project, artifact_location=(d / "mlartifacts").as_uri())
            self.run_id = self.client.create_run(exp_id, run_name=run_dir.name).info.run_id
            id_file.write_text(self.run_id + "\n")

    def log_config(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param  # optional extra: vapo[logging]

        flat = flat_keys(config)
        params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:6000]) for k, v in flat.items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        self.client.log_dict(self.run_id, config, "config.json")

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric  # optional extra: vapo[logging]

        ts = int(time.time() * 1000)
        ms = [Metric(k, v, ts, step) for k, v in scalars(metrics).items()]
        for i in range(0, len(ms), 500):
            self.client.log_batch(self.run_id, metrics=ms[i : i + 500])

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.log_metrics({"summary": summary}, int(summary.get("iterations", 0)))
        self.client.log_dict(self.run_id, summary, "summary.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def flat_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{dotted key: leaf value}`` (an empty dict is a leaf). Also
    importable from :mod:`vapo.config`."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Sinks:
    """All configured sinks behind one interface. ``log_metrics(record, step)`` writes the record to
    metrics.jsonl as it is and its numeric scalars to each tracker."""

    def __init__(self, sinks: list[Any]):
        self.sinks = sinks

    def log_config(self, config: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log_config(config)

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        for s in self.sinks:
            s.log_metrics(metrics, step)

    def log_eval(self, results: dict[str, dict[str, Any]], step: int) -> None:
        """Evaluation results by split to the trackers as ``eval/<split>/<metric>`` (eval.jsonl,
        written by the run, is their jsonl record)."""
        keep = ("accuracy", "pass_at_k", "by_size", "mean_length", "truncated_frac")
        record = {"eval": {split: {k: r[k] for k in keep if k in r} for split, r in results.items()}}
        for s in self.sinks:
            if not isinstance(s, JsonlSink):
                s.log_metrics(record, step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        for s in self.sinks:
            s.log_summary(summary)

    def close(self) -> None:
        for s in self.sinks:
            s.close()

    def __enter__(self) -> Sinks:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def make_sinks(cfg: Any, run_dir: str | Path, *, resume_step: int | None = None) -> Sinks:
    """Open the sinks of ``cfg.logging.sinks`` in ``run_dir`` (validated first). A resumed run
    (``resume_step``) continues the same W&B / MLflow run and drops TensorBoard events after it."""
    names = validate_sinks(cfg)
    d = Path(run_dir)
    out: list[Any] = []
    for n in names:
        if n == "jsonl":
            out.append(JsonlSink(d))
        elif n == "tensorboard":
            out.append(TensorBoardSink(d, resume_step))
        elif n == "wandb":
            out.append(WandbSink(d, cfg.logging.project))
        elif n == "mlflow":
            out.append(MlflowSink(d, cfg.logging.project))
    return Sinks(out)
