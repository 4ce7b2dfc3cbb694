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

from vapo.algos import ADVANTAGE_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES, check_extra
from vapo.compat import kernels_conflict
from vapo.errors import ConfigError, VapoError, did_you_mean, unknown_name_error
from vapo.tasks import TASK_PREFIXES, TASKS
from vapo.train.sinks import flat_keys as flat_keys  # re-exported: a config dict as dotted keys
from vapo.train.sinks import validate_sinks

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
        description="α of length-adaptive λ (paper: 0.05, for answers of thousands of tokens); the choice of the default is measured in docs/presets.md",
    )
    eps: float = Field(1e-6, gt=0.0, description="ε added to the group std in GRPO's z-score")
    pass_k: int = Field(4, ge=1, description="k of the pass@k-aware advantage (estimator passk, arXiv 2508.10751) and of algo.exploration.passk_credit; at most rollout.group_size")
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
    clip_cov_ratio: float = Field(0.0002, gt=0.0, le=1.0, description="clip_cov: fraction of the real tokens whose policy-gradient term is detached, drawn at random among the candidates (verl's default 2e-4; arXiv 2505.22617)")
    clip_cov_lb: float = Field(1.0, description="clip_cov: lower bound of the covariance band of candidate tokens (verl: 1)")
    clip_cov_ub: float = Field(5.0, description="clip_cov: upper bound of the covariance band of candidate tokens (verl: 5)")
    kl_cov_ratio: float = Field(0.0002, gt=0.0, le=1.0, description="kl_cov: fraction of the real tokens, those of largest covariance of log-prob and advantage, that get the |log ratio| penalty (verl's default 2e-4; the paper also uses 2e-3)")
    kl_cov_coef: float = Field(1.0, ge=0.0, description="kl_cov: β of the β·|log π − log π_old| penalty on the selected tokens (verl's ppo_kl_coef, 1)")


class CriticConfig(_Section):
    enabled: bool = Field(True, description="train a critic (False for critic-free presets: grpo, dr_grpo, dapo)")
    pretrain_steps: int = Field(50, ge=0, description="cap on value-pretraining rounds before RL (each round collects one batch and makes pretrain_epochs passes over it; 0 = none; VC-PPO §4)")
    pretrain_min_steps: int = Field(3, ge=0, description="value pretraining runs at least this many rounds")
    pretrain_patience: int = Field(6, ge=1, description="stop value pretraining after this many rounds in a row without a new best RMSE against the Monte-Carlo probe values (the critic with the best RMSE is kept)")
    pretrain_tol: float = Field(0.01, ge=0.0, description="relative RMSE improvement that counts as a new best in the stop rule")
    head_init: Literal["zero", "random"] = Field("zero", description="value-head initialisation: zero (V ≡ 0 before value pretraining) or PyTorch's default random Linear init")
    surprise_input: bool = Field(True, description="the critic also reads, for each token, a learned embedding of the bucket of the warm-start policy's probability of it (a frozen copy; one extra no-grad forward per critic forward): on a sloppy-teacher task a slip is a low-probability token, see docs/training.md")
    surprise_history: bool = Field(False, description="with surprise_input: each response position also reads learned embeddings of how many response tokens so far the warm-start policy gave probability < 0.5 (0-4+) and of the bucket of the smallest such probability so far, so a slip hundreds of tokens back need not be found by attention alone (docs/pathways.md, 'surprise history')")
    pretrain_epochs: int = Field(8, ge=1, description="critic passes over each value-pretraining batch")
    pretrain_minibatch_size: int = Field(64, ge=1, description="answers per critic step in value pretraining (a batch of prompts_per_iter × group_size answers gives that ÷ this steps per pass)")
    probe_answers: int = Field(128, ge=1, description="held-out answers of the critic's Monte-Carlo probe (one per prompt, sampled from the policy)")
    probe_positions: list[float] = Field([0.0, 0.25, 0.5, 0.75], min_length=1, description="relative positions ρ in each probe answer whose state values are estimated")
    probe_continuations: int = Field(8, ge=1, description="continuations M per probe state (Monte-Carlo value V̂ = mean of M rewards)")
    probe_every: int = Field(50, ge=0, description="re-draw the probe (the policy has moved) and log critic/ev, critic/achievable_ev, critic/rmse_vs_mc, critic/bias_vs_mc every N RL iterations (0 = never); the cost of a probe and the choice of 50: docs/training.md")
    value_clip: float | None = Field(None, gt=0.0, description="ε_v of the clipped value loss (null = unclipped)")
    coef: float = Field(1.0, gt=0.0, description="weight of the value loss (a token mean over the loss mask: with overlong.filter_truncated, truncated responses leave the critic's loss too)")
    blend: Literal["off", "ev"] = Field("off", description="ev: the actor's advantages are w·(the critic's) + (1 − w)·(R − group mean), w = the critic's explained variance against Monte-Carlo values clamped to [0, 1] (EVPO, V0.5; docs/algorithms.md, 'Critic weighted by its quality'); logged as critic_weight")
    ev_every: int = Field(10, ge=1, description="when blend or warmup_ev needs the critic's EV against Monte-Carlo values and the iteration draws none (algo.mc_values), measure it on a fresh probe (probe_answers, probe_positions, probe_continuations) every N iterations; the last measurement holds in between")
    steps_per_actor_step: int = Field(1, ge=1, description="critic optimizer steps per actor step (SAO): the critic makes this many passes of the PPO schedule (ppo_epochs × minibatches) per iteration")
    warmup_ev: float | None = Field(None, gt=0.0, le=1.0, description="critic-only RL iterations at the start of RL (the actor is not updated; the iterations count against train.iterations) until the critic's EV against Monte-Carlo values reaches this (SAO); null = none")
    warmup_max_iters: int = Field(20, ge=1, description="the critic-only warm-up (warmup_ev) ends after this many iterations whatever the EV")


