"""The one data path: rollout → score, the config → algorithm adapter, the loop's callbacks,
and the settings the trainer honours or refuses."""

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.config import resolve_config
from vapo.errors import ConfigError
from vapo.models import build_char_tokenizer, build_policy
from vapo.tasks import get_task, sample_problems
from vapo.train.adapter import advantage_output, loss_mask, token_rewards
from vapo.train.batch import Experience
from vapo.train.collect import RewardSettings, rollout_and_score, score_batch

L_MAX = 24


@pytest.fixture(scope="module")
def lm():
    tok = build_char_tokenizer()
    return build_policy("micro", tok, seed=3).eval(), tok, get_task("rewrite_sum")


def _problems(task, n, seed=0):
    return sample_problems(task, random.Random(seed), n, "train")


# -------------------------------------------------------------------------------- rollout → score
def test_empty_prefixes_reproduce_the_plain_rollout(lm):
    """The MC probe's path (prompt ⊕ prefix, per-row budget) with empty prefixes is the training path."""
    policy, tok, task = lm
    s = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=L_MAX)
    probs = _problems(task, 6)
    plain = rollout_and_score(policy, tok, task, probs, s, generator=torch.Generator().manual_seed(1))
    empty = [torch.zeros(0, dtype=torch.long)] * len(probs)
    pre = rollout_and_score(policy, tok, task, probs, s, generator=torch.Generator().manual_seed(1), prefixes=empty)
    for f in ("prompt_ids", "prompt_mask", "response_ids", "response_mask", "lengths", "truncated", "scores", "correct"):
        assert torch.equal(getattr(plain, f), getattr(pre, f)), f


def test_prefixed_rollout_is_prefix_then_continuation_within_budget(lm):
    policy, tok, task = lm
    s = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=L_MAX)
    probs = _problems(task, 8, seed=2)
    first = rollout_and_score(policy, tok, task, probs, s, generator=torch.Generator().manual_seed(0))
    cuts = [int(n) // 2 for n in first.lengths]
    prefixes = [first.response_ids[i, :c] for i, c in enumerate(cuts)]
    out = rollout_and_score(policy, tok, task, probs, s, generator=torch.Generator().manual_seed(5), prefixes=prefixes)
    assert torch.equal(out.prompt_ids, first.prompt_ids)
    for i, c in enumerate(cuts):
        assert torch.equal(out.response_ids[i, :c], prefixes[i])
        assert c <= int(out.lengths[i]) <= L_MAX
    assert torch.equal(out.response_mask.sum(1).long(), out.lengths)
    from vapo.models import decode_responses

    scores, correct, _ = score_batch(task, out.problems, decode_responses(tok, out.response_ids, out.lengths), out.lengths, s)
    assert torch.equal(scores, out.scores) and torch.equal(correct, out.correct)


def test_groups_and_problems_line_up(lm):
    policy, tok, task = lm
    s = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=8)
    probs = _problems(task, 3)
    exp = rollout_and_score(policy, tok, task, probs, s, generator=torch.Generator().manual_seed(0), group_size=4, chunk=5)
    assert exp.group_index.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert [p.prompt for p in exp.problems] == [p.prompt for p in probs for _ in range(4)]
    assert exp.sizes.tolist() == [p.size for p in exp.problems]
    assert exp.scores.dtype == torch.float32 and exp.correct.dtype == torch.bool


def test_score_batch_adds_the_overlong_penalty():
    task = get_task("rewrite_sum")
    p = _problems(task, 1)[0]
    lengths = torch.tensor([10, 28, 32])
    on = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=32, overlong=True, overlong_cache_len=8)
    off = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=32)
    texts = [p.solution, "nonsense", p.solution]
    s_on, c_on, _ = score_batch(task, [p] * 3, texts, lengths, on)
    s_off, c_off, _ = score_batch(task, [p] * 3, texts, lengths, off)
    assert torch.equal(c_on, c_off) and c_off.tolist() == [True, False, True]
    # penalty ((L_max − L_cache) − l) / L_cache for l in (24, 32]: 0, −0.5, −1
    assert (s_on - s_off).tolist() == pytest.approx([0.0, -0.5, -1.0])


def test_select_and_concat_keep_problems_with_rows(lm):
    policy, tok, task = lm
    s = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=8)
    exp = rollout_and_score(policy, tok, task, _problems(task, 4), s, generator=torch.Generator().manual_seed(0), group_size=2)
    idx = torch.tensor([6, 1, 3])
    sub = exp.select(idx)
    assert [p.prompt for p in sub.problems] == [exp.problems[i].prompt for i in idx.tolist()]
    both = Experience.concat([sub, exp.select(torch.tensor([0]))], tok.pad_token_id)
    assert len(both) == 4 and len(both.problems) == 4 and both.group_index.tolist() == [3, 0, 1, 4]


