"""PNG plots of a run from its metrics.jsonl and eval.jsonl."""

from __future__ import annotations

from pathlib import Path

from vapo.train.rundir import read_jsonl


def make_plots(run_dir: Path) -> list[Path]:
    """Write plots/{training,eval_by_size}.png; returns their paths."""
    import matplotlib  # lazy: matplotlib (~0.5 s to import), for plots only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib (~0.5 s to import), for plots only

    run_dir = Path(run_dir)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    evals = read_jsonl(run_dir / "eval.jsonl")
    paths = []
    if metrics:
        it = [m["iteration"] for m in metrics]
        panels = [("accuracy", "train accuracy"), ("reward", "reward"), ("entropy", "entropy"),
                  ("explained_variance", "critic explained variance"), ("response_length", "response length"),
                  ("approx_kl", "approx KL")]
        if all(abs(m.get("approx_kl") or 0.0) == 0.0 for m in metrics):
            # One optimizer step per iteration: the ratio is 1, KL and clipfrac are 0 by construction.
            panels[-1] = ("actor_grad_norm", "actor grad norm (approx KL ≡ 0: one step per iteration)")
        fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
        for ax, (key, title) in zip(axes.flat, panels, strict=True):
            ys = [m.get(key) for m in metrics]
            if any(y is not None for y in ys):
                ax.plot(it, [float("nan") if y is None else y for y in ys], lw=1.5)
            else:
                ax.text(0.5, 0.5, "not logged by this preset", ha="center", va="center", transform=ax.transAxes)
            if key == "accuracy" and evals:
                for split, style in (("heldout", "o-"), ("long", "s--")):
                    pts = [(e["iteration"], e["accuracy"]) for e in evals if e["split"] == split]
                    if pts:
                        ax.plot(*zip(*pts, strict=True), style, label=f"eval {split}")
                ax.legend(fontsize=8)
            ax.set_title(title)
            ax.set_xlabel("iteration")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out / "training.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    if evals:
        first_it, last_it = min(e["iteration"] for e in evals), max(e["iteration"] for e in evals)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, split in zip(axes, ("heldout", "long"), strict=True):
            for iteration, label in ((first_it, f"before (iteration {first_it})"), (last_it, f"after (iteration {last_it})")):
                rows = [e for e in evals if e["split"] == split and e["iteration"] == iteration]
                if rows:
                    by = rows[-1]["by_size"]
                    sizes = sorted(by, key=int)
                    ax.plot([int(s) for s in sizes], [by[s] for s in sizes], "o-", label=label)
            ax.set_title(f"{split}: accuracy by size (length bucket)")
            ax.set_xlabel("problem size")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "eval_by_size.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths
