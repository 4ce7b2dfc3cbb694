"""Grid files: a bad grid is a clear project error naming the file and the variant, raised before
any cell starts (nothing is created); the shipped grids load."""

from __future__ import annotations

from pathlib import Path

import pytest
from compare_helpers import write_grid

from vapo.compare import load_grid, run_compare
from vapo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _fails_before_anything(tmp_path, grid: str, *needles: str) -> str:
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as e:
        run_compare(grid, out=out, progress=False)
    msg = str(e.value)
    assert grid in msg, msg
    for n in needles:
        assert n in msg, msg
    assert not out.exists()  # validated before anything was created or started
    return msg


def test_unknown_variant(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "- vapo\n- vapo_no_clip_hihger\n")
    msg = _fails_before_anything(tmp_path, grid, "vapo_no_clip_hihger", "variants[1]", 'Did you mean "vapo_no_clip_higher"')
    assert "fix:" in msg


def test_duplicate_name(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "- vapo\n- name: vapo\n  preset: dapo\n")
    _fails_before_anything(tmp_path, grid, "duplicate variant name 'vapo'", "variants[0]")


def test_override_that_fails_config_validation(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "- vapo\n- name: bad_eps\n  preset: vapo\n  set: {algo.policy_loss.eps_low: 3.0}\n")
    _fails_before_anything(tmp_path, grid, "variant 'bad_eps'", "algo.policy_loss.eps_low", "≤ 1.0")


def test_unknown_override_key_and_unknown_estimator(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "- name: typo\n  preset: vapo\n  set: {algo.advantage.alhpa: 0.1}\n")
    _fails_before_anything(tmp_path, grid, "variant 'typo'", "alhpa", 'Did you mean "alpha"')
    grid = write_grid(tmp_path / "h.yaml", "- name: est\n  preset: vapo\n  set: {algo.advantage.estimator: gae_eror_aware}\n")
    _fails_before_anything(tmp_path, grid, "variant 'est'", "gae_eror_aware")


def test_unknown_grid_key_bad_seeds_and_missing_config(tmp_path):
    p = tmp_path / "g.yaml"
    write_grid(p, "- vapo\n", extra="variant_list: []\n")
    _fails_before_anything(tmp_path, str(p), "unknown key 'variant_list'")
    write_grid(p, "- vapo\n", seeds="[0, 0]")
    _fails_before_anything(tmp_path, str(p), "seeds lists a seed twice")
    write_grid(p, "- name: v\n  preset: vapo\n  config: nowhere.yaml\n")
    _fails_before_anything(tmp_path, str(p), "nowhere.yaml", "variants[0] (v)")


def test_unequal_sample_budget_is_refused(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "- vapo\n- name: more\n  preset: vapo\n  set: {train.iterations: 3}\n")
    _fails_before_anything(tmp_path, grid, "variant 'more' trains on 24 answers", "16", "equal_budget")
    # no group sampling: group size 1 at the same answers per iteration is an equal budget
    ok = write_grid(tmp_path / "ok.yaml", "- vapo\n- name: g1\n  preset: vapo\n  set: {rollout.group_size: 1, rollout.prompts_per_iter: 8}\n")
    assert len(load_grid(ok).cells) == 4


def test_overrides_reach_the_cell_config(tmp_path):
    grid = load_grid(write_grid(tmp_path / "g.yaml", "- name: a\n  preset: vapo\n  set: {algo.advantage.alpha: 1.0e-5, "
                                "algo.advantage.lam_actor: 0.9}\n- dapo\n", seeds="[3, 4]"))
    cells = {c.name: c for c in grid.cells}
    assert set(cells) == {"a-s3", "a-s4", "dapo-s3", "dapo-s4"}
    a = cells["a-s4"].config
    assert a.seed == 4 and a.algo.advantage.alpha == 1e-5 and a.algo.advantage.lam_actor == 0.9
    assert a.train.iterations == 2 and a.rollout.prompts_per_iter == 4  # base
    assert cells["dapo-s3"].config.algo.dynamic_sampling.enabled
    assert grid.variant("a").paper is None and grid.variant("dapo").paper == "dapo"
    # variant-major order: the first parallel cells have different seeds (distinct warm starts)
    assert [c.name for c in grid.cells][:2] == ["a-s3", "a-s4"]


def test_command_line_set_reaches_every_cell_but_not_over_a_variants_own(tmp_path):
    path = write_grid(tmp_path / "g.yaml", "- name: a\n  preset: vapo\n  set: {algo.advantage.alpha: 0.05}\n- dapo\n")
    g = load_grid(path, extra_set=["algo.advantage.alpha=0.2", "eval.prompts=16", "train.iterations=3"])
    cells = {c.name: c.config for c in g.cells}
    assert cells["a-s0"].algo.advantage.alpha == 0.05  # the variant's own set wins
    assert cells["dapo-s1"].algo.advantage.alpha == 0.2 and all(c.eval.prompts == 16 for c in cells.values())
    assert all(c.train.iterations == 3 for c in cells.values())  # after the grid's base (2)
    assert g.extra_set == ("algo.advantage.alpha=0.2", "eval.prompts=16", "train.iterations=3")


