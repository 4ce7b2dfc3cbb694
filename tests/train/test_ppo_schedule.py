"""PPO as the papers run it: several optimizer steps per rollout (optim.minibatches × ppo_epochs),
old log-probs of the policy that sampled (the sampler's own, or recomputed), clip-higher."""

import copy
import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.algos.losses import get_policy_loss
from vapo.config import resolve_config
from vapo.errors import ConfigError
from vapo.models import build_char_tokenizer, build_policy, response_logprobs
from vapo.tasks import get_task, sample_problems
from vapo.train.collect import RewardSettings, rollout_and_score

# Sampler (KV-cached, one token at a time) vs a teacher-forced forward over the whole sequence:
# the same float32 arithmetic in a different order. Measured max |difference| on the micro model:
# ~1e-6 nats; the bound leaves room for other BLAS kernels.
LOGPROB_ATOL = 1e-4


@pytest.fixture(scope="module")
def lm():
    tok = build_char_tokenizer()
    return build_policy("micro", tok, seed=5).eval(), tok, get_task("rewrite_sum")


# -------------------------------------------------------------------------------- config refusals
def test_a_schedule_that_does_not_divide_the_rollout_is_refused():
    with pytest.raises(ConfigError) as e:
        resolve_config("vapo", overrides=["optim.minibatches=3"])  # 32 prompts × 8 answers = 256
    assert "optim.minibatches=3" in e.value.what and "256" in e.value.what
    assert "divisor of 256" in e.value.fix and "e.g. 2 or 4" in e.value.fix
    cfg = resolve_config("vapo", overrides=["optim.minibatches=3", "rollout.prompts_per_iter=6"])  # 48 = 3 × 16
    assert cfg.optim.minibatches == 3


def test_the_cli_refuses_the_schedule_before_creating_a_run_directory(tmp_path):
    runs = tmp_path / "runs"
    res = subprocess.run([sys.executable, "-c", "from vapo.cli import main; main()", "train", "--set", "optim.minibatches=7",
                          "--set", f"train.runs_dir={runs}"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "optim.minibatches" in res.stderr and "Traceback" not in res.stderr
    assert not runs.exists()


def test_sampler_log_probs_are_refused_where_they_are_not_the_policys():
    with pytest.raises(ConfigError, match="optim.old_logprobs=sampler") as e:
        resolve_config("vapo", overrides=["rollout.temperature=0.7", "optim.minibatches=2"])
    assert "optim.old_logprobs=recompute" in e.value.fix
    cfg = resolve_config("vapo", overrides=["rollout.temperature=0.7", "optim.old_logprobs=recompute"])
    assert cfg.optim.old_logprobs == "recompute"


# -------------------------------------------------------------------------------- old log-probs
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 5), g=st.integers(1, 4), l_max=st.integers(1, 40))
def test_sampler_log_probs_match_a_recomputation(lm, seed, n, g, l_max):
    """The rollout's old log-probs (KV-cached decoding) equal a teacher-forced forward pass of the
    same policy at temperature 1, to float32 rounding (LOGPROB_ATOL)."""
    policy, tok, task = lm
    problems = sample_problems(task, random.Random(seed), n, "train")
    s = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=l_max)
    exp = rollout_and_score(policy, tok, task, problems, s, generator=torch.Generator().manual_seed(seed), group_size=g)
    assert exp.old_logprobs is not None and exp.old_logprobs.shape == exp.response_ids.shape
    with torch.no_grad():
        ref, _ = response_logprobs(policy, exp.prompt_ids, exp.prompt_mask, exp.response_ids, exp.response_mask)
    m = exp.response_mask.bool()
    assert (exp.old_logprobs[~m] == 0).all()
    assert (exp.old_logprobs[m] < 0).all()  # real log-probs, not placeholders
    torch.testing.assert_close(exp.old_logprobs[m], ref[m], rtol=0, atol=LOGPROB_ATOL)


