"""Speed and accuracy of vapo's masked GAE against the usual reverse loop over T.

    python benchmarks/bench_algos.py [--quick] [--threads N] [--out PATH]

Baselines (both vectorised over B, one Python step per token, per-sequence lambda):
  * loop-verl: `masked_gae_reference`, verl's ``compute_gae_advantage_return`` recursion that
    carries ``nextvalues``/``lastgaelam`` through masked positions (works for any mask);
  * loop-trl: the shorter right-padding-only loop of TRL / early verl
    (``nextvalues = values[:, t + 1]``; padding pre-zeroed).
Accuracy: max |error| of float32 outputs against a float64 run of the reference loop.
Data: "outcome" = 0/1 score on the last real token and values in (0, 1) (the RL case);
"randn" = N(0, 1) reward on every token (stress case: returns grow like sqrt(T)).
Lambda per sequence = adaptive_lambda(length, alpha=0.05) (VAPO).
Writes benchmarks/results/bench_algos.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from vapo.algos import adaptive_lambda, masked_gae, masked_gae_reference
from vapo.algos import advantages as adv_mod


def loop_trl(rewards, values, mask, gamma, lam):
    """The usual right-padded GAE loop (TRL's PPOTrainer, early verl), per-sequence lambda."""
    m = mask.to(values.dtype)
    values, rewards = values * m, rewards * m
    last = torch.zeros(values.shape[0], dtype=values.dtype)
    out = []
    t_len = values.shape[1]
    for t in reversed(range(t_len)):
        next_v = values[:, t + 1] if t < t_len - 1 else 0.0
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        out.append(last)
    adv = torch.stack(out[::-1], dim=1) * m
    return adv, (adv + values) * m


def make_data(b: int, t: int, layout: str, kind: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, t // 4), t + 1, (b,), generator=gen)
    lengths[0] = t
    mask = torch.arange(t)[None, :] < lengths[:, None]
    if layout == "any":  # random holes and left padding: the compaction path
        mask = mask & (torch.rand(b, t, generator=gen) < 0.9)
        mask = torch.stack([torch.roll(mask[i], int(t - lengths[i]) // 2) for i in range(b)])
    if kind == "outcome":
        score = (torch.rand(b, generator=gen) < 0.5).float()
        rewards = torch.zeros(b, t)
        last = torch.where(mask, torch.arange(t), -1).max(-1).values
        rewards[torch.arange(b), last.clamp_min(0)] = score
        # smooth values in (0, 1): a random walk squashed by a sigmoid
        values = torch.sigmoid(torch.cumsum(0.05 * torch.randn(b, t, generator=gen), -1))
    else:
        rewards = torch.randn(b, t, generator=gen)
        values = torch.randn(b, t, generator=gen)
    lam = adaptive_lambda(mask.sum(-1).clamp_min(1), alpha=0.05)
    return rewards, values, mask, lam


def timeit(fns: dict, reps: int) -> dict:
    """Time several functions *interleaved* (one call of each per round), so that load from
    other processes on the shared cores hits all of them alike. Returns
    {name: (min_s, median_s)}; the min is the usual benchmark figure (least disturbed)."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (min(ts), statistics.median(ts)) for name, ts in times.items()}


def max_err(out, ref) -> float:
    return max((o.double() - r).abs().max().item() for o, r in zip(out, ref, strict=True))


def run_case(b: int, t: int, layout: str, reps: int) -> dict:
    row: dict = {"B": b, "T": t, "layout": layout}
    r, v, m, lam = make_data(b, t, layout, "outcome")
    fns = {"fast": lambda: masked_gae(r, v, m, 1.0, lam),
           "loop_verl": lambda: masked_gae_reference(r, v, m, 1.0, lam)}
    if layout == "right":
        fns["loop_trl"] = lambda: loop_trl(r, v, m, 1.0, lam)
    for name, (t_min, t_med) in timeit(fns, reps).items():
        row[f"{name}_s"], row[f"{name}_median_s"] = t_min, t_med
    for kind in ("outcome", "randn"):
        r, v, m, lam = make_data(b, t, layout, kind)
        ref = masked_gae_reference(r.double(), v.double(), m, 1.0, lam.double())
        row[f"err_fast_{kind}"] = max_err(masked_gae(r, v, m, 1.0, lam), ref)
        row[f"err_loop_{kind}"] = max_err(masked_gae_reference(r, v, m, 1.0, lam), ref)
        row[f"max_abs_adv_{kind}"] = ref[0].abs().max().item()
    row["speedup_vs_verl_loop"] = row["loop_verl_s"] / row["fast_s"]
    row["speedup_vs_verl_loop_median"] = row["loop_verl_median_s"] / row["fast_median_s"]
    if "loop_trl_s" in row:
        row["speedup_vs_trl_loop"] = row["loop_trl_s"] / row["fast_s"]
        row["speedup_vs_trl_loop_median"] = row["loop_trl_median_s"] / row["fast_median_s"]
    return row


def chunk_sweep(reps: int) -> list[dict]:
    r, v, m, lam = make_data(512, 8192, "right", "outcome")
    rows = []
    default = adv_mod._CHUNK
    try:
        for k in (16, 32, 64, 128):
            adv_mod._CHUNK = k
            d = adv_mod.discounted_reverse_cumsum
            t_min, _ = timeit({"scan": lambda d=d, k=k: d(r, lam.double(), k)}, reps)["scan"]
            rows.append({"K": k, "scan_s": t_min})
    finally:
        adv_mod._CHUNK = default
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, no chunk-size sweep")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (machine default: 2)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_algos.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 10
    cases = [(8, 16, "right"), (64, 256, "right"), (64, 256, "any"), (512, 2048, "right"),
             (512, 8192, "right"), (512, 8192, "any")]
    rows = [run_case(b, t, layout, reps if t < 8192 else max(3, reps // 2)) for b, t, layout in cases]

    head = (f"{'B':>4} {'T':>5} {'mask':>5} | {'fast ms':>8} {'loop-verl ms':>12} {'x':>6} "
            f"{'loop-trl ms':>11} {'x':>6} | {'err fast':>8} {'err loop':>8} "
            f"{'err fast':>8} {'err loop':>8}")
    print(f"masked_gae vs reverse loop over T; torch {torch.__version__}, {args.threads} threads; "
          f"times: min of {reps} interleaved runs (x = speed ratio; median ratio in the JSON)")
    print(f"{'':>17}   {'':>41}   {'outcome data':^17} {'randn data':^17}")
    print(head)
    print("-" * len(head))
    for w in rows:
        trl = f"{w['loop_trl_s'] * 1e3:11.2f} {w['speedup_vs_trl_loop']:6.1f}" if "loop_trl_s" in w else f"{'-':>11} {'-':>6}"
        print(f"{w['B']:>4} {w['T']:>5} {w['layout']:>5} | {w['fast_s'] * 1e3:8.2f} "
              f"{w['loop_verl_s'] * 1e3:12.2f} {w['speedup_vs_verl_loop']:6.1f} {trl} | "
              f"{w['err_fast_outcome']:8.1e} {w['err_loop_outcome']:8.1e} "
              f"{w['err_fast_randn']:8.1e} {w['err_loop_randn']:8.1e}")
    sweep = [] if args.quick else chunk_sweep(reps)
    if sweep:
        print("\nchunk size K of the scan on [512, 8192]: " +
              ", ".join(f"K={s['K']}: {s['scan_s'] * 1e3:.1f} ms" for s in sweep))
    result = {
        "benchmark": "masked_gae",
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": platform.machine(),
        "quick": args.quick,
        "chunk": adv_mod._CHUNK,
        "cases": rows,
        "chunk_sweep": sweep,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
