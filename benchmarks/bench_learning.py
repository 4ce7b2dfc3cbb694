"""Does the default run learn? Held-out accuracy of `vapo train` over its own warm start, per seed.

    python benchmarks/bench_learning.py [--seeds 0 1 2] [--preset vapo] [--set k=v ...] [--out PATH]

Runs the default configuration (plus any ``--set`` overrides) once per seed, each in a fresh
run directory under a temporary folder (the SFT warm start is cached as usual), and reports per
seed: warm-start and final held-out accuracy, the accuracy on the longest trained size and on the
longer-than-trained split, wall-clock seconds; then the median gain. The issue's target: median
held-out gain ≥ 20 points over 3 seeds, with the gain visible on the longest length bucket.
Writes benchmarks/results/bench_learning.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

TARGET_GAIN = 0.20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--preset", default="vapo")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=value (repeatable)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_learning.json")
    args = ap.parse_args()

    from vapo.config import resolve_config
    from vapo.train import start_run

    rows = []
    with tempfile.TemporaryDirectory(prefix="vapo-bench-learning-") as tmp:
        for seed in args.seeds:
            cfg = resolve_config(args.preset, overrides=[f"seed={seed}", f"train.runs_dir={tmp}", *args.overrides])
            t0 = time.time()
            s = start_run(cfg, name=f"seed{seed}", progress=False)
            if s is None:
                raise SystemExit(f"seed {seed}: the run was interrupted")
            longest = max(s["final_by_size"]["heldout"], key=int)
            rows.append({
                "seed": seed, "seconds": round(time.time() - t0, 1),
                "heldout_warm": s["warm_start"]["heldout"], "heldout_final": s["final"]["heldout"],
                "gain": s["final"]["heldout"] - s["warm_start"]["heldout"],
                "longest_size": int(longest),
                "longest_warm": s["warm_start_by_size"]["heldout"][longest], "longest_final": s["final_by_size"]["heldout"][longest],
                "long_split_warm": s["warm_start"]["long"], "long_split_final": s["final"]["long"],
            })
            r = rows[-1]
            print(f"seed {seed}: held-out {r['heldout_warm']:.3f} -> {r['heldout_final']:.3f} ({r['gain']:+.3f}); "
                  f"size {longest}: {r['longest_warm']:.2f} -> {r['longest_final']:.2f}; long split "
                  f"{r['long_split_warm']:.3f} -> {r['long_split_final']:.3f}; {r['seconds']:.0f} s", flush=True)
    median = statistics.median(r["gain"] for r in rows)
    result = {
        "benchmark": "held-out accuracy gain of the default run over its warm start",
        "preset": args.preset, "overrides": args.overrides, "seeds": args.seeds,
        "machine": {"torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads()},
        "runs": rows, "median_gain": median, "target_median_gain": TARGET_GAIN,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"median held-out gain over {len(rows)} seeds: {median:+.3f} (target ≥ +{TARGET_GAIN:.2f}: "
          f"{'met' if median >= TARGET_GAIN else 'NOT met'})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
