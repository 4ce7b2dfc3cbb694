"""The exploration table of docs/exploration.md from a grid: each mechanism against the same preset
without it, paired by seed, Holm-corrected.

Reads, per cell (``<variant>-s<seed>``), the final evaluation (eval.jsonl: held-out pass@1 and
pass@k, the long split's pass@1 and pass@k) and the training metrics (metrics.jsonl: the entropy of the last
10% of iterations), from the run directories of a grid's ``--out`` or from the
``metrics/<cell>.eval.jsonl.gz`` / ``<cell>.jsonl.gz`` files that `vapo compare` commits beside
its report. A variant's base is the preset it extends, named by the first word of its name
(``vapo_clip_cov_0.02`` → ``vapo``, ``grpo_passk`` → ``grpo``), or given with ``--base``.

For every metric the family is the planned pairs (each mechanism − its base) and Holm's
correction runs over that family. Each difference is printed with its paired 95% t interval and
with the Bonferroni interval at level 1 − 0.05/m (m pairs in the family), the simultaneous
interval that goes with a family-wise correction; p is the paired t-test's, then Holm's.
Also writes the entropy trajectory (mean over seeds, per variant) as a plot with ``--plot``.

    python benchmarks/exploration_table.py benchmarks/results/exploration_default \\
        [--json out.json] [--plot entropy.png] [--base vapo_x=vapo ...]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vapo.stats import holm, paired  # noqa: E402
from vapo.train.rundir import read_jsonl  # noqa: E402

CELL = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")
# (key, label, scale): pass rates are printed in points (×100), entropy in nats per token
METRICS = [("pass1", "held-out pass@1", 100.0), ("passk", "held-out pass@{k}", 100.0),
           ("long", "long split pass@1", 100.0), ("long_passk", "long split pass@{k}", 100.0),
           ("entropy", "final entropy (nats/token)", 1.0)]


def _cell_files(out: Path) -> dict[tuple[str, int], tuple[Path, Path]]:
    """{(variant, seed): (eval file, metrics file)}: finished run directories first, then metrics/*.gz."""
    found: dict[tuple[str, int], tuple[Path, Path]] = {}
    for d in sorted(out.iterdir()) if out.is_dir() else []:
        m = CELL.match(d.name)
        # summary.json is written when a run ends: a run still in progress is left out
        if m and all((d / f).is_file() for f in ("eval.jsonl", "metrics.jsonl", "summary.json")):
            found[(m["variant"], int(m["seed"]))] = (d / "eval.jsonl", d / "metrics.jsonl")
    mdir = out / "metrics"
    for f in sorted(mdir.glob("*.eval.jsonl.gz")) if mdir.is_dir() else []:
        name = f.name.removesuffix(".eval.jsonl.gz")
        m = CELL.match(name)
        if m and (m["variant"], int(m["seed"])) not in found and (mdir / f"{name}.jsonl.gz").is_file():
            found[(m["variant"], int(m["seed"]))] = (f, mdir / f"{name}.jsonl.gz")
    return found


def cell_values(eval_file: Path, metrics_file: Path, k: int) -> dict[str, Any]:
    """The final evaluation's pass@1 and pass@k (held-out and long split), and the mean entropy
    of the last 10% of iterations (at least one). A run that did not finish its last evaluation
    gives None for what it lacks."""
    evals = read_jsonl(eval_file)
    rows = read_jsonl(metrics_file)
    last_it = max((e.get("iteration", -1) for e in evals), default=-1)
    final = {e.get("split"): e for e in evals if e.get("iteration") == last_it}
    held, long_ = final.get("heldout") or {}, final.get("long") or {}
    pk = held.get("pass_at_k") or {}
    ent = [r["entropy"] for r in rows if isinstance(r.get("entropy"), (int, float)) and math.isfinite(r["entropy"])]
    tail = ent[-max(1, len(ent) // 10):] if ent else []
    return {"iteration": last_it, "pass1": pk.get("1", held.get("accuracy")), "passk": pk.get(str(k)),
            "long": (long_.get("pass_at_k") or {}).get("1", long_.get("accuracy")),
            "long_passk": (long_.get("pass_at_k") or {}).get(str(k)),
            "entropy": statistics.fmean(tail) if tail else None,
            "entropy_curve": [(r.get("iteration"), r.get("entropy")) for r in rows if "entropy" in r]}


def base_of(variant: str, bases: dict[str, str]) -> str:
    return bases.get(variant, variant.split("_", 1)[0])


def table(out: Path, k: int = 8, bases: dict[str, str] | None = None) -> dict[str, Any]:
    bases = bases or {}
    cells = {key: cell_values(*files, k) for key, files in _cell_files(out).items()}
    variants = list(dict.fromkeys(v for v, _ in sorted(cells)))
    planned = [(v, base_of(v, bases)) for v in variants if base_of(v, bases) != v and base_of(v, bases) in variants]
    per_metric: dict[str, list[dict[str, Any]]] = {}
    for key, _label, _scale in METRICS:
        rows = []
        for v, b in planned:
            a = {s: c[key] for (vv, s), c in cells.items() if vv == v}
            bb = {s: c[key] for (vv, s), c in cells.items() if vv == b}
            rows.append({"variant": v, "base": b, **paired(a, bb)})
        for r, p in zip(rows, holm([r["p_t"] for r in rows]), strict=True):
            r["p_holm"] = p
        m = sum(r["p_t"] is not None for r in rows)
        for r in rows:  # the Bonferroni interval at level 1 - 0.05/m
            wide = paired({s: d for s, d in zip(r["seeds"], r["diffs"], strict=True)},
                          {s: 0.0 for s in r["seeds"]}, level=1 - 0.05 / max(m, 1))
            r["lo_corr"], r["hi_corr"], r["family"] = wide["lo"], wide["hi"], m
        per_metric[key] = rows
    means = {v: {key: _mean([c[key] for (vv, _), c in cells.items() if vv == v]) for key, *_ in METRICS}
             for v in variants}
    seeds = {v: sorted(s for vv, s in cells if vv == v) for v in variants}
    return {"k": k, "variants": variants, "seeds": seeds, "means": means, "pairs": per_metric,
            "cells": {f"{v}-s{s}": {kk: vv for kk, vv in c.items() if kk != "entropy_curve"} for (v, s), c in cells.items()},
            "curves": {f"{v}-s{s}": c["entropy_curve"] for (v, s), c in cells.items()}}


def _mean(xs: list[Any]) -> float | None:
    xs = [float(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    return statistics.fmean(xs) if xs else None


def _f(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return "—" if x is None else format(scale * x, fmt)


def markdown(t: dict[str, Any]) -> str:
    k = t["k"]
    lines = [f"Final values, mean over seeds (pass rates in %, entropy in nats/token; pass@{k} from {k} samples):", "",
             "| variant | seeds | " + " | ".join(label.format(k=k) for _, label, _ in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for v in t["variants"]:
        lines.append(f"| {v} | {len(t['seeds'][v])} | " + " | ".join(
            _f(t["means"][v][key], ".1f" if scale > 1 else ".3f", scale) for key, _, scale in METRICS) + " |")
    for key, label, scale in METRICS:
        rows = t["pairs"][key]
        if not rows:
            continue
        fmt = "+.1f" if scale > 1 else "+.3f"
        unit = " (points)" if scale > 1 else ""
        lines += ["", f"**{label.format(k=k)}{unit}**, paired by seed; Holm and the Bonferroni interval over the "
                      f"{rows[0]['family']} planned pairs:", "",
                  "| mechanism − base | n | per seed | mean | 95% t CI | corrected CI | p | p (Holm) | MDE (80%) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            per_seed = " / ".join(_f(d, fmt, scale) for d in r["diffs"])
            lines.append(f"| {r['variant']} − {r['base']} | {r['n']} | {per_seed} | {_f(r['mean'], fmt, scale)} | "
                         f"[{_f(r['lo'], fmt, scale)}, {_f(r['hi'], fmt, scale)}] | "
                         f"[{_f(r['lo_corr'], fmt, scale)}, {_f(r['hi_corr'], fmt, scale)}] | "
                         f"{_f(r['p_t'], '.3f')} | {_f(r['p_holm'], '.3f')} | {_f(r['mde80'], '.1f' if scale > 1 else '.3f', scale)} |")
    return "\n".join(lines) + "\n"


def plot(t: dict[str, Any], path: Path) -> None:
    """Entropy per iteration, mean over seeds, one panel per base preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = {}
    for v in t["variants"]:
        groups.setdefault(v.split("_", 1)[0], []).append(v)
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (g, vs) in zip(axes[0], groups.items(), strict=True):
        for v in vs:
            curves = [dict(c) for name, c in t["curves"].items() if CELL.match(name)["variant"] == v]
            its = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
            ax.plot(its, [statistics.fmean(c[i] for c in curves) for i in its], label=f"{v} (n={len(curves)})",
                    lw=2 if v == g else 1)
        ax.set_yscale("log")
        ax.set(title=f"{g}: entropy, mean over seeds", xlabel="iteration", ylabel="nats per token")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a grid's --out directory, or a committed results directory with metrics/")
    ap.add_argument("--k", type=int, default=8, help="the k of held-out pass@k (needs eval.samples ≥ k)")
    ap.add_argument("--base", action="append", default=[], metavar="VARIANT=BASE",
                    help="a variant's base, where it is not the first word of its name (repeatable)")
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    ap.add_argument("--plot", type=Path, help="also write the entropy trajectories here (PNG)")
    a = ap.parse_args(argv)
    bad = [b for b in a.base if b.count("=") != 1]
    if bad:
        print(f"error: --base {bad[0]!r} is not VARIANT=BASE", file=sys.stderr)
        return 2
    t = table(a.out, a.k, dict(b.split("=") for b in a.base))
    if not t["variants"]:
        print(f"error: no cells with eval.jsonl and metrics.jsonl under {a.out} (run directories "
              "<variant>-s<seed>/ or metrics/<cell>.eval.jsonl.gz with <cell>.jsonl.gz)", file=sys.stderr)
        return 2
    print(markdown(t), end="")
    if a.json:
        a.json.write_text(json.dumps({kk: v for kk, v in t.items() if kk != "curves"}, indent=1) + "\n")
    if a.plot:
        plot(t, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
