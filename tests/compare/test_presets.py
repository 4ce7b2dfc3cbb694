"""Ablation presets: each is `vapo` minus exactly one component, loadable by --preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vapo.compare.paper import ABLATIONS
from vapo.config import PRESET_DIR, flat_keys, resolve_config
from vapo.errors import ConfigError

# The fields each ablation changes relative to `vapo` (everything else must be equal).
EXPECTED = {
    "vapo_no_value_pretrain": {"algo.critic.pretrain_steps": 0},
    "vapo_no_decoupled_gae": {"algo.advantage.lam_critic": 0.95},
    "vapo_no_adaptive_gae": {"algo.advantage.lam_actor": 0.95},
    "vapo_no_clip_higher": {"algo.policy_loss.eps_high": 0.2},
    "vapo_no_token_loss": {"algo.policy_loss.agg_mode": "seq-mean-token-mean"},
    "vapo_no_pos_nll": {"algo.policy_loss.nll_coef": 0.0},
    "vapo_no_group_sampling": {"rollout.group_size": 1, "rollout.prompts_per_iter": 256},
}


def test_every_ablation_is_shipped_and_named_in_the_paper_table():
    files = sorted(p.stem for p in (PRESET_DIR / "ablations").glob("*.yaml"))
    assert files == sorted(EXPECTED) == sorted(a for a, _ in ABLATIONS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ablation_differs_from_vapo_in_exactly_its_component(name):
    vapo = flat_keys(resolve_config("vapo").to_dict())
    abl = flat_keys(resolve_config(name).to_dict())
    diff = {k: abl[k] for k in vapo if abl[k] != vapo[k] and k != "preset"}
    assert diff == EXPECTED[name]
    assert resolve_config(name).preset == name
    c = resolve_config(name)
    assert c.rollout.prompts_per_iter * c.rollout.group_size == 256  # equal answers per iteration


def test_unknown_preset_lists_the_ablations():
    with pytest.raises(ConfigError) as e:
        resolve_config("vapo_no_clip")
    assert "vapo_no_clip_higher" in str(e.value) and "dapo" in str(e.value)


def test_package_data_ships_the_ablation_presets():
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '"presets/ablations/*.yaml"' in text
    assert all((PRESET_DIR / "ablations" / f"{n}.yaml").is_file() for n in EXPECTED)
    for n in EXPECTED:
        yaml.safe_load((PRESET_DIR / "ablations" / f"{n}.yaml").read_text())


def test_cli_accepts_an_ablation_preset(tmp_path):
    """`vapo train --preset vapo_no_pos_nll` resolves (a bad override afterwards stops it before any work)."""
    r = subprocess.run([sys.executable, "-m", "vapo.cli", "train", "--preset", "vapo_no_pos_nll", "--set",
                        "optim.actor_lr=-1", "--set", f"train.runs_dir={tmp_path}"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "optim.actor_lr" in r.stderr and "unknown preset" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "vapo.cli", "train", "--preset", "vapo_no_nope", "--set",
                        f"train.runs_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown preset" in r.stderr


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ablation_file_is_a_diff_on_vapo(name):
    """The file says what the ablation changes and nothing else: base vapo plus its component."""
    data = yaml.safe_load((PRESET_DIR / "ablations" / f"{name}.yaml").read_text())
    assert data.pop("base") == "vapo"
    assert flat_keys(data) == EXPECTED[name]


def _presets_in(tmp_path, monkeypatch, files):
    import vapo.config as config

    (tmp_path / "ablations").mkdir()
    for n, text in files.items():
        (tmp_path / "ablations" / f"{n}.yaml").write_text(text)
    (tmp_path / "vapo.yaml").write_text((PRESET_DIR / "vapo.yaml").read_text())
    monkeypatch.setattr(config, "PRESET_DIR", tmp_path)


def test_base_chains_merge_in_order(tmp_path, monkeypatch):
    _presets_in(tmp_path, monkeypatch, {
        "a": "base: vapo\nalgo:\n  policy_loss:\n    eps_high: 0.3\n    nll_coef: 0.0\n",
        "b": "base: a\nalgo:\n  policy_loss:\n    eps_high: 0.4\n",
    })
    c = resolve_config("b")
    assert (c.preset, c.algo.policy_loss.eps_high, c.algo.policy_loss.nll_coef) == ("b", 0.4, 0.0)
    assert c.algo.advantage.lam_critic == 1.0  # from vapo.yaml, two bases down


def test_base_cycle_and_unknown_base_are_refused_naming_the_file(tmp_path, monkeypatch):
    _presets_in(tmp_path, monkeypatch, {"x": "base: y\n", "y": "base: x\n", "z": "base: vapoo\n",
                                        "w": "base: [vapo]\n"})
    with pytest.raises(ConfigError, match="cycle through their base: x -> y -> x") as e:
        resolve_config("x")
    assert "y.yaml: base" in str(e.value)
    with pytest.raises(ConfigError, match='unknown preset .vapoo.. Did you mean "vapo"') as e:
        resolve_config("z")
    assert "z.yaml: base" in str(e.value)
    with pytest.raises(ConfigError, match="base must be a preset name"):
        resolve_config("w")
