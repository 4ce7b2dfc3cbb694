"""The sampling head: from next-token logits to a sampled token and its log-probability.

Given logits z ∈ R^V for one sequence, temperature τ > 0 and nucleus mass p ∈ (0, 1]:

    q_τ(v)   = softmax(z / τ)_v                                   (temperature scaling)
    N_p      = the smallest set of tokens, taken in order of decreasing q_τ, whose mass is ≥ p
               (the most likely token is always in it)            (nucleus / top-p, Holtzman et al. 2020)
    π(v)     = q_τ(v) / Σ_{u ∈ N_p} q_τ(u)   for v ∈ N_p, else 0   (renormalised)

and the sampler draws y ~ π and records log π(y): **the log-probability under the distribution the
token was actually drawn from** (temperature-scaled and top-p renormalised). This is the
behaviour policy's log-prob that the PPO ratio in VAPO/DAPO (§2, Eq. 1–2 of VAPO) divides by.
With τ = 1 and p = 1 it equals log softmax(z)_y, which is what a teacher-forced forward pass
(``vapo.models.response_logprobs``) recomputes. With p < 1 the two differ by the log of the
nucleus mass; a trainer that wants the policy's own log-prob must recompute it.

Greedy decoding (τ = 0) takes y = argmax z and records log softmax(z)_y (the untempered
distribution), which is what an evaluator reporting the model's confidence wants.

Sampling uses the exponential race: y = argmax_v π(v) / E_v with E_v ~ Exp(1) i.i.d., which is
an exact draw from π, needs one uniform per logit and is reproducible given a
``torch.Generator``.
"""

from __future__ import annotations

import torch

_TINY = torch.finfo(torch.float32).tiny


def filtered_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """log π over the vocabulary (see the module docstring), float32.

    Args:
        logits [b, V] any float dtype; temperature τ > 0; top_p p ∈ (0, 1].
    Returns:
        logp [b, V] float32: log π(v), −inf for tokens outside the nucleus N_p. Each row's
        exp sums to 1.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1.0:
        return logp
    # Nucleus: sort by decreasing probability; token j (in that order) is kept iff the mass of the
    # tokens strictly before it is < p. The first token always has 0 mass before it, so it stays.
    sorted_logp, order = torch.sort(logp, dim=-1, descending=True)
    probs = sorted_logp.exp()
    mass_before = probs.cumsum(-1) - probs
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    logp = logp.masked_fill(drop, float("-inf"))
    return logp - torch.logsumexp(logp, dim=-1, keepdim=True)


def exponential_noise(shape: tuple[int, ...] | torch.Size, device: torch.device | str,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """E ~ Exp(1) i.i.d., float32, the same values as ``torch.empty(shape).exponential_(generator)``.

    On the CPU, ``exponential_`` draws one float64 uniform u per element (in memory order, from
    ``generator``'s stream) and returns float32(−log1p(−u)), one element at a time (~20 ns each,
    a tenth of a decoding step at batch 256). Here the same u come from ``uniform_`` on a float64
    tensor (the same stream, the same order) and the transform is vectorised: the generator ends
    in the same state and the values are the same (the float32 rounding hides the last-bit
    differences of a vectorised float64 ``log1p``; ``tests/rollout/test_sampling.py`` checks the
    equality). Other devices: ``exponential_`` itself (its transform differs on CUDA).
    """
    device = torch.device(device)
    if device.type != "cpu":
        return torch.empty(shape, dtype=torch.float32, device=device).exponential_(generator=generator)
    u = torch.empty(shape, dtype=torch.float64).uniform_(generator=generator)
    return u.neg_().log1p_().neg_().float()


def draw(logits: torch.Tensor, temperature: float, top_p: float,
         generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row and its log-probability under the sampling distribution.

    Args:
        logits [b, V]; temperature τ ≥ 0 (0 = greedy); top_p p ∈ (0, 1] (ignored when τ = 0);
        generator: the source of randomness (its device may differ from the logits'; the noise is
            drawn on the generator's device and moved).
    Returns:
        tokens [b] int64 and logprobs [b] float32: log π(token) for τ > 0, and
        log softmax(logits)(argmax) for τ = 0.
    """
    if temperature == 0.0:
        logp = torch.log_softmax(logits.float(), dim=-1)
        tok = logp.argmax(-1)
        return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
    logp = filtered_logprobs(logits, temperature, top_p)
    dev = generator.device if generator is not None else logp.device
    noise = exponential_noise(logp.shape, dev, generator)
    if noise.device != logp.device:
        noise = noise.to(logp.device)
    # Exponential race: argmax π/E = argmax (log π − log E); tokens with π = 0 (−inf) never win.
    # (E = 0 has probability ~2^-24 per draw; the clamp keeps log E finite so −inf stays −inf.)
    tok = (logp - noise.clamp_min_(_TINY).log_()).argmax(-1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(-1)
