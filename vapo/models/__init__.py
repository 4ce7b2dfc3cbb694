"""Models: the char-level tokenizer, the policy (a HF causal LM of a named size, or any local
Hugging Face causal LM with its own tokenizer, see :mod:`vapo.models.hf`), the critic (backbone +
scalar value head) and the batched log-prob / value computations over responses."""

from vapo.models.critic import Critic
from vapo.models.forward import response_logprobs, response_values
from vapo.models.hf import build_critic, load_model, model_options, validate_model
from vapo.models.policy import (
    MODEL_SIZES,
    ModelSize,
    build_policy,
    count_parameters,
    ensure_tokenizer_compatible,
    load_policy,
    load_policy_and_tokenizer,
    load_tokenizer,
    policy_config,
)
from vapo.models.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    VOCAB,
    VOCAB_SIZE,
    build_char_tokenizer,
    decode_responses,
    encode_chars,
    encode_prompts,
    is_char_tokenizer,
    prompt_format,
    prompt_token_ids,
    render_prompt,
    set_prompt_format,
)

__all__ = [
    "BOS_ID", "EOS_ID", "MODEL_SIZES", "PAD_ID", "UNK_ID", "VOCAB", "VOCAB_SIZE", "Critic", "ModelSize",
    "build_char_tokenizer", "build_critic", "build_policy", "count_parameters", "decode_responses", "encode_chars",
    "encode_prompts", "ensure_tokenizer_compatible", "is_char_tokenizer", "load_model", "load_policy",
    "load_policy_and_tokenizer", "load_tokenizer", "model_options", "policy_config", "prompt_format",
    "prompt_token_ids", "render_prompt", "response_logprobs", "response_values", "set_prompt_format",
    "validate_model",
]
