"""Numerical faults: NaN/Inf found with the right statistics (checked against a plain loop), a
skipped update leaves the weights and Adam moments untouched, N consecutive skips stop the run."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vapo.errors import VapoError
from vapo.train.faults import (
    BadUpdateGuard,
    DivergenceError,
    find_nonfinite,
    grad_nonfinite,
    tensor_nonfinite,
)

VALUES = st.one_of(st.floats(-1e6, 1e6), st.just(math.nan), st.just(math.inf), st.just(-math.inf))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(VALUES, min_size=3, max_size=3), min_size=1, max_size=6), st.data())
def test_statistics_match_a_plain_loop(rows, data):
    t = torch.tensor(rows, dtype=torch.float32)
    mask = torch.tensor(data.draw(st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=len(rows),
                                           max_size=len(rows))))
    vals = [float(t[i, j]) for i in range(t.shape[0]) for j in range(3) if mask[i, j]]
    got = tensor_nonfinite("x", t, mask)
    if all(math.isfinite(v) for v in vals):
        assert got is None
        return
    fin = [v for v in vals if math.isfinite(v)]
    assert got.numel == len(vals)
    assert got.nan == sum(math.isnan(v) for v in vals)
    assert got.posinf == sum(v == math.inf for v in vals) and got.neginf == sum(v == -math.inf for v in vals)
    assert got.finite_min == (min(fin) if fin else None) and got.finite_max == (max(fin) if fin else None)


def test_masked_padding_does_not_count_and_names_are_kept():
    adv = torch.tensor([[1.0, 2.0, math.nan], [3.0, math.inf, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    bad = find_nonfinite(loss=torch.tensor(0.5), advantages=(adv, mask), values=None)
    assert [b.name for b in bad] == ["advantages"]
    assert (bad[0].nan, bad[0].posinf, bad[0].finite_min, bad[0].finite_max) == (0, 1, 0.0, 3.0)
    assert "advantages: 0 NaN, 1 +Inf, 0 -Inf of 5 (finite range [0, 3])" == bad[0].describe()


def test_skipped_update_leaves_weights_and_adam_state_untouched():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    before = ({k: v.clone() for k, v in model.state_dict().items()}, {k: v["exp_avg"].clone() for k, v in opt.state.items()})
    opt.zero_grad()
    x = torch.randn(3, 4)
    x[0, 0] = math.nan
    loss = model(x).sum()
    loss.backward()
    guard = BadUpdateGuard(max_bad=3)
    bad = find_nonfinite(loss=loss) + grad_nonfinite(model.named_parameters(), "actor")
    assert [b.name.split(" ")[0] for b in bad] == ["loss", "actor.grad"] and "first weight" in bad[1].name
    if guard.record(bad, where="actor update", iteration=5):
        opt.zero_grad(set_to_none=True)
    else:  # pragma: no cover - the check above must skip
        opt.step()
    assert all(torch.equal(v, before[0][k]) for k, v in model.state_dict().items())
    assert all(torch.equal(v["exp_avg"], before[1][k]) for k, v in opt.state.items())
    assert guard.last[0]["where"] == "actor update" and guard.last[0]["iteration"] == 5


def test_n_consecutive_skips_raise_a_clear_project_error_and_a_good_update_resets():
    guard = BadUpdateGuard(max_bad=3)
    bad = find_nonfinite(values=torch.tensor([1.0, math.nan]))
    assert guard.record(bad, where="critic update", iteration=1)
    assert guard.record(bad, where="critic update", iteration=2)
    assert not guard.record([], where="critic update", iteration=3)  # resets
    assert guard.record(bad, where="critic update", iteration=4)
    assert guard.record(bad, where="critic update", iteration=5)
    with pytest.raises(DivergenceError, match=r"3 consecutive updates skipped.*iteration 6 \(critic update\): values: 1 NaN") as e:
        guard.record(bad, where="critic update", iteration=6)
    assert isinstance(e.value, VapoError) and "train.max_bad_updates" in str(e.value)
    assert guard.skipped_total == 5
    with pytest.raises(ValueError):
        BadUpdateGuard(0)


def test_score_batch_guards_every_verifier_call_with_the_configured_timeout():
    """The one scoring path of training, evaluation and diagnostics: faults score 0 and are counted
    for the iteration's metrics line; the timeout comes from task.verify_timeout."""
    import time as _time

    from vapo.config import resolve_config
    from vapo.tasks import Problem, Reward
    from vapo.train.collect import RewardSettings, fault_counts, score_batch

    class Flaky:
        name = "flaky"

        def score(self, problem, text):
            if text == "raise":
                raise RuntimeError("boom")
            if text == "hang":
                _time.sleep(5)
            if text == "none":
                return None
            return Reward(1.0, True, text, "ok")

    cfg = resolve_config("grpo", overrides=["task.verify_timeout=0.05"])
    settings = RewardSettings.from_config(cfg)
    assert settings.verify_timeout == 0.05
    p = Problem(prompt="q", solution="a", answer="a", size=1, split="train")
    texts = ["ok", "raise", "hang", "none", "ok"]
    t0 = _time.perf_counter()
    scores, correct, fault = score_batch(Flaky(), [p] * 5, texts, torch.tensor([2, 2, 2, 2, 2]), settings)
    assert _time.perf_counter() - t0 < 2.0  # the hang was cut at 0.05 s
    assert scores.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0] and correct.tolist() == [True, False, False, False, True]
    assert fault.tolist() == [0, 1, 2, 3, 0]  # per row: none, exception, timeout, bad_return, none
    m = fault_counts(fault)
    assert m == {"reward_faults": 3, "reward_faults_exception": 1, "reward_faults_timeout": 1,
                 "reward_faults_bad_return": 1, "reward_faults_not_a_number": 0, "reward_faults_non_finite": 0}