class MCValuesConfig(_Section):
    points: int = Field(4, ge=1, description="M: Monte-Carlo points per answer (the first is the prompt state) whose state value V^π is the mean reward of K continuations (VinePPO); drawn when the estimator is vine or when rl_targets/pretrain_targets ask for them")
    continuations: int = Field(4, ge=1, description="K: continuations sampled from each Monte-Carlo point")
    placement: Literal["even", "lines"] = Field("even", description="where the points go: even (t = ⌊j·l/M⌋) or lines (the answer's line starts, M of them spread evenly, always t = 0)")
    pretrain_targets: bool = Field(False, description="value pretraining regresses the critic on Monte-Carlo targets (the reward-to-go up to the next point plus its MC value) instead of the answer's 0/1 return")
    rl_targets: bool = Field(False, description="during RL too: the critic's targets are the Monte-Carlo targets instead of the λ_critic returns (one MC draw per iteration)")


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


class ExplorationConfig(_Section):
    history_coef: float = Field(0.0, ge=0.0, description="c of the outcome bonus c/√N(x, a) added to the reward, N(x, a) = how often final answer a was given to prompt x so far in training, this batch included (arXiv 2509.06941, historical exploration; the counts are checkpointed); 0 = off")
    batch_coef: float = Field(0.0, ge=0.0, description="c of the within-group repeat penalty −c·#{other answers in the group equal to this one}/G added to the reward (arXiv 2509.06941, batch exploration); 0 = off")
    passk_credit: bool = Field(False, description="replace each answer's 0/1 correctness in the reward by its pass@k credit in its group (1 if correct, else 1 − C(n−c−1, k−1)/C(n−1, k−1), k = algo.advantage.pass_k): the pass@k objective for any estimator, e.g. vapo's GAE")