def test_command_line_set_errors_before_anything(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "- vapo\n")
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="override 'train.device' is not of the form key=value"):
        run_compare(grid, out=out, progress=False, extra_set=["train.device"])
    with pytest.raises(ConfigError) as e:
        run_compare(grid, out=out, progress=False, extra_set=["optim.actor_lr=-1"])
    assert "actor_lr" in str(e.value) and "--set optim.actor_lr=-1" in str(e.value)
    assert not out.exists()


def test_quick_defaults(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("seeds: [0, 1, 2]\nbase: {train.iterations: 100}\nvariants: [vapo]\n")
    g = load_grid(p, quick=True)
    assert g.seeds == [0, 1] and g.cells[0].config.train.iterations == 10
    assert "train.iterations=10" in g.quick_note
    assert load_grid(p).cells[0].config.train.iterations == 100


@pytest.mark.parametrize("name", ["ablation", "lambda", "head_to_head_long"])
def test_shipped_grids_load(name):
    path = ROOT / "examples" / f"{name}.yaml"
    if name == "head_to_head_long" and not (ROOT / "examples" / "long_cot.yaml").is_file():
        with pytest.raises(ConfigError, match="long_cot.yaml"):
            load_grid(path)
        pytest.skip("examples/long_cot.yaml (the long regime this grid runs) is not in this tree")
    for quick in (False, True):
        g = load_grid(path, quick=quick)
        assert len(g.cells) == len(g.variants) * len(g.seeds)
        assert len(g.budget["answers_per_run"]) == 1  # equal sample budget
        # headline grids: ≥ 5 seeds (with 3 the exact sign-flip test cannot go below p = 0.25)
        assert len(g.seeds) >= (2 if quick else 5 if name in ("ablation", "head_to_head_long") else 3)


def test_ablation_grid_is_the_papers_table():
    g = load_grid(ROOT / "examples" / "ablation.yaml")
    from vapo.compare.paper import ABLATIONS

    assert {v.paper for v in g.variants} == {"vapo", "dapo", "grpo", "ppo", *(a for a, _ in ABLATIONS)}


def test_lambda_grid_variants():
    g = load_grid(ROOT / "examples" / "lambda.yaml")
    adv = {v.name: next(c for c in g.cells if c.variant is v).config.algo.advantage for v in g.variants}
    assert [adv[n].alpha for n in ("alpha_0.05_paper", "alpha_0.01_theory", "alpha_0.5_default")] == [0.05, 0.01, 0.5]
    assert adv["fixed_0.95"].lam_actor == 0.95 and adv["lambda_1"].lam_actor == 1.0
    assert adv["gae_error_aware"].estimator == "gae_error_aware" and adv["gae_mc_anchored"].estimator == "gae_mc_anchored"


def test_cli_set_is_passed_through_and_a_bad_one_exits_2(tmp_path):
    from typer.testing import CliRunner

    from vapo.cli import app

    grid = write_grid(tmp_path / "g.yaml", "- vapo\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compare", grid, "--out", str(out), "--set", "eval.prompts=0"])
    assert res.exit_code == 2 and "eval.prompts" in res.output and not out.exists()


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "grids").glob("*.yaml")), ids=lambda p: p.stem)
def test_benchmark_grids_load(path):
    """Every grid behind a committed result (or planned for one) resolves every cell's config, at
    an equal sample budget, with >= 2 seeds (five for the ones reported paired by seed)."""
    g = load_grid(path)
    assert len(g.cells) == len(g.variants) * len(g.seeds)
    assert len(g.budget["answers_per_run"]) == 1
    assert len(g.seeds) >= 2


def test_a_fork_must_name_an_earlier_variant_and_change_only_rl_settings(tmp_path):
    grid = write_grid(tmp_path / "g.yaml", "- name: lam\n  preset: vapo\n  fork: vapo\n- vapo\n")
    _fails_before_anything(tmp_path, grid, "fork: 'vapo' is not a variant listed before this one", "variants[0] (lam).fork")
    grid = write_grid(tmp_path / "g.yaml", "- vapo\n- name: lam\n  preset: vapo\n  fork: vpao\n")
    _fails_before_anything(tmp_path, grid, 'Did you mean "vapo"')
    grid = write_grid(tmp_path / "g.yaml", "- vapo\n- name: lr\n  preset: vapo\n  set: {optim.critic_lr: 0.01}\n  fork: vapo\n")
    _fails_before_anything(tmp_path, grid, "forks 'vapo' but changes what the start of RL holds", "optim.critic_lr")
    grid = write_grid(tmp_path / "g.yaml", "- vapo\n- name: lam\n  preset: vapo\n  set: {algo.advantage.lam_actor: 0.9}\n"
                                           "  fork: vapo\n")
    g = load_grid(grid)
    assert g.variant("lam").fork == "vapo" and g.variant("vapo").fork is None
