"""Configuration: one pydantic model tree, YAML presets, ``--set a.b=value`` overrides.

Resolution order for ``vapo train`` (later wins):

1. the defaults written below (tiny-scale values for the built-in CPU run),
2. the algorithm preset ``vapo/presets/<preset>.yaml`` (paper values, see ``docs/presets.md``),
3. a user YAML file (``--config``),
4. ``--set a.b=value`` overrides from the command line.

Unknown keys are errors with a "did you mean" suggestion, out-of-range values are errors that
state the allowed range; both name the offending field and the file it came from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vapo.errors import ConfigError, did_you_mean

PRESET_DIR = Path(__file__).parent / "presets"
PRESETS = ("ppo", "vc_ppo", "grpo", "dr_grpo", "dapo", "vapo")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# Algorithm (what a preset sets)
# --------------------------------------------------------------------------------------------
class AdvantageConfig(_Section):
    estimator: str = Field("gae", description="advantage estimator name: gae, grpo, dr_grpo, rloo, or a registered pathway")
    gamma: float = Field(1.0, ge=0.0, le=1.0, description="discount γ (1.0 for outcome-reward reasoning)")
    lam_actor: float | Literal["adaptive"] = Field(
        "adaptive", description="GAE λ for the actor's advantages; 'adaptive' = 1 − 1/(α·l) (VAPO §3)"
    )
    lam_critic: float = Field(1.0, ge=0.0, le=1.0, description="GAE λ for the critic's targets (1.0 = Monte-Carlo, decoupled GAE)")
    alpha: float = Field(
        0.5,
        gt=0.0,
        description="α of length-adaptive λ. Paper: 0.05 for answers of thousands of tokens; the built-in tasks' "
        "answers are 20–150 tokens, so the tiny default is larger (justified by `vapo theory adaptive_lambda`)",
    )
    eps: float = Field(1e-6, gt=0.0, description="ε added to the group std in GRPO's z-score")
    whiten: bool = Field(False, description="whiten advantages over the batch's tokens (not stated by VAPO; off)")
    extra: dict[str, Any] = Field(default_factory=dict, description="extra knobs for registered pathway estimators")

    @field_validator("lam_actor")
    @classmethod
    def _lam_range(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0.0 <= v <= 1.0:
            raise ValueError("must be 'adaptive' or a number in [0, 1]")
        return v


class PolicyLossConfig(_Section):
    name: str = Field("ppo_clip", description="policy loss name in the vapo.algos registry")
    eps_low: float = Field(0.2, ge=0.0, le=1.0, description="lower clip ε: ratio clipped at 1 − ε_low")
    eps_high: float = Field(0.28, ge=0.0, le=10.0, description="upper clip ε (clip-higher, DAPO §3.1): ratio clipped at 1 + ε_high")
    dual_clip_c: float | None = Field(None, gt=1.0, description="dual-clip constant c for A < 0 (off when null)")
    agg_mode: str = Field("token-mean", description="loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum-norm")
    norm_len: int | None = Field(None, ge=1, description="constant T_max for seq-mean-token-sum-norm (default: rollout.max_new_tokens)")
    nll_coef: float = Field(0.1, ge=0.0, description="μ of the positive-example NLL loss (VAPO §5); 0 disables it")
    entropy_coef: float = Field(0.0, ge=0.0, description="entropy bonus coefficient (0 in all presets); the bonus is aggregated with agg_mode like the policy loss")


class CriticConfig(_Section):
    enabled: bool = Field(True, description="train a critic (False for critic-free presets: grpo, dr_grpo, dapo)")
    pretrain_steps: int = Field(50, ge=0, description="max value-pretraining steps before RL (0 = none; VC-PPO §4)")
    pretrain_min_steps: int = Field(10, ge=0, description="value pretraining runs at least this many steps")
    pretrain_patience: int = Field(5, ge=1, description="window w of the stop rule: stop when the mean value loss of the last w steps is not below that of the w steps before by pretrain_tol (relative)")
    pretrain_tol: float = Field(0.02, ge=0.0, description="relative improvement of the windowed value loss below which value pretraining stops")
    value_clip: float | None = Field(None, gt=0.0, description="ε_v of the clipped value loss (null = unclipped)")
    coef: float = Field(1.0, gt=0.0, description="weight of the value loss (a token mean over the loss mask: with overlong.filter_truncated, truncated responses leave the critic's loss too)")


class KLConfig(_Section):
    coef: float = Field(0.0, ge=0.0, description="β of the KL to the reference (warm-start) policy; 0 disables it")
    estimator: Literal["k1", "k2", "k3"] = Field("k3", description="KL estimator, in the loss term and in the reward penalty alike")
    in_reward: bool = Field(False, description="apply KL as a per-token reward penalty (classic RLHF PPO) instead of a loss term")


class DynamicSamplingConfig(_Section):
    enabled: bool = Field(False, description="drop groups whose rewards are all equal and resample (DAPO)")
    max_rounds: int = Field(3, ge=1, description="max generation rounds per iteration to fill the batch")


class OverlongConfig(_Section):
    enabled: bool = Field(False, description="DAPO soft overlong punishment added to the reward")
    cache_len: int = Field(32, ge=1, description="L_cache: length of the soft-punishment window before max length")
    filter_truncated: bool = Field(False, description="mask truncated responses out of the actor's and the critic's losses (overlong filtering)")


class AlgoConfig(_Section):
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    policy_loss: PolicyLossConfig = Field(default_factory=PolicyLossConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    kl: KLConfig = Field(default_factory=KLConfig)
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = Field(default_factory=OverlongConfig)


# --------------------------------------------------------------------------------------------
# Everything else
# --------------------------------------------------------------------------------------------
class TaskConfig(_Section):
    name: str = Field("rewrite_sum", description="task name (built-in: rewrite_sum, running_sum, addition, multiply; 'file' for a jsonl file)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="task options, e.g. {path: data.jsonl} for 'file'")


class ModelConfig(_Section):
    size: str = Field("micro", description="built-in model size (micro ≈ 0.2M, tiny ≈ 1M, small ≈ 6M parameters), used when path is null")
    path: str | None = Field(None, description="a Hugging Face causal-LM directory to start from instead of a built-in size")


class SFTConfig(_Section):
    steps: int = Field(1500, ge=0, description="supervised warm-start steps on task demonstrations (0 = none)")
    batch_size: int = Field(32, ge=1, description="SFT batch size")
    lr: float = Field(1e-3, gt=0.0, description="SFT learning rate (AdamW, cosine decay; 3e-3 left some seeds of the micro model with systematic copying errors)")
    warmup_steps: int = Field(20, ge=0, description="SFT warm-up steps")
    teacher_slip: float = Field(0.2, ge=0.0, lt=1.0, description="per-step probability that a demonstration slips (tasks with a slip model, e.g. rewrite_sum): the warm start imitates a sloppy teacher and RL must learn to be more careful than it")
    cache: bool = Field(True, description="cache the warm-start weights under ~/.cache/vapo keyed by a hash of what determines them")


class RolloutConfig(_Section):
    prompts_per_iter: int = Field(32, ge=1, description="prompts sampled per RL iteration")
    group_size: int = Field(8, ge=1, description="answers sampled per prompt (G, group sampling)")
    max_new_tokens: int = Field(128, ge=1, description="max response length in tokens (L_max)")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature during training; log-probs (PPO ratio, KL, NLL, entropy) are computed at the same temperature, i.e. of the distribution sampled from")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling p during training; only 1.0 is accepted (the training log-probs are of the untruncated distribution)")


class OptimConfig(_Section):
    actor_lr: float = Field(1e-4, gt=0.0, description="actor learning rate (AdamW, warm-up then constant; paper 1e-6 at 32B; on the micro model 3e-4 stalled and 1e-3 collapsed, see docs/training.md)")
    critic_lr: float = Field(1e-3, gt=0.0, description="critic learning rate (paper 2e-6 at 32B: the critic must keep pace)")
    warmup_steps: int = Field(5, ge=0, description="lr warm-up in optimizer steps")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW β1 (momentum) of actor and critic")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW β2 of actor and critic")
    grad_clip: float = Field(1.0, gt=0.0, description="max global gradient norm for actor and critic")
    ppo_epochs: int = Field(1, ge=1, description="passes over each iteration's batch")
    minibatch_size: int = Field(256, ge=1, description="responses per optimizer step")
    micro_batch_tokens: int = Field(8192, ge=1, description="max padded tokens (rows × (prompt + answer)) per forward pass: a minibatch's gradient is accumulated over length-sorted micro-batches of this size, which bounds memory and skips the padding of short answers (raise it on a GPU)")


class TrainConfig(_Section):
    iterations: int = Field(400, ge=0, description="RL iterations")
    checkpoint_every: int = Field(100, ge=0, description="save a checkpoint every N iterations (0 = only at the end)")
    eval_every: int = Field(100, ge=0, description="evaluate on held-out prompts every N iterations (0 = start and end only)")
    runs_dir: str = Field("runs", description="directory that holds run directories")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    device: str = Field("auto", description="torch device: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")


class DistConfig(_Section):
    rollout_streams: int | None = Field(
        None, ge=1, description="independent seeded rollout streams (prompts and samples), each prompts_per_iter / streams "
        "prompts per iteration; under torchrun each process samples streams / world of them, so a run draws the same "
        "batches on any number of processes dividing it (null: one per process of the run's first launch)")


class EvalConfig(_Section):
    prompts: int = Field(128, ge=1, description="prompts per split for evaluation")
    samples: int = Field(4, ge=1, description="answers per prompt (avg@k accuracy; pass@k for k ≤ samples)")
    temperature: float = Field(1.0, ge=0.0, description="evaluation temperature (VAPO/DAPO protocol: 1.0; 0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="evaluation nucleus p (1.0: the distribution RL trains; the VAPO/DAPO protocol uses 0.7, which all but removes sampling slips)")


class Config(_Section):
    preset: str = Field("vapo", description="algorithm preset the algo section started from")
    seed: int = Field(0, description="random seed (runs are reproducible given seed and machine)")
    task: TaskConfig = Field(default_factory=TaskConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    dist: DistConfig = Field(default_factory=DistConfig)
    diagnose_every: int = Field(0, ge=0, description="run cheap diagnostics every N iterations and log them (0 = off)")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def hash(self, *sections: str) -> str:
        """A short stable hash of the given sections (all when none), e.g. for caching."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loading, merging and overriding
