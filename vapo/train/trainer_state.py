"""A trainer's state on disk: what a checkpoint holds beyond the files of vapo.train.checkpoint.

:func:`state_dict` gathers the optimizers, schedulers, random streams and the exploration and
critic-control state; :func:`save_checkpoint` writes them with the models (safetensors, a manifest
written last; vapo.train.checkpoint) and :func:`load_checkpoint` reads them back into a trainer, so
that a resumed run continues exactly. Under torchrun every process takes part and rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from vapo.errors import VapoError
from vapo.models import Critic, load_policy, load_policy_and_tokenizer
from vapo.models.storage import own_memory
from vapo.train import checkpoint as ckpt
from vapo.train.distributed import unsharded_copy

if TYPE_CHECKING:  # the trainer imports this module
    from vapo.train.trainer import Trainer


def state_dict(trainer: Trainer) -> dict[str, Any]:
    """Optimizers (full state, in Optimizer.state_dict()'s format), schedulers and random
    streams: the same on any number of processes (a collective under torchrun)."""
    streams = [st for part in trainer.dist.gather([(k, rng.getstate(), gen.get_state()) for k, (rng, gen) in trainer.streams.items()])
               for st in part]
    s = {
        "iteration": trainer.iteration,
        "actor_opt": trainer.dist.full_optimizer_state(trainer.policy, trainer.actor_opt),
        "actor_sched": trainer.actor_sched.state_dict(),
        "prompt_rng": streams[0][1],
        "sample_gen": streams[0][2],
        "streams": [(rng, gen) for _, rng, gen in sorted(streams, key=lambda x: x[0])],
        "shuffle_gen": trainer.shuffle_gen.get_state(),
        "critic_shuffle_gen": trainer.critic_shuffle_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "exploration": trainer.explorer.state_dict(),
    }
    if trainer.uses_critic:
        s["critic_opt"] = trainer.dist.full_optimizer_state(trainer.critic, trainer.critic_opt)
        s["critic_sched"] = trainer.critic_sched.state_dict()
        s["critic_control"] = trainer.critic_control.state_dict()
    return s


def _full_models(trainer: Trainer, **models: Any) -> dict[str, Any]:
    """The models as plain (unsharded) modules, for saving: themselves in a single process;
    under torchrun unsharded copies on rank 0 (the full weights gathered: a collective, every
    process calls this) and {} on the others."""
    if not trainer.dist.enabled:
        return dict(models)
    full = {name: trainer.dist.full_model_state(m) for name, m in models.items()}
    return {name: unsharded_copy(m, full[name]) for name, m in models.items()} if trainer.dist.is_writer else {}


def save_models(trainer: Trainer, directory: Path, **models: Any) -> None:
    """``save_pretrained`` of each model into directory/<name>: under torchrun the full weights
    are gathered and rank 0 writes them (a collective: every process calls this)."""
    for name, m in _full_models(trainer, **models).items():
        m.save_pretrained(directory / name)


def save_checkpoint(trainer: Trainer) -> Path:
    """Write checkpoints/step_<iteration> (models as safetensors, the rest as plain data read
    back with weights_only=True, a manifest of sizes and sha256 written last; see
    vapo.train.checkpoint), then keep only the last ``train.keep_checkpoints``. Under torchrun
    every process takes part (the full weights and optimizer states are gathered) and rank 0
    alone writes, in the one-process format; the others wait for it.

    Raises:
        CheckpointError: the write failed (e.g. a full disk); the previous checkpoints are intact.
    """
    final = trainer.run_dir / "checkpoints" / f"step_{trainer.iteration}"
    state = state_dict(trainer)  # a collective under torchrun
    models = {"policy": trainer.policy, "critic": trainer.critic if trainer.uses_critic else None,
              "ref_policy": trainer.ref_policy if trainer.uses_ref else None}
    full = _full_models(trainer, **{k: m for k, m in models.items() if m is not None})
    if trainer.dist.is_writer:
        parts: dict[str, Any] = dict(full)
        parts["policy"] = (full["policy"], trainer.tokenizer)
        ckpt.save_checkpoint(final, parts, state, step=trainer.iteration)
        ckpt.prune_checkpoints(trainer.run_dir, trainer.cfg.train.keep_checkpoints)
    trainer.dist.barrier()
    return final


def load_checkpoint(trainer: Trainer, path: Path) -> None:
    """Restore ``trainer`` from the checkpoint at ``path`` (every file checked against its manifest
    first): models laid out in memory as the saving run had them, optimizers, schedulers, random
    streams, exploration and critic-control state, so the run continues exactly."""
    s = ckpt.load_state(path)  # checks every file against the manifest first; weights_only=True
    trainer.policy, trainer.tokenizer = load_policy_and_tokenizer(path / "policy")
    trainer.policy.to(trainer.device)
    if trainer.uses_critic:
        trainer.critic = Critic.from_pretrained(path / "critic").to(trainer.device)
    if trainer.uses_ref:
        trainer.ref_policy = load_policy(path / "ref_policy").to(trainer.device).requires_grad_(False)
    # laid out in memory as in the run that saved them (exact resume; vapo.models.storage)
    for m in (trainer.policy, trainer.critic, trainer.ref_policy):
        if m is not None:
            own_memory(m)
    trainer._shard()
    trainer._make_optimizers()
    trainer.iteration = s["iteration"]
    trainer.dist.load_optimizer_state(trainer.policy, trainer.actor_opt, s["actor_opt"])
    trainer.actor_sched.load_state_dict(s["actor_sched"])
    if trainer.uses_critic:
        trainer.dist.load_optimizer_state(trainer.critic, trainer.critic_opt, s["critic_opt"])
        trainer.critic_sched.load_state_dict(s["critic_sched"])
        if "critic_control" in s:  # checkpoints written before the EV-weighted critic have none
            trainer.critic_control.load_state_dict(s["critic_control"])
    streams = s.get("streams", [(s["prompt_rng"], s["sample_gen"])])
    if len(streams) != trainer.n_streams:
        raise VapoError(f"{path} holds {len(streams)} rollout streams, the config asks for {trainer.n_streams}",
                        where="dist.rollout_streams", fix="resume with the run's own config")
    for k, (rng, gen) in trainer.streams.items():
        rng.setstate(streams[k][0])
        gen.set_state(streams[k][1])
    trainer.shuffle_gen.set_state(s["shuffle_gen"])
    if "critic_shuffle_gen" in s:  # checkpoints from before the critic had its own stream: it starts from its seed
        trainer.critic_shuffle_gen.set_state(s["critic_shuffle_gen"])
    torch.set_rng_state(s["torch_rng"])
    trainer.explorer.load_state_dict(s.get("exploration"))


__all__ = ["load_checkpoint", "save_checkpoint", "save_models", "state_dict"]
