"""What the fused critic step saves: one critic forward per iteration, and only with one optimizer
step per rollout (optim.minibatches 1 × ppo_epochs 1, where the critic's one update would recompute
exactly the values the advantages used).

The trainer then keeps the graphs of the critic forward that computes the advantages' values and
backpropagates the critic's single step through them (vapo.train.trainer.Trainer.forward_passes).
This measures, on the same rollouts and the same critic state, the critic's share of an iteration
both ways: (a) fused: one forward with graphs kept, then the update through them; (b) unfused: a
no-grad forward for the values, then the update with its own forward. Each way runs ``--repeats``
times, alternating, from a copy of the same critic and optimizer state, in one thread. CPU seconds
(time.process_time) are reported beside wall seconds, so a busy machine inflates neither ratio.
The rollout and actor update of the same iteration are timed once each for scale.

    python benchmarks/bench_fused_critic.py --out benchmarks/results/bench_fused_critic.json

Default config: the built-in default run (rewrite_sum, micro model, 32 × 8 answers) with
optim.minibatches 1; ``--set`` overrides any field (e.g. the long regime's config with --config).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="a config file (default: the built-in defaults)")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="override a field (repeatable)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=None, help="write the JSON here")
    args = ap.parse_args(argv)

    import torch

    from vapo.config import resolve_config
    from vapo.models.forward import response_values
    from vapo.train.trainer import Trainer
    from vapo.train.ui import quiet_ui

    torch.set_num_threads(1)
    cfg = resolve_config("vapo", args.config, ["optim.minibatches=1", "optim.ppo_epochs=1", "train.threads=1", *args.set_])
    load = os.getloadavg()
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_fused_critic_{os.getpid()}"
    t = Trainer(cfg, tmp, progress=False)
    print("warm start (cached after the first call) ...", flush=True)
    t.build(quiet_ui())
    exp, rollout_w, rollout_c = _timed(lambda: t.collect()[0])
    n_tokens = int(exp.response_mask.sum())
    exp, _ = t.forward_passes(exp)
    exp = t.advantages(exp)  # returns and loss mask (λ_critic 1: Monte-Carlo returns, whatever the values)
    critic0, opt0 = copy.deepcopy(t.critic.state_dict()), copy.deepcopy(t.critic_opt.state_dict())

    def reset():
        t.critic.load_state_dict(critic0)
        t.critic_opt.load_state_dict(opt0)

    def fused():
        t.critic.train()
        with torch.enable_grad():
            exp.values, graphs = t._forward(response_values, t.critic, exp, keep_graphs=True)
        return t.update_critic(exp, graphs, epochs=1)

    def unfused():
        t.critic.eval()
        exp.values, _ = t._forward(response_values, t.critic, exp)
        return t.update_critic(exp, None, epochs=1)

    rows = {"fused": [], "unfused": []}
    losses = {"fused": [], "unfused": []}
    for r in range(args.repeats):
        for name, fn in (("fused", fused), ("unfused", unfused)) if r % 2 == 0 else (("unfused", unfused), ("fused", fused)):
            reset()
            st, w, c = _timed(fn)
            rows[name].append({"wall_s": w, "cpu_s": c})
            losses[name].append(st["value_loss"])
        print(f"repeat {r + 1}/{args.repeats}: fused {rows['fused'][-1]['cpu_s']:.3f} CPU s, "
              f"unfused {rows['unfused'][-1]['cpu_s']:.3f} CPU s", flush=True)
    reset()
    _, actor_w, actor_c = _timed(lambda: t.update_actor(exp))

    med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall_s", "cpu_s")} for k, v in rows.items()}
    saved_c = med["unfused"]["cpu_s"] - med["fused"]["cpu_s"]
    iteration_c = rollout_c + med["unfused"]["cpu_s"] + actor_c
    res = {
        "what": "the critic's forward + one update step per iteration, fused (graphs kept from the values' forward) "
                "vs unfused (a no-grad forward for the values, then the update's own forward); same rollout, same "
                "critic and optimizer state, one thread",
        "config": {"task": cfg.task.name, "model": cfg.model.size, "answers": len(exp), "response_tokens": n_tokens,
                   "overrides": args.set_, "config_file": args.config},
        "repeats": args.repeats,
        "median": med,
        "runs": rows,
        # the same loss both ways up to float32 rounding (train- vs eval-mode forward of the same weights)
        "value_loss_max_rel_diff": max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(losses["fused"], losses["unfused"], strict=True)),
        "scale_cpu_s": {"rollout": rollout_c, "actor_update": actor_c},
        "ratio_unfused_over_fused_cpu": med["unfused"]["cpu_s"] / med["fused"]["cpu_s"],
        "saved_cpu_s_per_iteration": saved_c,
        "saved_share_of_an_unfused_iteration": saved_c / iteration_c,
        "load_average_1min": {"start": load[0], "end": os.getloadavg()[0]},
        "threads": 1,
        "torch": torch.__version__,
    }
    print(json.dumps({k: res[k] for k in ("median", "ratio_unfused_over_fused_cpu", "saved_cpu_s_per_iteration",
                                          "saved_share_of_an_unfused_iteration", "value_loss_max_rel_diff", "load_average_1min")},
                     indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
