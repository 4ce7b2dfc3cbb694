"""Data-parallel training under ``torchrun``: the few things the trainer asks of the process group.

``torchrun --nproc_per_node N -m vapo train ...`` (or ``vapo train --nproc N``) starts N copies of
the same program. :func:`current` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and
returns a :class:`Dist`; without it (a plain ``vapo train``) it returns the single-process
:class:`Dist`, whose every method is the identity, so the trainer reads the same in both cases.

What the trainer asks (docs/distributed.md)::

    streams(S)            which of the run's S rollout streams this process samples
    gather(obj)           every process's obj, in rank order (the scored rollout shares → the global batch)
    micro_batches(mb, n)  this process's share of a global minibatch's micro-batches (same count on every rank)
    all_reduce_sum(x)     Σ over processes (forward outputs of the shares → [B, T] of the global batch)
    reduce_stats(acc)     loss statistics of the shares → those of the global minibatch
    clip_grad_norm(m, c)  the global gradient norm, clipped
    is_writer             rank 0 writes the run directory
    shard(model)          FSDP2 (``fully_shard``) per decoder layer and at the root
    full_params(*models)  the unsharded weights for a while (rollout, evaluation)
    full_state(model)     full weights / optimizer state gathered for a checkpoint

Design: the rollout is split by whole groups (a group's statistics stay on one process); the
scored shares are gathered so that every process holds the global batch (token ids and scalars,
small next to the models); advantages, whitening and token-mean normalisers are then computed on
the global batch, identically everywhere. Forward and backward passes are split by micro-batches
of each global minibatch; gradients are summed over processes (the FSDP2 reduce-scatter with
divide factor 1), so a step's gradient is the one-process gradient of the same minibatch.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AutoModel, AutoModelForCausalLM

from vapo.errors import ConfigError, VapoError
from vapo.models import Critic
from vapo.train.batch import micro_batches as split_micro_batches

_CURRENT: Dist | None = None


class Dist:
    """One process of a run: its rank among ``world`` processes. ``Dist()`` is the single process."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self._roots: dict[int, _Root] = {}  # id(model) → its FSDP root (see shard)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes the run directory, the logs and the checkpoints."""
        return self.rank == 0

    # ------------------------------------------------------------------ set-up
    def device(self, name: str) -> torch.device:
        """The torch device of this process for ``train.device`` (cuda:LOCAL_RANK under torchrun)."""
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if self.enabled and name == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        if self.enabled and name.startswith("cuda:"):
            raise ConfigError(f"train.device={name} under torchrun: each process picks cuda:LOCAL_RANK",
                              where="train.device", fix="set train.device=cuda or auto")
        return torch.device(name)

    def streams(self, n_streams: int) -> range:
        """The rollout streams this process samples: stream k belongs to rank k // (S / world)."""
        if n_streams % self.world:
            raise ConfigError(f"dist.rollout_streams={n_streams} does not split over {self.world} processes",
                              where="dist.rollout_streams",
                              fix=f"use a multiple of {self.world} (a run can resume on any number of processes dividing it)")
        per = n_streams // self.world
        return range(self.rank * per, (self.rank + 1) * per)

    # ------------------------------------------------------------------ collectives
    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` (picklable), in rank order."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Σ of ``x`` over processes (in place on a communication-device copy; returned on x's device)."""
        if not self.enabled:
            return x
        y = x.to(self._comm_device())
        torch.distributed.all_reduce(y, op=torch.distributed.ReduceOp.SUM)
        return y.to(x.device)

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on one (e.g. an interrupt seen by one rank)."""
        if not self.enabled:
            return flag
        return bool(self.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)

    def _comm_device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")

    # ------------------------------------------------------------------ the split of the work
    def micro_batches(self, exp: Any, max_tokens: int) -> list[torch.Tensor]:
        """This process's micro-batches (row indices into ``exp``) of the global ``exp``.

        The global packing (vapo.train.batch.micro_batches) is refined until its count is a multiple
        of ``world`` (the largest group is halved), then dealt round-robin: every process runs the
        same number of forward/backward passes (FSDP2 gathers weights in each), and together they
        cover every row once.
        """
        groups = split_micro_batches(exp, max_tokens)
        if not self.enabled:
            return groups
        while len(groups) % self.world:
            i = max(range(len(groups)), key=lambda j: len(groups[j]))
            g = groups[i]
            if len(g) < 2:
                raise VapoError(
                    f"a minibatch of {len(exp)} responses cannot be split into an equal number of micro-batches "
                    f"on {self.world} processes", where="optim.minibatch_size / optim.micro_batch_tokens",
                    fix=f"use a minibatch_size that is a multiple of {self.world}, or raise micro_batch_tokens")
            groups[i : i + 1] = [g[: len(g) // 2], g[len(g) // 2 :]]
        return groups[self.rank :: self.world]

    def reduce_stats(self, acc: Any) -> dict[str, float]:
        """The minibatch statistics of a ``_StatSum`` filled with this process's micro-batches:
        sums added, token-weighted means re-weighted, maxima maxed and minima minimised over
        processes (a process without a value for a key, e.g. no masked token, adds nothing)."""
        if not self.enabled:
            return acc.result()
        parts = self.gather((acc.sums, acc.means, acc.maxs, acc.mins))
        acc.sums, acc.means, acc.maxs, acc.mins = {}, {}, {}, {}
        for sums, means, maxs, mins in parts:  # in rank order: every process gets the same floats
            for k, v in sums.items():
                acc.sums[k] = acc.sums.get(k, 0.0) + v
            for k, (s, w) in means.items():
                s0, w0 = acc.means.get(k, (0.0, 0.0))
                acc.means[k] = (s0 + s, w0 + w)
            for k, v in maxs.items():
                acc.maxs[k] = max(acc.maxs.get(k, v), v)
            for k, v in mins.items():
                acc.mins[k] = min(acc.mins.get(k, v), v)
        return acc.result()

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float) -> float:
        """Clip the (summed) gradient of ``model`` to ``max_norm``; returns its global norm before clipping."""
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if hasattr(gn, "full_tensor"):  # a DTensor under FSDP2
            gn = gn.full_tensor()
        return float(gn)

    # ------------------------------------------------------------------ sharding
    def broadcast_weights(self, model: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into ``model`` on every process (before sharding)."""
        if not self.enabled:
            return
        for t in list(model.state_dict(keep_vars=True).values()):
            y = t.data.to(self._comm_device())
            torch.distributed.broadcast(y, src=0)
            t.data.copy_(y.to(t.device))

    def shard(self, model: torch.nn.Module) -> torch.nn.Module:
        """FSDP2: ``fully_shard`` each decoder layer, then the rest (embeddings, final norm, LM or
        value head) as one root unit around the model. The model object stays what it was (its
        parameters become DTensor shards); forward passes go through :meth:`forward`, so that the
        root's hooks gather the root unit even when the caller uses ``model.base_model`` and the
        head directly (vapo.models.forward does). Gradients are *summed* over processes (divide
        factor 1): the trainer's token weights already carry the global minibatch's normalisers."""
        if not self.enabled:
            return model
        from torch.distributed.fsdp import fully_shard  # lazy: FSDP2 (~1 s), torchrun only

        for layer in _decoder_layers(model):
            fully_shard(layer)
        root = _Root(model)
        fully_shard(root)
        self._roots[id(model)] = root
        for m in self._fsdp_modules(model):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)
        # Make the root unit FSDP's root now (what its first forward would do): a first forward that
        # enters an inner unit directly (the critic probe, generation within full_params) would
        # otherwise make that unit a root of its own, and the root's next forward fails.
        root._get_fsdp_state()._lazy_init()
        return model

    def forward(self, fn: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(model, *args, **kwargs)`` (e.g. vapo.models.response_logprobs), through the FSDP
        root of ``model`` when it is sharded."""
        root = self._roots.get(id(model))
        return fn(model, *args, **kwargs) if root is None else root(fn, *args, **kwargs)

    def _fsdp_modules(self, model: Any) -> list[Any]:
        from torch.distributed.fsdp import FSDPModule  # lazy: FSDP2 (~1 s), torchrun only

        root = self._roots.get(id(model))
        return [] if root is None else [m for m in root.modules() if isinstance(m, FSDPModule)]

    @contextlib.contextmanager
    def full_params(self, *models: Any) -> Iterator[None]:
        """Within the block the sharded ``models`` hold their full weights as plain tensors (one
        all-gather on entry; no collective inside, so each process may run any number of forward
        passes: rollout, evaluation); resharded on exit."""
        mods = [m for model in models if model is not None for m in self._fsdp_modules(model)]
        for m in mods:
            m.set_reshard_after_forward(False)
            m.unshard()
        try:
            yield
        finally:
            for m in mods:
                m.reshard()
                m.set_reshard_after_forward(True)

    # ------------------------------------------------------------------ checkpoints
    def full_model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full (unsharded) state dict of ``model`` on CPU, on every process."""
        if not self.enabled:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import (  # lazy: FSDP2 (~1 s), torchrun only
            StateDictOptions,
            get_model_state_dict,
        )

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def full_optimizer_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimizer's full state in ``Optimizer.state_dict()``'s own format (parameters numbered
        in ``model.named_parameters()`` order), so a checkpoint resumes on any number of processes."""
        if not self.enabled or not opt.state:
            # (no state yet: the parameter-free state_dict() is already world-independent, and
            # get_optimizer_state_dict would initialise the state by a zero step, which counts in Adam)
            return opt.state_dict() if self.is_writer else {}
        from torch.distributed.checkpoint.state_dict import (  # lazy: FSDP2 (~1 s), torchrun only
            StateDictOptions,
            get_optimizer_state_dict,
        )

        osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_writer:  # the gathered state lands on rank 0 only
            return {}
        index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
        return {"state": {index[k]: v for k, v in osd["state"].items()},
                "param_groups": [{**g, "params": [index[p] for p in g["params"]]} for g in osd["param_groups"]]}

    def load_optimizer_state(self, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Load a state written by :meth:`full_optimizer_state` (or a one-process checkpoint) into
        ``opt`` of the (sharded) ``model``."""
        if not self.enabled or not state["state"]:
            opt.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (  # lazy: FSDP2 (~1 s), torchrun only
            StateDictOptions,
            set_optimizer_state_dict,
        )

        names = [name for name, _ in model.named_parameters()]
        osd = {"state": {names[i]: v for i, v in state["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
        set_optimizer_state_dict(model, opt, osd, options=StateDictOptions(full_state_dict=True))

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def unsharded_copy(model: Any, state: dict[str, torch.Tensor], *, check: bool = True) -> Any:
    """A plain (unsharded, CPU) copy of a policy or critic holding ``state``: what rank 0 saves.
    ``check=False``: the architecture only (the weights are loaded by the caller)."""
    if isinstance(model, Critic):  # with its frozen π₀ when it has the surprise input
        frozen = model.surprise_policy
        copy = Critic(AutoModel.from_config(model.config),
                      surprise_policy=None if frozen is None else unsharded_copy(frozen, {}, check=False),
                      history=model.has_history)
    else:
        copy = AutoModelForCausalLM.from_config(model.config)
        copy.generation_config = model.generation_config
    if not check:
        return copy
    missing, unexpected = copy.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight") and getattr(model.config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise VapoError(f"gathered weights do not fit the model: missing {sorted(set(missing) - tied)}, "
                        f"unexpected {sorted(unexpected)}", where="vapo.train.distributed.unsharded_copy")
    return copy.to(next(model.parameters()).dtype)


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a Hugging Face causal LM or of a Critic (its backbone's)."""
    base = getattr(model, "backbone", None) or getattr(model, "base_model", model)
    layers = getattr(base, "layers", None)
    if layers is None:
        raise VapoError(f"cannot find the decoder layers of {type(model).__name__} to shard",
                        where="vapo.train.distributed.shard", fix="use a Qwen2/Llama-style model (base_model.layers)")
    return list(layers)


class _Root(torch.nn.Module):
    """The FSDP root around a model: its forward runs ``fn(model, ...)``."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(self.inner, *args, **kwargs)


def current() -> Dist:
    """This process's :class:`Dist`: from torchrun's environment (the process group is initialised
    once: NCCL with CUDA, else gloo), or the single process."""
    global _CURRENT
    if _CURRENT is not None:
        return _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and torch.distributed.is_nccl_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        torch.distributed.init_process_group(backend)
    _CURRENT = Dist(rank, world, local)
    return _CURRENT


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``vapo <argv>`` under torchrun with ``nproc`` processes on this machine; returns its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "vapo", *argv]
    return subprocess.call(cmd)


__all__ = ["Dist", "current", "launch", "unsharded_copy"]
