"""Outputs of `vapo diagnose`: diagnostics.json (every number), report.html (self-contained: plots
are PNGs embedded as data URLs, no network), and the short terminal table of findings."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

SECTIONS = (
    ("critic", "1. Critic error", "Critic V(s_t) vs Monte-Carlo V^π(s_t) at prefixes of sampled responses."),
    ("advantage", "2. Advantage quality", "GAE (by λ, and length-adaptive λ) and group advantages vs Monte-Carlo advantages."),
    ("weighting", "3. Length weighting", "Share of loss weight and measured gradient norm per response-length bucket."),
    ("exploration", "4. Exploration", "Entropy, zero-signal groups, clipping over training; pass@k at this checkpoint."),
    ("generalisation", "5. Generalisation", "Train vs held-out vs longer-than-trained accuracy per checkpoint."),
)


def to_jsonable(x: Any) -> Any:
    """numpy → Python, non-finite floats → None (JSON has no NaN)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def findings(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(section title, one-line finding) for each section."""
    return [(title, str(result.get(key, {}).get("finding", "not run"))) for key, title, _ in SECTIONS]


# ------------------------------------------------------------------------------------- plots
def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _err(d: dict[str, Any]) -> tuple[float, float, float]:
    v = d.get("value")
    lo, hi = d.get("lo"), d.get("hi")
    v = math.nan if v is None else v
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return v, 0.0, 0.0
    return v, max(v - lo, 0.0), max(hi - v, 0.0)


def _errorbar(ax: Any, xs: list[Any], ds: list[dict[str, Any]], label: str, offset: float = 0.0) -> None:
    v = [_err(d) for d in ds]
    ax.errorbar(np.arange(len(xs)) + offset, [a for a, _, _ in v], yerr=[[b for _, b, _ in v], [c for _, _, c in v]],
                marker="o", capsize=3, label=label)
    ax.set_xticks(np.arange(len(xs)), [str(x) for x in xs])


def _plots_critic(r: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    out = []
    if not r.get("has_critic"):
        return out
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    reps = [("current", r["current"])]
    pre = r.get("pretraining")
    if pre:
        reps += [("before value pretraining", pre["before"]), ("after value pretraining", pre["after"])]
    for i, (name, rep) in enumerate(reps):
        pos = list(rep["by_position"])
        _errorbar(axes[0], pos, [rep["by_position"][p]["bias"] for p in pos], name, offset=0.08 * (i - 1))
        lab = list(rep["by_length"])
        if lab:
            _errorbar(axes[1], lab, [rep["by_length"][b]["rmse"] for b in lab], name, offset=0.08 * (i - 1))
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set(title="bias (critic − MC) by relative position ρ", xlabel="ρ = t / l")
    axes[1].set(title="RMSE (MC noise removed) by length bucket", xlabel="response length (tokens)")
    axes[0].legend(fontsize=7)
    p = r["probes"]
    axes[2].errorbar(p["v_mc"], p["v_critic"], xerr=[np.subtract(p["v_mc"], p["v_mc_lo"]), np.subtract(p["v_mc_hi"], p["v_mc"])],
                     fmt="o", ms=3, alpha=0.6, elinewidth=0.5)
    lim = [min(0, *p["v_critic"], *p["v_mc"]), max(1, *p["v_critic"], *p["v_mc"])]
    axes[2].plot(lim, lim, color="grey", lw=0.8)
    axes[2].set(title="critic vs MC value (95% CI)", xlabel="MC V^π(s_t)", ylabel="critic V(s_t)")
    out.append(("critic bias, RMSE and scatter", _png(fig)))
    return out


def _plots_advantage(r: dict[str, Any], labels: list[str]) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    est = r["estimators"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    gae = [n for n in est if n.startswith(("λ=", "run: ")) or n == "adaptive"]
    if gae:
        for key in ["all", *labels]:
            ds = [est[n].get(key, {}).get("mse", {"value": math.nan}) for n in gae]
            if all(d.get("value") is None or not math.isfinite(d.get("value") or math.nan) for d in ds):
                continue
            _errorbar(axes[0], gae, ds, key)
        axes[0].set(title="GAE advantage MSE vs MC (noise removed)", xlabel="estimator")
        axes[0].legend(fontsize=7, title="length bucket")
    else:
        axes[0].text(0.5, 0.5, "no critic in this run", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    names = list(est)
    _errorbar(axes[1], names, [est[n]["all"]["correlation"] for n in names], "all lengths")
    axes[1].axhline(0, color="grey", lw=0.8)
    axes[1].set(title="correlation with MC advantage", xlabel="estimator")
    axes[1].tick_params(axis="x", labelrotation=45)
    return [("advantage MSE and correlation", _png(fig))]


def _plots_weighting(r: dict[str, Any], labels: list[str]) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    sh, gn = r["shares"], r["grad_norms"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    modes = list(sh["modes"])
    w = 0.8 / (len(modes) + 1)
    x = np.arange(len(labels))
    axes[0].bar(x - 0.4 + w / 2, [sh["tokens"][b] for b in labels], w, label="token share", color="lightgrey")
    for i, m in enumerate(modes):
        axes[0].bar(x - 0.4 + w * (i + 1.5), [sh["modes"][m][b] for b in labels], w, label=m)
        axes[1].bar(x - 0.4 + w * (i + 0.5), [gn[m][b] for b in labels], w, label=m)
    for ax, t in ((axes[0], "share of loss weight"), (axes[1], "gradient norm of the bucket's loss")):
        ax.set_xticks(x, labels)
        ax.set(title=t, xlabel="response length (tokens)")
        ax.legend(fontsize=7)
    return [("length weighting", _png(fig))]


def _plots_exploration(r: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    s = r["series"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for key, ax in (("entropy", axes[0]), ("zero_signal_frac", axes[0].twinx())):
        if key in s:
            pts = np.array(s[key])
            ax.plot(pts[:, 0], pts[:, 1], marker=".", label=key, color="C0" if key == "entropy" else "C3")
            ax.set_ylabel(key)
    axes[0].set(title="entropy and zero-signal groups", xlabel="iteration")
    for key in ("clipfrac_low", "clipfrac_high"):
        if key in s:
            pts = np.array(s[key])
            axes[1].plot(pts[:, 0], pts[:, 1], marker=".", label=key)
    axes[1].set(title="clip fractions", xlabel="iteration")
    axes[1].legend(fontsize=7)
    pk = r["pass_at_k"]
    ks = sorted(pk, key=int)
    if ks:
        _errorbar(axes[2], ks, [pk[k] for k in ks], "this checkpoint (regenerated batch)")
    for it, d in sorted(r["eval_pass_at_k"].items(), key=lambda kv: int(kv[0])):
        kk = sorted(d, key=int)
        axes[2].plot([int(k) - 1 for k in kk], [d[k] for k in kk], ls="--", lw=0.8, label=f"eval, iteration {it}")
    axes[2].set(title="pass@k", xlabel="k", ylim=(0, 1.02))
    axes[2].legend(fontsize=6)
    return [("exploration", _png(fig))]


def _plots_generalisation(r: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    per = r["checkpoints"]
    steps = sorted(per, key=int)
    for i, split in enumerate(("train", "heldout", "long")):
        _errorbar(axes[0], steps, [per[s][split]["accuracy"] for s in steps], split, offset=0.06 * (i - 1))
    axes[0].set(title="accuracy per checkpoint (95% CI)", xlabel="checkpoint step", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=7)
    for split, pts in r["eval_series"].items():
        pts = np.array(pts)
        axes[1].plot(pts[:, 0], pts[:, 1], marker="o", label=split)
    axes[1].set(title="the run's own evaluations (eval.jsonl)", xlabel="iteration", ylim=(-0.02, 1.02))
    axes[1].legend(fontsize=7)
    return [("generalisation", _png(fig))]


# ------------------------------------------------------------------------------------- tables
def _cell(d: Any, digits: int = 3) -> str | Markup:
    """A table cell: an estimate dict {value, lo, hi} as "v [lo, hi]", a float to `digits`
    digits, anything else as text (escaped by the template)."""
    if isinstance(d, dict) and "value" in d:
        v, lo, hi = d.get("value"), d.get("lo"), d.get("hi")
        if v is None or not math.isfinite(v):
            return "n/a"
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            return f"{v:.{digits}f}"
        return Markup("{} <small>[{}, {}]</small>").format(f"{v:.{digits}f}", f"{lo:.{digits}f}", f"{hi:.{digits}f}")
    if isinstance(d, float):
        return "n/a" if not math.isfinite(d) else f"{d:.{digits}f}"
    return str(d)


def _block(header: list[str] | None = None, rows: list[list[Any]] = (), heading: str | None = None,
           note: str | None = None) -> dict[str, Any]:
    """One block of a section: optional heading and note, then a table (header + rows)."""
    return {"heading": heading, "note": note, "header": header,
            "rows": [[_cell(c) for c in r] for r in rows]}


def _tables(key: str, r: dict[str, Any], labels: list[str]) -> list[dict[str, Any]]:
    if key == "critic":
        if not r.get("has_critic"):
            return [_block(note="No critic in this run (critic-free preset).")]
        blocks = []
        reps = [("current critic", r["current"])]
        if r.get("pretraining"):
            reps += [("before value pretraining (vs π at step 0)", r["pretraining"]["before"]),
                     ("after value pretraining (vs π at step 0)", r["pretraining"]["after"])]
        for name, rep in reps:
            rows = [["all", rep["overall"]["n"], rep["overall"]["bias"], rep["overall"]["rmse"], rep["overall"]["explained_variance"]]]
            rows += [[f"ρ={k}", v["n"], v["bias"], v["rmse"], v["explained_variance"]] for k, v in rep["by_position"].items()]
            rows += [[f"length {k}", v["n"], v["bias"], v["rmse"], v["explained_variance"]] for k, v in rep["by_length"].items()]
            blocks.append(_block(["group", "n", "bias", "RMSE", "explained variance"], rows, heading=name))
        return blocks
    if key == "advantage":
        est = r["estimators"]
        rows = [[n, e["all"]["n"], e["all"]["bias"], e["all"]["sd"], e["all"]["correlation"], e["all"]["mse"]] for n, e in est.items()]
        best = [[k, v["estimator"], v["mse"]] for k, v in r["best_lambda"].items()]
        note = None if r.get("has_critic") else "No critic in this run: GAE rows are absent; group estimators are compared."
        blocks = [_block(["estimator", "n", "bias", "sd", "correlation", "MSE (noise removed)"], rows, note=note)]
        if best:
            blocks.append(_block(["length bucket", "estimator", "MSE"], best, heading="best λ by length bucket"))
        return blocks
    if key == "weighting":
        sh, gn = r["shares"], r["grad_norms"]
        rows = [[b, sh["responses"][b], sh["tokens"][b], *[sh["modes"][m][b] for m in sh["modes"]],
                 *[gn[m][b] for m in gn]] for b in labels]
        head = ["length bucket", "responses", "tokens", *[f"share: {m}" for m in sh["modes"]], *[f"‖g‖: {m}" for m in gn]]
        return [_block(head, rows, note=f"{r['note']}; run's mode: {r['run_mode']}.")]
    if key == "exploration":
        pk = r["pass_at_k"]
        rows = [[f"pass@{k}", pk[k]] for k in sorted(pk, key=int)]
        s = r["series"]
        rows += [[f"{k} (first → last)", f"{v[0][1]:.3f} → {v[-1][1]:.3f}"] for k, v in s.items()]
        rows.append(["zero-signal groups in the regenerated batch", r["zero_signal_frac_now"]])
        return [_block(["quantity", "value"], rows)]
    if key == "generalisation":
        per = r["checkpoints"]
        rows = [[s, *[per[s][sp]["accuracy"] for sp in ("train", "heldout", "long")]] for s in sorted(per, key=int)]
        return [_block(["checkpoint step", "train", "held-out", "long"], rows,
                       note=f"{r['prompts']} prompts × {r['samples']} answers per split and checkpoint.")]
    return []


def _template(name: str) -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("vapo.diagnostics", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template(name)


def render_html(result: dict[str, Any]) -> str:
    """The self-contained report page (templates/report.html.j2, autoescaped): every section of
    SECTIONS with its finding, plots (PNG data URLs) and tables; 'not run' for absent ones."""
    import matplotlib  # lazy: matplotlib (~0.5 s to import), for plots only

    matplotlib.use("Agg")  # no display needed
    labels = result["length_buckets"]["labels"]
    plotters = {
        "critic": lambda r: _plots_critic(r), "advantage": lambda r: _plots_advantage(r, labels),
        "weighting": lambda r: _plots_weighting(r, labels), "exploration": _plots_exploration,
        "generalisation": _plots_generalisation,
    }
    sections = []
    for key, title, what in SECTIONS:
        r = result.get(key)
        sec = {"key": key, "title": title, "what": what, "ran": r is not None}
        if r is not None:
            sec.update(finding=str(r.get("finding", "")), images=plotters[key](r), blocks=_tables(key, r, labels))
        sections.append(sec)
    total = result.get("timings", {}).get("total")
    return _template("report.html.j2").render(
        run=result["run"], checkpoint=result["checkpoint"], preset=result["preset"], task=result["task"],
        step=result["step"], budget=json.dumps(result["budget"]),
        seconds="n/a" if total is None or not math.isfinite(total) else f"{total:.0f}", sections=sections)


def write_outputs(result: dict[str, Any], out: Path, html: bool = True) -> None:
    """Write diagnostics.json (and report.html) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.json").write_text(json.dumps(to_jsonable(result), indent=1, allow_nan=False))
    if html:
        (out / "report.html").write_text(render_html(result))
