"""From run directories to the numbers of a compare report (what compare.json holds).

Per cell (one run directory): final held-out/long accuracy and accuracy by problem size
(summary.json), the held-out curve and, per evaluation problem, its number of correct answers
(eval.jsonl), training accuracy, explained variance and generation rounds (metrics.jsonl), exit
codes and wall time (the runner's status.json).

Per variant (over seeds): the mean with a percentile-bootstrap interval that stays in [0, 1]
(two-level, seeds then problems, when every seed recorded its problems); steps and answers sampled
until the held-out accuracy first reaches the threshold, per seed, with how many seeds reached it;
the critic's numbers per seed; crashes (non-zero exit), NaN metrics and collapses (final held-out
accuracy more than COLLAPSE_DROP below the warm start's).

Per pair of variants (paired by seed: the variants of a seed share the warm start and the
evaluation problems): the per-seed differences, the paired t-test and its interval, the exact
sign-flip test, Holm's correction across the pairs of the report, the two-level bootstrap of the
per-problem differences, and the minimum detectable effect at 80% power (vapo.stats).
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
from vapo.diagnostics.report import findings
from vapo.stats import (
    bootstrap_mean_ci,
    holm,
    mean_ci,
    paired,
    spearman,
    two_level_bootstrap,
    welch_p,
    wilson,
)
from vapo.train.rundir import read_jsonl

COLLAPSE_DROP = 0.10  # a final held-out accuracy this far below the warm start's is a collapse
EV_TAIL = 0.1  # training EV is averaged over the last 10% of iterations
SPLITS = ("heldout", "long")
ALPHA = 0.05
OLD_EVAL_SEED = 1234  # every seed's evaluation set before sets were drawn per seed


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# Metrics whose non-finite value means the numbers broke (explained variance is excluded: it is
# undefined, and logged as NaN, whenever a batch's returns are all equal).
NAN_WATCH = ("loss", "grad_norm", "entropy", "kl", "reward", "ratio", "advantage")


def _has_nan(rows: list[dict[str, Any]]) -> bool:
    return any(isinstance(v, float) and not math.isfinite(v) and any(w in k for w in NAN_WATCH)
               for r in rows for k, v in r.items())


def final_problems(evals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per split, the last evaluation's problems: {"ids", "correct", "samples", "iteration",
    "eval_seed"}; a split whose evaluations predate per-problem records is left out."""
    out: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        rows = [e for e in evals if e.get("split") == split]
        if not rows:
            continue
        last = max(rows, key=lambda e: int(e["iteration"]))
        if last.get("problem_ids") and last.get("problem_correct") is not None:
            out[split] = {"ids": list(last["problem_ids"]), "correct": [int(c) for c in last["problem_correct"]],
                          "samples": int(last["samples"]), "iteration": int(last["iteration"]),
                          "eval_seed": last.get("seed")}
    return out


