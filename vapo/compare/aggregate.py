"""From run directories to the numbers of a compare report (what compare.json holds).

Per cell (one run directory): final held-out/long accuracy and accuracy by problem size
(summary.json), the held-out curve (eval.jsonl), training accuracy, explained variance and
generation rounds (metrics.jsonl), exit codes and wall time (the runner's status.json).

Per variant (over seeds): mean ± 95% t-interval of each number; steps and answers sampled until
the held-out accuracy first reaches the threshold; crashes (non-zero exit), NaN metrics and
collapses (final held-out accuracy more than COLLAPSE_DROP below the warm start's).
"""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path
from typing import Any

from vapo.compare.grid import BASELINE_PRESETS, Grid
from vapo.compare.paper import ABLATIONS, DAPO_CUMULATIVE, PAPER_SCORES, VAPO_SCORE, paper_drop
from vapo.compare.runner import CellPlan
from vapo.compare.stats import diff_ci, mean_ci, separated, spearman, welch_p

COLLAPSE_DROP = 0.10  # a final held-out accuracy this far below the warm start's is a collapse
EV_TAIL = 0.1  # training EV is averaged over the last 10% of iterations


def _jsonl(path: Path) -> list[dict[str, Any]]:
    from vapo.train.rundir import read_jsonl

    return read_jsonl(path)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# Metrics whose non-finite value means the numbers broke (explained variance is excluded: it is
# undefined, and logged as NaN, whenever a batch's returns are all equal).
NAN_WATCH = ("loss", "grad_norm", "entropy", "kl", "reward", "ratio", "advantage")


def _has_nan(rows: list[dict[str, Any]]) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) and any(w in k for w in NAN_WATCH)
               for r in rows for k, v in r.items())


def cell_record(plan: CellPlan, threshold: float | None = None) -> dict[str, Any]:
    """Everything a report needs from one run directory."""
    cfg = plan.cell.config
    run = plan.run_dir
    summ_path = run / "summary.json"
    summary = json.loads(summ_path.read_text()) if summ_path.is_file() else None
    metrics = _jsonl(run / "metrics.jsonl")
    evals = _jsonl(run / "eval.jsonl")
    per_iter = cfg.rollout.prompts_per_iter * cfg.rollout.group_size
    samples, cum = {0: 0}, 0
    for m in metrics:
        cum += int(m.get("gen_rounds", 1)) * per_iter
        samples[int(m["iteration"])] = cum
    curve = sorted((int(e["iteration"]), float(e["accuracy"])) for e in evals if e.get("split") == "heldout")
    curve_long = sorted((int(e["iteration"]), float(e["accuracy"])) for e in evals if e.get("split") == "long")
    evs = [m["explained_variance"] for m in metrics if _finite(m.get("explained_variance"))]
    tail = evs[-max(1, int(len(evs) * EV_TAIL)):] if evs else []
    crashes = sum(1 for a in plan.history if a.get("exit_code") not in (0, None) and a.get("result") == "crashed")
    wall = sum(float(a.get("seconds", 0.0)) for a in plan.history)
    cpu = sum(float(a.get("cpu_s", 0.0)) for a in plan.history)
    if not plan.history and summary is not None:
        wall = float(summary.get("seconds", 0.0))
    final = summary["final"] if summary else {}
    warm = summary["warm_start"] if summary else ({"heldout": curve[0][1]} if curve and curve[0][0] == 0 else {})
    rec: dict[str, Any] = {
        "cell": plan.cell.name, "variant": plan.cell.variant.name, "seed": plan.cell.seed, "run_dir": str(run),
        "result": plan.result, "finished": summary is not None, "crashes": crashes,
        "exit_codes": [a.get("exit_code") for a in plan.history], "wall_s": wall, "cpu_s": cpu or None,
        "iterations_done": len(metrics), "iterations": cfg.train.iterations,
        "answers_per_iter": per_iter, "samples_generated": cum,
        "final": final, "warm_start": warm,
        "final_by_size": summary["final_by_size"] if summary else {},
        "curve_heldout": curve, "curve_long": curve_long,
        "train_accuracy": [(int(m["iteration"]), float(m["accuracy"])) for m in metrics if _finite(m.get("accuracy"))],
        "samples_at": samples,
        "ev_train": sum(tail) / len(tail) if tail else None,
        "nan": _has_nan(metrics),
        "critic_quality": (summary or {}).get("critic_quality"),
    }
    h0, h1 = warm.get("heldout"), final.get("heldout")
    rec["collapse"] = bool(rec["nan"] or (h0 is not None and h1 is not None and h1 < h0 - COLLAPSE_DROP))
    return rec


