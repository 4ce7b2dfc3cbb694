"""benchmarks/bench_gpu.py: the CPU code path (--device cpu --tiny) and the refusal without CUDA."""

import json

import pytest
import torch


def test_tiny_cpu_run_writes_consistent_results(tmp_path, load_script):
    out = tmp_path / "r.json"
    rc = load_script("bench_gpu").main(["--device", "cpu", "--tiny", "--repeats", "1", "--train-steps", "1", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    eng = r["rollout"]["engines"]
    for name in ("vapo.rollout.sample(fast)", "transformers.generate"):
        assert eng[name]["tokens"] == 4 * 16  # fixed length: batch x new tokens
        assert eng[name]["tokens_per_s"] == pytest.approx(eng[name]["tokens"] / eng[name]["seconds"], rel=1e-2)
        assert eng[name]["peak_mem_gib"] is None  # no CUDA memory statistics on CPU
    ratio = eng["vapo.rollout.sample(fast)"]["tokens_per_s"] / eng["transformers.generate"]["tokens_per_s"]
    assert r["rollout"]["speed_ratio_vapo_over_generate"] == pytest.approx(ratio, rel=1e-2)
    # bf16 fast decoder and the generic backend agree on the greedy tokens of the toy model.
    assert r["rollout"]["greedy_fast_vs_hf"]["equal_frac"] >= 0.9
    t = r["train"]
    assert t["tokens_per_step"] == 2 * 32 and t["params"] == r["config"]["params"]
    expected_mfu = 6 * t["params"] * t["tokens_per_step"] / t["seconds"] / (t["peak_tflops_used"] * 1e12)
    assert t["mfu"] == pytest.approx(expected_mfu, rel=1e-2, abs=1e-4)
    assert t["mfu_with_attention"] >= t["mfu"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda(tmp_path, capsys, load_script):
    out = tmp_path / "r.json"
    assert load_script("bench_gpu").main(["--out", str(out)]) == 2
    assert "no CUDA device" in capsys.readouterr().err
    assert not out.exists()