class AlgoConfig(_Section):
    advantage: AdvantageConfig = Field(default_factory=AdvantageConfig)
    policy_loss: PolicyLossConfig = Field(default_factory=PolicyLossConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    kl: KLConfig = Field(default_factory=KLConfig)
    dynamic_sampling: DynamicSamplingConfig = Field(default_factory=DynamicSamplingConfig)
    overlong: OverlongConfig = Field(default_factory=OverlongConfig)
    exploration: ExplorationConfig = Field(default_factory=ExplorationConfig)
    mc_values: MCValuesConfig = Field(default_factory=MCValuesConfig)


# --------------------------------------------------------------------------------------------
# Everything else
# --------------------------------------------------------------------------------------------
class TaskConfig(_Section):
    name: str = Field("rewrite_sum", description="task name (built-in: rewrite_sum, running_sum, addition, multiply, repeat_add (long chain of thought); 'file' for a jsonl file)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="task options, e.g. {path: data.jsonl} for 'file'")
    verify_timeout: float = Field(10.0, gt=0.0, description="seconds one call of the task's verifier may take; a verifier that raises, hangs or returns a non-number gives that answer reward 0 (counted as reward_faults_<kind> in metrics.jsonl, first example of each kind logged)")


class ModelConfig(_Section):
    size: str = Field("micro", description="built-in model size (micro ≈ 0.2M, tiny ≈ 1M, small ≈ 6M parameters), used when path is null")
    path: str | None = Field(None, description="a Hugging Face causal-LM directory to start from instead of a built-in size")
    # Hugging Face models (used when path is set; see docs/byo.md)
    chat_template: bool = Field(True, description="format prompts with the tokenizer's chat template when it has one (false: BOS if any, then the text)")
    system_prompt: str | None = Field(None, description="system message placed before each prompt by the chat template (needs a template)")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="weights dtype of policy, reference and critic (bfloat16 on a GPU)")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (less memory, ~30% more time) for policy and critic")
    critic_path: str | None = Field(None, description="a Hugging Face model directory for the critic's backbone (default: a copy of the warm-start policy's); same tokenizer required")
    lora_rank: int = Field(0, ge=0, description="LoRA rank r of the actor's adapters (peft); 0 trains all weights")
    lora_alpha: float = Field(16.0, gt=0.0, description="LoRA scaling α (the update is α/r · B A)")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the LoRA input")
    lora_target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="names of the linear layers that get LoRA adapters")


class SFTConfig(_Section):
    steps: int = Field(1500, ge=0, description="supervised warm-start steps on task demonstrations (0 = none)")
    batch_size: int = Field(32, ge=1, description="SFT batch size")
    lr: float = Field(1e-3, gt=0.0, description="SFT learning rate (AdamW, cosine decay; learning rates tried: docs/training.md)")
    warmup_steps: int = Field(20, ge=0, description="SFT warm-up steps")
    teacher_slip: float = Field(0.2, ge=0.0, lt=1.0, description="per-step probability that a demonstration slips (tasks with a slip model, e.g. rewrite_sum): the warm start imitates a sloppy teacher and RL must learn to be more careful than it")
    cache: bool = Field(True, description="cache the warm-start weights under ~/.cache/vapo keyed by a hash of what determines them")
    micro_batches: int = Field(1, ge=1, description="length-sorted micro-batches per SFT step, each padded to its own longest demonstration; the gradient is the same token mean (accumulated), the padding is not computed: pays when demonstration lengths spread widely (repeat_add: ~2x)")


class RolloutConfig(_Section):
    prompts_per_iter: int = Field(32, ge=1, description="prompts sampled per RL iteration")
    group_size: int = Field(8, ge=1, description="answers sampled per prompt (G, group sampling)")
    max_new_tokens: int = Field(128, ge=1, description="max response length in tokens (L_max)")
    temperature: float = Field(1.0, gt=0.0, description="sampling temperature during training; log-probs (PPO ratio, KL, NLL, entropy) are computed at the same temperature, i.e. of the distribution sampled from")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling p during training; only 1.0 is accepted (the training log-probs are of the untruncated distribution)")


class OptimConfig(_Section):
    actor_lr: float = Field(1e-4, gt=0.0, description="actor learning rate (AdamW, warm-up then constant; paper 1e-6 at 32B; learning rates tried on the micro model: docs/training.md)")
    critic_lr: float = Field(3e-3, gt=0.0, description="critic learning rate (paper 2e-6 at 32B: the critic must keep pace)")
    warmup_steps: int = Field(5, ge=0, description="lr warm-up in optimizer steps")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW β1 (momentum) of actor and critic")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="AdamW β2 of actor and critic")
    grad_clip: float = Field(1.0, gt=0.0, description="max global gradient norm for actor and critic")
    ppo_epochs: int = Field(1, ge=1, description="passes over each iteration's rollout; optimizer steps per iteration = ppo_epochs × minibatches")
    minibatches: int = Field(4, ge=1, description="mini-batches per rollout and epoch (each one optimizer step); must divide prompts_per_iter × group_size; why 4: docs/training.md, 'The PPO schedule'; 1 × 1 epoch = one step per rollout (old policy = current: ratios are 1, nothing clips)")
    old_logprobs: Literal["sampler", "recompute"] = Field("sampler", description="where the PPO ratio's old log-probs come from when there are several optimizer steps: the sampler's own (requires rollout.temperature=1, top_p=1) or a teacher-forced forward pass of the policy before the update")
    micro_batch_tokens: int = Field(8192, ge=1, description="max padded tokens (rows × (prompt + answer)) per forward pass: a minibatch's gradient is accumulated over length-sorted micro-batches of this size, which bounds memory and skips the padding of short answers (raise it on a GPU)")


