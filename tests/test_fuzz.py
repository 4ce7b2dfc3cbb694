"""Fuzzing the inputs a user types: config dicts, ``--set`` overrides and data-file lines. Every
input gives either a valid result or a project error (``vapo.errors.VapoError``), never another
exception (which the CLI would show as a traceback)."""

import json
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vapo.config import Config, describe_fields, resolve_config, validate_config
from vapo.errors import VapoError

KEYS = [k for k, _, _ in describe_fields()]
SECTIONS = sorted({k.split(".")[0] for k in KEYS} | {k.rsplit(".", 1)[0] for k in KEYS if "." in k})
LEAVES = sorted({k.rsplit(".", 1)[-1] for k in KEYS})
NAME = st.one_of(st.sampled_from(SECTIONS + LEAVES), st.text(string.ascii_letters + "._-", max_size=8))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12), st.sampled_from(["adaptive", "gae", "ppo_clip", "vapo", "k3", "token-mean", "1e-4"]))
VALUE = st.recursive(SCALAR, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(NAME, c, max_size=3)), max_leaves=8)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _nested(pairs):
    out: dict = {}
    for key, value in pairs:
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if not isinstance(nxt, dict):
                nxt = node[p] = {}
            node = nxt
        node[parts[-1]] = value
    return out


@FUZZ
@given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), NAME), VALUE), max_size=6))
def test_config_dicts_give_a_config_or_a_project_error(pairs):
    data = Config().to_dict()
    for k, v in _nested(pairs).items():
        data[k] = v if not (isinstance(v, dict) and isinstance(data.get(k), dict)) else {**data[k], **v}
    try:
        cfg = validate_config(data, "fuzz")
    except VapoError:
        return
    assert isinstance(cfg, Config)
    assert validate_config(cfg.to_dict()) == cfg  # a valid config round-trips


@FUZZ
@given(st.dictionaries(NAME, VALUE, max_size=4) | st.lists(VALUE, max_size=3) | SCALAR)
def test_top_level_shapes(data):
    try:
        validate_config(data if isinstance(data, dict) else {"x": data}, "fuzz")
    except VapoError:
        pass


OVERRIDE = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS), st.one_of(
        st.text(max_size=12), st.integers().map(str), st.floats().map(str),
        st.sampled_from(["null", "[1, 2]", "{a: 1}", "[", "]:", "true", "'x", "!!python/object:os.system ls", "1e400"]))),
    st.text(max_size=20),
)


@FUZZ
@given(st.lists(OVERRIDE, max_size=4), st.sampled_from([None, "vapo", "grpo", "dapo", "nope"]))
def test_cli_overrides_give_a_config_or_a_project_error(overrides, preset):
    try:
        cfg = resolve_config(preset, None, overrides)
    except VapoError:
        return
    assert isinstance(cfg, Config)


JSON_VALUE = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30),
                                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10)),
                          lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=5), c, max_size=3)),
                          max_leaves=6)
ROW = st.fixed_dictionaries({}, optional={
    "prompt": st.one_of(st.text(max_size=20), JSON_VALUE), "answer": st.one_of(st.text(max_size=8), st.integers(), JSON_VALUE),
    "solution": st.one_of(st.text(max_size=30), st.builds(lambda s, a: f"{s}\n#### {a}", st.text(max_size=10), st.text(max_size=5)),
                          JSON_VALUE),
    "split": st.one_of(st.sampled_from(["train", "heldout", "long", "test"]), JSON_VALUE),
    "size": st.one_of(st.integers(-3, 10**20), JSON_VALUE),
})
LINE = st.one_of(ROW.map(json.dumps), JSON_VALUE.map(json.dumps), st.text(max_size=30),
                 st.just('{"prompt": "2+2=", "answer": "4"}'))


@FUZZ
@given(st.lists(LINE, min_size=0, max_size=6), st.sampled_from([".jsonl", ".json", ".txt"]),
       st.sampled_from([{}, {"heldout_frac": 0.5}, {"heldout_frac": 2}, {"math_verify": False}, {"nope": 1}]))
def test_data_files_give_a_task_or_a_project_error(tmp_path_factory, lines, suffix, kwargs):
    import random

    from vapo.tasks import get_task

    f = tmp_path_factory.mktemp("data") / f"d{suffix}"
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        task = get_task("file", path=str(f), **kwargs)
    except VapoError:
        return
    rng = random.Random(0)
    for split in ("train", "heldout", "long"):
        p = task.sample(rng, split)
        assert task.score(p, p.solution).correct  # every accepted row's demonstration is right
