"""Character-level tokenizer, saved and loaded as an ordinary Hugging Face tokenizer.

Every printable ASCII character (32..126) and the newline is one token, so the procedural tasks'
texts round-trip exactly and a tiny model never has to learn a sub-word segmentation. The ids
are fixed forever (checkpoints depend on them):

    0 <pad>   1 <bos>   2 <eos>   3 <unk>   4.. ' ' (32) .. '~' (126)   99 '\\n'

Anything else (tabs, non-ASCII) encodes to <unk>. The literal strings "<pad>", "<eos>", ... in
a text are *not* matched as special tokens (``split_special_tokens=True``): they encode
character by character like any other text, so encode/decode is a bijection on printable text.

Hugging Face tokenizers of a ``model.path`` (BPE, SentencePiece) go through the same functions:
:func:`encode_prompts` applies their chat template when :func:`set_prompt_format` says so, adds
BOS only when the tokenizer has one, and :func:`decode_responses` cuts at their own EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vapo.errors import VapoError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
CHARS: tuple[str, ...] = tuple(chr(i) for i in range(32, 127)) + ("\n",)
VOCAB: tuple[str, ...] = SPECIAL_TOKENS + CHARS
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
VOCAB_SIZE = len(VOCAB)  # 100


def build_char_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` over :data:`VOCAB` (pad/bos/eos/unk set, left padding).

    Built from a ``tokenizers`` WordLevel model whose pre-tokenizer isolates every character
    (newlines and spaces included) and whose decoder concatenates tokens with no separator, so
    ``decode(encode(s)) == s`` for any string of printable ASCII and newlines. Save it with
    ``save_pretrained(dir)`` and load it back with ``AutoTokenizer.from_pretrained(dir)``.
    ``encode(text)`` adds no special tokens; :func:`encode_prompts` adds BOS.
    """
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(VOCAB)}, unk_token=UNK))
    # "[\s\S]" rather than "." so that "\n" is isolated too (the regex "." does not match it).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        split_special_tokens=True,
        model_max_length=2048,
    )


def is_char_tokenizer(tokenizer: Any) -> bool:
    """True when ``tokenizer`` maps exactly :data:`VOCAB` to ids 0..99 (the fast decode path applies)."""
    cached = getattr(tokenizer, "_vapo_is_char", None)
    if cached is not None:
        return cached
    try:
        vocab = tokenizer.get_vocab()
        ok = len(vocab) == VOCAB_SIZE and all(vocab.get(t) == i for i, t in enumerate(VOCAB))
    except Exception:  # any tokenizer-like object without a plain vocabulary
        ok = False
    try:
        tokenizer._vapo_is_char = ok
    except Exception:
        pass
    return ok


PROMPT_FORMAT_KEY = "vapo_prompt"


def set_prompt_format(tokenizer: Any, *, chat_template: bool = True, system_prompt: str | None = None) -> dict[str, Any]:
    """Decide how prompts are turned into token ids for ``tokenizer`` and store it on the tokenizer.

    The decision is kept in ``tokenizer.init_kwargs`` so that ``save_pretrained`` writes it into
    ``tokenizer_config.json``: every checkpoint, the SFT cache and ``vapo eval`` format prompts
    exactly as training did, without the config at hand.

    * ``chat_template`` and the tokenizer has one: the prompt is the user turn of a conversation
      (after a system turn with ``system_prompt`` when given), rendered with
      ``add_generation_prompt=True``; the template writes any BOS itself.
    * otherwise: BOS (when the tokenizer has one) followed by the text.

    Raises VapoError when ``system_prompt`` is given but no chat template will be applied (it
    would be ignored). Returns the stored format ``{"chat": bool, "system": str | None}``.
    """
    has_template = bool(getattr(tokenizer, "chat_template", None))
    chat = bool(chat_template) and has_template and not is_char_tokenizer(tokenizer)
    if system_prompt is not None and not chat:
        why = "model.chat_template is false" if not chat_template else "the tokenizer has no chat template"
        raise VapoError(f"model.system_prompt is set but no chat template is applied ({why})", where="model.system_prompt",
                        fix="remove model.system_prompt, or use a tokenizer with a chat template and model.chat_template=true")
    fmt = {"chat": chat, "system": system_prompt}
    tokenizer.init_kwargs[PROMPT_FORMAT_KEY] = fmt
    return fmt


def prompt_format(tokenizer: Any) -> dict[str, Any]:
    """The stored prompt format (see :func:`set_prompt_format`); plain BOS + text when none was set."""
    fmt = getattr(tokenizer, "init_kwargs", {}).get(PROMPT_FORMAT_KEY)
    return fmt if isinstance(fmt, dict) else {"chat": False, "system": None}