class TrainConfig(_Section):
    iterations: int = Field(400, ge=0, description="RL iterations")
    checkpoint_every: int = Field(100, ge=0, description="save a checkpoint every N iterations (0 = only at the end)")
    eval_every: int = Field(100, ge=0, description="evaluate on held-out prompts every N iterations (0 = start and end only)")
    runs_dir: str = Field("runs", description="directory that holds run directories")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")
    keep_checkpoints: int = Field(3, ge=0, description="keep the last K checkpoints step_N (step_0, the start of RL, is always kept as well; 0 = keep all)")
    max_bad_updates: int = Field(3, ge=1, description="stop the run (checkpoint, message, exit 2) after this many consecutive optimizer steps of one model skipped for NaN/Inf")
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


class LoggingConfig(_Section):
    sinks: list[str] = Field(default_factory=lambda: ["jsonl"], description="where metrics go: jsonl (metrics.jsonl, required) plus any of tensorboard, wandb (offline), mlflow (local store), all inside the run directory")
    project: str = Field("vapo", description="W&B project / MLflow experiment name")


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
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

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


def preset_dict(name: str, *, _chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The mapping of preset ``name`` (validated keys, not yet merged over the defaults).

    A preset file may start from another preset with ``base: <name>`` and hold only what it
    changes: its mapping is then the base's, deep-merged with its own (bases may chain; a cycle or
    an unknown base is an error naming the file).

    ``name`` is one of PRESETS (``presets/<name>.yaml``), an ablation preset
    (``presets/ablations/<name>.yaml``, e.g. ``vapo_no_clip_higher``) or a pathway preset
    (``presets/pathways/<name>.yaml``, e.g. ``vine``; docs/pathways.md) or an exploration preset
    (``presets/exploration/<name>.yaml``, e.g. ``vapo_clip_cov``; docs/exploration.md).
    """
    ablations = sorted(p.stem for p in (PRESET_DIR / "ablations").glob("*.yaml"))
    pathways = sorted(p.stem for p in (PRESET_DIR / "pathways").glob("*.yaml"))
    exploration = sorted(p.stem for p in (PRESET_DIR / "exploration").glob("*.yaml"))
    if name not in PRESETS and name not in ablations and name not in pathways and name not in exploration:
        known = [*PRESETS, *ablations, *pathways, *exploration]
        raise ConfigError(
            f"unknown preset {name!r}.{did_you_mean(name, known)}", where="--preset", fix=f"use one of: {', '.join(known)}"
        )
    sub = "" if name in PRESETS else "ablations" if name in ablations else "pathways" if name in pathways else "exploration"
    path = PRESET_DIR / sub / f"{name}.yaml"
    data = load_yaml(path)
    base = data.pop("base", None)
    _check_keys(data, Config, "", str(path))
    if base is None:
        return data
    chain = (*_chain, name)
    if not isinstance(base, str):
        raise ConfigError(f"base must be a preset name, got {base!r}", where=f"{path}: base", fix="e.g. base: vapo")
    if base in chain:
        raise ConfigError(f"presets form a cycle through their base: {' -> '.join((*chain, base))}",
                          where=f"{path}: base", fix="make one of them start from a preset without a base")
    try:
        return deep_merge(preset_dict(base, _chain=chain), data)
    except ConfigError as e:
        if not e.what.startswith("unknown preset"):
            raise
        raise ConfigError(e.what, where=f"{path}: base", fix=e.fix) from None


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

    optim.minibatches must divide the rollout (prompts_per_iter × group_size): every optimizer step
    then sees the same number of answers. optim.old_logprobs=sampler needs temperature 1: the
    ratio's old log-probs and the trained log-probs must be of the same distribution.
    """
    check_names(cfg, source)
    conflict = kernels_conflict()
    if conflict:
        raise ConfigError(conflict, where="installed packages",
                          fix="pip install 'kernels<0.15' (what vapo[verl] pins), or keep verl in an environment of its own (docs/verl.md)")
    cc = cfg.algo.critic
    if not cc.enabled:
        # Their defaults are inert without a critic (e.g. --preset vapo --set algo.critic.enabled=false);
        # any other value asks for critic work that cannot happen, and is refused.
        defaults = CriticConfig()
        gated = [f"algo.critic.{k}={getattr(cc, k)}" for k in ("pretrain_steps", "probe_every")
                 if getattr(cc, k) and getattr(cc, k) != getattr(defaults, k)]
        if gated:
            raise ConfigError(
                f"{', '.join(gated)} needs a critic, and this config has none (algo.critic.enabled=false, preset {cfg.preset})",
                where=source, fix="set those fields to 0, or use a preset with a critic (ppo, vc_ppo, vapo)")
    if any(not 0.0 <= r < 1.0 for r in cc.probe_positions):
        raise ConfigError(f"algo.critic.probe_positions={cc.probe_positions} holds a position outside [0, 1)",
                          where=source, fix="give relative positions ρ with 0 ≤ ρ < 1, e.g. [0.0, 0.25, 0.5, 0.75]")
    _check_value_pathways(cfg, source)
    _check_exploration(cfg, source)
    if cfg.rollout.top_p < 1.0:
        raise ConfigError(
            f"rollout.top_p={cfg.rollout.top_p} is not supported for training: the training log-probs "
            "(PPO ratio, KL, NLL) are of the untruncated sampling distribution",
            where=source, fix="set rollout.top_p=1.0 (eval.top_p may still differ)",
        )
    o, r = cfg.optim, cfg.rollout
    rows = r.prompts_per_iter * r.group_size
    if rows % o.minibatches:
        below = max(d for d in range(1, min(o.minibatches, rows) + 1) if rows % d == 0)
        above = [d for d in range(o.minibatches, rows + 1) if rows % d == 0][:1]
        near = " or ".join(str(d) for d in [below, *above])
        raise ConfigError(
            f"optim.minibatches={o.minibatches} does not divide the rollout of rollout.prompts_per_iter × "
            f"rollout.group_size = {r.prompts_per_iter} × {r.group_size} = {rows} answers into equal mini-batches",
            where=source, fix=f"set optim.minibatches to a divisor of {rows} (e.g. {near}), or change rollout.prompts_per_iter",
        )
    if o.old_logprobs == "sampler" and r.temperature != 1.0:
        raise ConfigError(
            f"optim.old_logprobs=sampler needs rollout.temperature=1 (got {r.temperature}): the sampler's log-probs "
            "are reused as the PPO ratio's old log-probs only where they are the policy's own distribution",
            where=source, fix="set optim.old_logprobs=recompute (a forward pass at the sampling temperature), or rollout.temperature=1",
        )


