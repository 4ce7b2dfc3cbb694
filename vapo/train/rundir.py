"""Run directories and atomic checkpoints.

Layout of ``runs/<name>/``::

    config.yaml            the resolved config (exactly what ran)
    metrics.jsonl          one JSON line per RL iteration
    eval.jsonl             one JSON line per evaluation (iteration, split, accuracy by bucket, pass@k)
    events.jsonl           phase events (SFT, value pretraining, interrupts, resumes)
    checkpoints/step_N/    policy/ (HF save_pretrained + tokenizer), critic/ (safetensors),
                           trainer_state.pt (optimizers, schedulers, RNG states, data cursor),
                           MANIFEST.json (sizes and sha256, written last; see checkpoint.py)
    checkpoints/critic_init/  the critic before value pretraining (for diagnostics)
    .lock                  held (flock) by the process that trains the run
    plots/*.png, summary.json

A new run never overwrites an old one; checkpoints are written to a temporary directory and
renamed into place, so a killed run leaves either the old or the new checkpoint, never half.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from vapo.errors import VapoError

_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
LOCK_FILE = ".lock"


def check_run_name(name: str) -> str:
    """Return ``name`` if it is a safe run-directory name: one path component of letters, digits,
    '.', '_' and '-', not starting with '.', at most 200 characters. So ``runs/<name>`` can never
    escape ``runs/`` (no '..', no separator, no absolute path, not empty)."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > 200:
        shown = name if isinstance(name, str) else type(name).__name__
        raise VapoError(f"run name {shown!r} is not a plain name: use letters, digits, '.', '_' and '-', "
                        "not starting with '.', at most 200 characters (it names a directory under runs/)",
                        where="--name", fix="choose a simpler name, e.g. --name my-run-1")
    return name


def plan_run_dir(runs_dir: str | Path, name: str | None, default_name: str) -> Path:
    """The directory :func:`new_run_dir` would create, checked but *not created*: call it before
    any other validation that may fail, so a bad invocation leaves nothing behind."""
    root = Path(runs_dir)
    if root.exists() and not root.is_dir():
        raise VapoError(f"{root} exists and is not a directory", where="train.runs_dir", fix="point train.runs_dir at a directory")
    if name is not None:
        path = root / check_run_name(name)
        if path.exists():
            raise VapoError(f"run directory {path} already exists; a new run never overwrites an old one",
                            where="--name", fix=f"choose another --name, or continue it with --resume {path}")
        return path
    check_run_name(default_name)
    for i in range(1, 10_000):
        path = root / (default_name if i == 1 else f"{default_name}-{i}")
        if not path.exists():
            return path
    raise VapoError(f"too many runs named {default_name}-N in {root}", fix="pass --name")


def new_run_dir(runs_dir: str | Path, name: str | None, default_name: str) -> Path:
    """Create a fresh run directory. An explicit name that exists is an error; the default name
    gets a numeric suffix (-2, -3, ...) instead. Names are checked by :func:`check_run_name`."""
    root = Path(runs_dir)
    plan_run_dir(root, name, default_name)  # same checks, same messages, before anything is created
    root.mkdir(parents=True, exist_ok=True)
    if name is not None:
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


class RunLock:
    """An exclusive ``fcntl.flock`` on ``<run_dir>/.lock``, held for the life of a training process.

    A second process that tries to lock the same run gets a VapoError naming the holder's pid. The
    kernel releases the lock when its holder exits, however it exits (``kill -9`` included), so a
    stale ``.lock`` file of a dead process never blocks. Usage: ``with RunLock(run_dir): ...``.
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise VapoError(f"run {self.run_dir} is in use by another process (pid {holder})", where=str(self.run_dir),
                            fix="wait for that process to finish (or stop it), or start a new run with another --name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a kill loses at most the line being written)."""
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file (gzip-compressed when its name ends in .gz, as the compact metrics `vapo
    compare` writes), skipping a torn last line (from a kill mid-write)."""
    if not path.is_file():
        return []
    out = []
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = text.splitlines()
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
