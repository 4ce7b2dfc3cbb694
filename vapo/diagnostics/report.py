"""Outputs of `vapo diagnose`: diagnostics.json (every number), report.html (self-contained: plots
are PNGs embedded as data URLs, no network), and the short terminal table of findings."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

    est = r["estimators"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    gae = [n for n in est if n.startswith("λ=") or n == "adaptive"]
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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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
    import matplotlib.pyplot as plt

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
def _fmt(d: Any, digits: int = 3) -> str:
    if isinstance(d, dict) and "value" in d:
        v, lo, hi = d.get("value"), d.get("lo"), d.get("hi")
        if v is None or not math.isfinite(v):
            return "n/a"
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            return f"{v:.{digits}f}"
        return f"{v:.{digits}f} <small>[{lo:.{digits}f}, {hi:.{digits}f}]</small>"
    if isinstance(d, float):
        return "n/a" if not math.isfinite(d) else f"{d:.{digits}f}"
    return html.escape(str(d))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _tables(key: str, r: dict[str, Any], labels: list[str]) -> str:
    if key == "critic":
        if not r.get("has_critic"):
            return "<p>No critic in this run (critic-free preset).</p>"
        parts = []
        reps = [("current critic", r["current"])]
        if r.get("pretraining"):
            reps += [("before value pretraining (vs π at step 0)", r["pretraining"]["before"]),
                     ("after value pretraining (vs π at step 0)", r["pretraining"]["after"])]
        for name, rep in reps:
            rows = [["all", rep["overall"]["n"], rep["overall"]["bias"], rep["overall"]["rmse"], rep["overall"]["explained_variance"]]]
            rows += [[f"ρ={k}", v["n"], v["bias"], v["rmse"], v["explained_variance"]] for k, v in rep["by_position"].items()]
            rows += [[f"length {k}", v["n"], v["bias"], v["rmse"], v["explained_variance"]] for k, v in rep["by_length"].items()]
            parts.append(f"<h3>{html.escape(name)}</h3>" + _table(["group", "n", "bias", "RMSE", "explained variance"], rows))
        return "".join(parts)
    if key == "advantage":
        est = r["estimators"]
        rows = [[n, e["all"]["n"], e["all"]["bias"], e["all"]["sd"], e["all"]["correlation"], e["all"]["mse"]] for n, e in est.items()]
        best = [[k, v["estimator"], v["mse"]] for k, v in r["best_lambda"].items()]
        note = "" if r.get("has_critic") else "<p>No critic in this run: GAE rows are absent; group estimators are compared.</p>"
        return (note + _table(["estimator", "n", "bias", "sd", "correlation", "MSE (noise removed)"], rows)
                + ("<h3>best λ by length bucket</h3>" + _table(["length bucket", "estimator", "MSE"], best) if best else ""))
    if key == "weighting":
        sh, gn = r["shares"], r["grad_norms"]
        rows = [[b, sh["responses"][b], sh["tokens"][b], *[sh["modes"][m][b] for m in sh["modes"]],
                 *[gn[m][b] for m in gn]] for b in labels]
        head = ["length bucket", "responses", "tokens", *[f"share: {m}" for m in sh["modes"]], *[f"‖g‖: {m}" for m in gn]]
        return f"<p>{html.escape(r['note'])}; run's mode: <b>{html.escape(r['run_mode'])}</b>.</p>" + _table(head, rows)
    if key == "exploration":
        pk = r["pass_at_k"]
        rows = [[f"pass@{k}", pk[k]] for k in sorted(pk, key=int)]
        s = r["series"]
        rows += [[f"{k} (first → last)", f"{v[0][1]:.3f} → {v[-1][1]:.3f}"] for k, v in s.items()]
        rows.append(["zero-signal groups in the regenerated batch", r["zero_signal_frac_now"]])
        return _table(["quantity", "value"], rows)
    if key == "generalisation":
        per = r["checkpoints"]
        rows = [[s, *[per[s][sp]["accuracy"] for sp in ("train", "heldout", "long")]] for s in sorted(per, key=int)]
        return (f"<p>{r['prompts']} prompts × {r['samples']} answers per split and checkpoint.</p>"
                + _table(["checkpoint step", "train", "held-out", "long"], rows))
    return ""


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
.finding{background:#f4f6fa;border-left:4px solid #4a6fa5;padding:.5em .8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .5em;text-align:right}
th{background:#f0f0f0}td:first-child{text-align:left}img{max-width:100%;display:block;margin:.5em 0}small{color:#777}"""

# Marks, once the page has loaded, how many images decoded (naturalWidth > 0): a headless browser's
# --dump-dom then shows it in the DOM (used by the test suite).
_SCRIPT = """window.addEventListener('load',function(){var im=document.images,ok=0;
for(var i=0;i<im.length;i++){var g=im[i].complete&&im[i].naturalWidth>0;im[i].setAttribute('data-decoded',g?'yes':'no');if(g)ok++;}
var d=document.createElement('div');d.id='img-status';d.setAttribute('data-loaded',ok);d.setAttribute('data-total',im.length);
d.textContent='images decoded: '+ok+'/'+im.length;document.body.appendChild(d);});"""


def render_html(result: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    labels = result["length_buckets"]["labels"]
    plotters = {
        "critic": lambda r: _plots_critic(r), "advantage": lambda r: _plots_advantage(r, labels),
        "weighting": lambda r: _plots_weighting(r, labels), "exploration": _plots_exploration,
        "generalisation": _plots_generalisation,
    }
    body = []
    for key, title, what in SECTIONS:
        r = result.get(key)
        sec = [f'<section id="sec-{key}"><h2>{html.escape(title)}</h2><p>{html.escape(what)}</p>']
        if r is None:
            sec.append("<p>not run</p></section>")
            body.append("".join(sec))
            continue
        sec.append(f'<p class="finding"><b>Finding:</b> {html.escape(str(r.get("finding", "")))}</p>')
        for alt, src in plotters[key](r):
            sec.append(f'<img alt="{html.escape(alt)}" src="{src}">')
        sec.append(_tables(key, r, labels))
        sec.append("</section>")
        body.append("".join(sec))
    t = result.get("timings", {})
    head = (f"<h1>vapo diagnose — {html.escape(result['preset'])} on {html.escape(result['task'])}, step {result['step']}</h1>"
            f"<p>Run <code>{html.escape(result['run'])}</code>; checkpoint <code>{html.escape(result['checkpoint'])}</code>. "
            f"Estimates: {html.escape(json.dumps(result['budget']))}; 95% confidence intervals in brackets. "
            f"Took {t.get('total', float('nan')):.0f} s.</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vapo diagnose: {html.escape(result['run'])}</title>"
            f"<style>{_CSS}</style><script>{_SCRIPT}</script></head><body>{head}{''.join(body)}</body></html>")


def write_outputs(result: dict[str, Any], out: Path, html: bool = True) -> None:
    """Write diagnostics.json (and report.html) into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diagnostics.json").write_text(json.dumps(to_jsonable(result), indent=1, allow_nan=False))
    if html:
        (out / "report.html").write_text(render_html(result))
