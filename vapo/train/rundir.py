"""Run directories and atomic checkpoints.

Layout of ``runs/<name>/``::

    config.yaml            the resolved config (exactly what ran)
    metrics.jsonl          one JSON line per RL iteration
    eval.jsonl             one JSON line per evaluation (iteration, split, accuracy by bucket, pass@k)
    events.jsonl           phase events (SFT, value pretraining, interrupts, resumes)
    checkpoints/step_N/    policy/ (HF save_pretrained + tokenizer), critic/ (safetensors),
                           trainer_state.pt (optimizers, schedulers, RNG states, data cursor)
    checkpoints/critic_init/  the critic before value pretraining (for diagnostics)
    plots/*.png, summary.json

A new run never overwrites an old one; checkpoints are written to a temporary directory and
renamed into place, so a killed run leaves either the old or the new checkpoint, never half.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from vapo.errors import VapoError

_STEP_RE = re.compile(r"^step_(\d+)$")


def new_run_dir(runs_dir: str | Path, name: str | None, default_name: str) -> Path:
    """Create a fresh run directory. An explicit name that exists is an error; the default name
    gets a numeric suffix (-2, -3, ...) instead."""
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    if name is not None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise VapoError(f"run name {name!r} has characters other than letters, digits, '.', '_' and '-'",
                            where="--name", fix="choose a simpler name")
        path = root / name
        try:
            path.mkdir()
        except FileExistsError:
            raise VapoError(f"run directory {path} already exists; a new run never overwrites an old one",
                            where="--name", fix=f"choose another --name, or continue it with --resume {path}") from None
        return path
    for i in range(1, 10_000):
        path = root / (default_name if i == 1 else f"{default_name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise VapoError(f"too many runs named {default_name}-N in {root}", fix="pass --name")


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a kill loses at most the line being written)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file, skipping a torn last line (from a kill mid-write)."""
    if not path.is_file():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise VapoError(f"line {i + 1} is not valid JSON", where=str(path), fix="repair or remove that line") from None
    return out


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """Completed checkpoints of a run, sorted by step."""
    ck = run_dir / "checkpoints"
    if not ck.is_dir():
        return []
    found = []
    for p in ck.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / "COMPLETE").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path]:
    found = checkpoint_dirs(run_dir)
    if not found:
        raise VapoError(f"no complete checkpoint in {run_dir / 'checkpoints'}",
                        where=str(run_dir), fix="start a new run; this one was stopped before its first checkpoint")
    return found[-1]


class AtomicDir:
    """Write a directory under a temporary name, then rename it into place.

    Usage: ``with AtomicDir(final) as tmp: write files into tmp``. On success a ``COMPLETE``
    marker is written and ``tmp`` is renamed to ``final`` (replacing an older copy); on error the
    temporary directory is removed and ``final`` is untouched.
    """

    def __init__(self, final: Path):
        self.final = Path(final)
        self.tmp = self.final.parent / f".tmp-{self.final.name}-{os.getpid()}-{time.time_ns()}"

    def __enter__(self) -> Path:
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        (self.tmp / "COMPLETE").write_text(str(time.time()))
        old = None
        if self.final.exists():
            old = self.final.parent / f".old-{self.final.name}-{time.time_ns()}"
            os.rename(self.final, old)
        os.rename(self.tmp, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
