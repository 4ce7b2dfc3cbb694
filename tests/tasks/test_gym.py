"""reasoning-gym tasks by name (rg:<name>): splits, the dataset's own scorer, and clear errors."""

from __future__ import annotations

import random

import pytest

from vapo.errors import ConfigError

pytest.importorskip("reasoning_gym", reason="the gym extra (reasoning-gym) is not installed")

from vapo.tasks.gym import GymTask, dataset_names, make_gym_task  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    """Generated problems are cached under VAPO_CACHE_DIR: never the user's cache in tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("VAPO_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def arith():
    return make_gym_task("rg:basic_arithmetic", size=60, heldout_size=30, size_key="num_terms",
                         long_config={"min_terms": 7, "max_terms": 8}, long_size=10)


def test_splits_are_disjoint_and_long_is_longer(arith):
    train = {p.prompt for p in arith.rows["train"]}
    held = {p.prompt for p in arith.rows["heldout"]}
    assert len(train) == 60 and held and not train & held
    assert arith.splits["long"] == (7, 8) and arith.splits["train"][1] <= 6
    assert arith.name == "rg:basic_arithmetic" and "basic_arithmetic" in arith.describe()
    p = arith.sample(random.Random(0), "long")
    assert p.split == "long" and p.prompt.endswith("#### '.")


def test_scores_with_the_datasets_own_scorer(arith):
    p = arith.rows["heldout"][0]
    assert arith.score(p, f"let me think\n#### {p.answer}").correct
    assert arith.score(p, p.solution).score == 1.0
    wrong = arith.score(p, f"#### {int(p.answer) + 1}")
    assert wrong.score == 0.0 and wrong.reason == "wrong_answer"
    assert arith.score(p, p.answer).reason == "no_marker"  # the answer must follow the marker
    assert arith.score(p, None).reason == "not_text"


def test_partial_credit_is_not_correct():
    t = make_gym_task("rg:word_sorting", size=20, heldout_size=10)
    p = t.rows["train"][0]
    full = t.score(p, f"#### {p.answer}")
    assert full.correct and full.score == 1.0
    r = t.score(p, "#### " + ", ".join(reversed(p.answer.split(", "))))
    assert not r.correct and r.score < 1.0


def test_long_falls_back_to_heldout_when_not_configured():
    t = make_gym_task("rg:basic_arithmetic", size=20, heldout_size=10)
    assert t.fallback == {"long": "heldout"} and "long falls back to heldout" in t.describe()


def test_errors():
    with pytest.raises(ConfigError, match='Did you mean "basic_arithmetic"'):
        make_gym_task("rg:basic_arithmetc")
    with pytest.raises(ConfigError, match="rg:<dataset>"):
        make_gym_task("rg:")
    with pytest.raises(ConfigError, match="needs a dataset name"):
        GymTask()
    with pytest.raises(ConfigError, match="could not build"):
        make_gym_task("rg:basic_arithmetic", config={"no_such_option": 1})
    with pytest.raises(ConfigError, match="metadata field 'nope'"):
        make_gym_task("rg:basic_arithmetic", size=5, heldout_size=5, size_key="nope")
    with pytest.raises(ConfigError, match="size must be a positive integer"):
        make_gym_task("rg:basic_arithmetic", size=0)
    assert "basic_arithmetic" in dataset_names()


def test_missing_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ConfigError, match="pip install 'vapo\\[gym\\]'"):
        make_gym_task("rg:basic_arithmetic")


def test_a_slow_build_says_so_and_is_cached(monkeypatch, tmp_path, capsys):
    import vapo.tasks.gym as gym

    monkeypatch.setenv("VAPO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(gym, "CACHE_AFTER_S", 0.0)  # every build counts as slow
    first = make_gym_task("rg:basic_arithmetic", size=20, heldout_size=10, seed=3)
    err = capsys.readouterr().err
    assert "[vapo] building reasoning-gym task rg:basic_arithmetic" in err and "cached in" in err
    assert len(list((tmp_path / "gym").glob("basic_arithmetic-*.pkl"))) == 1
    again = make_gym_task("rg:basic_arithmetic", size=20, heldout_size=10, seed=3)
    assert "loaded from the cache" in capsys.readouterr().err
    assert [p.prompt for p in again.rows["train"]] == [p.prompt for p in first.rows["train"]]
    p = again.rows["heldout"][0]
    assert again.score(p, p.solution).correct  # the scorer is rebuilt, not cached
    other = make_gym_task("rg:basic_arithmetic", size=20, heldout_size=10, seed=4)  # another seed: its own entry
    assert "loaded from the cache" not in capsys.readouterr().err
    assert [p.prompt for p in other.rows["train"]] != [p.prompt for p in first.rows["train"]]
