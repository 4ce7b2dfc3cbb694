"""Grid files: named variants × seeds at an equal sample budget, validated before any cell runs.

A grid is a YAML mapping::

    name: ablation                 # optional (default: the file's stem); names the output directory
    seeds: [0, 1, 2]
    config: long_cot.yaml          # optional config file for every variant (relative to the grid file)
    base:                          # optional overrides for every variant (dotted keys)
      train.iterations: 200
    quick:                         # optional: what --quick changes (default: first 2 seeds, iterations ÷ 10)
      seeds: [0, 1]
      set: {train.iterations: 30}
    threshold: 0.7                 # optional accuracy threshold (default: the weakest baseline's final accuracy)
    equal_budget: true             # check every cell trains on the same number of answers (default true)
    variants:
      - vapo                       # shorthand: a preset or ablation preset name
      - name: alpha_0.05
        preset: vapo
        set: {algo.advantage.alpha: 0.05}
        config: my.yaml            # optional, replaces the grid's config for this variant
        paper: vapo                # optional: which paper number this variant stands for
      - name: vapo_lam_0.95
        preset: vapo
        set: {algo.advantage.lam_actor: 0.95}
        fork: vapo                 # optional: each seed's cell continues that variant's cell of the
                                   # same seed from the start of RL (its step_0 checkpoint: warm start
                                   # and value pretraining shared, not recomputed; vapo train --fork)

Each cell's config resolves as defaults → preset → config file → base → quick → variant ``set``
→ seed (vapo.config.resolve_config), and every cell is resolved and validated in-process before
the first one starts, so a typo fails in a second, not after an hour.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vapo.config import (
    Config,
    apply_overrides,
    dict_differences,
    fork_differences,
    load_yaml,
    resolve_config,
)
from vapo.errors import ConfigError, VapoError, did_you_mean
from vapo.tasks import task_from_config

GRID_KEYS = ("name", "description", "seeds", "config", "base", "quick", "threshold", "equal_budget", "variants", "diagnose")
VARIANT_KEYS = ("name", "preset", "set", "config", "paper", "fork")
QUICK_KEYS = ("seeds", "set")
BASELINE_PRESETS = ("ppo", "vc_ppo", "grpo", "dr_grpo", "dapo")
# Fields a cell may differ in without changing what it computes (how it runs, not what).
RUN_ONLY_FIELDS = (("train", "threads"), ("train", "runs_dir"), ("train", "device"))


@dataclass(frozen=True)
class Variant:
    name: str
    preset: str
    overrides: tuple[str, ...]  # dotted key=value strings (base + quick + set), in order
    config_file: str | None
    paper: str | None  # key into vapo.compare.paper tables, or None
    fork: str | None = None  # the variant whose cells' step_0 checkpoints this variant's cells continue


@dataclass(frozen=True)
class Cell:
    variant: Variant
    seed: int
    config: Config  # the resolved, validated config (runs_dir/threads are set at launch)

    @property
    def name(self) -> str:
        return f"{self.variant.name}-s{self.seed}"


@dataclass
class Grid:
    path: Path
    name: str
    description: str
    seeds: list[int]
    variants: list[Variant]
    cells: list[Cell]
    quick: bool
    threshold: float | None
    diagnose: bool
    quick_note: str = ""
    budget: dict[str, Any] = field(default_factory=dict)
    extra_set: tuple[str, ...] = ()  # `vapo compare --set` overrides, applied to every cell

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)


def _err(grid: Path, what: str, where: str = "", fix: str = "") -> ConfigError:
    return ConfigError(what, where=f"{grid}{': ' + where if where else ''}", fix=fix or None)


def _yaml_value(v: Any) -> str:
    """A value written so that vapo.config.parse_value (YAML) reads it back unchanged."""
    if isinstance(v, float):
        text = repr(v)
        if "e" in text and "." not in text.split("e")[0]:  # YAML 1.1 needs a dot: 1e-05 → 1.0e-05
            m, e = text.split("e")
            text = f"{m}.0e{e}"
        return text
    return json.dumps(v)  # JSON is YAML: strings quoted, lists/dicts in flow style, null/true/false


def _overrides(spec: Any, grid: Path, where: str) -> list[str]:
    """A mapping {dotted.key: value} (or a list of 'key=value' strings) → ['key=value', ...]."""
    if spec is None:
        return []
    if isinstance(spec, dict):
        return [f"{k}={_yaml_value(v)}" for k, v in spec.items()]
    if isinstance(spec, list) and all(isinstance(s, str) and "=" in s for s in spec):
        return list(spec)
    raise _err(grid, f"{where} must be a mapping of dotted config keys to values", where,
               "write e.g. `set: {algo.advantage.alpha: 0.05}`")


def _seeds(spec: Any, grid: Path, where: str) -> list[int]:
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if not (isinstance(spec, list) and spec and all(isinstance(s, int) and not isinstance(s, bool) for s in spec)):
        raise _err(grid, f"{where} must be a non-empty list of integers", where, "write e.g. `seeds: [0, 1, 2]`")
    if len(set(spec)) != len(spec):
        raise _err(grid, f"{where} lists a seed twice: {spec}", where, "list each seed once")
    return list(spec)


def _file(spec: Any, grid: Path, where: str) -> str | None:
    if spec is None:
        return None
    p = Path(str(spec))
    if not p.is_absolute():
        p = grid.parent / p
    if not p.is_file():
        raise _err(grid, f"config file {spec!r} not found (looked for {p})", where,
                   "paths in a grid are relative to the grid file's directory")
    return str(p)


def _check_keys(d: dict[str, Any], allowed: tuple[str, ...], grid: Path, where: str) -> None:
    for k in d:
        if k not in allowed:
            raise _err(grid, f"unknown key {k!r}.{did_you_mean(str(k), allowed)}", where, f"valid keys: {', '.join(allowed)}")


def _default_quick(iterations: int) -> list[str]:
    it = max(2, iterations // 10)
    every = max(1, it // 3)
    return [f"train.iterations={it}", f"train.eval_every={every}", f"train.checkpoint_every={every}"]


def _strip_run_only(d: dict[str, Any]) -> dict[str, Any]:
    d = json.loads(json.dumps(d))
    for sec, key in RUN_ONLY_FIELDS:
        d.get(sec, {}).pop(key, None)
    return d


def config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (run-only fields ignored)."""
    return [f"{k}: {va!r} → {vb!r}" for k, va, vb in dict_differences(_strip_run_only(a), _strip_run_only(b))]


