"""Where a model's weights live in memory, and why it matters for reproducible numbers.

``from_pretrained`` memory-maps ``model.safetensors`` and leaves every weight a view into that one
mapping, at the offset the file gives it (a multiple of 8 bytes). A model built or trained in
memory has each weight in an allocation of its own, which PyTorch aligns to 64 bytes. MKL, the
CPU build's BLAS, takes alignment-dependent code paths in its matrix-vector kernels: a one-row
product ``x [1, H] · Wᵀ`` (a decoding step with one live row, the LM head of a one-row prefill)
can differ in the last bit between the same weights at the two alignments, while products of
several rows agree. So a run whose warm start came from the cache and one that trained it in the
same process drew the same tokens but recorded log-probabilities that differed by ~1e-7 in a few
one-row steps, and their metrics drifted apart (~1e-8 relative) after a few iterations.

:func:`own_memory` gives every CPU parameter and buffer memory of its own, so a loaded model is
laid out exactly like one that was trained in memory (docs/reliability.md, "Same seed, same
numbers").
"""

from __future__ import annotations

from typing import Any

import torch

ALIGNMENT = 64  # bytes: PyTorch's CPU allocator aligns every allocation to this


def own_memory(model: Any) -> Any:
    """Copy each CPU parameter and buffer of ``model`` into an allocation of its own (64-byte
    aligned, contiguous), in place; returns ``model``. Tied weights stay tied (a shared
    ``Parameter`` is one object and is copied once). Tensors on other devices are left as they
    are (``.to(device)`` already copied them)."""
    with torch.no_grad():
        for p in model.parameters():  # each shared Parameter once
            if p.device.type == "cpu":
                p.data = p.data.clone(memory_format=torch.contiguous_format)
        for module in model.modules():
            for name, b in list(module._buffers.items()):
                if b is not None and b.device.type == "cpu":
                    module._buffers[name] = b.clone(memory_format=torch.contiguous_format)
    return model


def misaligned(model: Any) -> list[str]:
    """Names of the CPU parameters and buffers whose data is not 64-byte aligned (empty after
    :func:`own_memory`)."""
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    return [n for n, t in named if t.device.type == "cpu" and t.numel() and t.data_ptr() % ALIGNMENT]


__all__ = ["ALIGNMENT", "misaligned", "own_memory"]