def check_names(cfg: Config, source: str = "config") -> None:
    """Every name the config keeps as a plain string must be in its registry, read as it is now
    (plug-ins may have added entries): advantage estimator (and the knobs of its
    ``algo.advantage.extra``), policy loss, aggregation mode, task, metric sinks. An unknown name
    is refused with a did-you-mean hint before any work starts. (A reasoning-gym dataset,
    ``rg:<name>``, is checked against reasoning-gym's own list when the task is built, still
    before the run directory exists: importing reasoning-gym takes seconds.)"""
    a, pl = cfg.algo.advantage, cfg.algo.policy_loss
    for value, registry, field in ((a.estimator, ADVANTAGE_ESTIMATORS, "algo.advantage.estimator"),
                                   (pl.name, POLICY_LOSSES, "algo.policy_loss.name"),
                                   (pl.agg_mode, LOSS_AGG_MODES, "algo.policy_loss.agg_mode")):
        if value not in registry:
            raise _as_config_error(unknown_name_error(registry.kind, value, registry, where=f"{source}: {field}"))
    try:
        check_extra(a.estimator, a.extra)
    except VapoError as e:
        raise _as_config_error(e, source) from None
    task = cfg.task.name
    if not any(task.startswith(p) for p in TASK_PREFIXES) and task not in TASKS:
        known = [*TASKS, *(f"{p}<name>" for p in TASK_PREFIXES)]
        raise ConfigError(f"unknown task {task!r}.{did_you_mean(task, known)}", where=f"{source}: task.name",
                          fix=f"use one of: {', '.join(known)}")
    if "verify_timeout" in cfg.task.kwargs:
        raise ConfigError("task.kwargs.verify_timeout is not a task option: a run has one verification timeout",
                          where=f"{source}: task.kwargs.verify_timeout",
                          fix=f"set task.verify_timeout={cfg.task.kwargs['verify_timeout']} instead")
    try:
        validate_sinks(cfg)
    except VapoError as e:
        raise _as_config_error(e, source) from None


