"""Rollout: batched sampling of responses with their sampling log-probs (see :mod:`vapo.rollout.sampler`).

There is no vLLM backend: the built-in policies are ~1M-parameter char-level models run on CPU,
where the fast engine (:mod:`vapo.rollout.fast`) is the right tool. Hugging Face models of other
architectures (or with LoRA adapters) use the generic engine; :func:`describe_engine` says which.
"""

from vapo.rollout.fast import FastDecoder, fast_path_unsupported_reason
from vapo.rollout.sampler import BACKENDS, Rollout, describe_engine, sample, sample_texts
from vapo.rollout.sampling import draw, filtered_logprobs

__all__ = ["BACKENDS", "FastDecoder", "Rollout", "describe_engine", "draw", "fast_path_unsupported_reason", "filtered_logprobs",
           "sample", "sample_texts"]
