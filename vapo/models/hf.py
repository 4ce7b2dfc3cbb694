"""Hugging Face models from ``model.path``: loading with the model's own tokenizer, dtype,
gradient checkpointing and LoRA, the critic from the same or another directory, and
:func:`validate_model`, which checks all of it before a run directory exists.

    policy, tokenizer = load_model(cfg)          # AutoModelForCausalLM + AutoTokenizer, options applied
    critic = build_critic(cfg, policy)           # copy of the policy's backbone, or model.critic_path
    info = validate_model(cfg, task)             # cheap: config + tokenizer only, no weights

Options travel with the weights: :func:`apply_model_options` writes them into the model's config
(``vapo_options`` in config.json), and the prompt format into the tokenizer's config, so a
checkpoint reloads as it was trained (``vapo eval``, ``--resume``) without the run's config.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from vapo.errors import ConfigError, VapoError
from vapo.models.policy import DTYPES, OPTIONS_KEY, _check_model_dir, load_policy, load_tokenizer


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
    try:
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
    from safetensors import safe_open

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
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        if f.name != "value_head.safetensors":
            out.update(load_file(str(f)))
    return out


# ---------------------------------------------------------------------------------------- loading
def load_model(cfg: Any) -> tuple[Any, Any]:
    """The policy and tokenizer of ``cfg.model.path`` with the config's options applied and the
    prompt format (chat template, system prompt) stored on the tokenizer."""
    from vapo.models.policy import ensure_tokenizer_compatible
    from vapo.models.tokenizer import set_prompt_format

    mc = cfg.model
    p = Path(mc.path)
    _check_model_dir(p, "model.path")
    tokenizer = load_tokenizer(p)
    set_prompt_format(tokenizer, chat_template=mc.chat_template, system_prompt=mc.system_prompt)
    policy = load_policy(p, model_options(mc))
    ensure_tokenizer_compatible(policy, tokenizer, where="model.path")
    return policy, tokenizer


def build_critic(cfg: Any, policy: Any) -> Any:
    """The critic: a copy of ``policy``'s backbone (LoRA merged) or the backbone saved in
    ``model.critic_path``, with a zero value head; dtype and gradient checkpointing as the policy's."""
    from transformers import AutoModel

    from vapo.models.critic import Critic

    mc, cc = cfg.model, cfg.algo.critic
    zero_init = cc.head_init == "zero"
    if mc.critic_path is None:
        critic = Critic.from_policy(policy, zero_init=zero_init, surprise=cc.surprise_input)
    else:
        p = Path(mc.critic_path)
        _check_model_dir(p, "model.critic_path")
        try:
            backbone = AutoModel.from_pretrained(p, dtype=DTYPES[mc.dtype], attn_implementation="sdpa")
        except Exception as e:
            raise VapoError(f"could not load a backbone from {p}: {type(e).__name__}: {e}", where="model.critic_path",
                            fix="point it at a Hugging Face model directory (a causal LM or its base model)") from e
        n_tok = policy.get_input_embeddings().weight.shape[0]
        n_emb = backbone.get_input_embeddings().weight.shape[0]
        if n_emb < n_tok:
            raise VapoError(f"the critic's embedding has {n_emb} rows but the policy's tokenizer needs {n_tok}",
                            where="model.critic_path", fix="use a critic model with the policy's tokenizer")
        import copy

        frozen = copy.deepcopy(policy) if cc.surprise_input else None
        critic = Critic(backbone, zero_init=zero_init, surprise_policy=frozen).to(next(policy.parameters()).device)
    if mc.gradient_checkpointing:
        enable_checkpointing(critic.backbone)
    return critic


# ---------------------------------------------------------------------------------------- validation
def context_length(model_config: Any, tokenizer: Any) -> int:
    """Tokens the model can attend over: ``max_position_embeddings``, or the tokenizer's
    ``model_max_length`` when that is smaller (tokenizers without a limit report ~1e30)."""
    n = int(getattr(model_config, "max_position_embeddings", 0) or 0)
    t = int(min(getattr(tokenizer, "model_max_length", 0) or 0, 10**9))
    if n and t:
        return min(n, t)
    return n or t or 10**9