MAX_SIZE_COLUMNS = 8  # more distinct problem sizes than this are grouped into SIZE_BUCKETS ranges
SIZE_BUCKETS = 6


def size_key(label: str) -> int:
    """Sort key of a size label: "7", or a bucket "4–13" (its first size)."""
    return int(str(label).split("–")[0])


def bucket_sizes(sizes: set[str]) -> list[tuple[str, list[str]]]:
    """(label, member sizes) per column: every size when there are few, else SIZE_BUCKETS ranges
    of equal width over the sizes present (e.g. repeat_add's 4..64), labelled "lo–hi"."""
    ordered = sorted(sizes, key=int)
    if len(ordered) <= MAX_SIZE_COLUMNS:
        return [(s, [s]) for s in ordered]
    lo, hi = int(ordered[0]), int(ordered[-1])
    width = (hi - lo + 1) / SIZE_BUCKETS
    groups: dict[int, list[str]] = {}
    for s in ordered:
        groups.setdefault(min(SIZE_BUCKETS - 1, int((int(s) - lo) / width)), []).append(s)
    return [(f"{m[0]}–{m[-1]}" if len(m) > 1 else m[0], m) for _, m in sorted(groups.items())]


def _bucket_mean(acc_by_size: dict[str, float], members: list[str]) -> float | None:
    """A seed's accuracy over a bucket: the mean over the bucket's sizes it was evaluated on."""
    vals = [acc_by_size[s] for s in members if s in acc_by_size and _finite(acc_by_size[s])]
    return sum(vals) / len(vals) if vals else None


def reach(rec: dict[str, Any], threshold: float) -> tuple[int | None, int | None]:
    """(iteration, answers sampled) at the first held-out evaluation with accuracy ≥ threshold."""
    for it, acc in rec["curve_heldout"]:
        if acc >= threshold - 1e-12:
            samp = rec["samples_at"].get(it)
            if samp is None:  # an evaluation between logged iterations (should not happen)
                samp = it * rec["answers_per_iter"]
            return it, samp
    return None, None


def _ev_mc(cq: Any, diag: dict[str, Any] | None) -> dict[str, Any] | None:
    """Critic EV against Monte-Carlo values. The diagnosed final checkpoint's (vapo diagnose,
    section 1) comes first: it is measured the same way for every variant, after RL. Else
    summary.json's critic_quality (the end of value pretraining, before RL), else None."""
    if diag and diag.get("has_critic"):
        overall = (((diag.get("critic") or {}).get("current") or {}).get("overall")) or {}
        ev = overall.get("explained_variance")
        if isinstance(ev, dict) and _finite(ev.get("value")):
            return {"value": ev["value"], "lo": ev.get("lo"), "hi": ev.get("hi"),
                    "source": f"vapo diagnose (step {diag.get('step')}, one seed)"}
    ev = cq.get("ev_vs_mc") if isinstance(cq, dict) else None  # the trainer writes {value, lo, hi}
    if isinstance(ev, dict) and _finite(ev.get("value")):
        return {"value": ev["value"], "lo": ev.get("lo"), "hi": ev.get("hi"),
                "source": "summary.json critic_quality (end of value pretraining)"}
    return None