def test_an_iterations_fault_counts_cover_every_scored_row_dropped_groups_included():
    """The trainer counts the verifier faults of the rows it scored (returned with the rows, no
    process-wide counter): with dynamic sampling, a group dropped for zero signal still counts."""
    from types import SimpleNamespace

    from vapo.config import resolve_config
    from vapo.train.batch import Experience
    from vapo.train.trainer import Trainer

    G = 2

    def exp(scores, fault):
        B = len(scores)
        return Experience(prompt_ids=torch.ones(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
                          response_ids=torch.ones(B, 3, dtype=torch.long), response_mask=torch.ones(B, 3),
                          lengths=torch.full((B,), 3), truncated=torch.zeros(B, dtype=torch.bool),
                          scores=torch.tensor(scores), correct=torch.tensor(scores) > 0, sizes=torch.ones(B, dtype=torch.long),
                          group_index=torch.arange(B // G).repeat_interleave(G), reward_fault=torch.tensor(fault))

    # round 1: group 0 all zero (a timeout and an exception: dropped), group 1 mixed (kept);
    # round 2: one more mixed group fills the share of 2 groups
    rounds = [exp([0.0, 0.0, 1.0, 0.0], [2, 1, 0, 3]), exp([1.0, 0.0, 0.0, 0.0], [0, 0, 0, 0])]
    for ds in (True, False):
        cfg = resolve_config("dapo" if ds else "grpo", overrides=[f"rollout.group_size={G}", "rollout.prompts_per_iter=2"])
        it = iter(rounds)
        fake = SimpleNamespace(cfg=cfg, tokenizer=SimpleNamespace(pad_token_id=0), n_streams=1, streams={0: None},
                               dist=SimpleNamespace(gather=lambda x: [x]), sample_and_score=lambda n, k, it=it: next(it))
        fake._collect_stream = lambda target, k, f=fake: Trainer._collect_stream(f, target, k)
        batch, info = Trainer.collect(fake)
        if ds:
            assert len(batch) == 4 and info["gen_rounds"] == 2
            assert info["reward_faults"] == 3 and info["reward_faults_timeout"] == 1
            assert info["reward_faults_exception"] == 1 and info["reward_faults_bad_return"] == 1
        else:
            assert info["gen_rounds"] == 1 and info["reward_faults"] == 3  # the one batch, as scored
