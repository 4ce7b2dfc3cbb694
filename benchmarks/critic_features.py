"""Why the critic explains little on rewrite_sum: is the slip signal there, and is it linear?

Loads a run's step-0 checkpoint (warm-start policy and the value-pretrained critic), draws the run's
value-pretraining probe again (same seed → same prompts and draws), and fits least-squares
read-outs of the MC values V̂ from simple features of each probe state, on half of the answers,
scored on the other half (vapo.train.probe.critic_quality):

- ``position``: 1, t/l, t, l, problem size (what a critic that ignores the content can know);
- ``+ policy surprise``: the above plus the number of tokens before t that the policy itself gave
  probability < 0.5, and the smallest such probability (a slip is a token the sloppy-teacher policy
  takes with low probability);
- ``critic``: the trained critic itself.

    PYTHONPATH=. python benchmarks/critic_features.py runs/<run>
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from vapo.config import load_config_file
from vapo.models import Critic, load_policy_and_tokenizer, response_logprobs
from vapo.tasks import get_task
from vapo.train.collect import RewardSettings
from vapo.train.probe import ProbeSet, critic_at, critic_quality, draw_probe


def _sub(p: ProbeSet, answers: np.ndarray) -> tuple[ProbeSet, np.ndarray]:
    k = np.isin(p.rows, answers)
    mc = type(p.mc)(**{f: getattr(p.mc, f)[k] for f in ("mean", "var_mean", "lo", "hi", "m")})
    remap = {int(a): i for i, a in enumerate(answers)}
    rows = np.array([remap[int(r)] for r in p.rows[k]])
    return ProbeSet(batch=list(answers), rows=rows, ts=p.ts[k], rel=p.rel[k], returns=p.returns[k], mc=mc), k


def main(run: Path) -> dict:
    cfg = load_config_file(run / "config.yaml")
    torch.set_num_threads(1)
    policy, tok = load_policy_and_tokenizer(run / "checkpoints/step_0/policy")
    critic = Critic.from_pretrained(run / "checkpoints/step_0/critic")
    task = get_task(cfg.task.name, **cfg.task.kwargs)
    cc = cfg.algo.critic
    probe = draw_probe(policy.eval(), tok, task, RewardSettings.from_config(cfg), answers=cc.probe_answers,
                       positions=tuple(cc.probe_positions), continuations=cc.probe_continuations, seed=cfg.seed * 100_003)
    b = probe.batch
    with torch.no_grad():
        lp, _ = response_logprobs(policy, b.prompt_ids, b.prompt_mask, b.response_ids, b.response_mask,
                                  temperature=cfg.rollout.temperature)
    prob = lp.exp().double().numpy()
    lengths, sizes = b.lengths.numpy(), b.sizes.numpy()
    feats = {"position": [], "+ policy surprise": []}
    for r, t in zip(probe.rows, probe.ts, strict=True):
        pos = [1.0, t / lengths[r], t, lengths[r], sizes[r]]
        before = prob[r, :t]
        surprise = [float((before < 0.5).sum()), float(before.min()) if t > 0 else 1.0]
        feats["position"].append(pos)
        feats["+ policy surprise"].append(pos + surprise)
    n = len(b)
    fit_a, test_a = np.arange(0, n, 2), np.arange(1, n, 2)
    p_fit, k_fit = _sub(probe, fit_a)
    p_test, k_test = _sub(probe, test_a)
    out = {}
    for name, X in feats.items():
        X = np.asarray(X)
        w, *_ = np.linalg.lstsq(X[k_fit], probe.mc.mean[k_fit], rcond=None)
        out[name] = critic_quality(X[k_test] @ w, p_test, n_boot=1000)
    out["critic"] = critic_quality(critic_at(critic, probe, max_tokens=cfg.optim.micro_batch_tokens)[k_test], p_test, n_boot=1000)
    return {name: {k: q[k] for k in ("ev", "achievable_ev", "ev_vs_mc", "rmse_vs_mc")} for name, q in out.items()}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1])), indent=1))