# -------------------------------------------------------------------------------- trainer log-probs
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_old_logprobs_are_of_the_distribution_sampled_from(tmp_path, lm, temperature):
    """The PPO ratio's old log-probs equal the sampler's own log-probs at the rollout temperature."""
    from vapo.rollout import sample
    from vapo.train.trainer import Trainer

    policy, tok, _ = lm
    cfg = resolve_config("vapo", overrides=[f"rollout.temperature={temperature}", "rollout.prompts_per_iter=4",
                                            "rollout.group_size=2", f"rollout.max_new_tokens={L_MAX}",
                                            "optim.minibatches=4", "optim.old_logprobs=recompute", "train.threads=1", "algo.critic.enabled=false",
                                            "algo.advantage.estimator=grpo"])
    t = Trainer(cfg, tmp_path)
    t.policy, t.tokenizer = policy, tok
    state = t.sample_gen.get_state()
    prompt_rng = random.Random()
    prompt_rng.setstate(t.prompt_rng.getstate())
    exp = t.sample_and_score(4)
    assert not t.single_step
    exp, graphs = t.forward_passes(exp)
    assert graphs is None and exp.old_logprobs is not None
    ro = sample(policy, exp.prompt_ids, exp.prompt_mask, max_new_tokens=L_MAX, temperature=temperature,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                generator=torch.Generator().set_state(state))
    assert torch.equal(ro.response_ids, exp.response_ids)
    m = exp.response_mask.bool()
    torch.testing.assert_close(exp.old_logprobs[m], ro.logprobs[m], rtol=1e-4, atol=1e-4)


# -------------------------------------------------------------------------------- adapter
@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 5), t=st.integers(1, 9), kind=st.sampled_from(["k1", "k2", "k3"]), seed=st.integers(0, 10**6))
def test_in_reward_kl_uses_the_configured_estimator(b, t, kind, seed):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None] < lengths[:, None]).float()
    old, ref = -torch.rand(b, t, generator=g, dtype=torch.float64), -torch.rand(b, t, generator=g, dtype=torch.float64)
    scores = torch.rand(b, generator=g, dtype=torch.float64)
    algo = resolve_config("ppo", overrides=[f"algo.kl.estimator={kind}", "algo.kl.coef=0.1", "algo.kl.in_reward=true"]).algo
    r = token_rewards(algo, scores, mask, old, ref)
    for i in range(b):
        for j in range(t):
            d = float(old[i, j] - ref[i, j])
            kl = {"k1": d, "k2": 0.5 * d * d, "k3": math.exp(-d) + d - 1}[kind]
            want = (scores[i].item() if j == int(lengths[i]) - 1 else 0.0) - 0.1 * kl if mask[i, j] else 0.0
            assert float(r[i, j]) == pytest.approx(want, abs=1e-9)


def test_adaptive_lambda_comes_from_the_config_alpha():
    """One default: advantages use the config's α (0.5 by default), checked against a naive loop."""
    cfg = resolve_config("vapo")
    a = cfg.algo.advantage
    assert a.lam_actor == "adaptive"
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 7, 12])
    mask = (torch.arange(12)[None] < lengths[:, None]).double()
    values = torch.rand(3, 12, generator=g, dtype=torch.float64) * mask
    scores = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    rewards = token_rewards(cfg.algo, scores, mask)
    out = advantage_output(cfg.algo, rewards, mask, values=values, scores=scores, group_index=torch.arange(3))
    adv, ret = out.advantages, out.returns
    for i, n in enumerate(lengths.tolist()):
        lam = max(0.0, 1 - 1 / (a.alpha * n))
        gae = 0.0
        for j in reversed(range(n)):
            v_next = float(values[i, j + 1]) if j + 1 < n else 0.0
            delta = float(rewards[i, j]) + a.gamma * v_next - float(values[i, j])
            gae = delta + a.gamma * lam * gae
            assert float(adv[i, j]) == pytest.approx(gae, abs=1e-6)  # the estimator computes λ in float32
        assert float(ret[i, 0]) == pytest.approx(float(scores[i]), abs=1e-9)  # λ_critic = 1: MC return


def test_filter_truncated_masks_truncated_rows_for_actor_and_critic():
    algo_on = resolve_config("dapo", overrides=["algo.overlong.filter_truncated=true"]).algo
    algo_off = resolve_config("dapo", overrides=["algo.overlong.filter_truncated=false"]).algo
    mask = torch.ones(3, 4)
    trunc = torch.tensor([False, True, False])
    assert loss_mask(algo_on, mask, trunc).sum(1).tolist() == [4, 0, 4]
    assert torch.equal(loss_mask(algo_off, mask, trunc), mask)


# -------------------------------------------------------------------------------- refusals
def test_top_p_below_one_is_refused_for_training():
    with pytest.raises(ConfigError, match="rollout.top_p"):
        resolve_config("vapo", overrides=["rollout.top_p=0.9"])
    resolve_config("vapo", overrides=["eval.top_p=0.7"])  # evaluation may truncate


def test_diagnose_every_without_its_callback_is_refused_before_creating_anything(tmp_path):
    from vapo.train import start_run

    cfg = resolve_config("vapo", overrides=[f"train.runs_dir={tmp_path / 'runs'}", "diagnose_every=1"])
    with pytest.raises(ConfigError, match="diagnose_every"):
        start_run(cfg, name="x", progress=False)
    assert not (tmp_path / "runs").exists()


def test_rollout_and_score_rejects_bad_prefixes(lm):
    from vapo.errors import VapoError

    policy, tok, task = lm
    s = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=4)
    probs = _problems(task, 2)
    with pytest.raises(VapoError, match="prefixes for 2 rows"):
        rollout_and_score(policy, tok, task, probs, s, generator=torch.Generator(), prefixes=[torch.zeros(0, dtype=torch.long)])
    with pytest.raises(VapoError, match="no token of budget"):
        rollout_and_score(policy, tok, task, probs, s, generator=torch.Generator(), prefixes=[torch.ones(4, dtype=torch.long)] * 2)
    with pytest.raises(VapoError, match="no problems"):
        rollout_and_score(policy, tok, task, [], s, generator=torch.Generator())