def _as_config_error(e: VapoError, source: str | None = None) -> ConfigError:
    where = f"{source}: {e.where}" if source and e.where else e.where
    return ConfigError(e.what, where=where, fix=e.fix)


def _check_value_pathways(cfg: Config, source: str) -> None:
    """The Monte-Carlo value and critic-schedule options (docs/algorithms.md): refuse the ones
    this config cannot honour."""
    a, cc, mc = cfg.algo.advantage, cfg.algo.critic, cfg.algo.mc_values
    vine = a.estimator == "vine"
    critic_opts = [f"algo.critic.{k}={getattr(cc, k)}" for k in ("blend", "steps_per_actor_step", "warmup_ev", "surprise_history")
                   if getattr(cc, k) != CriticConfig.model_fields[k].default]
    critic_opts += [f"algo.mc_values.{k}=true" for k in ("pretrain_targets", "rl_targets") if getattr(mc, k)]
    if critic_opts and not cc.enabled:
        raise ConfigError(f"{', '.join(critic_opts)} needs a critic, and this config has none (preset {cfg.preset})",
                          where=source, fix="drop those options, or set algo.critic.enabled=true")
    if cc.surprise_history and not cc.surprise_input:
        raise ConfigError("algo.critic.surprise_history=true reads the surprise input's probabilities, and algo.critic.surprise_input is false",
                          where=source, fix="set algo.critic.surprise_input=true, or drop surprise_history")
    if vine and cc.enabled:
        raise ConfigError("the vine estimator takes Monte-Carlo values in place of a critic; this config also trains one",
                          where=source, fix="set algo.critic.enabled=false (and pretrain_steps=0, probe_every=0)")
    if cc.blend == "ev" and a.whiten:
        raise ConfigError("algo.critic.blend=ev mixes advantages in reward units; algo.advantage.whiten rescales them first",
                          where=source, fix="set algo.advantage.whiten=false")
    if (vine or mc.pretrain_targets or mc.rl_targets) and a.gamma != 1.0:
        raise ConfigError(f"Monte-Carlo values are undiscounted returns; algo.advantage.gamma={a.gamma}",
                          where=source, fix="set algo.advantage.gamma=1.0")