def _curve_band(recs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Mean and CI over seeds at every iteration that all seeds logged."""
    if not recs:
        return []
    common = set.intersection(*[{it for it, _ in r[key]} for r in recs]) if recs else set()
    out = []
    for it in sorted(common):
        vals = [a for r in recs for i, a in r[key] if i == it]
        out.append({"iteration": it, **{k: v for k, v in mean_ci(vals).items() if k != "values"}})
    return out


def _smooth(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    out = []
    for i in range(len(points)):
        w = points[max(0, i - window + 1): i + 1]
        out.append((points[i][0], sum(a for _, a in w) / len(w)))
    return out


def aggregate(grid: Grid, plans: list[CellPlan], diagnostics: dict[str, Path] | None = None) -> dict[str, Any]:
    """The compare results (JSON-ready)."""
    from vapo.diagnostics.report import findings

    diagnostics = diagnostics or {}
    recs = [cell_record(p) for p in plans]
    by_var: dict[str, list[dict[str, Any]]] = {v.name: [r for r in recs if r["variant"] == v.name] for v in grid.variants}
    fin = {n: [r for r in rs if r["finished"]] for n, rs in by_var.items()}

    # ---- threshold: the weakest baseline's final held-out accuracy (mean over seeds)
    def final_mean(name: str) -> float | None:
        return mean_ci([r["final"].get("heldout") for r in fin[name]])["mean"]

    def collapsed(name: str) -> bool:
        return any(r["collapse"] for r in fin[name])

    if grid.threshold is not None:
        threshold, source = grid.threshold, "set in the grid file"
    else:
        # A collapsed baseline ends below its warm start, so every variant would "reach" its final
        # accuracy at iteration 0: the weakest baseline that did not collapse sets the threshold.
        base = [(final_mean(v.name), v.name) for v in grid.variants if v.preset in BASELINE_PRESETS]
        base = [b for b in base if b[0] is not None]
        held = [b for b in base if not collapsed(b[1])]
        skipped = sorted(n for _, n in base if collapsed(n))
        note = f" ({', '.join(skipped)} collapsed: not used)" if skipped and held else ""
        if held or base:
            threshold, who = min(held or base)
            source = f"final held-out accuracy of the weakest baseline, {who}{note}"
        else:
            allv = [(final_mean(v.name), v.name) for v in grid.variants]
            allv = [b for b in allv if b[0] is not None]
            threshold, who = min(allv) if allv else (None, None)
            source = f"no baseline preset in the grid: final held-out accuracy of the weakest variant, {who}"

    size_buckets = {split: bucket_sizes({s for rs in fin.values() for r in rs for s in r["final_by_size"].get(split, {})})
                    for split in ("heldout", "long")}

    dapo = next((v.name for v in grid.variants if v.name == "dapo"), None) or next(
        (v.name for v in grid.variants if v.preset == "dapo" and v.paper == "dapo"), None)

    variants: dict[str, Any] = {}
    for v in grid.variants:
        rs, fs = by_var[v.name], fin[v.name]
        per_seed_reach = [reach(r, threshold) if threshold is not None else (None, None) for r in fs]
        steps = [s for s, _ in per_seed_reach if s is not None]
        samp = [s for _, s in per_seed_reach if s is not None]
        by_size = {split: {label: mean_ci([_bucket_mean(r["final_by_size"].get(split, {}), members) for r in fs])
                           for label, members in size_buckets[split]}
                   for split in ("heldout", "long")}
        diag_dir = diagnostics.get(v.name)
        diag = json.loads((diag_dir / "diagnostics.json").read_text()) if diag_dir else None
        variants[v.name] = {
            "preset": v.preset, "overrides": list(v.overrides), "config_file": v.config_file, "paper_key": v.paper,
            "paper_score": PAPER_SCORES.get(v.paper or ""), "seeds": [r["seed"] for r in rs],
            "finished": len(fs), "cells": len(rs),
            "heldout": mean_ci([r["final"].get("heldout") for r in fs]),
            "long": mean_ci([r["final"].get("long") for r in fs]),
            "warm_start_heldout": mean_ci([r["warm_start"].get("heldout") for r in fs]),
            "by_size": by_size,
            "steps_to_threshold": mean_ci(steps), "samples_to_threshold": mean_ci(samp),
            "reached": f"{len(steps)}/{len(fs)}",
            "ev_train": mean_ci([r["ev_train"] for r in fs]),
            "ev_mc": _ev_mc(next((r["critic_quality"] for r in fs if r["critic_quality"]), None), diag),
            "crashes": sum(r["crashes"] for r in rs), "collapses": sum(r["collapse"] for r in fs),
            "nan_cells": sum(r["nan"] for r in rs),
            "unfinished": [r["cell"] for r in rs if not r["finished"]],
            "wall_s": mean_ci([r["wall_s"] for r in fs]), "wall_total_s": sum(r["wall_s"] for r in rs),
            "cpu_s": mean_ci([r["cpu_s"] for r in fs]),
            "curve": _curve_band(fs, "curve_heldout"),
            "curve_long": _curve_band(fs, "curve_long"),
            "train_curve": _curve_band([{**r, "train_smooth": _smooth(r["train_accuracy"], 10)} for r in fs], "train_smooth"),
            "diagnose": None if diag is None else {
                "dir": str(diag_dir), "report": str(diag_dir / "report.html"), "seed": fs[0]["seed"] if fs else None,
                "step": diag.get("step"), "findings": [list(f) for f in findings(diag)]},
        }
        if fs and diag_dir is None:
            variants[v.name]["diagnose_note"] = "not diagnosed"
    if dapo and variants[dapo]["samples_to_threshold"]["mean"]:
        ref = variants[dapo]["samples_to_threshold"]["mean"]
        for d in variants.values():
            m = d["samples_to_threshold"]["mean"]
            d["samples_rel_dapo"] = None if m is None else m / ref
    else:
        for d in variants.values():
            d["samples_rel_dapo"] = None

    # ---- every pair: do the 95% intervals separate?
    pairs = []
    for a, b in combinations([v.name for v in grid.variants], 2):
        row: dict[str, Any] = {"a": a, "b": b}
        for split in ("heldout", "long"):
            xa = [r["final"].get(split) for r in fin[a]]
            xb = [r["final"].get(split) for r in fin[b]]
            row[split] = {"diff": diff_ci(xa, xb), "separated": separated(variants[a][split], variants[b][split]),
                          "welch_p": welch_p(xa, xb)}
        pairs.append(row)

    # ---- ablations: our drop (vapo − ablation, held-out points) beside the paper's
    ref = next((v.name for v in grid.variants if v.paper == "vapo"), None)
    ablation_rows = []
    for preset, component in ABLATIONS:
        v = next((x for x in grid.variants if x.paper == preset), None)
        if v is None or ref is None:
            continue
        d = diff_ci([r["final"].get("heldout") for r in fin[ref]], [r["final"].get("heldout") for r in fin[v.name]])
        ablation_rows.append({"variant": v.name, "preset": preset, "component": component,
                              "drop": {k: (None if x is None else 100 * x) if k in ("mean", "lo", "hi") else x
                                       for k, x in d.items()},
                              "paper_drop": paper_drop(preset), "paper_score": PAPER_SCORES[preset]})
    rho = spearman([r["drop"]["mean"] for r in ablation_rows], [r["paper_drop"] for r in ablation_rows]) \
        if ablation_rows else None

    return {
        "grid": str(grid.path), "name": grid.name, "description": grid.description, "quick": grid.quick,
        "quick_note": grid.quick_note, "extra_set": list(grid.extra_set), "seeds": grid.seeds, "budget": grid.budget,
        "threshold": {"value": threshold, "source": source},
        "collapse_rule": f"NaN in metrics, or final held-out accuracy more than {COLLAPSE_DROP:.2f} below the warm start's",
        "dapo_variant": dapo, "vapo_variant": ref,
        "variants": variants, "pairs": pairs,
        "ablation": {"reference": ref, "rows": ablation_rows, "spearman": rho},
        "paper": {"vapo": VAPO_SCORE, "scores": PAPER_SCORES, "dapo_cumulative": [list(x) for x in DAPO_CUMULATIVE]},
        "cells": [{k: v for k, v in r.items() if k not in ("samples_at", "train_accuracy")} for r in recs],
    }
