"""Held-out accuracy against wall-clock: the main job under today's defaults and under the old ones.

The old defaults are those before two changes that made an iteration dearer: one optimizer step per
rollout (``optim.minibatches=1``, now 4) and the critic of before its tuning (4 value-pretraining
epochs with patience 3 at lr 1e-3, now 8 epochs, patience 6, lr 3e-3). Both runs are ``vapo
train`` on the default task (preset vapo, micro model, seed 0) with every other setting at its
default, the same cached warm start, run one after the other on an otherwise idle machine with
all its cores, and evaluated every ``--eval-every`` iterations. Each held-out evaluation is timed
when its line lands in ``eval.jsonl`` (seconds since the process started, evaluation time
included, the same for both). Writes a JSON with the curves and the load average, and a plot.

    python benchmarks/bench_defaults_clock.py --out benchmarks/results/defaults_clock
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD = ["optim.minibatches=1", "algo.critic.pretrain_epochs=4", "algo.critic.pretrain_patience=3",
       "optim.critic_lr=1e-3"]


def _load() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").is_file() else float("nan")


def run(name: str, sets: list[str], runs: Path, seed: int, eval_every: int, iterations: int | None) -> dict:
    cmd = [sys.executable, "-m", "vapo.cli", "train", "--seed", str(seed), "--name", name,
           "--set", f"train.runs_dir={runs}", "--set", f"train.eval_every={eval_every}"]
    if iterations is not None:
        cmd += ["--set", f"train.iterations={iterations}"]
    for s in sets:
        cmd += ["--set", s]
    ev, met = runs / name / "eval.jsonl", runs / name / "metrics.jsonl"
    load0, t0 = _load(), time.time()
    log = open(runs / f"{name}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seen, curve = 0, []
    while True:
        rc = proc.poll()
        lines = [x for x in ev.read_text().splitlines() if x.strip()] if ev.is_file() else []
        for line in lines[seen:]:
            r = json.loads(line)
            if r.get("split") == "heldout":
                curve.append({"wall_s": round(time.time() - t0, 1), "iteration": r.get("iteration"),
                              "heldout": r["accuracy"]})
                print(f"[bench] {name}: iteration {r.get('iteration')} held-out {r['accuracy']:.3f} "
                      f"at {time.time() - t0:.0f} s", flush=True)
        seen = len(lines)
        if rc is not None:
            break
        time.sleep(0.5)
    log.close()
    if rc != 0:
        raise SystemExit(f"{name} exited {rc}; see {runs / (name + '.log')}")
    times = [json.loads(x).get("time_iter") for x in met.read_text().splitlines() if x.strip()]
    times = sorted(t for t in times if t is not None)
    return {"command": " ".join(cmd[2:]), "overrides": sets, "wall_s": round(time.time() - t0, 1),
            "load_average_1min": {"start": load0, "end": _load()},
            "median_time_iter_s": times[len(times) // 2] if times else None, "curve": curve}


def first_reach(curve: list[dict], level: float) -> float | None:
    """Seconds at the first evaluation with held-out accuracy ≥ level (None if never)."""
    return next((p["wall_s"] for p in curve if p["heldout"] >= level), None)


def plot(res: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for r in res["runs"].values():
        xs = [p["wall_s"] / 60 for p in r["curve"]]
        ax.plot(xs, [p["heldout"] for p in r["curve"]], marker="o", label=r["short"])
    ax.set_xlabel("minutes since the process started (cached warm start; evaluations included)")
    ax.set_ylabel("held-out accuracy (128 prompts × 4)")
    ax.set_title(f"Main job, seed {res['seed']}: held-out accuracy against wall-clock", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "defaults_clock")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=None, help="default: the config's (400)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from an existing defaults_clock.json")
    a = ap.parse_args()
    if a.plot_only:
        plot(json.loads((a.out / "defaults_clock.json").read_text()), a.out / "defaults_clock.png")
        return
    a.out.mkdir(parents=True, exist_ok=True)
    res = {"what": __doc__.split("\n\n")[1].replace("\n", " "), "cores": os.cpu_count(), "seed": a.seed,
           "eval_every": a.eval_every, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="vapo-clock-") as tmp:
        for name, sets, short in (("new", [], "today's defaults (4 minibatches; critic 8 epochs, patience 6, lr 3e-3)"),
                                  ("old", OLD, "old defaults (1 minibatch; critic 4 epochs, patience 3, lr 1e-3)")):
            r = run(name, sets, Path(tmp), a.seed, a.eval_every, a.iterations)
            r |= {"short": short, "seconds_to_heldout": {str(x): first_reach(r["curve"], x) for x in (0.8, 0.9, 0.95)}}
            res["runs"][name] = r
            (a.out / "defaults_clock.json").write_text(json.dumps(res, indent=1) + "\n")
    plot(res, a.out / "defaults_clock.png")
    print(f"[bench] wrote {a.out / 'defaults_clock.json'} and defaults_clock.png")


if __name__ == "__main__":
    main()
