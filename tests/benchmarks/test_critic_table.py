"""benchmarks/critic_table.py: the fresh-probe critic quality per variant and seed, read from run
directories or from the compressed events that `vapo compare` commits, checked on hand-written events."""

import gzip
import json

import pytest


def _end(ev, ach, mc):
    return {"phase": "value_pretrain_end", "critic_quality": {
        "ev": {"value": ev, "lo": ev - 0.1, "hi": ev + 0.1}, "achievable_ev": {"value": ach}, "ev_vs_mc": {"value": mc},
        "rmse_vs_mc": {"value": 0.2}, "by_position": {"0": {"rmse_vs_mc": 0.1}, "0.5": {"rmse_vs_mc": 0.3}},
        "pretrain_rounds": 9, "kept_round": 4, "n_answers": 32}}


def test_reads_run_dirs_and_committed_events_and_summarises(tmp_path, capsys, load_script):
    ct = load_script("critic_table")
    (tmp_path / "a-s0").mkdir()
    (tmp_path / "a-s0" / "events.jsonl").write_text(json.dumps({"phase": "value_pretrain", "step": 1}) + "\n"
                                                   + json.dumps(_end(0.15, 0.30, 0.6)) + "\n")
    (tmp_path / "metrics").mkdir()
    with gzip.open(tmp_path / "metrics" / "a-s1.events.jsonl.gz", "wt") as f:
        f.write(json.dumps(_end(0.03, 0.30, 0.1)) + "\n")
    with gzip.open(tmp_path / "metrics" / "grpo-s0.events.jsonl.gz", "wt") as f:  # no critic: no row
        f.write(json.dumps({"phase": "warm_start"}) + "\n")
    rows = ct.critic_rows(tmp_path)
    assert [(r["variant"], r["seed"]) for r in rows] == [("a", 0), ("a", 1)]
    assert rows[0]["share"] == pytest.approx(0.5) and rows[1]["share"] == pytest.approx(0.1)
    assert ct.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| a | 0 | 0.150 [0.050, 0.250] | 0.300 | 50% | +0.60 | 0.200 | 0.100 | 0.300 | 4 / 9 |" in out
    assert "| a | 2 | 30% [10%, 50%] | 1 of 2 | +0.35 [+0.10, +0.60] |" in out
    assert ct.main([str(tmp_path / "nothing")]) == 2
