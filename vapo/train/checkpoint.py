"""Checkpoints that prove themselves.

A checkpoint is a directory ``checkpoints/step_N/``::

    policy/              HF ``save_pretrained`` (model.safetensors, config.json) + tokenizer files
    critic/              the critic's ``save_pretrained`` (backbone safetensors + value head)
    ref_policy/          the frozen reference policy, when the KL term is on
    trainer_state.pt     optimizer and scheduler states, RNG states, iteration counter: tensors,
                         numbers, strings, lists, tuples and dicts only, read back with
                         ``torch.load(weights_only=True)`` (no pickled code is ever executed)
    MANIFEST.json        every file above with its size and sha256, written last
    COMPLETE             the marker of a finished write (see ``AtomicDir``)

The directory is written under a temporary name and renamed into place, so a killed process
leaves the previous checkpoint and a stale temporary directory, never a half checkpoint with the
final name. :func:`verify_checkpoint` re-reads the manifest and detects missing, truncated or
corrupted files; :func:`latest_good_checkpoint` falls back to the newest checkpoint that
verifies and says which ones it skipped and why; :func:`prune_checkpoints` keeps the last K.

Nothing here knows the trainer: it saves named parts (objects with ``save_pretrained``) and one
state dict, and hands the state dict back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vapo.errors import VapoError
from vapo.train.rundir import AtomicDir

MANIFEST = "MANIFEST.json"
STATE_FILE = "trainer_state.pt"
MANIFEST_FORMAT = "vapo-checkpoint-v1"
_STEP_RE = re.compile(r"^step_(\d+)$")
# Test hook: seconds to sleep after each part is written (lets a test kill a run mid-write).
PAUSE_ENV = "VAPO_CHECKPOINT_PAUSE"


class CheckpointError(VapoError):
    """A checkpoint could not be written, or one on disk is missing, truncated or corrupted."""


# ------------------------------------------------------------------------------------- writing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        os.fsync(f.fileno())  # the bytes we hash are the bytes on disk
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in (MANIFEST, "COMPLETE"))


def write_manifest(root: Path, step: int | None = None) -> dict[str, Any]:
    """Hash every file under ``root`` and write ``MANIFEST.json`` atomically (temp file, fsync,
    rename). Returns the manifest."""
    entries = {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(root)}
    manifest = {"format": MANIFEST_FORMAT, "step": step, "time": time.time(), "files": entries}
    tmp = root / f".{MANIFEST}.tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MANIFEST)
    return manifest


def _pause() -> None:
    secs = os.environ.get(PAUSE_ENV)
    if secs:
        time.sleep(float(secs))


def save_checkpoint(final: Path, parts: Mapping[str, Any | Sequence[Any]], state: Mapping[str, Any],
                    *, step: int | None = None) -> Path:
    """Write a checkpoint to ``final`` (e.g. ``run/checkpoints/step_12``).

    Args:
        final: the checkpoint directory to create (an existing one is replaced only once the new
            one is complete).
        parts: sub-directory name -> an object with ``save_pretrained(dir)``, or a sequence of
            them written into the same sub-directory (e.g. ``{"policy": (model, tokenizer)}``).
        state: everything else; must hold only tensors, numbers, strings, None, lists, tuples
            and dicts (what ``torch.load(weights_only=True)`` reads back).
        step: recorded in the manifest.

    Raises:
        CheckpointError: the write failed (e.g. the disk is full); ``final`` and every older
            checkpoint are untouched and the partial write is removed.
    """
    final = Path(final)
    try:
        with AtomicDir(final) as tmp:
            for name, objs in parts.items():
                for obj in objs if isinstance(objs, list | tuple) else (objs,):
                    obj.save_pretrained(tmp / name)
                _pause()
            torch.save(dict(state), tmp / STATE_FILE)
            _pause()
            write_manifest(tmp, step)
    except OSError as e:
        older = [p.name for _, p in list_checkpoints(final.parent.parent) if p != final]
        kept = f"the previous checkpoint {older[-1]} is intact" if older else "no earlier checkpoint exists"
        if final.is_dir():
            kept = f"{final.name} keeps its previous contents"
        raise CheckpointError(
            f"could not write checkpoint {final.name}: {e.strerror or e} ({type(e).__name__}); {kept}",
            where=str(final), fix="free disk space (or fix the permissions) and resume with `vapo train --resume <run>`",
        ) from e
    return final


# ------------------------------------------------------------------------------------- reading
def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file of a checkpoint against its manifest; return the manifest.

    Raises:
        CheckpointError: naming the first problem found: no manifest, an unreadable manifest, a
            missing file, a file of the wrong size (truncated) or the wrong sha256 (corrupted).
    """
    path = Path(path)
    where = str(path)
    if not path.is_dir():
        raise CheckpointError("checkpoint directory does not exist", where=where, fix="check the path")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"no {MANIFEST}: the write did not finish, or an older vapo wrote it", where=where,
                              fix="resume from an earlier checkpoint (done automatically by --resume)")
    try:
        manifest = json.loads(mpath.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError(f"unknown format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{MANIFEST} is unreadable ({e})", where=where, fix="resume from an earlier checkpoint") from None
    if STATE_FILE not in files:
        raise CheckpointError(f"the manifest lists no {STATE_FILE}", where=where, fix="resume from an earlier checkpoint")
    for rel, want in sorted(files.items()):
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"file {rel} is missing", where=where, fix="resume from an earlier checkpoint")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise CheckpointError(f"file {rel} has {size} bytes, the manifest says {want['bytes']} (truncated or overwritten)",
                                  where=where, fix="resume from an earlier checkpoint")
        if _sha256(f) != want["sha256"]:
            raise CheckpointError(f"file {rel} does not match its sha256 in the manifest (corrupted)", where=where,
                                  fix="resume from an earlier checkpoint")
    return manifest


