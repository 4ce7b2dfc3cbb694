"""Value pretraining: the critic learns the frozen warm-start policy's values before RL.

One stage of the trainer (vapo.train.trainer.Trainer holds the loop): it reads the trainer's
policy (frozen), critic, critic optimizer and scheduler, the config's ``algo.critic`` and
``algo.mc_values`` and the rollout streams; it leaves the critic and its optimizer state at the
kept round and returns the per-round records it also appends to events.jsonl (docs/training.md,
the critic).
"""

from __future__ import annotations

import copy
import math
import time
from typing import TYPE_CHECKING, Any

from vapo.algos.advantages import masked_gae
from vapo.algos.losses import explained_variance
from vapo.train.batch import Experience
from vapo.train.rundir import append_jsonl
from vapo.train.ui import UI, StopFlag

if TYPE_CHECKING:  # the trainer imports this module
    from vapo.train.trainer import Trainer

FRESH_PROBE = 50_021  # seed offset of the probe that reports value pretraining's end (not the selecting one)


def pretrain_value(trainer: Trainer, ui: UI, flag: StopFlag) -> list[dict[str, Any]]:
    """Train the critic on Monte-Carlo returns (λ = 1) of the frozen warm-start policy until its
    error against Monte-Carlo values stops improving (docs/training.md, the critic).

    The policy is frozen, so one probe (:meth:`Trainer.draw_probe`) serves every check, and a check
    costs one critic forward over the probe's answers. Each round collects one batch and makes
    ``pretrain_epochs`` passes of ``pretrain_minibatch_size``-answer critic steps over it; then
    the probe is checked. Stop: ``pretrain_patience`` rounds in a row without a new best
    RMSE against V̂ (better by ``pretrain_tol``, relative), after at least ``pretrain_min_steps``
    rounds, or at the cap ``pretrain_steps``. The critic of the best round is kept, with the
    optimizer state (Adam moments, schedule) it had then. The last record holds
    ``critic_quality``: the kept critic's figures with 95% CIs on a *fresh* probe (other prompts,
    answers and continuations; the probe that chose the round would flatter it), and under
    ``selection_probe`` its figures on the selecting probe.
    """
    cc = trainer.cfg.algo.critic
    history: list[dict[str, Any]] = []
    if not trainer.uses_critic or cc.pretrain_steps == 0:
        return history
    task_id = ui.add_task("value pretraining: MC probe", total=cc.pretrain_steps)
    t0 = time.perf_counter()
    probe = trainer.draw_probe()
    probe_seconds = time.perf_counter() - t0

    def log(rec: dict[str, Any]) -> None:
        history.append(rec)
        if trainer.dist.is_writer:
            append_jsonl(trainer.run_dir / "events.jsonl", rec)

    q = trainer.probe_critic(probe)
    log({"phase": "value_pretrain", "step": 0, "gradient_steps": 0, "probe_seconds": probe_seconds, **q})

    def snapshot() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:  # weights with their Adam moments
        return (copy.deepcopy(trainer.critic.state_dict()), copy.deepcopy(trainer.critic_opt.state_dict()),
                copy.deepcopy(trainer.critic_sched.state_dict()))

    best, best_state, best_round, since_best, grad_steps = q["rmse_vs_mc"], snapshot(), 0, 0, 0
    for step in range(1, cc.pretrain_steps + 1):
        if flag.requested:
            break
        t0 = time.perf_counter()
        exp, _ = trainer.collect()
        exp, _ = trainer.annotate(exp)  # values of the current critic (value clip reference), loss mask
        # Targets: Monte-Carlo returns (λ = 1 GAE returns of the token rewards).
        _, exp.returns = masked_gae(exp.token_rewards, exp.values, exp.response_mask, gamma=trainer.cfg.algo.advantage.gamma, lam=1.0)
        ev_batch = float(explained_variance(exp.values, exp.returns, exp.response_mask))
        if trainer.cfg.algo.mc_values.pretrain_targets:  # Monte-Carlo values at points of each answer instead
            _pretrain_mc_targets(trainer, exp, step)
        st = trainer.update_critic(exp, epochs=cc.pretrain_epochs, minibatch_size=cc.pretrain_minibatch_size)
        grad_steps += cc.pretrain_epochs * math.ceil(len(exp) / cc.pretrain_minibatch_size)
        q = trainer.probe_critic(probe)
        log({"phase": "value_pretrain", "step": step, "gradient_steps": grad_steps, "explained_variance": ev_batch,
             "value_loss": st["value_loss"], "seconds": time.perf_counter() - t0, **q})
        ui.update(task_id, advance=1, info=f"EV {q['ev']:+.3f} of {q['achievable_ev']:+.3f}  RMSE {q['rmse_vs_mc']:.3f}")
        if q["rmse_vs_mc"] < (1.0 - cc.pretrain_tol) * best:
            best, best_state, best_round, since_best = q["rmse_vs_mc"], snapshot(), step, 0
        else:
            since_best += 1
        if step >= cc.pretrain_min_steps and since_best >= cc.pretrain_patience:
            break
    # The kept critic goes on with the optimizer state it had then: Adam's moments belong to its weights.
    trainer.critic.load_state_dict(best_state[0])
    trainer.critic_opt.load_state_dict(best_state[1])
    trainer.critic_sched.load_state_dict(best_state[2])
    rounds = len(history) - 1
    selection = trainer.probe_critic(probe)  # the probe that chose the kept round: optimistic
    t0 = time.perf_counter()
    fresh = trainer.draw_probe(seed_offset=FRESH_PROBE)  # new answers and continuations: the figures reported
    probe_seconds += time.perf_counter() - t0
    final = trainer.probe_critic(fresh, n_boot=1000)
    n_steps = next(r["gradient_steps"] for r in history if r["step"] == best_round)
    exact = {"value": n_steps, "lo": n_steps, "hi": n_steps}  # a count, known exactly
    final.update(pretrain_steps=exact, pretrain_rounds=rounds, kept_round=best_round, probe_seconds=probe_seconds,
                 selection_probe={k: selection[k] for k in ("ev", "achievable_ev", "ev_vs_mc", "rmse_vs_mc")},
                 probe="a fresh probe (answers and continuations not used to choose the kept round)",
                 ci="95% percentile bootstrap over probe answers (scipy.stats.bootstrap, 1000 resamples)")
    log({"phase": "value_pretrain_end", "critic_quality": final})
    ui.update(task_id, total=max(rounds, 1), completed=max(rounds, 1))
    return history


def _pretrain_mc_targets(trainer: Trainer, exp: Experience, round_: int) -> None:
    """Value pretraining round ``round_`` (1, 2, ...) with ``algo.mc_values.pretrain_targets``:
    ``exp.returns`` become the Monte-Carlo targets (vapo.algos.pathways.mc_value_targets), drawn
    with a generator seeded by the round; the draw's cost goes to events.jsonl."""
    mc = trainer.draw_mc(exp, 500_000 + round_)
    exp.returns = mc.targets(exp.token_rewards, exp.response_mask)
    if trainer.dist.is_writer:
        append_jsonl(trainer.run_dir / "events.jsonl", {"phase": "value_pretrain_mc", "round": round_,
                                                     **mc.metrics(), "time": time.time()})


__all__ = ["FRESH_PROBE", "pretrain_value"]
