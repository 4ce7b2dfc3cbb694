"""vapo.registry.Registry, and the registries built on it."""

from __future__ import annotations

import pytest

from vapo.algos import ADVANTAGE_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES, get_advantage_estimator
from vapo.errors import VapoError
from vapo.registry import Registry


def test_register_get_names():
    reg: Registry[int] = Registry("colour", where="colour.name")

    @reg.register("red")
    def red() -> int:
        return 1

    reg.register("green")(lambda: 2)
    assert reg.get("red") is red and reg["red"] is red
    assert reg.names() == ["red", "green"] and list(reg) == ["red", "green"]
    assert "red" in reg and "blue" not in reg and len(reg) == 2
    assert reg.register("red")(red) is red  # same object again: no-op
    with pytest.raises(VapoError, match="'red' is already registered"):
        reg.register("red")(lambda: 3)
    assert reg.pop("green") is not None and reg.names() == ["red"]


def test_unknown_name_lists_known_names_with_did_you_mean():
    reg: Registry[int] = Registry("colour", where="colour.name")
    reg.register("yellow")(1)
    reg.register("purple")(2)
    with pytest.raises(VapoError) as e:
        reg.get("yelow")
    msg = str(e.value)
    assert "unknown colour 'yelow'" in msg and 'Did you mean "yellow"' in msg
    assert "purple, yellow" in msg and msg.startswith("colour.name")


def test_bad_name_is_refused():
    with pytest.raises(VapoError, match="non-empty string"):
        Registry("colour").register("")


@pytest.mark.parametrize("reg", [ADVANTAGE_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES])
def test_project_registries_are_registries(reg):
    assert isinstance(reg, Registry) and reg.names()


def test_thin_lookup_raises_project_error():
    with pytest.raises(VapoError, match='Did you mean "grpo"'):
        get_advantage_estimator("grpoo")


# ------------------------------------------------------------------ declared names, loaded on first use
def test_declared_names_are_known_before_their_module_and_load_on_first_get(tmp_path, monkeypatch):
    from vapo.registry import Registry

    (tmp_path / "lazy_plugin_mod.py").write_text(
        "from tests_lazy_reg import REG\n@REG.register('late')\ndef late():\n    return 7\n")
    reg = Registry("thing", where="thing.name")
    import sys
    import types

    holder = types.ModuleType("tests_lazy_reg")
    holder.REG = reg
    monkeypatch.setitem(sys.modules, "tests_lazy_reg", holder)
    monkeypatch.syspath_prepend(str(tmp_path))
    reg.declare("late", "lazy_plugin_mod")
    assert "late" in reg and reg.names() == ["late"] and len(reg) == 1
    assert "lazy_plugin_mod" not in sys.modules  # known, not imported
    assert reg.get("late")() == 7 and "lazy_plugin_mod" in sys.modules
    reg.declare("ghost", "lazy_plugin_mod")  # a module that does not register the name it declares
    with pytest.raises(VapoError, match="declared in lazy_plugin_mod but importing it did not register it"):
        reg.get("ghost")


def test_the_catalog_declares_exactly_what_the_modules_register():
    """Every built-in name declared in vapo.algos.catalog is registered by its module, under the
    same name, and importing every module registers nothing undeclared."""
    import importlib

    from vapo.algos import catalog

    declared = {reg.kind: dict(reg._declared) | {n: None for n in reg._items} for reg in
                (catalog.ADVANTAGE_ESTIMATORS, catalog.POLICY_LOSSES, catalog.LOSS_AGG_MODES)}
    for m in ("vapo.algos.advantages", "vapo.algos.losses", "vapo.algos.pathways"):
        importlib.import_module(m)
    for reg in (catalog.ADVANTAGE_ESTIMATORS, catalog.POLICY_LOSSES, catalog.LOSS_AGG_MODES):
        assert not reg._declared, f"{reg.kind}: declared but not registered: {sorted(reg._declared)}"
        assert set(reg._items) >= set(declared[reg.kind])
        for name in declared[reg.kind]:
            assert callable(reg.get(name))
    builtin = set(catalog._BUILTIN_ESTIMATORS)
    assert {n for n in catalog.ADVANTAGE_ESTIMATORS._items if catalog.ADVANTAGE_ESTIMATORS._items[n].__module__.startswith("vapo.")} == builtin


def test_a_config_typo_is_refused_without_importing_torch():
    """The gate that refuses a misspelled registry name or knob must not need torch (it answers in
    a fraction of a second; the timing itself is in the docs, not asserted here)."""
    import subprocess
    import sys

    code = ("import sys\nfrom vapo.config import resolve_config\nfrom vapo.errors import ConfigError\n"
            "for o in (['algo.advantage.estimator=gea'], ['algo.advantage.extra.foo=1'], ['algo.policy_loss.name=ppo_clp'],\n"
            "          ['algo.policy_loss.agg_mode=token-men'], ['algo.advantage.estimator=gae_error_aware', 'algo.advantage.extra.lambda_gird=[0.5]']):\n"
            "    try:\n        resolve_config('vapo', overrides=o)\n    except ConfigError as e:\n        print('refused', str(e).splitlines()[0])\n"
            "    else:\n        print('accepted', o)\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[0] for line in out[:-1]] == ["refused"] * 5, out
    assert "lambda_grid" in out[4] or "lambda_gird" in out[4]
    assert out[-1] == "False False"