# --------------------------------------------------------------------------------------------
def _check_keys(data: Any, model: type[BaseModel], prefix: str, source: str) -> None:
    """Reject unknown keys with a "did you mean" suggestion, recursively."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(
                f"unknown config key {path!r}.{did_you_mean(str(key), fields)}",
                where=source,
                fix=f"valid keys under {prefix.rstrip('.') or 'the top level'}: {', '.join(fields)}",
            )
        ann = fields[key].annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _check_keys(value, ann, path + ".", source)


def _field_range(model: type[BaseModel], loc: tuple) -> str:
    """Human-readable allowed range of the field at ``loc`` (from its ge/gt/le/lt metadata)."""
    m: Any = model
    info = None
    for part in loc:
        if not (isinstance(m, type) and issubclass(m, BaseModel)) or part not in m.model_fields:
            break
        info = m.model_fields[part]
        m = info.annotation
    if info is None:
        return ""
    bounds = []
    for meta in info.metadata:
        for name, sym in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(meta, name, None) is not None:
                bounds.append(f"{sym} {getattr(meta, name)}")
    return f" (allowed: {', '.join(bounds)})" if bounds else ""


def validate_config(data: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from a plain dict, turning pydantic errors into ConfigErrors."""
    _check_keys(data, Config, "", source)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(p for p in err["loc"] if isinstance(p, str))
        field = ".".join(loc)
        raise ConfigError(
            f"invalid value {err.get('input')!r} for {field!r}: {err['msg']}{_field_range(Config, loc)}",
            where=source,
            fix=f"set {field} to a valid value (see `vapo train --help`)",
        ) from None


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return base updated by update, merging nested dicts (dict-valued leaves like kwargs merge too)."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with errors that name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}", fix="check the path passed to --config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"not valid YAML: {getattr(e, 'problem', e)}", where=where, fix="fix the YAML syntax") from None
    if not isinstance(data, dict):
        raise ConfigError("a config file must hold a mapping of keys to values", where=str(p), fix="write `key: value` lines")
    return data