def samples_per_run(cfg: Config) -> int:
    """Answers trained on over a run (dynamic sampling generates more; that is reported, not budgeted)."""
    return cfg.train.iterations * cfg.rollout.prompts_per_iter * cfg.rollout.group_size


def check_names(cfg: Config) -> None:
    """What a cell needs beyond its resolved config (whose registry names vapo.config's gate
    checked already): its task builds with these options and data (the trainer would otherwise
    fail only when the cell starts)."""
    task_from_config(cfg.task)


def load_grid(path: str | Path, *, quick: bool = False, extra_set: Sequence[str] = ()) -> Grid:
    """Parse and validate a grid file; every cell's config is resolved here (nothing runs).

    ``extra_set`` ('key=value' strings, from ``vapo compare --set``) apply to every cell after the
    grid's ``base`` and ``quick.set`` and before each variant's own ``set`` (a variant keeps what
    defines it)."""
    grid = Path(path)
    if not grid.is_file():
        raise ConfigError(f"grid file not found: {grid}", where="vapo compare GRID",
                          fix="pass a YAML grid file, e.g. examples/ablation.yaml")
    data = load_yaml(grid)
    _check_keys(data, GRID_KEYS, grid, "")
    name = str(data.get("name") or grid.stem)
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise _err(grid, f"grid name {name!r} has characters other than letters, digits, '.', '_' and '-'", "name")
    seeds = _seeds(data.get("seeds", [0, 1, 2]), grid, "seeds")
    base = _overrides(data.get("base"), grid, "base")
    extra = list(extra_set)
    apply_overrides({}, extra)  # their form (key=value), checked once before any variant names them
    common_file = _file(data.get("config"), grid, "config")
    threshold = data.get("threshold")
    if threshold is not None and not (isinstance(threshold, int | float) and 0 <= threshold <= 1):
        raise _err(grid, f"threshold {threshold!r} is not an accuracy in [0, 1]", "threshold")
    diagnose = data.get("diagnose", True)
    if not isinstance(diagnose, bool):
        raise _err(grid, "diagnose must be true or false", "diagnose")

    quick_set: list[str] = []
    quick_note = ""
    if quick:
        q = data.get("quick") or {}
        if not isinstance(q, dict):
            raise _err(grid, "quick must be a mapping with optional `seeds` and `set`", "quick")
        _check_keys(q, QUICK_KEYS, grid, "quick")
        seeds = _seeds(q["seeds"], grid, "quick.seeds") if "seeds" in q else seeds[:2]
        if "set" in q:
            quick_set = _overrides(q["set"], grid, "quick.set")
        else:  # iterations ÷ 10 of the full budget, read from the first variant's resolved config
            quick_set = None  # type: ignore[assignment]
        quick_note = "--quick: seeds " + ", ".join(map(str, seeds))

    raw_variants = data.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise _err(grid, "a grid needs a non-empty list `variants`", "variants", "write e.g. `variants: [dapo, vapo]`")
    variants: list[Variant] = []
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_variants):
        where = f"variants[{i}]"
        if isinstance(raw, str):
            raw = {"name": raw, "preset": raw}
        if not isinstance(raw, dict):
            raise _err(grid, "a variant is a preset name or a mapping with name/preset/set/config", where)
        _check_keys(raw, VARIANT_KEYS, grid, where)
        vname = raw.get("name") or raw.get("preset")
        if not isinstance(vname, str) or not re.fullmatch(r"[A-Za-z0-9._-]+", vname):
            raise _err(grid, f"variant name {vname!r} must be letters, digits, '.', '_' or '-'", where)
        where = f"{where} ({vname})"
        if vname in seen:
            raise _err(grid, f"duplicate variant name {vname!r} (also variants[{seen[vname]}])", where,
                       "give each variant a unique `name:`")
        seen[vname] = i
        preset = str(raw.get("preset", vname))
        vset = _overrides(raw.get("set"), grid, f"{where}.set")
        vfile = _file(raw.get("config"), grid, f"{where}.config") if "config" in raw else common_file
        if quick_set is None:  # default quick budget: from the full budget of the first variant
            try:
                full = resolve_config(preset, vfile, [*base, *extra, *vset])
            except VapoError as e:
                raise _err(grid, f"variant {vname!r}: {e.what}", where, e.fix or "") from None
            quick_set = _default_quick(full.train.iterations)
        overrides = (*base, *quick_set, *extra, *vset)
        paper = raw.get("paper", preset if not vset and vfile == common_file else None)
        fork = raw.get("fork")
        if fork is not None and (not isinstance(fork, str) or fork not in seen or fork == vname):
            earlier = [v.name for v in variants]
            raise _err(grid, f"fork: {fork!r} is not a variant listed before this one."
                             f"{did_you_mean(str(fork), earlier)}", f"{where}.fork",
                       "name an earlier variant of this grid, whose cells this one continues from the start of RL")
        v = Variant(vname, preset, tuple(overrides), vfile, None if paper is None else str(paper), fork)
        variants.append(v)
        for seed in seeds:
            try:
                cfg = resolve_config(preset, vfile, [*overrides, f"seed={seed}"])
                check_names(cfg)
            except VapoError as e:
                raise _err(grid, f"variant {vname!r}: {e.what}" + (f" ({e.where})" if e.where else "")
                           + (f"; with --set {' '.join(extra)}" if extra else ""), where, e.fix or "") from None
            if fork is not None:
                src = next(c for c in cells if c.variant.name == fork and c.seed == seed)
                _, refused = fork_differences(src.config, cfg)
                if refused:
                    raise _err(grid, f"variant {vname!r} forks {fork!r} but changes what the start of RL holds: "
                                     + "; ".join(refused[:4]) + (" …" if len(refused) > 4 else ""), f"{where}.fork",
                               "change only RL settings (vapo.config.FORKABLE_FIELDS), or drop `fork:` to run the "
                               "variant from its own warm start and value pretraining")
            cells.append(Cell(v, seed, cfg))
    if quick:
        quick_note += "; overrides " + " ".join(quick_set or [])

    budgets = {c.variant.name: samples_per_run(c.config) for c in cells}
    if data.get("equal_budget", True) and len(set(budgets.values())) > 1:
        ref_name, ref = next(iter(budgets.items()))
        odd = next(n for n, b in budgets.items() if b != ref)
        c_ref = next(c.config for c in cells if c.variant.name == ref_name)
        c_odd = next(c.config for c in cells if c.variant.name == odd)
        raise _err(grid, f"variant {odd!r} trains on {budgets[odd]} answers "
                         f"({c_odd.train.iterations} iterations × {c_odd.rollout.prompts_per_iter} prompts × "
                         f"{c_odd.rollout.group_size}), variant {ref_name!r} on {ref} "
                         f"({c_ref.train.iterations} × {c_ref.rollout.prompts_per_iter} × {c_ref.rollout.group_size})",
                   f"variants ({odd})",
                   "make iterations × rollout.prompts_per_iter × rollout.group_size equal, or set `equal_budget: false`")
    # Cells ordered variant-major so that the first parallel cells have different seeds (their
    # warm starts are computed once per seed and cached; the rest of the seed's cells reuse them).
    return Grid(path=grid, name=name, description=str(data.get("description", "")), seeds=seeds, variants=variants,
                cells=cells, quick=quick, threshold=None if threshold is None else float(threshold), diagnose=diagnose,
                quick_note=quick_note, budget={"answers_per_run": sorted(set(budgets.values()))},
                extra_set=tuple(extra))