def task_prompts(task: Any, per_split: int = 256) -> list[tuple[str, str]]:
    """(where, prompt) pairs to check: every row of a file-backed task, else ``per_split`` samples
    of each split."""
    rows = getattr(task, "rows", None)
    if isinstance(rows, dict):
        return [(p.meta.get("source", f"{split} row {i + 1}"), p.prompt) for split, ps in rows.items() for i, p in enumerate(ps)]
    rng = random.Random(0)
    out = []
    for split in ("train", "heldout", "long"):
        for i in range(per_split):
            out.append((f"{split} sample {i}", task.sample(rng, split).prompt))
    return out


def validate_model(cfg: Any, task: Any = None) -> dict[str, Any]:
    """Check ``cfg.model`` without loading weights; raise VapoError naming what is wrong and how
    to fix it. Checks: the directory and its config.json, a tokenizer with an EOS token, the chat
    template renders, the vocabulary fits the embedding, the critic directory, peft for LoRA, and
    (given ``task``) that the longest prompt plus ``rollout.max_new_tokens`` fits the context.

    Returns ``{"context": int, "longest_prompt": int, "chat_template": bool}``.
    """
    from transformers import AutoConfig

    from vapo.models.policy import MODEL_SIZES
    from vapo.models.tokenizer import (
        build_char_tokenizer,
        prompt_token_ids,
        render_prompt,
        set_prompt_format,
    )

    mc = cfg.model
    if mc.lora_rank > 0:
        try:
            import peft  # noqa: F401
        except ImportError as e:
            raise ConfigError("model.lora_rank > 0 needs the peft package", where="model.lora_rank",
                              fix="pip install 'vapo[hf]' (or set model.lora_rank=0)") from e
    if mc.path is None:
        from vapo.errors import unknown_name_error

        if mc.size not in MODEL_SIZES:
            raise unknown_name_error("model size", mc.size, MODEL_SIZES, where="model.size")
        tokenizer = build_char_tokenizer()
        set_prompt_format(tokenizer, chat_template=mc.chat_template, system_prompt=mc.system_prompt)
        ctx, n_vocab = MODEL_SIZES[mc.size].max_position_embeddings, len(tokenizer)
    else:
        p = Path(mc.path)
        _check_model_dir(p, "model.path")
        try:
            mconf = AutoConfig.from_pretrained(p)
        except Exception as e:
            raise VapoError(f"{p / 'config.json'} is not a model config: {type(e).__name__}: {e}", where="model.path",
                            fix="point model.path at a directory written by save_pretrained") from e
        tokenizer = load_tokenizer(p)
        set_prompt_format(tokenizer, chat_template=mc.chat_template, system_prompt=mc.system_prompt)
        render_prompt(tokenizer, "1+1=")  # raises when the template does not render
        n_vocab = int(getattr(mconf, "vocab_size", 0) or getattr(getattr(mconf, "text_config", None), "vocab_size", 0) or 0)
        if n_vocab and len(tokenizer) > n_vocab:
            raise VapoError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {n_vocab}",
                            where="model.path", fix="save the tokenizer that belongs to this model next to it")
        ctx = context_length(mconf, tokenizer)
    if mc.critic_path is not None:
        cp = Path(mc.critic_path)
        _check_model_dir(cp, "model.critic_path")
        cv = json.loads((cp / "config.json").read_text()).get("vocab_size")
        if cv is not None and cv < len(tokenizer):
            raise VapoError(f"the critic's vocabulary has {cv} tokens but the tokenizer has {len(tokenizer)}",
                            where="model.critic_path", fix="use a critic model trained with the policy's tokenizer")
    longest, where_longest = 0, ""
    if task is not None:
        for where, text in task_prompts(task):
            n = len(prompt_token_ids(tokenizer, text))
            if n > longest:
                longest, where_longest = n, where
        need = longest + cfg.rollout.max_new_tokens
        if need > ctx:
            raise VapoError(
                f"the longest prompt ({where_longest}: {longest} tokens) plus rollout.max_new_tokens "
                f"({cfg.rollout.max_new_tokens}) is {need} tokens, more than the model's context of {ctx}",
                where="model.path" if mc.path else "model.size",
                fix=f"lower rollout.max_new_tokens to at most {max(ctx - longest, 0)}, or drop/shorten the long prompts")
    return {"context": ctx, "longest_prompt": longest, "chat_template": bool(tokenizer.init_kwargs["vapo_prompt"]["chat"])}
