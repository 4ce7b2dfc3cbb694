"""Generated tokens per second of ``vapo.rollout.sample`` against ``transformers``' ``generate``.

    python benchmarks/bench_rollout.py [--batch 256] [--max-new-tokens 128] [--size tiny]
                                       [--threads 2] [--prompt-len 12] [--repeats 1] [--out PATH]
                                       [--memory-lengths 128,256,512,1024]

Long answers (the long chain-of-thought regime, 512-token answers on the micro model):

    python benchmarks/bench_rollout.py --size micro --max-new-tokens 512 --threads 1 --repeats 2 \
        --memory-lengths 128,256,512,1024 --out benchmarks/results/bench_rollout_long.json

Same randomly initialised policy (``vapo.models.build_policy(size, seed)``), same prompts (random
``prompt-len``-character strings), same batch, same length limit, ancestral sampling at
temperature 1 with no top-k/top-p filtering, both under ``torch.inference_mode`` in one process.
Two variants:

* ``eos``:  generation stops at the end token. A random-init model emits it with probability
  ~1/vocab per step, so lengths are very heterogeneous. vapo drops finished rows from the batch;
  ``generate`` keeps every row until the last one ends.
* ``full``: the end token is never allowed to stop a row (vapo: ``eos_token_id=None``;
  ``generate``: ``min_new_tokens = max_new_tokens``), so both generate batch × max_new_tokens
  tokens: a side-by-side of the per-step cost alone.

Tokens counted = response tokens up to and including the first EOS (what training consumes),
for both engines. Each engine is warmed up once (a short run) before it is timed; with
``--repeats N`` the engines alternate N times and each one's fastest run counts (the runs are
seeded, so every repeat generates the same tokens).
Writes benchmarks/results/bench_rollout.json and prints a table with the speed ratios.

Against the machine: the same process measures the float32 matmul peak at ``--threads`` threads
(the best rate of repeated 1024×1024 products) and the rate at which one thread streams a 256 MiB
tensor. Each engine's result then carries tokens/s per core (tokens/s ÷ threads) and its useful
arithmetic as a fraction of that peak. Useful FLOPs per generated token, from the model config:
2 × (the matmul weights a token passes through: q/k/v/o, gate/up/down, LM head) + 4 × heads ×
head_dim × context per layer (q·K and att·V over the context it attends to), summed over every
row's tokens up to its EOS (what ``generate`` computes for finished rows is not counted). The
KV-cache bytes a token reads (layers × 2 × KV heads × head_dim × context × element size) give the
memory side: at long answers decoding reads more cache than it does arithmetic (~3 FLOP per byte
on the micro model), so the memory fraction is the bound that matters there. The load average is
recorded before and after; on a shared machine only the ratios (both engines in one process,
alternating) mean much.

``--memory-lengths`` adds peak memory against answer length: for each engine and length, a fresh
process builds the same policy and prompts, warms the engine up, then generates exactly that many
tokens per row (the ``full`` variant). On CPU the figure is the rise of the process's peak
resident memory (``VmHWM``, reset to the current RSS just before generating) over the RSS before
generating; on CUDA it is ``torch.cuda.max_memory_allocated`` over the allocation before. Each
engine's peaks are fitted with a line and a parabola in the length: the result records bytes per
token, and the ratio of successive increments (length doubling each time: 2 for linear growth,
4 for quadratic), which is what says linear vs quadratic.

With ``--threads N`` > 1 vapo's sampler runs each decoding step's rows as N ranges on N threads
(kernels single-threaded, one hand-off per step); ``generate`` splits each kernel over N OpenMP
threads. On a machine whose cores are busy with other work, an OpenMP barrier waits for a thread
that is not scheduled, and ``generate`` (and any per-kernel threading) slows down 5-30x in ways
that vary from run to run, which flatters the ratio: there, prefer ``--threads 1``. The recorded
results say which was used, and the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from vapo.models import build_char_tokenizer, build_policy, count_parameters, encode_prompts
from vapo.models.tokenizer import CHARS
from vapo.rollout import sample

TARGETS = {"eos": 6.0, "full": 2.5}  # ≥ 6× generate with varying EOS, ≥ 2.5× at a fixed 512 tokens


def token_costs(cfg: Any) -> dict[str, float]:
    """Per generated token, from a Qwen2/Llama config: matmul FLOPs (independent of the context),
    attention FLOPs and KV-cache bytes read per unit of context length."""
    H, nl, Hq, Hkv = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or H // Hq
    per_layer = H * (Hq + 2 * Hkv) * d + Hq * d * H + 3 * H * cfg.intermediate_size
    return {"matmul_flops": 2.0 * (nl * per_layer + H * cfg.vocab_size),
            "attention_flops_per_ctx": 4.0 * nl * Hq * d,
            "kv_bytes_per_ctx": float(nl * 2 * Hkv * d * 4)}


def useful_work(costs: dict[str, float], prompt_lens: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float]:
    """(FLOPs, KV bytes) of generating ``lengths[i]`` tokens after prompts of ``prompt_lens[i]``:
    token t of row i attends to a context of prompt_lens[i] + t + 1 positions."""
    n = lengths.double()
    ctx_sum = (n * (prompt_lens.double() + 1) + n * (n - 1) / 2).sum().item()  # Σ_i Σ_{t<n_i} (p_i + t + 1)
    flops = costs["matmul_flops"] * n.sum().item() + costs["attention_flops_per_ctx"] * ctx_sum
    return flops, costs["kv_bytes_per_ctx"] * ctx_sum


def matmul_peak_gflops(threads: int, size: int = 1024, seconds: float = 1.0) -> float:
    """float32 ``torch.matmul`` of two size×size matrices at ``threads`` threads: the best of
    repeated timings, in GFLOP/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def stream_read_gbs(mib: int = 256, repeats: int = 5) -> float:
    """One thread summing a ``mib`` MiB float32 tensor (far larger than the caches): GB/s."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.ones(mib * 2**18)
    x.sum()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    torch.set_num_threads(saved)
    return x.numel() * 4 / best / 1e9


def real_tokens(resp: torch.Tensor, eos: int) -> torch.Tensor:
    """Per row: tokens up to and including the first EOS (all of them when there is none)."""
    is_eos = resp == eos
    return torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, resp.shape[1])


def run_vapo(model: Any, ids: torch.Tensor, mask: torch.Tensor, T: int, eos: int | None, pad: int,
             seed: int) -> tuple[float, torch.Tensor]:
    gen = torch.Generator(device=ids.device).manual_seed(seed)
    t0 = time.perf_counter()
    ro = sample(model, ids, mask, max_new_tokens=T, temperature=1.0, top_p=1.0, eos_token_id=eos,
                pad_token_id=pad, generator=gen)
    if ids.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, ro.lengths


def run_hf(model: Any, ids: torch.Tensor, mask: torch.Tensor, T: int, eos: int, pad: int, full: bool,
           seed: int) -> tuple[float, torch.Tensor]:
    torch.manual_seed(seed)
    extra = {"min_new_tokens": T} if full else {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0,
                             top_k=0, max_new_tokens=T, eos_token_id=eos, pad_token_id=pad, **extra)
    if ids.is_cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    resp = out[:, ids.shape[1]:]
    if full and resp.shape[1] != T:
        raise RuntimeError(f"generate stopped at {resp.shape[1]} < {T} tokens in the full-length variant")
    return dt, real_tokens(resp, eos)


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def probe_memory(engine: str, T: int, args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of one generation of exactly ``T`` tokens per row (run in a fresh process)."""
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    tok = build_char_tokenizer()
    model = build_policy(args.size, tok, seed=args.seed).to(device)
    rng = random.Random(args.seed)
    texts = ["".join(rng.choice(CHARS[:-1]) for _ in range(args.prompt_len)) for _ in range(args.batch)]
    ids, mask = (x.to(device) for x in encode_prompts(tok, texts))
    eos, pad = tok.eos_token_id, tok.pad_token_id

    def go(n: int) -> None:
        if engine == "vapo.rollout.sample":
            run_vapo(model, ids, mask, n, None, pad, args.seed)
        else:
            run_hf(model, ids, mask, n, eos, pad, True, args.seed)

    go(8)  # warm-up: kernels, allocator, generate's setup
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        go(T)
        torch.cuda.synchronize()
        return {"engine": engine, "length": T, "peak_bytes": torch.cuda.max_memory_allocated() - before,
                "measure": "torch.cuda.max_memory_allocated - memory_allocated before"}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (peak RSS) to the current RSS
    before = _rss_bytes("VmRSS")
    go(T)
    return {"engine": engine, "length": T, "peak_bytes": _rss_bytes("VmHWM") - before,
            "measure": "peak RSS (VmHWM, reset before) - RSS before"}


