"""Tiny random Hugging Face models with a real byte-level BPE tokenizer trained on the fly.

    qwen:  Qwen2ForCausalLM, ChatML chat template, EOS "<|im_end|>", pad "<|endoftext|>", no BOS
           (as Qwen2.5's tokenizers)
    llama: LlamaForCausalLM, BOS "<s>", EOS "</s>", no pad token (padding falls back to EOS),
           a Llama-style template that writes BOS itself

Both are saved with ``save_pretrained`` to a directory that ``--set model.path=DIR`` loads.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant] {% endif %}"
)


def corpus() -> list[str]:
    """Text the BPE merges are learnt from: the digits, words and markers of the example tasks."""
    words = ("How many apples does Tom have left? A baker sells 12 cakes each day for 5 days. "
             "She buys 3 more pens and gives away 4. What is the total cost in dollars? #### ")
    lines = [words] * 5
    lines += [f"{a}+{b}={a + b}\n#### {a + b}" for a in range(0, 60, 3) for b in range(0, 40, 7)]
    lines += [f"{a}-{b}={a - b}" for a in range(10, 50, 5) for b in range(1, 9)]
    return lines


def train_bpe(vocab_size: int, specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    return tok


def make_tiny_model(kind: str, directory: str | Path, *, seed: int = 0, max_positions: int = 256,
                    chat_template: str | None = "default") -> Path:
    """Write a tiny random ``kind`` ("qwen" or "llama") causal LM and its tokenizer to ``directory``."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    d = Path(directory)
    if kind == "qwen":
        bpe = train_bpe(320, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      model_max_length=max_positions)
        template, cfg_cls, model_cls = CHATML, Qwen2Config, Qwen2ForCausalLM
    elif kind == "llama":
        bpe = train_bpe(300, ["<s>", "</s>", "<unk>"])
        tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                      model_max_length=max_positions)
        template, cfg_cls, model_cls = LLAMA_TEMPLATE, LlamaConfig, LlamaForCausalLM
    else:
        raise ValueError(kind)
    if chat_template is not None:
        tok.chat_template = template if chat_template == "default" else chat_template
    vocab = len(tok) + (64 - len(tok) % 64) % 64  # embedding padded past the vocabulary, as real models do
    config = cfg_cls(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                     tie_word_embeddings=(kind == "qwen"), eos_token_id=tok.eos_token_id,
                     bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
