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

import copy
import json
import random
import sys
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel

from vapo.errors import ConfigError, VapoError, unknown_name_error
from vapo.models.critic import Critic
from vapo.models.options import (  # noqa: F401  re-exported: the loading options belong to this API
    DTYPES,
    OPTIONS_KEY,
    add_lora,
    apply_model_options,
    enable_checkpointing,
    has_lora,
    is_checkpointing,
    merge_lora,
    model_options,
    saved_lora_weights,
)
from vapo.models.policy import (
    MODEL_SIZES,
    _check_model_dir,
    ensure_tokenizer_compatible,
    load_policy,
    load_tokenizer,
)
from vapo.models.tokenizer import (
    build_char_tokenizer,
    prompt_token_ids,
    render_prompt,
    set_prompt_format,
)


# ---------------------------------------------------------------------------------------- loading
def load_model(cfg: Any) -> tuple[Any, Any]:
    """The policy and tokenizer of ``cfg.model.path`` with the config's options applied and the
    prompt format (chat template, system prompt) stored on the tokenizer."""
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
    mc, cc = cfg.model, cfg.algo.critic
    zero_init = cc.head_init == "zero"
    if mc.critic_path is None:
        critic = Critic.from_policy(policy, zero_init=zero_init, surprise=cc.surprise_input, history=cc.surprise_history)
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
        frozen = copy.deepcopy(policy) if cc.surprise_input else None
        critic = Critic(backbone, zero_init=zero_init, surprise_policy=frozen,
                        history=cc.surprise_history).to(next(policy.parameters()).device)
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


def train_demonstrations(task: Any, n: int = 256) -> list[tuple[str, str]]:
    """(where, solution) pairs of the train split: every train row of a file-backed task, else
    ``n`` samples."""
    rows = getattr(task, "rows", None)
    if isinstance(rows, dict) and rows.get("train"):
        return [(p.meta.get("source", f"train row {i + 1}"), p.solution) for i, p in enumerate(rows["train"])]
    rng = random.Random(1)
    return [(f"train sample {i}", task.sample(rng, "train").solution) for i in range(n)]


def check_answer_budget(cfg: Any, tokenizer: Any, task: Any) -> str | None:
    """A warning (printed on stderr, and returned) when ``rollout.max_new_tokens`` is shorter than
    some of the task's train demonstrations (solution + EOS, in tokens): answers that long are
    certain to be cut off unfinished. Not refused: short budgets are legitimate for smoke runs."""
    budget = cfg.rollout.max_new_tokens
    lens = [(len(tokenizer.encode(sol, add_special_tokens=False)) + 1, where) for where, sol in train_demonstrations(task)]
    over = [(n, where) for n, where in lens if n > budget]
    if not over:
        return None
    longest, where = max(over)
    most = "most answers" if 2 * len(over) >= len(lens) else "answers that long"
    what = (f"rollout.max_new_tokens={budget} is shorter than {len(over)} of {len(lens)} train demonstrations "
            f"(longest: {where}, {longest} tokens with EOS): {most} will be cut off unfinished; "
            f"set rollout.max_new_tokens={longest} to leave room for them")
    print(f"[vapo] warning: {what}", file=sys.stderr, flush=True)
    return what


def validate_model(cfg: Any, task: Any = None) -> dict[str, Any]:
    """Check ``cfg.model`` without loading weights; raise VapoError naming what is wrong and how
    to fix it. Checks: the directory and its config.json, a tokenizer with an EOS token, the chat
    template renders, the vocabulary fits the embedding, the critic directory, peft for LoRA, and
    (given ``task``) that the longest prompt plus ``rollout.max_new_tokens`` fits the context and
    that the train demonstrations fit ``rollout.max_new_tokens`` (:func:`check_answer_budget`).

    Returns ``{"context": int, "longest_prompt": int, "chat_template": bool}``.
    """
    mc = cfg.model
    if mc.lora_rank > 0:
        try:  # peft is the optional extra vapo[hf]: checked only when LoRA is asked for
            import peft  # noqa: F401
        except ImportError as e:
            raise ConfigError("model.lora_rank > 0 needs the peft package", where="model.lora_rank",
                              fix="pip install 'vapo[hf]' (or set model.lora_rank=0)") from e
    if mc.path is None:
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
        check_answer_budget(cfg, tokenizer, task)
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