@pytest.mark.parametrize("mode", ["sampler", "recompute"])
def test_forward_passes_take_old_log_probs_as_configured(tmp_path, lm, mode):
    from vapo.train.trainer import Trainer

    policy, tok, _ = lm
    cfg = resolve_config("grpo", overrides=["rollout.prompts_per_iter=4", "rollout.group_size=2", "rollout.max_new_tokens=24",
                                            "optim.minibatches=2", f"optim.old_logprobs={mode}", "train.threads=1"])
    t = Trainer(cfg, tmp_path)
    t.policy, t.ref_policy, t.tokenizer = policy, policy, tok
    exp = t.sample_and_score(4)
    sampled = exp.old_logprobs
    exp, _ = t.forward_passes(exp)
    m = exp.response_mask.bool()
    if mode == "sampler":
        assert exp.old_logprobs is sampled  # reused as they are: no forward pass
    else:
        assert exp.old_logprobs is not sampled  # recomputed ...
        torch.testing.assert_close(exp.old_logprobs[m], sampled[m], rtol=0, atol=LOGPROB_ATOL)  # ... to the same values


def test_prefixed_rollouts_have_no_sampler_log_probs(lm):
    """Prefix tokens were not sampled by this call: no old log-probs are claimed for them."""
    policy, tok, task = lm
    problems = sample_problems(task, random.Random(0), 2, "train")
    s = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=12)
    exp = rollout_and_score(policy, tok, task, problems, s, generator=torch.Generator().manual_seed(0),
                            prefixes=[torch.tensor([5, 6]), torch.tensor([7])])
    assert exp.old_logprobs is None


# -------------------------------------------------------------------------------- clip-higher
def test_clip_higher_changes_which_tokens_are_clipped(lm):
    """Same batch, eps_high 0.2 vs 0.28: the positive-advantage tokens whose gradient is cut are
    exactly those with ratio > 1 + eps_high, so the two sets differ by the tokens with ratio in
    (1.2, 1.28], and clipfrac_high drops by their share."""
    policy, tok, task = lm
    problems = sample_problems(task, random.Random(1), 8, "train")
    s = RewardSettings(temperature=1.0, top_p=1.0, max_new_tokens=24)
    exp = rollout_and_score(policy, tok, task, problems, s, generator=torch.Generator().manual_seed(1), group_size=4)
    moved = copy.deepcopy(policy)
    with torch.no_grad():  # a policy a few optimizer steps away from the sampler's
        g = torch.Generator().manual_seed(2)
        for p in moved.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        new, _ = response_logprobs(moved, exp.prompt_ids, exp.prompt_mask, exp.response_ids, exp.response_mask)
    mask = exp.response_mask
    adv = torch.where(torch.arange(len(exp))[:, None] % 2 == 0, 1.0, -1.0).expand_as(mask) * mask
    ratio = (new - exp.old_logprobs).exp()
    pos = mask.bool() & (adv > 0)
    loss_fn = get_policy_loss("ppo_clip")
    cut, clipfrac = {}, {}
    for eps_high in (0.2, 0.28):
        logp = new.clone().requires_grad_(True)
        loss, st_ = loss_fn(logp, exp.old_logprobs, adv, mask, eps_low=0.2, eps_high=eps_high)
        loss.backward()
        cut[eps_high] = pos & (logp.grad == 0)
        clipfrac[eps_high] = float(st_["clipfrac_high"])
        assert torch.equal(cut[eps_high], pos & (ratio > 1 + eps_high))  # the prediction from the ratios
    between = pos & (ratio > 1.2) & (ratio <= 1.28)
    assert between.sum() >= 3, "the perturbation must put some ratios between the two clip points"
    assert torch.equal(cut[0.2] & ~cut[0.28], between) and not (cut[0.28] & ~cut[0.2]).any()
    assert clipfrac[0.2] - clipfrac[0.28] == pytest.approx(float(between.sum() / mask.sum()), abs=1e-6)


# -------------------------------------------------------------------------------- the split
@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 16))
def test_minibatches_partition_the_rollout(tmp_path_factory, n, k):
    """k shuffled parts of one rollout; for a short rollout (dynamic sampling hit max_rounds) the
    number of steps stays k and the parts differ by at most one answer (n < k: n steps of one)."""
    from vapo.train.trainer import Trainer

    cfg = resolve_config("grpo", overrides=[f"optim.minibatches={k}", f"rollout.prompts_per_iter={k}", "rollout.group_size=1"])
    t = Trainer(cfg, tmp_path_factory.mktemp("t"))
    parts = t._minibatches(n, t.shuffle_gen)
    assert len(parts) == min(n, k)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(torch.cat(parts).tolist()) == list(range(n))
