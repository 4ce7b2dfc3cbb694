"""Character-level tokenizer, saved and loaded as an ordinary Hugging Face tokenizer.

Every printable ASCII character (32..126) and the newline is one token, so the procedural tasks'
texts round-trip exactly and a tiny model never has to learn a sub-word segmentation. The ids
are fixed forever (checkpoints depend on them):

    0 <pad>   1 <bos>   2 <eos>   3 <unk>   4.. ' ' (32) .. '~' (126)   99 '\\n'

Anything else (tabs, non-ASCII) encodes to <unk>. The literal strings "<pad>", "<eos>", ... in
a text are *not* matched as special tokens (``split_special_tokens=True``): they encode
character by character like any other text, so encode/decode is a bijection on printable text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

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
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

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


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    if bos is None or pad is None:
        raise VapoError(
            "the tokenizer has no BOS or no pad token",
            where="encode_prompts",
            fix="use vapo.models.build_char_tokenizer() or set bos_token and pad_token on the tokenizer",
        )
    return bos, pad


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts as ``[BOS] + tokens``, left-padded to the longest.

    Returns:
        prompt_ids  [B, P] int64: padding (``pad_token_id``) on the left, then BOS, then the text.
        prompt_mask [B, P] int64: 1 on BOS and text tokens, 0 on padding.
    Left padding keeps every prompt's last token in column P-1, where generation continues.
    """
    if isinstance(texts, str):
        raise VapoError("encode_prompts got one string, expected a list of strings",
                        where="encode_prompts(texts=...)", fix="wrap it in a list: [text]")
    if len(texts) == 0:
        raise VapoError("encode_prompts got no prompts", where="encode_prompts(texts=...)",
                        fix="pass at least one prompt")
    bos, pad = _special_ids(tokenizer)
    if is_char_tokenizer(tokenizer):
        rows = [[bos] + encode_chars(t) for t in texts]
    else:
        rows = [[bos] + list(tokenizer.encode(t, add_special_tokens=False)) for t in texts]
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