def cell_record(plan: CellPlan, threshold: float | None = None) -> dict[str, Any]:
    """Everything a report needs from one run directory."""
    cfg = plan.cell.config
    run = plan.run_dir
    summ_path = run / "summary.json"
    summary = json.loads(summ_path.read_text()) if summ_path.is_file() else None
    metrics = read_jsonl(run / "metrics.jsonl")
    evals = read_jsonl(run / "eval.jsonl")
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
    seeds_seen = {e.get("seed") for e in evals if e.get("split") in SPLITS} - {None}
    rec: dict[str, Any] = {
        "cell": plan.cell.name, "variant": plan.cell.variant.name, "seed": plan.cell.seed, "run_dir": str(run),
        "result": plan.result, "finished": summary is not None, "crashes": crashes,
        "exit_codes": [a.get("exit_code") for a in plan.history], "wall_s": wall, "cpu_s": cpu or None,
        "iterations_done": len(metrics), "iterations": cfg.train.iterations,
        "answers_per_iter": per_iter, "samples_generated": cum,
        "eval_prompts": cfg.eval.prompts, "eval_samples": cfg.eval.samples,
        "eval_seed": next(iter(seeds_seen)) if len(seeds_seen) == 1 else None,
        "final": final, "warm_start": warm,
        "final_by_size": summary["final_by_size"] if summary else {},
        "curve_heldout": curve, "curve_long": curve_long,
        "samples_at_eval": {str(it): samples.get(it, it * per_iter) for it, _ in curve},
        "train_accuracy": [(int(m["iteration"]), float(m["accuracy"])) for m in metrics if _finite(m.get("accuracy"))],
        "ev_train": sum(tail) / len(tail) if tail else None,
        "nan": _has_nan(metrics),
        "critic_quality": (summary or {}).get("critic_quality"),
        "problems": final_problems(evals),
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
            samp = rec.get("samples_at_eval", {}).get(str(it))
            if samp is None:  # an evaluation between logged iterations (should not happen)
                samp = it * rec["answers_per_iter"]
            return it, samp
    return None, None


def _ev_after_rl(diag: dict[str, Any] | None) -> dict[str, Any] | None:
    """Critic EV against Monte-Carlo values of the diagnosed final checkpoint (vapo diagnose,
    section 1): one seed, after RL, with its bootstrap interval over probe answers."""
    if diag and diag.get("has_critic"):
        overall = (((diag.get("critic") or {}).get("current") or {}).get("overall")) or {}
        ev = overall.get("explained_variance")
        if isinstance(ev, dict) and _finite(ev.get("value")):
            return {"value": ev["value"], "lo": ev.get("lo"), "hi": ev.get("hi"),
                    "source": f"vapo diagnose (step {diag.get('step')}, one seed)"}
    return None


def _ev_pretrain(cq: Any) -> dict[str, Any] | None:
    """summary.json's critic_quality.ev_vs_mc (end of value pretraining): {value, lo, hi}."""
    ev = cq.get("ev_vs_mc") if isinstance(cq, dict) else None
    if isinstance(ev, dict) and _finite(ev.get("value")):
        return {"value": ev["value"], "lo": ev.get("lo"), "hi": ev.get("hi")}
    return None


def _ev_share(cq: Any) -> float | None:
    """summary.json's critic_quality ev ÷ achievable_ev (end of value pretraining, fresh probe):
    the share of the explainable return variance the critic explains; None when either is missing
    or the achievable EV is not positive."""
    if not isinstance(cq, dict):
        return None
    ev, ach = cq.get("ev"), cq.get("achievable_ev")
    ev = ev.get("value") if isinstance(ev, dict) else ev
    ach = ach.get("value") if isinstance(ach, dict) else ach
    if _finite(ev) and _finite(ach) and ach > 0:
        return ev / ach
    return None


def _curve_band(recs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Mean over seeds and the percentile-bootstrap interval at every iteration all seeds logged."""
    if not recs:
        return []
    common = set.intersection(*[{it for it, _ in r[key]} for r in recs])
    out = []
    for it in sorted(common):
        vals = [a for r in recs for i, a in r[key] if i == it]
        b = bootstrap_mean_ci(vals, n_resamples=2000)
        out.append({"iteration": it, "mean": b["mean"], "lo": b["lo"], "hi": b["hi"], "n": b["n"]})
    return out


def _smooth(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    out = []
    for i in range(len(points)):
        w = points[max(0, i - window + 1): i + 1]
        out.append((points[i][0], sum(a for _, a in w) / len(w)))
    return out


def _problem_acc(p: dict[str, Any]) -> list[float]:
    return [c / p["samples"] for c in p["correct"]]


def accuracy_summary(fs: list[dict[str, Any]], split: str) -> dict[str, Any]:
    """A variant's final accuracy on ``split`` over its finished seeds, with an interval in [0, 1]:
    the two-level bootstrap (seeds, then problems) when every seed recorded its problems, else the
    bootstrap over seeds; one seed without problems: the Wilson interval of its answers."""
    vals = {r["seed"]: r["final"].get(split) for r in fs if _finite(r["final"].get(split))}
    probs = [r["problems"][split] for r in fs if split in (r.get("problems") or {}) and r["seed"] in vals]
    out: dict[str, Any] = {"values": list(vals.values()), "seeds": list(vals), "n": len(vals)}
    if vals and len(probs) == len(vals):
        b = two_level_bootstrap([_problem_acc(p) for p in probs])
        out.update(mean=sum(vals.values()) / len(vals), lo=b["lo"], hi=b["hi"], method=b["method"],
                   problems_per_seed=b["n_problems"])
    elif len(vals) == 1:
        r = next(r for r in fs if r["seed"] in vals)
        n = int(r.get("eval_prompts") or 0) * int(r.get("eval_samples") or 0)
        m = next(iter(vals.values()))
        lo, hi = wilson(m * n, n) if n else (None, None)
        out.update(mean=m, lo=lo, hi=hi, method=f"Wilson over one seed's {n} answers (answers of a problem are "
                                                 "not independent: too narrow)")
    else:
        b = bootstrap_mean_ci(list(vals.values()))
        out.update(mean=b["mean"], lo=b["lo"], hi=b["hi"], method=b["method"])
    return out


def _pair_bootstrap(fa: list[dict[str, Any]], fb: list[dict[str, Any]], split: str, seeds: list[Any]) -> dict[str, Any]:
    """Two-level bootstrap of the per-problem difference a − b, or why it is unavailable."""
    if not seeds:
        return {"available": False, "why": "no seed finished on both sides"}
    ra, rb = {r["seed"]: r for r in fa}, {r["seed"]: r for r in fb}
    groups = []
    for s in seeds:
        pa, pb = (ra[s].get("problems") or {}).get(split), (rb[s].get("problems") or {}).get(split)
        if pa is None or pb is None:
            return {"available": False, "why": "per-problem results not recorded (runs made before evaluation "
                                                "recorded each problem's correct answers)"}
        if pa["ids"] != pb["ids"]:
            return {"available": False, "why": f"seed {s}: the two variants were evaluated on different problems"}
        groups.append([x - y for x, y in zip(_problem_acc(pa), _problem_acc(pb), strict=True)])
    b = two_level_bootstrap(groups)
    return {"available": True, **b}


def _per_seed(fs: list[dict[str, Any]], fn: Any) -> dict[str, Any]:
    return {str(r["seed"]): fn(r) for r in fs}


def _rel_dapo(v: dict[str, Any], d: dict[str, Any]) -> tuple[float | None, str]:
    """Answers to threshold relative to dapo, paired by seed, only when every seed of both reached
    it (a ratio over the seeds that happened to reach it would compare survivors)."""
    sv, sd = v["samples_to_threshold"]["per_seed"], d["samples_to_threshold"]["per_seed"]
    common = [s for s in sv if s in sd]
    if len(common) < 2:
        return None, f"needs ≥ 2 seeds on both sides, have {len(common)}"
    miss = [s for s in common if sv[s] is None or sd[s] is None]
    if miss:
        return None, f"not every seed reached the threshold ({len(common) - len(miss)} of {len(common)} on both)"
    den = sum(sd[s] for s in common)
    return (None, "dapo reached it at 0 answers") if den == 0 else (sum(sv[s] for s in common) / den,
                                                                    f"{len(common)} seeds")


def summarize(meta: dict[str, Any], recs: list[dict[str, Any]], variant_meta: dict[str, dict[str, Any]],
              baselines: set[str], dapo: str | None, threshold_set: float | None,
              diags: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The compare results from cell records.

    ``variant_meta`` {name: {preset, overrides, config_file, paper_key}} in grid order;
    ``baselines`` the variants that may set the threshold; ``diags`` {name: {"ev_after_rl",
    "diagnose", "train_curve"?}} carried over from vapo diagnose (or from an earlier compare.json)."""
    diags = diags or {}
    names = list(variant_meta)
    by_var = {n: [r for r in recs if r["variant"] == n] for n in names}
    fin = {n: [r for r in rs if r["finished"]] for n, rs in by_var.items()}

    def final_mean(name: str) -> float | None:
        return mean_ci([r["final"].get("heldout") for r in fin[name]])["mean"]

    def collapsed(name: str) -> bool:
        return any(r["collapse"] for r in fin[name])

    # ---- threshold: the weakest baseline's final held-out accuracy (mean over seeds)
    if threshold_set is not None:
        threshold, source = threshold_set, "set in the grid file"
    else:
        # A collapsed baseline ends below its warm start, so every variant would "reach" its final
        # accuracy at iteration 0: the weakest baseline that did not collapse sets the threshold.
        base = [(final_mean(n), n) for n in names if n in baselines]
        base = [b for b in base if b[0] is not None]
        held = [b for b in base if not collapsed(b[1])]
        skipped = sorted(n for _, n in base if collapsed(n))
        note = f" ({', '.join(skipped)} collapsed: not used)" if skipped and held else ""
        if held or base:
            threshold, who = min(held or base)
            source = f"final held-out accuracy of the weakest baseline, {who}{note}"
        else:
            allv = [(final_mean(n), n) for n in names]
            allv = [b for b in allv if b[0] is not None]
            threshold, who = min(allv) if allv else (None, None)
            source = f"no baseline preset in the grid: final held-out accuracy of the weakest variant, {who}"

    size_buckets = {split: bucket_sizes({s for rs in fin.values() for r in rs for s in r["final_by_size"].get(split, {})})
                    for split in SPLITS}

    variants: dict[str, Any] = {}
    for n in names:
        rs, fs = by_var[n], fin[n]
        vm = variant_meta[n]
        reached = {str(r["seed"]): reach(r, threshold) if threshold is not None else (None, None) for r in fs}
        k = sum(1 for it, _ in reached.values() if it is not None)
        by_size = {split: {label: bootstrap_mean_ci([_bucket_mean(r["final_by_size"].get(split, {}), members)
                                                     for r in fs])
                           for label, members in size_buckets[split]}
                   for split in SPLITS}
        dg = diags.get(n) or {}
        variants[n] = {
            "preset": vm["preset"], "overrides": list(vm["overrides"]), "config_file": vm["config_file"],
            "fork": vm.get("fork"), "paper_key": vm["paper_key"], "paper_score": PAPER_SCORES.get(vm["paper_key"] or ""),
            "seeds": [r["seed"] for r in rs], "finished": len(fs), "cells": len(rs),
            "heldout": accuracy_summary(fs, "heldout"), "long": accuracy_summary(fs, "long"),
            "warm_start_heldout": bootstrap_mean_ci([r["warm_start"].get("heldout") for r in fs]),
            "per_seed": {str(r["seed"]): {"heldout": r["final"].get("heldout"), "long": r["final"].get("long"),
                                          "warm_start_heldout": r["warm_start"].get("heldout")} for r in fs},
            "by_size": by_size,
            "steps_to_threshold": {"per_seed": {s: it for s, (it, _) in reached.items()}, "reached": k, "n": len(fs)},
            "samples_to_threshold": {"per_seed": {s: sm for s, (_, sm) in reached.items()}, "reached": k, "n": len(fs)},
            "reached": f"{k} of {len(fs)}",
            "ev_train": {"per_seed": _per_seed(fs, lambda r: r["ev_train"])},
            "ev_mc_pretrain": {"per_seed": _per_seed(fs, lambda r: _ev_pretrain(r["critic_quality"]))},
            "ev_share_pretrain": {"per_seed": _per_seed(fs, lambda r: _ev_share(r["critic_quality"]))},
            "ev_mc_after_rl": dg.get("ev_after_rl"),
            "crashes": sum(r["crashes"] for r in rs), "collapses": sum(r["collapse"] for r in fs),
            "nan_cells": sum(r["nan"] for r in rs),
            "unfinished": [r["cell"] for r in rs if not r["finished"]],
            "wall_s": mean_ci([r["wall_s"] for r in fs]), "wall_total_s": sum(r["wall_s"] for r in rs),
            "cpu_s": mean_ci([r["cpu_s"] for r in fs]),
            "curve": _curve_band(fs, "curve_heldout"),
            "curve_long": _curve_band(fs, "curve_long"),
            "train_curve": dg["train_curve"] if "train_curve" in dg else _curve_band(
                [{**r, "train_smooth": _smooth(r.get("train_accuracy") or [], 10)} for r in fs], "train_smooth"),
            "diagnose": dg.get("diagnose"),
        }
        if fs and not dg.get("diagnose"):
            variants[n]["diagnose_note"] = "not diagnosed"
    for n, v in variants.items():
        v["samples_rel_dapo"], v["rel_dapo_note"] = (None, "no dapo variant") if not dapo else (
            (None, "the reference") if n == dapo else _rel_dapo(v, variants[dapo]))

    # ---- every pair, paired by seed; Holm across the pairs of each split
    pairs = []
    for a, b in combinations(names, 2):
        row: dict[str, Any] = {"a": a, "b": b}
        for split in SPLITS:
            xa = {r["seed"]: r["final"].get(split) for r in fin[a]}
            xb = {r["seed"]: r["final"].get(split) for r in fin[b]}
            pr = paired(xa, xb)
            pr["welch_p"] = welch_p(list(xa.values()), list(xb.values()))
            pr["bootstrap"] = _pair_bootstrap(fin[a], fin[b], split, pr["seeds"])
            row[split] = pr
        pairs.append(row)
    for split in SPLITS:
        for p, adj in zip(pairs, holm([p[split]["p_t"] for p in pairs]), strict=True):
            p[split]["p_holm"] = adj

    # ---- ablations: our drop (vapo − ablation, held-out points, paired by seed) beside the paper's
    ref = next((n for n in names if variant_meta[n]["paper_key"] == "vapo"), None)
    pair_of = {(p["a"], p["b"]): (p, 1.0) for p in pairs} | {(p["b"], p["a"]): (p, -1.0) for p in pairs}
    ablation_rows = []
    for preset, component in ABLATIONS:
        v = next((n for n in names if variant_meta[n]["paper_key"] == preset), None)
        if v is None or ref is None:
            continue
        p, sign = pair_of[(ref, v)]
        h = p["heldout"]
        lo, hi = (None, None) if h["lo"] is None else sorted((100 * sign * h["lo"], 100 * sign * h["hi"]))
        ablation_rows.append({"variant": v, "preset": preset, "component": component,
                              "drop": {"mean": None if h["mean"] is None else 100 * sign * h["mean"], "lo": lo, "hi": hi,
                                       "n": h["n"], "diffs": [100 * sign * x for x in h["diffs"]]},
                              "p_t": h["p_t"], "p_holm": h["p_holm"], "p_sign_flip": h["p_sign_flip"],
                              "paper_drop": paper_drop(preset), "paper_score": PAPER_SCORES[preset]})
    rho = spearman([r["drop"]["mean"] for r in ablation_rows], [r["paper_drop"] for r in ablation_rows]) \
        if ablation_rows else None

    return {
        **meta,
        "threshold": {"value": threshold, "source": source},
        "collapse_rule": f"NaN in metrics, or final held-out accuracy more than {COLLAPSE_DROP:.2f} below the warm start's",
        "dapo_variant": dapo, "vapo_variant": ref,
        "evidence": evidence(recs, variants, pairs),
        "variants": variants, "pairs": pairs,
        "ablation": {"reference": ref, "rows": ablation_rows, "spearman": rho},
        "paper": {"vapo": VAPO_SCORE, "scores": PAPER_SCORES, "dapo_cumulative": [list(x) for x in DAPO_CUMULATIVE]},
        "cells": [{k: v for k, v in r.items() if k not in ("train_accuracy", "problems")} for r in recs],
    }


def evidence(recs: list[dict[str, Any]], variants: dict[str, Any], pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the numbers rest on: seeds, problems per seed, evaluation sets, per-problem records,
    the Holm family, how many pairs pass at 0.05 raw and adjusted, the sign-flip floor and the
    minimum detectable effects."""
    fin = [r for r in recs if r["finished"]]
    n_seeds = sorted({v["finished"] for v in variants.values()})
    prompts = sorted({r.get("eval_prompts") for r in fin if r.get("eval_prompts")})
    samples = sorted({r.get("eval_samples") for r in fin if r.get("eval_samples")})
    eval_seeds = {r["seed"]: r.get("eval_seed") for r in fin}
    if fin and all(s is None for s in eval_seeds.values()):
        sets = f"one set for every seed (evaluation seed {OLD_EVAL_SEED}): the intervals cover seeds, not problems"
    elif len({s for s in eval_seeds.values() if s is not None}) > 1:
        sets = "drawn per seed (evaluation seed 1234 + training seed): the variants of a seed share it"
    else:
        sets = "one set for every seed"
    with_problems = sum(1 for r in fin if all(s in (r.get("problems") or {}) for s in SPLITS))
    out: dict[str, Any] = {
        "seeds_per_variant": n_seeds, "problems_per_seed": prompts, "samples_per_problem": samples,
        "eval_sets": sets, "cells_with_problems": with_problems, "cells_finished": len(fin),
        "per_problem": "recorded" if fin and with_problems == len(fin) else (
            "not recorded: the per-problem bootstrap is unavailable (these runs predate per-problem evaluation records)"
            if with_problems == 0 else f"recorded for {with_problems} of {len(fin)} cells: the per-problem bootstrap "
                                       "is computed only for pairs whose cells all have them"),
    }
    for split in SPLITS:
        ps = [p[split] for p in pairs]
        mdes = sorted(p["mde80"] for p in ps if p["mde80"] is not None)
        out[split] = {
            "pairs": len(ps), "tested": sum(p["p_t"] is not None for p in ps),
            "p_below_0.05": sum(p["p_t"] is not None and p["p_t"] < ALPHA for p in ps),
            "holm_below_0.05": sum(p.get("p_holm") is not None and p["p_holm"] < ALPHA for p in ps),
            "sign_flip_below_0.05": sum(p["p_sign_flip"] is not None and p["p_sign_flip"] < ALPHA for p in ps),
            "expected_by_chance": ALPHA * sum(p["p_t"] is not None for p in ps),
            "mde80_median": mdes[len(mdes) // 2] if mdes else None,
            "mde80_range": [mdes[0], mdes[-1]] if mdes else None,
        }
    n = min((p["heldout"]["n"] for p in pairs), default=0)
    out["sign_flip_floor"] = 2 / 2**n if n else None
    out["paired_seeds_min"] = n
    return out


def aggregate(grid: Grid, plans: list[CellPlan], diagnostics: dict[str, Path] | None = None) -> dict[str, Any]:
    """The compare results (JSON-ready)."""
    diagnostics = diagnostics or {}
    recs = [cell_record(p) for p in plans]
    dapo = next((v.name for v in grid.variants if v.name == "dapo"), None) or next(
        (v.name for v in grid.variants if v.preset == "dapo" and v.paper == "dapo"), None)
    diags: dict[str, dict[str, Any]] = {}
    for v in grid.variants:
        d = diagnostics.get(v.name)
        if d is None:
            continue
        diag = json.loads((d / "diagnostics.json").read_text())
        seed = next((r["seed"] for r in recs if r["variant"] == v.name and r["finished"]), None)
        diags[v.name] = {"ev_after_rl": (lambda e: e and {**e, "seed": seed})(_ev_after_rl(diag)),
                         "diagnose": {"dir": str(d), "report": str(d / "report.html"), "seed": seed,
                                      "step": diag.get("step"), "findings": [list(f) for f in findings(diag)]}}
    meta = {"grid": str(grid.path), "name": grid.name, "description": grid.description, "quick": grid.quick,
            "quick_note": grid.quick_note, "extra_set": list(grid.extra_set), "seeds": grid.seeds,
            "budget": grid.budget}
    variant_meta = {v.name: {"preset": v.preset, "overrides": list(v.overrides), "config_file": v.config_file,
                             "paper_key": v.paper, "fork": v.fork} for v in grid.variants}
    return summarize(meta, recs, variant_meta, {v.name for v in grid.variants if v.preset in BASELINE_PRESETS},
                     dapo, grid.threshold, diags)


def reaggregate(old: dict[str, Any], metrics_dir: Path | None = None,
                eval_budget: tuple[int, int] | None = None) -> dict[str, Any]:
    """The results re-derived from an earlier compare.json (its ``cells``) with this module's
    statistics: per-problem results come from ``metrics_dir``/<cell>.eval.jsonl.gz where present;
    what a compare.json does not keep per cell (the smoothed training curve, the diagnoses) is
    carried over. ``eval_budget`` (problems per seed, answers per problem) fills cells written
    before compare.json recorded it."""
    recs = []
    for c in old["cells"]:
        r = dict(c)
        r.setdefault("eval_prompts", eval_budget[0] if eval_budget else None)
        r.setdefault("eval_samples", eval_budget[1] if eval_budget else None)
        r.setdefault("eval_seed", None)
        r["curve_heldout"] = [tuple(x) for x in r["curve_heldout"]]
        r["curve_long"] = [tuple(x) for x in r["curve_long"]]
        r["problems"] = {}
        gz = metrics_dir / f"{r['cell']}.eval.jsonl.gz" if metrics_dir else None
        if gz is not None and gz.is_file():
            r["problems"] = final_problems(read_jsonl(gz))
        recs.append(r)
    _restore_samples_at_eval(old, recs)
    baselines = {n for n, v in old["variants"].items() if v["preset"] in BASELINE_PRESETS}
    diags = {}
    for n, v in old["variants"].items():
        ev = v.get("ev_mc_after_rl")
        if ev is None and isinstance(v.get("ev_mc"), dict) and str(v["ev_mc"].get("source", "")).startswith("vapo diagnose"):
            ev = {**v["ev_mc"], "seed": (v.get("diagnose") or {}).get("seed")}
        diags[n] = {"ev_after_rl": ev, "diagnose": v.get("diagnose"), "train_curve": v.get("train_curve", [])}
    meta = {k: old.get(k) for k in ("grid", "name", "description", "quick", "quick_note", "extra_set", "seeds", "budget")}
    meta["extra_set"] = meta["extra_set"] or []
    thr = old["threshold"]
    variant_meta = {n: {"preset": v["preset"], "overrides": v["overrides"], "config_file": v["config_file"],
                        "paper_key": v["paper_key"], "fork": v.get("fork")} for n, v in old["variants"].items()}
    return summarize(meta, recs, variant_meta, baselines, old.get("dapo_variant"),
                     thr["value"] if thr["source"] == "set in the grid file" else None, diags)


def _restore_samples_at_eval(old: dict[str, Any], recs: list[dict[str, Any]]) -> None:
    """Cells of an earlier compare.json lack the answers sampled at each evaluation (dynamic
    sampling makes them differ from iteration × answers per iteration); the old per-variant
    answers-to-threshold values (in seed order, one per seed that reached the threshold) give
    them back at the iteration where each seed reached it."""
    thr = old["threshold"]["value"]
    for name, v in old["variants"].items():
        old_vals = list((v.get("samples_to_threshold") or {}).get("values") or [])
        cells = sorted((r for r in recs if r["variant"] == name and r["finished"] and "samples_at_eval" not in r),
                       key=lambda r: r["seed"])
        hits = [(r, next((it for it, a in r["curve_heldout"] if a >= thr - 1e-12), None)) for r in cells]
        hits = [(r, it) for r, it in hits if it is not None]
        for r in cells:
            r["samples_at_eval"] = {}
        if len(hits) == len(old_vals):
            for (r, it), s in zip(hits, old_vals, strict=True):
                r["samples_at_eval"][str(it)] = int(s)
