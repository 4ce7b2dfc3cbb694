"""The names of vapo.algos' registries, without torch.

The three registries (advantage estimators, policy losses, loss-aggregation modes) live here, with
every built-in name *declared* (vapo.registry.Registry.declare: its module is imported on first
use) and every estimator's typed ``extra`` knobs, so that vapo.config can check names and knobs,
and refuse a typo with a did-you-mean, in a fraction of a second, before torch is imported.
The implementations register themselves into these registries from vapo.algos.advantages,
vapo.algos.losses and vapo.algos.pathways; a test checks that the declarations and the
registrations agree.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from vapo.errors import VapoError, did_you_mean
from vapo.registry import Registry

__all__ = ["ADVANTAGE_ESTIMATORS", "ESTIMATOR_EXTRAS", "LOSS_AGG_MODES", "POLICY_LOSSES", "ExtraSpec",
           "check_extra", "register_advantage_estimator"]

ADVANTAGE_ESTIMATORS: Registry[Any] = Registry("advantage estimator", where="get_advantage_estimator")
POLICY_LOSSES: Registry[Any] = Registry("policy loss", where="policy_loss")
LOSS_AGG_MODES: Registry[Any] = Registry("loss aggregation mode", where="loss_agg_mode")

# estimator name -> {knob of params.extra: the types its value may have}. An estimator reads only
# the knobs it declares; a config naming any other knob is refused (vapo.config).
ExtraSpec = Mapping[str, tuple[type, ...]]
ESTIMATOR_EXTRAS: dict[str, dict[str, tuple[type, ...]]] = {}

_NUMBER = (int, float)
_BUILTIN_ESTIMATORS: dict[str, tuple[str, ExtraSpec]] = {
    "gae": ("vapo.algos.advantages", {}),
    "grpo": ("vapo.algos.advantages", {}),
    "dr_grpo": ("vapo.algos.advantages", {}),
    "rloo": ("vapo.algos.advantages", {}),
    "grpo_passk": ("vapo.algos.advantages", {}),
    "passk": ("vapo.algos.advantages", {}),
    "gae_error_aware": ("vapo.algos.pathways", {"lambda_grid": (list, tuple), "min_group_var": _NUMBER,
                                                "noise_var": (int, float, type(None))}),
    "gae_mc_anchored": ("vapo.algos.pathways", {"anchor_strength": _NUMBER, "anchor_profile": (str,)}),
    "vine": ("vapo.algos.pathways", {"vine_credit": (str,)}),
}
for _name, (_module, _extra) in _BUILTIN_ESTIMATORS.items():
    ADVANTAGE_ESTIMATORS.declare(_name, _module)
    ESTIMATOR_EXTRAS[_name] = {k: tuple(v) for k, v in _extra.items()}
for _name in ("ppo_clip", "clip_cov", "kl_cov"):
    POLICY_LOSSES.declare(_name, "vapo.algos.losses")
for _name in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
    LOSS_AGG_MODES.declare(_name, "vapo.algos.losses")


def register_advantage_estimator(name: str, *, extra: ExtraSpec | None = None) -> Callable[[Any], Any]:
    """Decorator: ``@register_advantage_estimator("my_est", extra={"knob": (float,)})`` makes
    ``fn(inp, params) -> AdvantageOutput`` available by name. ``extra`` declares the knobs the
    estimator reads from ``params.extra`` and the types each may take (none by default; a built-in
    keeps the knobs declared above); :func:`check_extra` refuses any other. Registering a taken
    name raises VapoError."""
    deco = ADVANTAGE_ESTIMATORS.register(name)

    def register(fn: Any) -> Any:
        out = deco(fn)
        if extra is not None or name not in _BUILTIN_ESTIMATORS:
            ESTIMATOR_EXTRAS[name] = {k: tuple(v) for k, v in (extra or {}).items()}
        return out

    return register


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def check_extra(name: str, extra: Mapping[str, Any], where: str = "algo.advantage.extra") -> None:
    """Refuse knobs of ``extra`` that estimator ``name`` does not declare, or of a type it does
    not accept (a misspelled knob would otherwise be silently ignored)."""
    spec = ESTIMATOR_EXTRAS.get(name, {})
    for key, value in extra.items():
        if key not in spec:
            known = ", ".join(sorted(spec)) or "none"
            raise VapoError(f"the {name!r} estimator has no knob {key!r}.{did_you_mean(str(key), spec)}",
                            where=f"{where}.{key}", fix=f"knobs of {name}: {known}")
        types = spec[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise VapoError(f"{where}.{key} of the {name!r} estimator must be {_type_names(types)}, "
                            f"got {value!r}", where=f"{where}.{key}", fix=f"give a {_type_names(types)} value")