def _check_exploration(cfg: Config, source: str) -> None:
    """The covariance losses, pass@k and outcome-exploration options (docs/exploration.md):
    refuse the ones this config cannot honour."""
    a, pl, ex, g = cfg.algo.advantage, cfg.algo.policy_loss, cfg.algo.exploration, cfg.rollout.group_size
    for loss, keys in (("clip_cov", ("clip_cov_ratio", "clip_cov_lb", "clip_cov_ub")), ("kl_cov", ("kl_cov_ratio", "kl_cov_coef"))):
        moved = [f"algo.policy_loss.{k}={getattr(pl, k)}" for k in keys
                 if getattr(pl, k) != PolicyLossConfig.model_fields[k].default]
        if moved and pl.name != loss:
            raise ConfigError(f"{', '.join(moved)} only acts with algo.policy_loss.name={loss} (this config: {pl.name})",
                              where=source, fix=f"set algo.policy_loss.name={loss}, or drop those options")
    if pl.name in ("clip_cov", "kl_cov") and pl.dual_clip_c is not None:
        raise ConfigError(f"algo.policy_loss.name={pl.name} has no dual clip (as verl); dual_clip_c={pl.dual_clip_c}",
                          where=source, fix="set algo.policy_loss.dual_clip_c=null")
    if pl.name == "clip_cov" and not pl.clip_cov_lb < pl.clip_cov_ub:
        raise ConfigError(f"algo.policy_loss.clip_cov_lb={pl.clip_cov_lb} must be below clip_cov_ub={pl.clip_cov_ub}",
                          where=source, fix="e.g. clip_cov_lb=1.0, clip_cov_ub=5.0")
    uses_k = a.estimator == "passk" or ex.passk_credit
    if a.pass_k != AdvantageConfig.model_fields["pass_k"].default and not uses_k:
        raise ConfigError(f"algo.advantage.pass_k={a.pass_k} only acts with algo.advantage.estimator=passk or "
                          "algo.exploration.passk_credit=true", where=source, fix="drop pass_k, or turn one of them on")
    if uses_k and a.pass_k > g:
        raise ConfigError(f"algo.advantage.pass_k={a.pass_k} exceeds rollout.group_size={g}: pass@k needs k answers per prompt",
                          where=source, fix=f"set algo.advantage.pass_k to at most {g}")
    if a.estimator == "grpo_passk" and g < 2:
        raise ConfigError("estimator grpo_passk needs at least 2 answers per prompt", where=source,
                          fix="set rollout.group_size >= 2")
    shaped = [name for name, on in (("algo.overlong.enabled", cfg.algo.overlong.enabled),
                                    ("algo.exploration.history_coef", ex.history_coef > 0),
                                    ("algo.exploration.batch_coef", ex.batch_coef > 0),
                                    ("algo.exploration.passk_credit", ex.passk_credit)) if on]
    if a.estimator == "passk" and shaped:
        raise ConfigError(f"estimator passk needs 0/1 rewards, and {', '.join(shaped)} shapes them", where=source,
                          fix="turn that shaping off, or use estimator grpo with algo.exploration.passk_credit=true")


def load_config_file(path: str | Path) -> Config:
    """Load a resolved config (e.g. a run's config.yaml) exactly as written."""
    return validate_config(load_yaml(path), str(path))


def dict_differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every leaf where two config dicts differ."""
    out: list[tuple[str, Any, Any]] = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out.extend(dict_differences(va, vb, f"{prefix}{k}."))
        elif va != vb:
            out.append((f"{prefix}{k}", va, vb))
    return out


# What a fork (`vapo train --fork`: a new run continued from another run's checkpoint) may set
# differently from the run that wrote the checkpoint: what the RL updates do from there on, and how
# the process runs. Every other field made the state the checkpoint holds (warm start, value
# pretraining, critic, optimizers, random streams) or the evaluation the fork inherits from it.
FORKABLE_FIELDS = (
    "preset", "algo.advantage", "algo.policy_loss", "algo.exploration", "algo.dynamic_sampling", "algo.overlong",
    "algo.critic.blend", "algo.critic.ev_every", "algo.critic.steps_per_actor_step", "algo.critic.value_clip",
    "algo.critic.coef", "algo.critic.probe_every", "algo.critic.warmup_ev", "algo.critic.warmup_max_iters",
    "algo.mc_values.points", "algo.mc_values.continuations", "algo.mc_values.placement", "algo.mc_values.rl_targets",
    "train.iterations", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
    "train.max_bad_updates", "train.runs_dir", "train.threads", "train.device", "diagnose_every", "logging",
)


def fork_differences(source: Config, fork: Config) -> tuple[list[str], list[str]]:
    """``(changes a fork may make, changes it may not)`` between the config of the run that wrote a
    checkpoint and a fork's, each as ``"key: old → new"``."""
    allowed, refused = [], []
    for key, va, vb in dict_differences(source.to_dict(), fork.to_dict()):
        ok = any(key == f or key.startswith(f + ".") for f in FORKABLE_FIELDS)
        (allowed if ok else refused).append(f"{key}: {va!r} → {vb!r}")
    return allowed, refused


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
