"""The policy: a Hugging Face causal LM (Qwen2) built from a named size, or loaded from a directory.

Sizes are tiny on purpose: the built-in tasks are character-level and the whole pipeline (SFT
warm start, RL) has to run on a 2-core CPU in minutes. Parameter counts (char vocabulary of 100,
tied input/output embeddings):

    micro  hidden 64, 3 layers, 4 heads (2 KV heads), MLP 256      ~0.2M parameters (tests, quick runs)
    tiny   hidden 128, 4 layers, 4 heads (2 KV heads), MLP 512    ~1.0M parameters
    small  hidden 256, 6 layers, 8 heads (4 KV heads), MLP 1024   ~5.9M parameters

The models are float32 with PyTorch's scaled-dot-product attention ("sdpa").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from vapo.errors import VapoError, unknown_name_error
from vapo.models.options import DTYPES, OPTIONS_KEY, apply_model_options, saved_lora_weights


@dataclass(frozen=True)
class ModelSize:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    nominal_params: int  # what the name promises; tests hold the real count within 40% of it
    max_position_embeddings: int = 2048  # RoPE: no weights depend on it; covers prompt + the long regime's answers


MODEL_SIZES: dict[str, ModelSize] = {
    "micro": ModelSize(64, 3, 4, 2, 256, nominal_params=200_000),
    "tiny": ModelSize(128, 4, 4, 2, 512, nominal_params=1_000_000),
    "small": ModelSize(256, 6, 8, 4, 1024, nominal_params=6_000_000),
}


def policy_config(size: str, tokenizer: Any) -> Any:
    """The ``Qwen2Config`` of a named size for ``tokenizer``'s vocabulary."""
    if size not in MODEL_SIZES:
        raise unknown_name_error("model size", size, MODEL_SIZES, where="model.size")
    s = MODEL_SIZES[size]
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads,
        num_key_value_heads=s.num_key_value_heads,
        intermediate_size=s.intermediate_size,
        max_position_embeddings=s.max_position_embeddings,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="sdpa",
        dtype="float32",
    )


def build_policy(size: str, tokenizer: Any, seed: int = 0) -> Any:
    """A freshly initialised ``Qwen2ForCausalLM`` of a named size (float32, sdpa attention).

    Deterministic given ``seed``: the weights are drawn under a forked RNG seeded with it, so the
    global torch RNG is left untouched. Returned in eval mode; call ``.train()`` to train.
    """
    config = policy_config(size, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "tokenizer_config.json")


def _check_model_dir(p: Path, where: str) -> None:
    if not p.is_dir():
        raise VapoError(f"model directory {p} does not exist", where=where,
                        fix="pass a directory written by save_pretrained (e.g. runs/<name>/checkpoints/step_N/policy)")
    if not (p / "config.json").is_file():
        raise VapoError(f"{p} has no config.json", where=where,
                        fix="pass a Hugging Face model directory written by save_pretrained")


def load_policy(path: str | Path, options: dict[str, Any] | None = None) -> Any:
    """Load a causal LM saved with ``save_pretrained`` (``AutoModelForCausalLM``), eval mode.

    ``options`` (see :func:`vapo.models.options.model_options`): ``dtype`` ("float32" | "bfloat16"),
    ``gradient_checkpointing`` (bool) and ``lora`` (peft LoRA settings or None). When omitted they
    are read from the ``vapo_options`` entry that a saved policy carries in its config.json (so a
    checkpoint reloads as it was trained), else float32, no checkpointing, no LoRA.

    Raises VapoError when ``path`` is not a directory holding a causal-LM ``config.json`` and
    weights. The tokenizer is loaded separately (``AutoTokenizer.from_pretrained(path)``), or both
    together with :func:`load_policy_and_tokenizer`.
    """
    p = Path(path)
    _check_model_dir(p, "load_policy")
    if options is None:
        try:
            options = json.loads((p / "config.json").read_text()).get(OPTIONS_KEY) or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise VapoError(f"{p / 'config.json'} is not a JSON object: {e}", where="load_policy",
                            fix="re-save the model with save_pretrained") from e
    dtype = options.get("dtype", "float32")
    try:
        if options.get("lora") and saved_lora_weights(p):
            # a checkpoint of a LoRA policy: its layers are saved as base_layer + lora_A/B, which
            # apply_model_options loads after injecting the adapters into a model built from config
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(p), dtype=DTYPES[dtype],
                                                     attn_implementation="sdpa")
        else:
            model = AutoModelForCausalLM.from_pretrained(p, dtype=DTYPES[dtype], attn_implementation="sdpa")
    except Exception as e:  # transformers raises OSError/ValueError/KeyError for broken directories
        raise VapoError(f"could not load a causal LM from {p}: {type(e).__name__}: {e}", where="load_policy",
                        fix="check that the directory holds config.json and model.safetensors of a causal LM") from e
    apply_model_options(model, options, weights_dir=p)
    return model.eval()


def load_tokenizer(path: str | Path, *, where: str = "model.path") -> Any:
    """``AutoTokenizer.from_pretrained(path)`` with a clear error when there is none. A tokenizer
    without a pad token pads with its EOS (``pad_token = eos_token``); one without EOS is refused."""
    p = Path(path)
    if p.is_dir() and not any((p / f).is_file() for f in TOKENIZER_FILES):
        # (transformers would build an empty tokenizer from the model's config alone)
        raise VapoError(f"{p} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})", where=where,
                        fix="save the tokenizer next to the model with tokenizer.save_pretrained(dir)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(p)
    except Exception as e:
        raise VapoError(f"could not load a tokenizer from {p}: {type(e).__name__}: {e}", where=where,
                        fix="save the tokenizer next to the model with tokenizer.save_pretrained(dir) "
                            "(tokenizer.json or tokenizer.model and tokenizer_config.json)") from e
    if tokenizer.eos_token_id is None:
        raise VapoError(f"the tokenizer in {p} has no EOS token: generation could never end", where=where,
                        fix='set "eos_token" in tokenizer_config.json (e.g. the chat end-of-turn token "<|im_end|>")')
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy_and_tokenizer(path: str | Path, options: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """``(load_policy(path, options), load_tokenizer(path))``, checked to be compatible."""
    model = load_policy(path, options)
    tokenizer = load_tokenizer(path, where=str(path))
    ensure_tokenizer_compatible(model, tokenizer, where=str(path))
    return model, tokenizer


def ensure_tokenizer_compatible(model: Any, tokenizer: Any, *, where: str = "model") -> None:
    """Raise VapoError unless every token id of ``tokenizer`` indexes a row of the model's embedding
    and pad/eos exist (BOS is optional: Qwen2.5's tokenizers have none). (An embedding larger than
    the vocabulary, e.g. padded to a multiple of 64, is allowed.)"""
    n_emb = model.get_input_embeddings().weight.shape[0]
    n_tok = len(tokenizer)
    if n_tok > n_emb:
        raise VapoError(f"the tokenizer has {n_tok} tokens but the model's embedding has only {n_emb} rows",
                        where=where, fix="load the tokenizer that was saved with this model")
    for name in ("pad_token_id", "eos_token_id"):
        if getattr(tokenizer, name, None) is None:
            raise VapoError(f"the tokenizer has no {name.removesuffix('_id')}", where=where,
                            fix="set it on the tokenizer (e.g. tokenizer.pad_token = tokenizer.eos_token) or use build_char_tokenizer()")


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