def load_state(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """The state dict of checkpoint ``path`` (verified first unless ``verify=False``), read with
    ``weights_only=True``: a checkpoint from elsewhere cannot run code."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    try:
        return torch.load(path / STATE_FILE, weights_only=True, map_location="cpu")
    except Exception as e:  # pickle.UnpicklingError for anything beyond plain data
        raise CheckpointError(f"{STATE_FILE} could not be read as plain data: {str(e).splitlines()[0]}",
                              where=str(path), fix="use a checkpoint written by this version of vapo") from e


def checkpoint_finished(path: Path) -> bool:
    """Whether the write of checkpoint ``path`` finished: it holds the ``COMPLETE`` marker
    :class:`AtomicDir` writes last."""
    return (Path(path) / "COMPLETE").is_file()


def list_checkpoints(run_dir: Path, *, finished: bool = True) -> list[tuple[int, Path]]:
    """The checkpoints ``checkpoints/step_N`` of ``run_dir`` as ``(N, path)``, sorted by step: the
    one listing of checkpoints. ``finished`` (default): only those whose write finished, i.e.
    that hold the ``COMPLETE`` marker :class:`AtomicDir` writes last (every checkpoint since
    manifests were introduced also has its manifest; whether the files still match it is
    :func:`verify_checkpoint`'s question). ``finished=False``: every ``step_N`` directory."""
    ck_dir = Path(run_dir) / "checkpoints"
    if not ck_dir.is_dir():
        return []
    out = []
    for p in ck_dir.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (not finished or checkpoint_finished(p)):
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_good_checkpoint(run_dir: Path, *, log: Callable[[str], None] | None = None
                           ) -> tuple[int, Path, list[tuple[Path, str]]] | None:
    """The newest checkpoint of ``run_dir`` that verifies, as ``(step, path, skipped)`` where
    ``skipped`` lists ``(path, reason)`` for every newer one that did not; ``log`` (if given) is
    called with one line per skipped checkpoint.

    Returns None when the run has no checkpoint at all (it was stopped before its first one).

    Raises:
        CheckpointError: checkpoints exist but none verifies (the reasons are listed).
    """
    skipped: list[tuple[Path, str]] = []
    found = list_checkpoints(run_dir, finished=False)
    for step, path in reversed(found):
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            skipped.append((path, e.what))
            if log is not None:
                log(f"skipping checkpoint {path.name}: {e.what}")
            continue
        return step, path, skipped
    if not found:
        return None
    reasons = "; ".join(f"{p.name}: {r}" for p, r in skipped)
    raise CheckpointError(f"no checkpoint verifies ({reasons})", where=str(Path(run_dir) / "checkpoints"),
                          fix="start a new run with the same config (`vapo train -c <run>/config.yaml`)")


def weights_verified(path: Path) -> bool:
    """Whether the weights of checkpoint ``path`` may be used by ``vapo eval`` and ``vapo
    diagnose`` (which read policy/ and critic/, never the trainer state): True when every file
    matches the manifest; False for a checkpoint written before manifests existed (the
    ``COMPLETE`` marker of a finished write, no manifest), usable but unverified.

    Raises:
        CheckpointError: it has a manifest that its files do not match, or it is unfinished.
    """
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST).is_file() and (path / "COMPLETE").is_file():
        return False
    verify_checkpoint(path)
    return True


def readable_checkpoints(run_dir: Path, *, log: Callable[[str], None] | None = None
                         ) -> tuple[list[tuple[int, Path]], list[tuple[Path, str]]]:
    """The checkpoints of ``run_dir`` whose weights may be used (:func:`weights_verified`),
    sorted by step, and ``(path, reason)`` of the skipped ones; ``log`` gets one line per skipped
    or unverified checkpoint."""
    good: list[tuple[int, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for step, path in list_checkpoints(run_dir, finished=False):
        try:
            verified = weights_verified(path)
        except CheckpointError as e:
            skipped.append((path, e.what))
            if log is not None:
                log(f"skipping checkpoint {path.name}: {e.what}")
            continue
        if not verified and log is not None:
            log(f"checkpoint {path.name} has no {MANIFEST} (written before manifests): its files are not verified")
        good.append((step, path))
    return good, skipped


def prune_checkpoints(run_dir: Path, keep: int, *, protect: Sequence[int] = (0,)) -> list[Path]:
    """Delete all but the ``keep`` newest finished checkpoints (``keep`` = 0 keeps all), plus any
    stale temporary directory of an interrupted write. Steps in ``protect`` are never deleted
    (step 0, the value-pretrained start of RL, is read by the diagnostics). Call it while holding
    the run's lock, right after a successful save. Returns the deleted paths."""
    ck = Path(run_dir) / "checkpoints"
    removed: list[Path] = []
    if not ck.is_dir():
        return removed
    for p in ck.iterdir():  # leftovers of a killed AtomicDir write (only one writer: the lock holder)
        if p.is_dir() and (p.name.startswith(".tmp-step_") or p.name.startswith(".old-step_")):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if keep <= 0:
        return removed
    finished = list_checkpoints(run_dir)
    for step, path in finished[:-keep]:
        if step in protect:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


__all__ = [
    "MANIFEST", "STATE_FILE", "CheckpointError", "latest_good_checkpoint", "list_checkpoints", "load_state",
    "prune_checkpoints", "readable_checkpoints", "save_checkpoint", "verify_checkpoint", "weights_verified",
    "write_manifest",
]
