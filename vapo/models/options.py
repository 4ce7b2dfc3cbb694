"""Loading options of a policy or critic: dtype, gradient checkpointing and LoRA adapters.

They travel with the weights: :func:`apply_model_options` records them in the model's config
(``vapo_options`` in config.json, :data:`OPTIONS_KEY`), so a checkpoint reloads as it was trained.
This module depends on no other model module (policy, critic and hf all import it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vapo.errors import ConfigError, VapoError

OPTIONS_KEY = "vapo_options"  # in config.json: dtype, gradient checkpointing and LoRA of a saved policy
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def model_options(mc: Any) -> dict[str, Any]:
    """The loading options of a ``ModelConfig``: dtype, gradient checkpointing, LoRA (or None)."""
    lora = None
    if mc.lora_rank > 0:
        lora = {"r": mc.lora_rank, "alpha": mc.lora_alpha, "dropout": mc.lora_dropout,
                "target_modules": list(mc.lora_target_modules)}
    return {"dtype": mc.dtype, "gradient_checkpointing": mc.gradient_checkpointing, "lora": lora}


def apply_model_options(model: Any, options: dict[str, Any], *, weights_dir: str | Path | None = None) -> Any:
    """Apply ``options`` (see :func:`model_options`) to ``model`` in place and record them in its
    config. With LoRA, only the adapters stay trainable; adapter weights saved in ``weights_dir``
    (a checkpoint of a LoRA policy) are loaded back."""
    dtype = options.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}", where="model.dtype", fix=f"use one of {', '.join(DTYPES)}")
    if next(model.parameters()).dtype != DTYPES[dtype]:
        model.to(DTYPES[dtype])
    if options.get("lora"):
        add_lora(model, options["lora"], weights_dir=weights_dir)
    if options.get("gradient_checkpointing"):
        enable_checkpointing(model)
    setattr(model.config, OPTIONS_KEY, dict(options))
    return model


# ---------------------------------------------------------------------------------------- LoRA
def add_lora(model: Any, lora: dict[str, Any], *, weights_dir: str | Path | None = None) -> None:
    """Inject LoRA adapters (peft) into ``model``'s ``target_modules`` in place and freeze every
    other weight. The model keeps its class (``Qwen2ForCausalLM``, ...), so the forward passes of
    :mod:`vapo.models.forward` and ``save_pretrained`` work unchanged (the adapters are saved with
    the weights)."""
    try:  # peft is the optional extra vapo[hf]: imported only when LoRA is asked for
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as e:
        raise ConfigError("model.lora_rank > 0 needs the peft package", where="model.lora_rank",
                          fix="pip install 'vapo[hf]' (or set model.lora_rank=0)") from e
    if not any(_is_lora_layer(m) for m in model.modules()):
        try:
            inject_adapter_in_model(LoraConfig(r=int(lora["r"]), lora_alpha=float(lora["alpha"]),
                                               lora_dropout=float(lora["dropout"]),
                                               target_modules=list(lora["target_modules"])), model)
        except ValueError as e:
            raise ConfigError(f"could not add LoRA adapters: {e}", where="model.lora_target_modules",
                              fix="name linear layers of this architecture, e.g. [q_proj, k_proj, v_proj, o_proj]") from e
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    if weights_dir is not None and saved_lora_weights(weights_dir):
        saved = _read_safetensors(Path(weights_dir))
        missing, _ = model.load_state_dict(saved, strict=False)
        if getattr(model.config, "tie_word_embeddings", False):
            model.tie_weights()
        missing = [k for k in missing if not k.endswith("lm_head.weight")]
        if missing:
            raise VapoError(f"the LoRA checkpoint in {weights_dir} lacks {len(missing)} weights (e.g. {missing[0]})",
                            where="load_policy", fix="load a checkpoint saved by vapo with the same LoRA settings")


def saved_lora_weights(directory: str | Path) -> bool:
    """True when the safetensors weights in ``directory`` hold LoRA adapters (a saved LoRA policy)."""
    for f in Path(directory).glob("*.safetensors"):
        if f.name != "value_head.safetensors":
            with safe_open(str(f), "pt") as fh:
                if any("lora_" in k for k in fh.keys()):
                    return True
    return False


def enable_checkpointing(model: Any) -> None:
    """Activation (gradient) checkpointing, non-reentrant, through whichever API transformers has."""
    fn = getattr(model, "activation_checkpointing_enable", None)
    if fn is not None:
        fn(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_checkpointing(model: Any) -> bool:
    if hasattr(model, "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def _is_lora_layer(module: Any) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "get_base_layer")


def has_lora(model: Any) -> bool:
    return any(_is_lora_layer(m) for m in model.modules())


def merge_lora(model: Any) -> Any:
    """Fold every LoRA adapter into its base weight and put the plain layer back (in place).
    Used on the critic's copy of a LoRA policy's backbone: the critic trains all its weights."""
    for name, module in list(model.named_modules()):
        if _is_lora_layer(module):
            module.merge()
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
    return model


def _read_safetensors(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        if f.name != "value_head.safetensors":
            out.update(load_file(str(f)))
    return out


__all__ = ["DTYPES", "OPTIONS_KEY", "add_lora", "apply_model_options", "enable_checkpointing", "has_lora",
           "is_checkpointing", "merge_lora", "model_options", "saved_lora_weights"]
