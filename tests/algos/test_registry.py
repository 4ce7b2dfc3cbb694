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
