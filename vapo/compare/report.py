"""Outputs of `vapo compare`: a terminal table (rich), compare.json (every number), compare.md
(tables, plots as PNG files beside it) and compare.html (self-contained: plots embedded as
base64 PNGs, no network; rendered with jinja2, autoescaped)."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from rich.console import Console
from rich.table import Table

from vapo.compare.aggregate import SPLITS, reaggregate, size_key
from vapo.compare.grid import load_grid
from vapo.stats import fmt_ci


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _pct(d: dict[str, Any] | None) -> str:
    return fmt_ci(d, scale=100, digits=1)


def _num(x: Any, fmt: str = "{:.2f}") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else fmt.format(x)


def _p(x: Any) -> str:
    return "n/a" if x is None else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def _seeds(per_seed: dict[str, Any], fmt: Any) -> str:
    """'a / b / c' in seed order ('—' for a seed without a value)."""
    if not per_seed:
        return "n/a"
    return " / ".join("—" if v is None else fmt(v) for _, v in sorted(per_seed.items(), key=lambda kv: int(kv[0])))


def _ev_one(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    ci = f" [{d['lo']:+.2f}, {d['hi']:+.2f}]" if d.get("lo") is not None and d.get("hi") is not None else ""
    return f"{d['value']:+.2f}{ci}"


def _ev_after(d: dict[str, Any] | None) -> str:
    if not d:
        return "n/a"
    return (f"seed {d['seed']}: " if d.get("seed") is not None else "") + _ev_one(d)


def variant_rows(res: dict[str, Any]) -> list[dict[str, str]]:
    """One row of strings per variant (shared by the terminal, Markdown and HTML tables)."""
    rows = []
    for name, v in res["variants"].items():
        rel = v.get("samples_rel_dapo")
        st, sa = v["steps_to_threshold"], v["samples_to_threshold"]
        ev_train = v["ev_train"]["per_seed"]
        ev_pre = v["ev_mc_pretrain"]["per_seed"]
        share = (v.get("ev_share_pretrain") or {}).get("per_seed") or {}
        rows.append({
            "variant": name, "seeds": f"{v['finished']}/{v['cells']}",
            "heldout": _pct(v["heldout"]), "long": _pct(v["long"]),
            "per_seed": _seeds({s: d["heldout"] for s, d in v["per_seed"].items()}, lambda x: f"{100 * x:.1f}"),
            "steps": f"{_seeds(st['per_seed'], lambda x: str(x))} ({st['reached']} of {st['n']} seeds reached it)",
            "samples": _seeds(sa["per_seed"], lambda x: str(x)),
            "rel_dapo": ("reference" if v.get("rel_dapo_note") == "the reference" else "n/a") if rel is None
            else f"{rel:.2f}× ({v.get('rel_dapo_note', '')})",
            "ev_train": "n/a" if all(x is None for x in ev_train.values()) else _seeds(ev_train, lambda x: f"{x:.2f}"),
            "ev_pre": "n/a" if all(x is None for x in ev_pre.values()) else _seeds(ev_pre, lambda d: f"{d['value']:+.2f}"),
            "ev_share": "n/a" if all(x is None for x in share.values()) else _seeds(share, lambda x: f"{100 * x:.0f}%"),
            "ev_after": _ev_after(v.get("ev_mc_after_rl")),
            "fail": f"{v['crashes']} / {v['collapses']} / {v['nan_cells']}",
            "wall": _num(v["wall_s"]["mean"], "{:.0f}") + (f" ({v['cpu_s']['mean']:.0f})" if v["cpu_s"]["mean"] else ""),
            "paper": _num(v["paper_score"], "{:.1f}"),
        })
    return rows


COLUMNS = (("variant", "variant"), ("seeds", "seeds done"), ("heldout", "held-out % [95% CI]"),
           ("long", "long % [95% CI]"), ("per_seed", "held-out % per seed"),
           ("steps", "steps to thr. per seed"), ("samples", "answers to thr. per seed"), ("rel_dapo", "÷ dapo"),
           ("ev_train", "critic EV (train) per seed"), ("ev_pre", "critic EV vs MC per seed (end of value pretraining)"),
           ("ev_share", "critic ev ÷ achievable per seed (end of value pretraining)"),
           ("ev_after", "critic EV vs MC after RL (one seed; probe bootstrap)"),
           ("fail", "crash / collapse / NaN"), ("wall", "wall s (CPU s), mean per cell"), ("paper", "paper AIME24"))


def pair_rows(res: dict[str, Any], split: str) -> list[list[str]]:
    out = []
    for p in res["pairs"]:
        d = p[split]
        boot = d["bootstrap"]
        out.append([
            p["a"], p["b"], " / ".join(f"{100 * x:+.1f}" for x in d["diffs"]) or "n/a",
            "n/a" if d["mean"] is None else (f"{100 * d['mean']:+.1f}" + (
                f" [{100 * d['lo']:+.1f}, {100 * d['hi']:+.1f}]" if d["lo"] is not None else "")),
            _p(d["p_t"]), _p(d.get("p_holm")), _p(d["p_sign_flip"]),
            (f"[{100 * boot['lo']:+.1f}, {100 * boot['hi']:+.1f}]" if boot.get("available") and boot.get("lo") is not None
             else "n/a"),
            _num(None if d["mde80"] is None else 100 * d["mde80"], "{:.1f}"), _p(d["welch_p"]),
        ])
    return out


PAIR_HEAD = ["a", "b", "a − b per seed (pts)", "mean [95% paired t CI]", "paired t p", "Holm p",
             "sign-flip p (exact)", "problem bootstrap 95%", "MDE 80% (pts)", "Welch p (unpaired)"]


def evidence_lines(res: dict[str, Any]) -> list[str]:
    """What every number of the report rests on, in sentences."""
    ev = res.get("evidence") or {}
    if not ev:
        return []
    seeds = ev["seeds_per_variant"]
    lines = [
        f"Seeds per variant: {', '.join(map(str, seeds)) or 'none'}; evaluation problems per seed and split: "
        f"{', '.join(map(str, ev['problems_per_seed'])) or 'n/a'}, {', '.join(map(str, ev['samples_per_problem'])) or 'n/a'} "
        f"answers each; evaluation sets: {ev['eval_sets']}. Per-problem results: {ev['per_problem']}.",
    ]
    for split in SPLITS:
        s = ev[split]
        mde = "n/a" if s["mde80_median"] is None else (
            f"{100 * s['mde80_median']:.1f} points (median over pairs; range {100 * s['mde80_range'][0]:.1f}–"
            f"{100 * s['mde80_range'][1]:.1f})")
        lines.append(
            f"{split}: of {s['pairs']} pairs ({s['tested']} testable), the paired t-test gives p < 0.05 for "
            f"{s['p_below_0.05']} (chance alone: about {s['expected_by_chance']:.1f}), {s['holm_below_0.05']} after "
            f"Holm's correction across the {s['tested']}; the exact sign-flip test for {s['sign_flip_below_0.05']}. "
            f"Minimum detectable effect at 80% power from the observed paired spread: {mde}.")
    if ev.get("sign_flip_floor") is not None:
        n = ev["paired_seeds_min"]
        lines.append(f"With {n} paired seeds the sign-flip test cannot go below p = 2/2^{n} = {ev['sign_flip_floor']:.3f}"
                     + (": it cannot reach 0.05 at any effect size." if ev["sign_flip_floor"] >= 0.05 else "."))
    return lines


def print_terminal(res: dict[str, Any]) -> None:
    # Redirected to a file (a log, CI), rich would squeeze the columns into 80 characters.
    console = Console() if sys.stdout.isatty() else Console(width=260)
    thr = res["threshold"]
    t = Table(title=f"vapo compare {res['name']}{' (--quick)' if res['quick'] else ''}: "
                    f"threshold {_num(thr['value'], '{:.3f}')} ({thr['source']})")
    for _, head in COLUMNS:
        t.add_column(head, justify="left" if head == "variant" else "right")
    for r in variant_rows(res):
        t.add_row(*[r[k] for k, _ in COLUMNS])
    console.print(t)
    for line in evidence_lines(res):
        console.print(line, overflow="fold")
    sig = [p for p in res["pairs"] if p["heldout"].get("p_holm") is not None and p["heldout"]["p_holm"] < 0.05]
    console.print(f"held-out pairs with Holm-adjusted paired p < 0.05: {len(sig)} of {len(res['pairs'])}"
                  + (": " + ", ".join(f"{p['a']} − {p['b']} {100 * p['heldout']['mean']:+.1f}" for p in sig[:12]) if sig else ""))
    ab = res["ablation"]
    if ab["rows"]:
        rho = ab["spearman"]
        console.print(f"ablation drops vs the paper's: Spearman ρ = {_num(rho['rho'], '{:+.2f}')} "
                      f"(p = {_num(rho['p'], '{:.2f}')}, n = {rho['n']}){' — ' + rho['note'] if rho['note'] else ''}")
    for name, v in res["variants"].items():
        if v.get("diagnose"):
            worst = "; ".join(f"{t}: {line}" for t, line in v["diagnose"]["findings"][:2])
            console.print(f"[dim]{name} (seed {v['diagnose']['seed']}): {worst}[/]", overflow="fold")


# ------------------------------------------------------------------------------------- plots
def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def make_plots(res: dict[str, Any]) -> dict[str, bytes]:
    """{file name: PNG bytes}: learning curves with CI bands, accuracy by size, ablation drops."""
    import matplotlib  # lazy: matplotlib (~0.5 s to import), for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    out: dict[str, bytes] = {}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    for name, v in res["variants"].items():
        for ax, key in zip(axes, ("curve", "curve_long", "train_curve"), strict=True):
            c = [p for p in v[key] if p["mean"] is not None]
            if not c:
                continue
            x = [p["iteration"] for p in c]
            (line,) = ax.plot(x, [p["mean"] for p in c], marker="o" if key != "train_curve" else None, ms=3, label=name)
            band = [(p["iteration"], p["lo"], p["hi"]) for p in c if p["lo"] is not None]
            if band:
                ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                                color=line.get_color(), alpha=0.15)
    thr = res["threshold"]["value"]
    for ax, title in zip(axes, ("held-out accuracy (eval)", "long-split accuracy (eval)",
                                "training accuracy (10-iteration mean)"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("RL iteration")
        ax.grid(alpha=0.3)
    if thr is not None:
        axes[0].axhline(thr, color="k", ls=":", lw=1, label="threshold")
    axes[0].legend(fontsize=7)
    fig.suptitle("mean over seeds, band = 95% percentile bootstrap over seeds (none for one seed)")
    out["curves.png"] = _png(fig)

    fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
    names = list(res["variants"])
    for ax, split in zip(axes, ("heldout", "long"), strict=True):
        sizes = sorted({s for v in res["variants"].values() for s in v["by_size"][split]}, key=size_key)
        w = 0.8 / max(1, len(names))
        for i, n in enumerate(names):
            d = res["variants"][n]["by_size"][split]
            m = [d[s]["mean"] if s in d and d[s]["mean"] is not None else np.nan for s in sizes]
            err = [[(d[s]["mean"] - d[s]["lo"]) if s in d and d[s]["lo"] is not None else 0 for s in sizes],
                   [(d[s]["hi"] - d[s]["mean"]) if s in d and d[s]["hi"] is not None else 0 for s in sizes]]
            ax.bar(np.arange(len(sizes)) + i * w - 0.4 + w / 2, m, w, yerr=err, capsize=2, label=n)
        ax.set_xticks(np.arange(len(sizes)), sizes)
        ax.set_xlabel("problem size")
        ax.set_title(f"final {split} accuracy by size")
    axes[0].legend(fontsize=7)
    out["by_size.png"] = _png(fig)

    rows = res["ablation"]["rows"]
    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(13, 3.8))
        labels = [r["component"] for r in rows]
        x = np.arange(len(rows))
        ours = [np.nan if r["drop"]["mean"] is None else r["drop"]["mean"] for r in rows]
        err = [[(r["drop"]["mean"] - r["drop"]["lo"]) if r["drop"]["lo"] is not None else 0 for r in rows],
               [(r["drop"]["hi"] - r["drop"]["mean"]) if r["drop"]["hi"] is not None else 0 for r in rows]]
        axes[0].bar(x, ours, yerr=err, capsize=3, color="tab:blue")
        axes[0].set_title("ours: vapo − ablation, held-out points (95% paired t CI)")
        axes[1].bar(x, [r["paper_drop"] for r in rows], color="tab:gray")
        axes[1].set_title("paper: 60.4 − ablation, AIME24 points")
        for ax in axes:
            ax.set_xticks(x, labels, rotation=30, ha="right")
            ax.axhline(0, color="k", lw=0.8)
        out["ablation.png"] = _png(fig)
    return out


# ------------------------------------------------------------------------------------- files
def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def _sections(res: dict[str, Any], link_base: Path) -> dict[str, Any]:
    """Table contents shared by compare.md and compare.html (all strings)."""
    var = [[r[k] for k, _ in COLUMNS] for r in variant_rows(res)]
    size_tables = []
    for split in SPLITS:
        sizes = sorted({s for v in res["variants"].values() for s in v["by_size"][split]}, key=size_key)
        rows = [[n] + [_pct(v["by_size"][split].get(s)) for s in sizes] for n, v in res["variants"].items()]
        size_tables.append((split, ["variant"] + [f"size {s}" for s in sizes], rows))
    pairs = {split: pair_rows(res, split) for split in SPLITS}
    abl = []
    for r in res["ablation"]["rows"]:
        d = r["drop"]
        abl.append([r["component"], r["variant"], " / ".join(f"{x:+.1f}" for x in d.get("diffs", [])) or "n/a",
                    "n/a" if d["mean"] is None else f"{d['mean']:+.1f}" + (
                        f" [{d['lo']:+.1f}, {d['hi']:+.1f}]" if d["lo"] is not None else ""),
                    _p(r.get("p_t")), _p(r.get("p_holm")), _p(r.get("p_sign_flip")),
                    f"{r['paper_drop']:.1f}", f"{r['paper_score']:.0f}"])
    diag = []
    for n, v in res["variants"].items():
        d = v.get("diagnose")
        if d:
            rel = os.path.relpath(d["report"], link_base)
            diag.append({"variant": n, "seed": d["seed"], "step": d["step"], "link": rel, "findings": d["findings"]})
    methods = sorted({v[split].get("method", "") for v in res["variants"].values() for split in SPLITS} - {""})
    return {"variants": var, "size_tables": size_tables, "pairs": pairs, "ablation": abl, "diagnose": diag,
            "evidence": evidence_lines(res), "methods": methods,
            "not_diagnosed": [n for n, v in res["variants"].items() if v.get("diagnose_note")]}


ABL_HEAD = ["component removed", "variant", "drop per seed (pts)", "our drop [95% paired t CI]", "paired t p",
            "Holm p", "sign-flip p", "paper drop (AIME24 pts)", "paper score"]

VARIANT_NOTE = ("Accuracy intervals stay in [0, 100]%: {methods}. Steps and answers to the threshold are per seed "
                "(— = never reached); no mean is taken over the seeds that happened to reach it, and ÷ dapo is "
                "given only when every seed of both variants reached it. Critic columns are per seed: EV (train) is "
                "the critic's explained variance of its GAE targets over the last 10% of iterations; EV vs MC at "
                "the end of value pretraining is summary.json's `critic_quality.ev_vs_mc`, and ev ÷ achievable its "
                "`ev` over `achievable_ev` (the share of the return variance a perfect critic could explain that "
                "this one does; both on a fresh probe); after RL, `vapo diagnose` "
                "of one seed's final checkpoint, whose interval is a bootstrap over probe answers of that one run, "
                "not a seed interval. Failures: crashed attempts / collapsed cells / cells with NaN metrics.")

PAIR_NOTE = ("Every variant of a seed starts from the same warm start and answers the same evaluation problems, so "
             "pairs are compared seed by seed: a − b per seed, the paired t-test (scipy.stats.ttest_rel) with its "
             "95% interval, Holm's step-down correction across all pairs of this table (raw and adjusted p side by "
             "side), the exact sign-flip permutation test (no normality assumption; its smallest possible p is "
             "2/2^n), the two-level bootstrap over seeds and then problems within seed (when the cells recorded "
             "their problems), the minimum detectable effect of the paired t-test at 80% power and α = 0.05 for "
             "the observed spread of the differences, and the unpaired Welch p for contrast.")


def _intro(res: dict[str, Any]) -> list[str]:
    thr = res["threshold"]
    lines = [res["description"]] if res.get("description") else []
    lines += [f"Grid `{res['grid']}`: {len(res['variants'])} variants × seeds {', '.join(map(str, res['seeds']))}, "
              f"{', '.join(map(str, res['budget'].get('answers_per_run', [])))} trained answers per run."]
    if res["quick"]:
        lines.append(f"**Reduced budget** ({res['quick_note']}): a first look, not a result.")
    if res.get("extra_set"):
        lines.append("Command-line overrides for every cell: `--set " + "` `--set ".join(res["extra_set"]) + "`.")
    forks = [(n, v["fork"]) for n, v in res["variants"].items() if v.get("fork")]
    if forks:
        lines.append("Forks (each cell continues the same seed's cell of its source from the start of RL: shared warm "
                     "start, value pretraining and random streams; its CPU time is its RL phase only): "
                     + ", ".join(f"`{n}` ← `{src}`" for n, src in forks) + ".")
    lines.append(f"Threshold for steps/answers-to-threshold: {_num(thr['value'], '{:.3f}')} ({thr['source']}). "
                 f"Collapse: {res['collapse_rule']}.")
    return lines


def render_markdown(res: dict[str, Any], plots: list[str], link_base: Path) -> str:
    s = _sections(res, link_base)
    out = [f"# vapo compare: {res['name']}", "", *_intro(res), ""]
    if s["evidence"]:
        out += ["## Evidence", ""] + [f"- {line}" for line in s["evidence"]] + [""]
    out += ["## Variants", "", _md_table([h for _, h in COLUMNS], s["variants"]), "",
            VARIANT_NOTE.format(methods="; ".join(s["methods"]) or "n/a"), ""]
    for split in SPLITS:
        out += [f"## Pairs, paired by seed: final {split} accuracy (points)", "", _md_table(PAIR_HEAD, s["pairs"][split]), ""]
    out += [PAIR_NOTE, ""]
    for split, head, rows in s["size_tables"]:
        out += [f"## Final {split} accuracy by problem size (%, percentile bootstrap over seeds)", "",
                _md_table(head, rows), ""]
    if s["ablation"]:
        rho = res["ablation"]["spearman"]
        out += ["## Ablations beside the paper", "", _md_table(ABL_HEAD, s["ablation"]), "",
                f"Our drop is vapo − ablation on the held-out split, paired by seed (Holm p from the held-out pairs "
                f"table). Spearman rank correlation between our mean drops and the paper's: ρ = "
                f"{_num(rho['rho'], '{:+.3f}')}, p = {_num(rho['p'], '{:.3f}')}, n = {rho['n']}"
                f"{' (' + rho['note'] + ')' if rho['note'] else ''}.", ""]
    out += ["## The papers' numbers (AIME24 avg@32, Qwen2.5-32B)", "",
            "VAPO: 60.4; DAPO 50; PPO 5. DAPO's cumulative table: "
            + " → ".join(f"{n} {v:.0f}" for n, v in res["paper"]["dapo_cumulative"]) + ".", ""]
    if s["diagnose"] or s["not_diagnosed"]:
        out += ["## vapo diagnose (final checkpoint, one seed per variant)", ""]
        for d in s["diagnose"]:
            out.append(f"- **{d['variant']}** (seed {d['seed']}, step {d['step']}, [report]({d['link']})):")
            out += [f"  - {t}: {line}" for t, line in d["findings"]]
        if s["not_diagnosed"]:
            out.append("- not diagnosed: " + ", ".join(s["not_diagnosed"]))
        out.append("")
    out += ["## Plots", ""] + [f"![{p}](plots/{p})" for p in plots] + [""]
    return "\n".join(out)


def render_html(res: dict[str, Any], plots: dict[str, bytes], link_base: Path) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("vapo.compare", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    img = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in plots.items()}
    rho = res["ablation"]["spearman"] or {}
    rho_text = (f"{_num(rho.get('rho'), '{:+.3f}')}, p = {_num(rho.get('p'), '{:.3f}')}, n = {rho.get('n')}"
                + (f" ({rho['note']})" if rho.get("note") else ""))
    return env.get_template("compare.html.j2").render(
        res=res, s=_sections(res, link_base), intro=_intro(res), img=img, var_head=[h for _, h in COLUMNS],
        pair_head=PAIR_HEAD, abl_head=ABL_HEAD, rho_text=rho_text, pair_note=PAIR_NOTE,
        variant_note=VARIANT_NOTE.format(methods="; ".join(_sections(res, link_base)["methods"]) or "n/a"))


def write_outputs(res: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write compare.json, compare.md (+ plots/*.png) and compare.html into ``out``."""
    out = Path(out)
    plots = make_plots(res)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    for name, data in plots.items():
        (out / "plots" / name).write_bytes(data)
    paths = {"json": out / "compare.json", "md": out / "compare.md", "html": out / "compare.html"}
    paths["json"].write_text(json.dumps(_json_safe(res), indent=1, allow_nan=False))
    paths["md"].write_text(render_markdown(res, list(plots), out))
    paths["html"].write_text(render_html(res, plots, out))
    return paths


def regenerate(results_dir: str | Path) -> dict[str, Any]:
    """Re-derive a committed report (compare.json, .md, .html, plots) from its compare.json and the
    compact metrics beside it (``metrics/``), with the current statistics; no run directory needed.
    ``python -m vapo.compare.report DIR...``."""
    results_dir = Path(results_dir)
    old = json.loads((results_dir / "compare.json").read_text())
    budget = None
    try:  # problems per seed and answers per problem, for cells written before compare.json kept them
        cfg = load_grid(old["grid"], quick=bool(old.get("quick")), extra_set=old.get("extra_set") or ()).cells[0].config
        budget = (cfg.eval.prompts, cfg.eval.samples)
    except Exception:  # noqa: BLE001 (the grid file moved or changed: the report says n/a)
        budget = None
    res = reaggregate(old, results_dir / "metrics", budget)
    write_outputs(res, results_dir)
    return res


if __name__ == "__main__":
    for d in sys.argv[1:]:
        r = regenerate(d)
        print(d, "→", ", ".join(f"{s}: {r['evidence'][s]['p_below_0.05']} of {r['evidence'][s]['pairs']} pairs p < 0.05, "
                                f"{r['evidence'][s]['holm_below_0.05']} after Holm" for s in SPLITS))