def render_prompt(tokenizer: Any, text: str) -> str:
    """The prompt text as the model sees it (the chat template applied when the format says so)."""
    fmt = prompt_format(tokenizer)
    if not fmt.get("chat"):
        return text
    messages = ([{"role": "system", "content": fmt["system"]}] if fmt.get("system") is not None else []) + [
        {"role": "user", "content": text}]
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    except Exception as e:  # jinja errors, templates that reject a system turn, ...
        raise VapoError(f"the tokenizer's chat template failed to render a prompt: {type(e).__name__}: {e}",
                        where="tokenizer chat_template",
                        fix="fix the template in tokenizer_config.json, or set model.chat_template=false "
                            "(and drop model.system_prompt if the template rejects a system turn)") from e


def prompt_token_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of one prompt: ``[BOS] + text`` (BOS only when the tokenizer has one), or the
    rendered chat template (which writes its own special tokens)."""
    if is_char_tokenizer(tokenizer):
        return [BOS_ID] + encode_chars(text)
    if prompt_format(tokenizer).get("chat"):
        return list(tokenizer.encode(render_prompt(tokenizer, text), add_special_tokens=False))
    bos = tokenizer.bos_token_id
    return ([bos] if bos is not None else []) + list(tokenizer.encode(text, add_special_tokens=False))


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts with :func:`prompt_token_ids`, left-padded to the longest.

    Returns:
        prompt_ids  [B, P] int64: padding (``pad_token_id``) on the left, then the prompt's ids
            (``[BOS] + text`` for the built-in tokenizer; the rendered chat template for a
            Hugging Face tokenizer that has one, see :func:`set_prompt_format`).
        prompt_mask [B, P] int64: 1 on prompt tokens, 0 on padding.
    Left padding keeps every prompt's last token in column P-1, where generation continues.
    """
    if isinstance(texts, str):
        raise VapoError("encode_prompts got one string, expected a list of strings",
                        where="encode_prompts(texts=...)", fix="wrap it in a list: [text]")
    if len(texts) == 0:
        raise VapoError("encode_prompts got no prompts", where="encode_prompts(texts=...)",
                        fix="pass at least one prompt")
    pad = tokenizer.pad_token_id
    if pad is None:
        raise VapoError("the tokenizer has no pad token", where="encode_prompts",
                        fix="load the model with vapo.models.load_policy_and_tokenizer (it uses EOS for padding) "
                            "or set tokenizer.pad_token")
    rows = [prompt_token_ids(tokenizer, t) for t in texts]
    if any(len(r) == 0 for r in rows):
        raise VapoError("a prompt encodes to no tokens (empty text and no BOS token)", where="encode_prompts",
                        fix="give every problem a non-empty prompt")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, P - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, P - len(r) :] = 1
    return ids, mask


# The fast path: a 128-entry table char -> id and a 100-entry table id -> char (specials -> "").
_CHAR_TO_ID = {c: i + len(SPECIAL_TOKENS) for i, c in enumerate(CHARS)}
_ID_TO_CHAR = np.array([""] * len(SPECIAL_TOKENS) + list(CHARS), dtype=object)


def encode_chars(text: str) -> list[int]:
    """Character ids of ``text`` without special tokens (same result as the HF tokenizer)."""
    return [_CHAR_TO_ID.get(c, UNK_ID) for c in text]


def decode_responses(
    tokenizer: Any,
    response_ids: torch.Tensor,
    lengths: torch.Tensor | Sequence[int] | None = None,
) -> list[str]:
    """Response texts: each row cut at its first EOS (or at ``lengths[i]``), special tokens dropped.

    Args:
        response_ids [B, T] int: sampled tokens, right-padded.
        lengths [B] (optional): number of real tokens per row (EOS included); tokens at or after
            a row's first EOS are never part of the text either way.
    Returns B strings. With the char tokenizer this is a table lookup (no HF call); any other
    tokenizer goes through ``batch_decode(skip_special_tokens=True)``.
    """
    ids = response_ids.detach().cpu().numpy() if isinstance(response_ids, torch.Tensor) else np.asarray(response_ids)
    if ids.ndim != 2:
        raise VapoError(f"response_ids must be [B, T], got shape {tuple(ids.shape)}",
                        where="decode_responses", fix="pass a 2-D tensor of token ids")
    B, T = ids.shape
    ends = np.full(B, T, dtype=np.int64)
    if lengths is not None:
        ends = np.minimum(ends, np.asarray(lengths.cpu() if isinstance(lengths, torch.Tensor) else lengths, dtype=np.int64))
    eos = tokenizer.eos_token_id
    if eos is not None:
        is_eos = ids == eos
        first = np.where(is_eos.any(1), is_eos.argmax(1), T)
        ends = np.minimum(ends, first)
    if is_char_tokenizer(tokenizer):
        valid = (ids >= 0) & (ids < VOCAB_SIZE)
        safe = np.where(valid, ids, UNK_ID)
        chars = _ID_TO_CHAR[safe]
        return ["".join(chars[i, : ends[i]]) for i in range(B)]
    rows = [ids[i, : ends[i]].tolist() for i in range(B)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
