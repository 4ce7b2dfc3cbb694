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

``--memory-lengths`` adds peak memory against answer length: for each engine and length, a fresh
process builds the same policy and prompts, warms the engine up, then generates exactly that many
tokens per row (the ``full`` variant). On CPU the figure is the rise of the process's peak
resident memory (``VmHWM``, reset to the current RSS just before generating) over the RSS before
generating; on CUDA it is ``torch.cuda.max_memory_allocated`` over the allocation before. Each
engine's peaks are fitted with a line and a parabola in the length: the result records bytes per
token, and the ratio of successive increments (length doubling each time: 2 for linear growth,
4 for quadratic), which is what says linear vs quadratic.

On a machine whose cores are busy with other work, use ``--threads 1``: with 2 OpenMP threads
each small kernel waits at a barrier for a thread that is not scheduled, and both engines slow
down 5-30x in ways that vary from run to run. The recorded results say which was used.
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

TARGET = 2.0  # the target: ≥ 2× generate's tokens/s at batch 256 on the tiny model


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
    torch.set_num_threads(args.threads)

    import transformers

    transformers.logging.set_verbosity_error()
    tok = build_char_tokenizer()
    model = build_policy(args.size, tok, seed=args.seed).to(args.device)
    rng = random.Random(args.seed)
    texts = ["".join(rng.choice(CHARS[:-1]) for _ in range(args.prompt_len)) for _ in range(args.batch)]
    ids, mask = (x.to(args.device) for x in encode_prompts(tok, texts))
    eos, pad, T = tok.eos_token_id, tok.pad_token_id, args.max_new_tokens

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
            rows.append({"variant": variant, "engine": engine, "seconds": round(dt, 4),
                         "seconds_all": [round(x, 4) for x in ts], "tokens": n,
                         "tokens_per_s": round(n / dt, 1), "mean_length": round(float(lens.float().mean()), 2),
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
                    "load_average_1m": round(os.getloadavg()[0], 2)},
        "results": rows,
        "speed_ratio": ratios,
        "target_ratio": TARGET,
    }
    if memory is not None:
        result["memory_vs_length"] = memory
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"{args.size} policy ({count_parameters(model):,} params), batch {args.batch}, max_new_tokens {T}, "
          f"{args.threads} threads, load avg {result['machine']['load_average_1m']}")
    print(f"{'variant':8} {'engine':24} {'seconds':>8} {'tokens':>8} {'tokens/s':>10} {'mean len':>9}")
    for r in rows:
        print(f"{r['variant']:8} {r['engine']:24} {r['seconds']:8.2f} {r['tokens']:8d} {r['tokens_per_s']:10.0f} "
              f"{r['mean_length']:9.1f}")
    for v, x in ratios.items():
        print(f"speed ratio ({v}): {x:.2f}x  (target ≥ {TARGET:.0f}x: {'met' if x >= TARGET else 'NOT met'})")
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
