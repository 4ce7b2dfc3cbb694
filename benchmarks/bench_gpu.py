"""GPU throughput of a ~0.5B Qwen2 policy: rollout tokens/s (vapo's sampler vs ``generate``),
train tokens/s and MFU of one actor step.

    python benchmarks/bench_gpu.py --out benchmarks/results/bench_gpu.json
    python benchmarks/bench_gpu.py --device cpu --tiny --out /tmp/bench_gpu_tiny.json   # code path check

Model: the Qwen2.5-0.5B shape (hidden 896, 24 layers, 14 query / 2 KV heads, intermediate 4864,
vocab 151936, tied embeddings, RoPE theta 1e6) from random weights (seeded), in bf16; no
download. ``--tiny`` swaps in a 2-layer toy of the same architecture.

1. Rollout: the same random prompts ([batch, prompt-len], no padding), ancestral sampling at
   temperature 1 (no top-k/top-p), fixed length: the end token cannot stop a row (vapo:
   ``eos_token_id=None``; generate: ``min_new_tokens = max_new_tokens``), so both engines
   produce batch x new-tokens tokens. vapo: ``vapo.rollout.sample(backend="fast")`` (static KV
   cache); generate: ``model.generate`` with its default dynamic cache, SDPA attention. Each
   engine gets one short warm-up run, then ``--repeats`` timed runs (the fastest counts). Peak
   memory = ``torch.cuda.max_memory_allocated`` during the run minus the memory held before it
   (the weights), i.e. the engine's own KV cache and workspace.
   A sanity check runs greedy decoding (temperature 0) of ``--check-tokens`` tokens with the
   fast and the generic ("hf") backend of vapo's sampler and reports the fraction of equal
   tokens (bf16 rounding can flip near-ties, so this is reported, not asserted).
2. Train: one actor step = forward over [train-batch, train-seq] random ids, token log-probs
   (``vapo.algos.logprobs_from_logits``), loss = -mean log-prob, backward, ``AdamW.step``, in
   pure bf16 (parameters, gradients and optimizer states in bf16, no master copy). One warm-up
   step, then ``--train-steps`` timed. MFU = 6 N tokens / time / peak, with N = every
   parameter (the tied embedding counted once: it is the LM-head matmul) and attention-score
   FLOPs excluded; ``mfu_with_attention`` adds 12 L H T per token (H = hidden, T = sequence
   length). Peak = ``--peak-tflops`` (default 989: dense bf16 of H100 SXM / H200).

Refuses (exit 2) when ``--device cuda`` and no CUDA device is present. Sizes are set to keep
the whole run within a few minutes on one H100/H200; progress is printed as it goes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

H200_BF16_DENSE_TFLOPS = 989.0  # NVIDIA's spec sheet, bf16 dense (the 1979 figure is with sparsity)


def log(msg: str) -> None:
    print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def qwen2_config(tiny: bool) -> Any:
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=512, tie_word_embeddings=True,
                           max_position_embeddings=4096, rope_theta=1_000_000.0)
    return Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6)


def build_model(tiny: bool, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    from transformers import Qwen2ForCausalLM

    cfg = qwen2_config(tiny)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: fast, no host copy of 0.5B weights
        model = Qwen2ForCausalLM(cfg)
    model = model.to(dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Bytes allocated above the level at entry (CUDA only; None elsewhere)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.base


def gib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**30, 3)


def run_vapo(model: Any, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, seed: int,
             temperature: float = 1.0, backend: str = "fast") -> torch.Tensor:
    from vapo.rollout import sample

    gen = torch.Generator(device=ids.device).manual_seed(seed)  # noise drawn where the logits are
    ro = sample(model, ids, mask, max_new_tokens=new_tokens, temperature=temperature, top_p=1.0,
                eos_token_id=None, pad_token_id=0, generator=gen, backend=backend)
    return ro.response_ids


def run_generate(model: Any, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                             pad_token_id=0)
    return out[:, ids.shape[1]:]


def time_engine(name: str, fn: Any, device: torch.device, repeats: int, expect: tuple[int, int]) -> dict[str, Any]:
    times, peaks = [], []
    for r in range(repeats):
        with PeakMemory(device) as pm:
            t0 = time.perf_counter()
            resp = fn()
            sync(device)
            dt = time.perf_counter() - t0
        if tuple(resp.shape) != expect:
            raise RuntimeError(f"{name} returned {tuple(resp.shape)} tokens, expected {expect}")
        times.append(dt)
        peaks.append(pm.peak)
        log(f"  {name} run {r + 1}/{repeats}: {dt:.2f} s, {expect[0] * expect[1] / dt:,.0f} tokens/s, "
            f"peak +{gib(pm.peak)} GiB")
    best = min(times)
    n = expect[0] * expect[1]
    return {"seconds": round(best, 4), "seconds_all": [round(t, 4) for t in times], "tokens": n,
            "tokens_per_s": round(n / best, 1),
            "peak_mem_gib": gib(max(peaks)) if peaks[0] is not None else None}


def bench_rollout(model: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    vocab = model.config.vocab_size
    ids = torch.randint(1, vocab, (args.batch, args.prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    T = args.new_tokens
    log(f"rollout: batch {args.batch} x prompt {args.prompt_len} + {T} new tokens; warm-up")
    run_vapo(model, ids, mask, 8, args.seed)
    run_generate(model, ids, mask, 8, args.seed)
    res = {
        "vapo.rollout.sample(fast)": time_engine(
            "vapo.rollout.sample(fast)", lambda: run_vapo(model, ids, mask, T, args.seed), device,
            args.repeats, (args.batch, T)),
        "transformers.generate": time_engine(
            "transformers.generate", lambda: run_generate(model, ids, mask, T, args.seed), device,
            args.repeats, (args.batch, T)),
    }
    ratio = res["vapo.rollout.sample(fast)"]["tokens_per_s"] / res["transformers.generate"]["tokens_per_s"]
    log(f"rollout speed ratio vapo/generate: {ratio:.2f}x")

    k = args.check_tokens
    log(f"sanity: greedy {k} tokens, fast vs hf backend")
    fast = run_vapo(model, ids, mask, k, args.seed, temperature=0.0, backend="fast")
    hf = run_vapo(model, ids, mask, k, args.seed, temperature=0.0, backend="hf")
    agree = float((fast == hf).float().mean())
    first = float((fast[:, 0] == hf[:, 0]).float().mean())
    log(f"  equal tokens {agree:.3f} (first token {first:.3f})")
    return {"engines": res, "speed_ratio_vapo_over_generate": round(ratio, 3),
            "greedy_fast_vs_hf": {"tokens": k, "equal_frac": round(agree, 4), "first_token_equal_frac": round(first, 4)}}


def bench_train(model: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from vapo.algos import logprobs_from_logits

    B, T = args.train_batch, args.train_seq
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    ids = torch.randint(1, model.config.vocab_size, (B, T + 1), generator=g).to(device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), weight_decay=0.0)

    def step() -> float:
        logits = model(input_ids=ids[:, :-1]).logits  # [B, T, V]
        loss = -logprobs_from_logits(logits.float(), ids[:, 1:]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    log(f"train: [{B}, {T}] forward+backward+AdamW, pure bf16; warm-up step")
    step()
    times, peak = [], None
    with PeakMemory(device) as pm:
        for i in range(args.train_steps):
            sync(device)
            t0 = time.perf_counter()
            loss = step()
            sync(device)
            times.append(time.perf_counter() - t0)
            log(f"  step {i + 1}/{args.train_steps}: {times[-1]:.3f} s, loss {loss:.3f}")
    peak = pm.peak
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    c = model.config
    tokens = B * T
    best = min(times)
    flops = 6 * n_params * tokens
    flops_attn = flops + 12 * c.num_hidden_layers * c.hidden_size * T * tokens
    peak_flops = args.peak_tflops * 1e12
    return {"batch": B, "seq": T, "tokens_per_step": tokens, "seconds": round(best, 4),
            "seconds_all": [round(t, 4) for t in times], "tokens_per_s": round(tokens / best, 1),
            "params": n_params, "peak_tflops_used": args.peak_tflops,
            "mfu": round(flops / best / peak_flops, 4), "mfu_with_attention": round(flops_attn / best / peak_flops, 4),
            "peak_mem_gib_above_weights": gib(peak)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: a code-path check)")
    ap.add_argument("--tiny", action="store_true", help="2-layer toy model and small sizes")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--batch", type=int, default=None, help="rollout batch (default 64; tiny 4)")
    ap.add_argument("--prompt-len", type=int, default=None, help="default 128; tiny 8")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 512; tiny 16")
    ap.add_argument("--repeats", type=int, default=2, help="timed rollout runs per engine")
    ap.add_argument("--check-tokens", type=int, default=None, help="greedy sanity-check length (default 32; tiny 8)")
    ap.add_argument("--train-batch", type=int, default=None, help="default 16; tiny 2")
    ap.add_argument("--train-seq", type=int, default=None, help="default 1024; tiny 32")
    ap.add_argument("--train-steps", type=int, default=None, help="timed train steps (default 5; tiny 2)")
    ap.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True, help="where to write the JSON results")
    args = ap.parse_args(argv)
    defaults = {"batch": (64, 4), "prompt_len": (128, 8), "new_tokens": (512, 16), "check_tokens": (32, 8),
                "train_batch": (16, 2), "train_seq": (1024, 32), "train_steps": (5, 2)}
    for k, (full, tiny) in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, tiny if args.tiny else full)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device is available (torch.cuda.is_available() is False).\n"
              "  fix: run it on a machine with an NVIDIA GPU and a CUDA build of torch, or check the code path "
              "on CPU with --device cpu --tiny", file=sys.stderr)
        return 2
    if device.type not in ("cuda", "cpu"):
        print(f"bench_gpu: unsupported --device {args.device!r}; use cuda or cpu", file=sys.stderr)
        return 2

    import transformers

    transformers.logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype)
    t_start = time.perf_counter()
    log(f"building {'tiny' if args.tiny else 'Qwen2.5-0.5B-shaped'} Qwen2 on {device} in {args.dtype}")
    model = build_model(args.tiny, device, dtype, args.seed)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"{n_params / 1e6:.1f}M parameters")

    rollout = bench_rollout(model, args, device)
    train = bench_train(model, args, device)

    machine = {"torch": torch.__version__, "transformers": transformers.__version__,
               "platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
        machine["cuda"] = torch.version.cuda
    result = {
        "benchmark": "bench_gpu: rollout tokens/s (vapo sampler vs generate), train tokens/s and MFU",
        "config": {"tiny": args.tiny, "dtype": args.dtype, "params": n_params, "seed": args.seed,
                   "rollout": {"batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                               "repeats": args.repeats, "temperature": 1.0, "top_p": 1.0, "fixed_length": True},
                   "model": qwen2_config(args.tiny).to_dict() if args.tiny else
                   {k: getattr(model.config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                           "num_key_value_heads", "intermediate_size", "vocab_size",
                                                           "tie_word_embeddings")}},
        "machine": machine,
        "rollout": rollout,
        "train": train,
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    log(f"train {train['tokens_per_s']:,.0f} tokens/s, MFU {train['mfu']:.3f} "
        f"(with attention {train['mfu_with_attention']:.3f}) of {args.peak_tflops:g} TFLOP/s")
    log(f"done in {result['total_seconds']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