def preset_dict(name: str) -> dict[str, Any]:
    """The raw mapping of preset ``name`` (validated keys, not yet merged)."""
    if name not in PRESETS:
        raise ConfigError(
            f"unknown preset {name!r}.{did_you_mean(name, PRESETS)}", where="--preset", fix=f"use one of: {', '.join(PRESETS)}"
        )
    path = PRESET_DIR / f"{name}.yaml"
    data = load_yaml(path)
    _check_keys(data, Config, "", str(path))
    return data


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as YAML (numbers, bools, null, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a nested dict (keys are checked later by validate_config)."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value", where="--set", fix="write e.g. --set optim.actor_lr=1e-4")
        key, _, value = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override {item!r} has an empty key", where="--set", fix="write e.g. --set train.iterations=10")
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = {}
                node[p] = nxt
            node = nxt
        node[parts[-1]] = parse_value(value)
    return out


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Defaults → preset → user file → overrides, validated. See the module docstring.

    The preset is ``preset`` when given, else the user file's ``preset`` key, else "vapo".
    """
    user: dict[str, Any] = {}
    source = "--set"
    if config_file is not None:
        user = load_yaml(config_file)
        _check_keys(user, Config, "", str(config_file))
        source = str(config_file) if not overrides else f"{config_file} / --set"
    name = preset or user.get("preset") or "vapo"
    data = deep_merge(Config().to_dict(), preset_dict(name))
    data = deep_merge(data, {k: v for k, v in user.items() if k != "preset"})
    data["preset"] = name
    if overrides:
        data = apply_overrides(data, overrides)
    source = source if (config_file or overrides) else f"preset {name}"
    cfg = validate_config(data, source)
    check_trainable(cfg, source)
    return cfg


def check_trainable(cfg: Config, source: str = "config") -> None:
    """Refuse, with a clear error, settings the trainer cannot honour.

    rollout.top_p < 1: the PPO ratio, the KL and the NLL term need the log-probability of each
    sampled token under the distribution it was drawn from; the trainer's forward pass computes the
    tempered, untruncated distribution, so top-p samples would be scored against the wrong one.
    """
    if cfg.rollout.top_p < 1.0:
        raise ConfigError(
            f"rollout.top_p={cfg.rollout.top_p} is not supported for training: the training log-probs "
            "(PPO ratio, KL, NLL) are of the untruncated sampling distribution",
            where=source, fix="set rollout.top_p=1.0 (eval.top_p may still differ)",
        )


def load_config_file(path: str | Path) -> Config:
    """Load a resolved config (e.g. a run's config.yaml) exactly as written."""
    return validate_config(load_yaml(path), str(path))


def describe_fields(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf field — used by `vapo train --help` and docs."""
    rows: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            rows.extend(describe_fields(ann, f"{prefix}{name}."))
            continue
        default = info.get_default(call_default_factory=True)
        rows.append((f"{prefix}{name}", json.dumps(default), info.description or ""))
    return rows