def memory_sweep(args: argparse.Namespace, lengths: list[int]) -> dict[str, Any]:
    """Peak memory vs answer length per engine, each point in a fresh process, with linear and
    quadratic fits. increment_ratios[i] = (M[i+2] − M[i+1]) / (M[i+1] − M[i]): with lengths that
    double, 2 for memory linear in the length, 4 for quadratic."""
    import numpy as np

    engines = ("vapo.rollout.sample", "transformers.generate")
    points: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
    base = [sys.executable, str(Path(__file__).resolve()), "--size", args.size, "--batch", str(args.batch),
            "--threads", str(args.threads), "--prompt-len", str(args.prompt_len), "--seed", str(args.seed),
            "--device", args.device]
    for T in lengths:
        for e in engines:
            out = subprocess.run([*base, "--probe", f"{e}:{T}"], check=True, capture_output=True, text=True).stdout
            points[e].append(json.loads(out.strip().splitlines()[-1]))
    fits = {}
    for e, pts in points.items():
        x = np.array([p["length"] for p in pts], dtype=float)
        y = np.array([p["peak_bytes"] for p in pts], dtype=float)
        lin = np.polyfit(x, y, 1)
        quad = np.polyfit(x, y, 2) if len(x) >= 3 else None
        resid = y - np.polyval(lin, x)
        r2 = 1 - float((resid ** 2).sum()) / max(float(((y - y.mean()) ** 2).sum()), 1e-12)
        inc = [round(float((y[i + 2] - y[i + 1]) / (y[i + 1] - y[i])), 3) if y[i + 1] != y[i] else None
               for i in range(len(y) - 2)]
        fits[e] = {"bytes_per_token_linear_fit": round(float(lin[0]), 1), "intercept_bytes": round(float(lin[1])),
                   "linear_r2": round(r2, 5),
                   "quadratic_share_at_max": (round(float(quad[0] * x[-1] ** 2 / (y[-1] or 1)), 4)
                                              if quad is not None else None),
                   "increment_ratios": inc}
    return {"lengths": lengths, "points": points, "fits": fits}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per engine (alternating); the fastest counts")
    ap.add_argument("--variants", default="eos,full", help="comma-separated subset of eos,full")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_rollout.json")
    ap.add_argument("--memory-lengths", default="", help="comma-separated answer lengths for the peak-memory sweep "
                    "(e.g. 128,256,512,1024); empty = no sweep")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the memory sweep's measure follows it)")
    ap.add_argument("--probe", default="", help=argparse.SUPPRESS)  # internal: ENGINE:LENGTH, one memory point
    args = ap.parse_args()
    if args.probe:
        engine, _, T = args.probe.rpartition(":")
        print(json.dumps(probe_memory(engine, int(T), args)))
        return
    load_before = [round(x, 2) for x in os.getloadavg()]
    peak = matmul_peak_gflops(args.threads)
    stream = stream_read_gbs()
    torch.set_num_threads(args.threads)

    import transformers

    transformers.logging.set_verbosity_error()
    tok = build_char_tokenizer()
    model = build_policy(args.size, tok, seed=args.seed).to(args.device)
    rng = random.Random(args.seed)
    texts = ["".join(rng.choice(CHARS[:-1]) for _ in range(args.prompt_len)) for _ in range(args.batch)]
    ids, mask = (x.to(args.device) for x in encode_prompts(tok, texts))
    eos, pad, T = tok.eos_token_id, tok.pad_token_id, args.max_new_tokens
    costs, prompt_lens = token_costs(model.config), mask.sum(1).cpu()

    # Warm-up: one short run of each engine (allocator, MKL/oneDNN kernels, generate's setup).
    run_vapo(model, ids, mask, 8, eos, pad, args.seed)
    run_hf(model, ids, mask, 8, eos, pad, False, args.seed)

    rows, ratios = [], {}
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        full = variant == "full"
        times: dict[str, list[float]] = {"transformers.generate": [], "vapo.rollout.sample": []}
        lengths: dict[str, torch.Tensor] = {}
        for _ in range(args.repeats):  # engines alternate, so background load hits both alike
            for engine in times:
                if engine == "vapo.rollout.sample":
                    dt, lens = run_vapo(model, ids, mask, T, None if full else eos, pad, args.seed)
                else:
                    dt, lens = run_hf(model, ids, mask, T, eos, pad, full, args.seed)
                times[engine].append(dt)
                lengths[engine] = lens  # seeded: identical on every repeat
        res = {}
        for engine, ts in times.items():
            dt, lens = min(ts), lengths[engine]
            n = int(lens.sum())
            res[engine] = n / dt
            flops, kv_bytes = useful_work(costs, prompt_lens, lens.cpu())
            rows.append({"variant": variant, "engine": engine, "seconds": round(dt, 4),
                         "seconds_all": [round(x, 4) for x in ts], "tokens": n,
                         "tokens_per_s": round(n / dt, 1), "tokens_per_s_per_core": round(n / dt / args.threads, 1),
                         "useful_gflop": round(flops / 1e9, 3), "useful_gflops_per_s": round(flops / dt / 1e9, 3),
                         "compute_bound_fraction": round(flops / dt / 1e9 / peak, 4),
                         "kv_read_gb_per_s": round(kv_bytes / dt / 1e9, 3),
                         "mean_length": round(float(lens.float().mean()), 2),
                         "truncated_frac": round(float((lens == T).float().mean()), 4)})
        ratios[variant] = round(res["vapo.rollout.sample"] / res["transformers.generate"], 3)

    memory = None
    if args.memory_lengths:
        memory = memory_sweep(args, [int(x) for x in args.memory_lengths.split(",") if x.strip()])

    result = {
        "benchmark": "rollout tokens/s: vapo.rollout.sample vs transformers generate",
        "config": {"batch": args.batch, "max_new_tokens": T, "repeats": args.repeats, "size": args.size, "params": count_parameters(model),
                   "prompt_len": args.prompt_len, "seed": args.seed, "temperature": 1.0, "top_p": 1.0},
        "machine": {"torch": torch.__version__, "transformers": transformers.__version__, "threads": args.threads,
                    "cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": load_before,  # 1, 5, 15 min
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "matmul_peak_gflops": round(peak, 1), "matmul_peak_threads": args.threads,
                    "stream_read_gb_per_s_1_thread": round(stream, 1)},
        "token_costs": costs,
        "results": rows,
        "speed_ratio": ratios,
        "target_ratio": TARGETS,
    }
    if memory is not None:
        result["memory_vs_length"] = memory
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    m = result["machine"]
    print(f"{args.size} policy ({count_parameters(model):,} params), batch {args.batch}, max_new_tokens {T}, "
          f"{args.threads} threads, load avg {m['load_average_before'][0]} -> {m['load_average_after'][0]}, "
          f"matmul peak {peak:.0f} GFLOP/s, stream {stream:.0f} GB/s")
    print(f"{'variant':8} {'engine':24} {'seconds':>8} {'tokens':>8} {'tokens/s':>10} {'tok/s/core':>10} "
          f"{'GFLOP/s':>8} {'of peak':>8} {'KV GB/s':>8} {'mean len':>9}")
    for r in rows:
        print(f"{r['variant']:8} {r['engine']:24} {r['seconds']:8.2f} {r['tokens']:8d} {r['tokens_per_s']:10.0f} "
              f"{r['tokens_per_s_per_core']:10.0f} {r['useful_gflops_per_s']:8.2f} {r['compute_bound_fraction']:8.1%} "
              f"{r['kv_read_gb_per_s']:8.2f} {r['mean_length']:9.1f}")
    for v, x in ratios.items():
        target = TARGETS.get(v)
        verdict = "" if target is None else f"  (target ≥ {target}x: {'met' if x >= target else 'NOT met'})"
        print(f"speed ratio ({v}): {x:.2f}x{verdict}")
    if memory is not None:
        print("peak memory vs answer length (MiB): " + "  ".join(f"T={T}" for T in memory["lengths"]))
        for e, pts in memory["points"].items():
            f = memory["fits"][e]
            print(f"  {e:24} " + "  ".join(f"{p['peak_bytes'] / 2**20:8.1f}" for p in pts)
                  + f"   {f['bytes_per_token_linear_fit'] / 1024:.1f} KiB/token, linear R² {f['linear_r2']:.4f}, "
                  f"increment ratios {f['increment_ratios']} (2 = linear, 4 = quadratic)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
