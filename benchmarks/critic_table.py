"""The critic's quality at the end of value pretraining, per variant and per seed, from a grid.

Reads the fresh-probe ``critic_quality`` that every cell with a critic logs at the end of value
pretraining (events.jsonl, ``phase: value_pretrain_end``): from the run directories of a grid's
``--out``, or from the ``metrics/<cell>.events.jsonl.gz`` files that `vapo compare` writes beside
its report (so a committed report can be re-read without the runs). Prints a Markdown table:
``ev`` with its 95% interval (bootstrap over probe answers), ``achievable_ev``, their ratio,
``ev_vs_mc`` and the RMSE against Monte-Carlo values at each probed relative position, and a
summary row per variant (median and range of the ratio over seeds).

    python benchmarks/critic_table.py benchmarks/results/long_cpu_pathways [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable from a checkout with any python 3.11 (stdlib + vapo.train.rundir)
    sys.path.insert(0, str(ROOT))

from vapo.train.rundir import read_jsonl  # noqa: E402

CELL = re.compile(r"^(?P<variant>.+)-s(?P<seed>\d+)$")


def cell_events(out: Path) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """{(variant, seed): events} from run directories, else from metrics/*.events.jsonl.gz."""
    found: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for d in sorted(out.iterdir()) if out.is_dir() else []:
        m = CELL.match(d.name)
        if m and (d / "events.jsonl").is_file():
            found[(m["variant"], int(m["seed"]))] = read_jsonl(d / "events.jsonl")
    for f in sorted((out / "metrics").glob("*.events.jsonl.gz")) if (out / "metrics").is_dir() else []:
        m = CELL.match(f.name.removesuffix(".events.jsonl.gz"))
        if m and (m["variant"], int(m["seed"])) not in found:
            found[(m["variant"], int(m["seed"]))] = read_jsonl(f)
    return found


def _v(x: Any) -> float | None:
    x = x.get("value") if isinstance(x, dict) else x
    return float(x) if isinstance(x, (int, float)) and x == x else None


def critic_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    for (variant, seed), events in sorted(cell_events(out).items()):
        end = [e for e in events if e.get("phase") == "value_pretrain_end" and isinstance(e.get("critic_quality"), dict)]
        if not end:
            continue
        q = end[-1]["critic_quality"]
        ev, ach = _v(q.get("ev")), _v(q.get("achievable_ev"))
        evd = q.get("ev") if isinstance(q.get("ev"), dict) else {}
        rows.append({
            "variant": variant, "seed": seed, "ev": ev, "ev_lo": _v(evd.get("lo")), "ev_hi": _v(evd.get("hi")),
            "achievable_ev": ach, "share": ev / ach if ev is not None and ach and ach > 0 else None,
            "ev_vs_mc": _v(q.get("ev_vs_mc")), "rmse_vs_mc": _v(q.get("rmse_vs_mc")),
            "rmse_by_position": {k: _v(p.get("rmse_vs_mc")) for k, p in (q.get("by_position") or {}).items()},
            "kept_round": q.get("kept_round"), "rounds": q.get("pretrain_rounds"), "n_answers": q.get("n_answers"),
        })
    return rows


def _f(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def markdown(rows: list[dict[str, Any]]) -> str:
    positions = sorted({k for r in rows for k in r["rmse_by_position"]}, key=float)
    head = ["variant", "seed", "ev [95% CI]", "achievable_ev", "ev ÷ achievable", "ev_vs_mc", "RMSE vs MC",
            *[f"RMSE at ρ = {p}" for p in positions], "kept round / rounds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ci = f" [{_f(r['ev_lo'], '.3f')}, {_f(r['ev_hi'], '.3f')}]" if r["ev_lo"] is not None else ""
        lines.append("| " + " | ".join([
            r["variant"], str(r["seed"]), _f(r["ev"], ".3f") + ci, _f(r["achievable_ev"], ".3f"),
            _f(None if r["share"] is None else 100 * r["share"], ".0f") + ("%" if r["share"] is not None else ""),
            _f(r["ev_vs_mc"], "+.2f"), _f(r["rmse_vs_mc"], ".3f"),
            *[_f(r["rmse_by_position"].get(p), ".3f") for p in positions], f"{r['kept_round']} / {r['rounds']}",
        ]) + " |")
    lines += ["", "| variant | seeds | ev ÷ achievable: median [min, max] | seeds ≥ 50% | ev_vs_mc: median [min, max] |",
              "|---|---|---|---|---|"]
    for v in dict.fromkeys(r["variant"] for r in rows):
        sh = [r["share"] for r in rows if r["variant"] == v and r["share"] is not None]
        mc = [r["ev_vs_mc"] for r in rows if r["variant"] == v and r["ev_vs_mc"] is not None]
        lines.append(f"| {v} | {sum(r['variant'] == v for r in rows)} | "
                     + (f"{100 * statistics.median(sh):.0f}% [{100 * min(sh):.0f}%, {100 * max(sh):.0f}%]" if sh else "—")
                     + f" | {sum(x >= 0.5 for x in sh)} of {len(sh)} | "
                     + (f"{statistics.median(mc):+.2f} [{min(mc):+.2f}, {max(mc):+.2f}]" if mc else "—") + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="a grid's --out directory, or a committed results directory with metrics/")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    a = ap.parse_args(argv)
    rows = critic_rows(a.out)
    if not rows:
        print(f"error: no value_pretrain_end events with critic_quality under {a.out} (run directories or "
              "metrics/*.events.jsonl.gz)", file=sys.stderr)
        return 2
    print(markdown(rows), end="")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