def cell_overrides(cell: Cell) -> list[str]:
    """The cell's variant overrides plus its seed (what `vapo train` gets besides preset and config)."""
    return [*cell.variant.overrides, f"seed={cell.seed}"]


def _with_new_defaults(saved: dict[str, Any], want: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``saved`` with every field it lacks filled in from ``want`` where ``want`` holds that field's
    default: a run made before the field existed ran its default (fields are only ever added with
    the old behaviour as their default), so it ran the same config."""
    out = dict(saved)
    for k, v in want.items():
        d = defaults.get(k)
        if k not in out:
            if k in defaults and v == d:
                out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict) and isinstance(d, dict):
            out[k] = _with_new_defaults(out[k], v, d)
    return out


def check_same_config(cell: Cell, saved: dict[str, Any], run_dir: Path) -> None:
    """A finished or resumable cell must have run the config the grid asks for now."""
    want = cell.config.to_dict()
    # dist.rollout_streams null means "the number of processes at first launch", which the run
    # writes into its config.yaml: a resolved value is the same config.
    if want.get("dist", {}).get("rollout_streams") is None and "rollout_streams" in saved.get("dist", {}):
        want["dist"]["rollout_streams"] = saved["dist"]["rollout_streams"]
    diffs = config_differences(_with_new_defaults(saved, want, type(cell.config)().to_dict()), want)
    if diffs:
        raise VapoError(f"cell {cell.name} in {run_dir} ran a different config than the grid now asks for: "
                        + "; ".join(diffs[:5]) + (" …" if len(diffs) > 5 else ""),
                        where=str(run_dir / "config.yaml"),
                        fix="pass another --out directory, or move that run directory away to run the cell again")


__all__ = ["BASELINE_PRESETS", "Cell", "Grid", "Variant", "cell_overrides", "check_names", "check_same_config",
           "config_differences", "load_grid", "samples_per_run"]
