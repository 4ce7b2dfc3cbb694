"""Hugging Face models from a directory: tiny random Qwen2 (ChatML template, no BOS) and Llama (BOS,
no pad token) with byte-level BPE tokenizers trained on the fly. Prompt encoding, options that
travel with the weights (dtype, LoRA), the critic from another path, the sampler's engine choice,
and validate_model's errors for each bad input."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from tiny_hf import make_tiny_model

from vapo.config import resolve_config
from vapo.errors import VapoError
from vapo.models import (
    build_critic,
    encode_prompts,
    load_model,
    load_policy_and_tokenizer,
    prompt_token_ids,
    response_logprobs,
    validate_model,
)
from vapo.models.hf import is_checkpointing
from vapo.rollout import describe_engine, fast_path_unsupported_reason, sample
from vapo.tasks import get_task


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_hf")
    return {k: make_tiny_model(k, root / k) for k in ("qwen", "llama")}


def _cfg(path, *sets, preset="vapo"):
    return resolve_config(preset, None, [f"model.path={path}", "task.name=file",
                                         "task.kwargs.path=examples/data/word_problems.jsonl",
                                         "task.kwargs.fields.prompt=question", "rollout.max_new_tokens=32", *sets])


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_qwen_like_has_no_bos_and_uses_its_chat_template(tiny_dirs):
    policy, tok = load_model(_cfg(tiny_dirs["qwen"]))
    assert tok.bos_token_id is None and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    ids = prompt_token_ids(tok, "Tom has 3 apples.")
    text = tok.decode(ids)
    assert text == "<|im_start|>user\nTom has 3 apples.<|im_end|>\n<|im_start|>assistant\n"
    batch, mask = encode_prompts(tok, ["Tom has 3 apples.", "Hi"])
    assert batch[0, -len(ids):].tolist() == ids and mask[0].sum() == len(ids)
    assert batch[1, 0] == tok.pad_token_id and mask[1, 0] == 0  # left padding with the model's pad id
    assert tok.pad_token_id not in (0,) or tok.pad_token == "<|endoftext|>"


def test_llama_like_pads_with_eos_and_template_writes_bos_once(tiny_dirs):
    policy, tok = load_model(_cfg(tiny_dirs["llama"]))
    assert tok.pad_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("</s>")
    ids = prompt_token_ids(tok, "2+3=")
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids) == "<s>[user] 2+3=\n[assistant] "


def test_chat_template_off_and_system_prompt(tiny_dirs):
    _, tok = load_model(_cfg(tiny_dirs["llama"], "model.chat_template=false"))
    assert prompt_token_ids(tok, "2+3=") == [tok.bos_token_id] + tok.encode("2+3=", add_special_tokens=False)
    _, tok = load_model(_cfg(tiny_dirs["qwen"], "model.chat_template=false"))
    assert prompt_token_ids(tok, "2+3=") == tok.encode("2+3=", add_special_tokens=False)  # no BOS at all
    _, tok = load_model(_cfg(tiny_dirs["qwen"], "model.system_prompt=Be brief."))
    assert tok.decode(prompt_token_ids(tok, "Q")).startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ")
    with pytest.raises(VapoError, match="system_prompt is set but no chat template"):
        load_model(_cfg(tiny_dirs["qwen"], "model.system_prompt=x", "model.chat_template=false"))


def test_prompt_format_travels_with_the_saved_tokenizer(tiny_dirs, tmp_path):
    policy, tok = load_model(_cfg(tiny_dirs["qwen"], "model.system_prompt=Be brief."))
    policy.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, tok2 = load_policy_and_tokenizer(tmp_path)
    assert prompt_token_ids(tok2, "Q") == prompt_token_ids(tok, "Q")


@pytest.mark.parametrize("kind", ["qwen", "llama"])
def test_sampler_logprobs_match_teacher_forcing(tiny_dirs, kind):
    """Sampling with either engine records log-probs that the training forward recomputes."""
    policy, tok = load_model(_cfg(tiny_dirs[kind]))
    assert fast_path_unsupported_reason(policy) is None and describe_engine(policy).startswith("fast")
    ids, mask = encode_prompts(tok, ["Tom has 3 apples.", "A baker sells 12 cakes each day"])
    for backend in ("fast", "hf"):
        ro = sample(policy, ids, mask, max_new_tokens=12, temperature=1.0, top_p=1.0, eos_token_id=tok.eos_token_id,
                    pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0), backend=backend)
        with torch.no_grad():
            lp, _ = response_logprobs(policy, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        assert torch.allclose(lp, ro.logprobs, atol=1e-4), backend


def test_bf16_and_gradient_checkpointing_reload_as_trained(tiny_dirs, tmp_path):
    policy, tok = load_model(_cfg(tiny_dirs["qwen"], "model.dtype=bfloat16", "model.gradient_checkpointing=true"))
    assert next(policy.parameters()).dtype == torch.bfloat16 and is_checkpointing(policy)
    policy.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load_policy_and_tokenizer(tmp_path)  # no options passed: read from config.json
    assert next(again.parameters()).dtype == torch.bfloat16 and is_checkpointing(again)
    plain, _ = load_model(_cfg(tiny_dirs["qwen"]))
    assert next(plain.parameters()).dtype == torch.float32 and not is_checkpointing(plain)


def test_lora_trains_adapters_only_and_reloads_exactly(tiny_dirs, tmp_path):
    cfg = _cfg(tiny_dirs["llama"], "model.lora_rank=4", "model.lora_target_modules=[q_proj, v_proj]")
    policy, tok = load_model(cfg)
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trained)
    assert "LoRA" in fast_path_unsupported_reason(policy) and describe_engine(policy).startswith("Hugging Face")
    with torch.no_grad():  # move the adapters off their zero init so that a reload must restore them
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    policy.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, _ = load_policy_and_tokenizer(tmp_path)
    ids, mask = encode_prompts(tok, ["2+3=", "Tom has 3 apples."])
    with torch.no_grad():
        a = policy(input_ids=ids, attention_mask=mask).logits
        b = again(input_ids=ids, attention_mask=mask).logits
        base, _ = load_model(_cfg(tiny_dirs["llama"]))
        c = base(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)
    # the critic of a LoRA actor is a plain copy with the adapters merged: same features, all weights trained
    critic = build_critic(cfg, policy)
    # the critic's trained weights are a plain copy (its frozen π₀ for the surprise input may keep LoRA)
    assert not any("lora_" in n for n, p in critic.named_parameters() if p.requires_grad)
    assert all(p.requires_grad for p in critic.backbone.parameters())
    with torch.no_grad():
        h_policy = policy.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        h_critic = critic.hidden_states(ids, mask, prompt_len=1)
    assert torch.allclose(h_policy, h_critic, atol=1e-5)


def test_critic_from_another_path(tiny_dirs, tmp_path):
    other = make_tiny_model("qwen", tmp_path / "other", seed=5)
    cfg = _cfg(tiny_dirs["qwen"], f"model.critic_path={other}")
    policy, tok = load_model(cfg)
    critic = build_critic(cfg, policy)
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(other)
    assert torch.equal(critic.backbone.embed_tokens.weight, ref.embed_tokens.weight)
    assert not torch.equal(critic.backbone.embed_tokens.weight, policy.model.embed_tokens.weight)
    ids, mask = encode_prompts(tok, ["2+3="])
    assert torch.count_nonzero(critic(ids, mask, prompt_len=1)) == 0  # zero head: V = 0 before value pretraining
    small = _copy(other, tmp_path / "small_vocab")
    c = json.loads((small / "config.json").read_text())
    c["vocab_size"] = 100
    (small / "config.json").write_text(json.dumps(c))
    with pytest.raises(VapoError, match="critic's vocabulary"):
        validate_model(_cfg(tiny_dirs["qwen"], f"model.critic_path={small}"))


# ------------------------------------------------------------------------------ validate_model: bad input
def test_validate_model_accepts_the_tiny_models_and_reports_context(tiny_dirs):
    for kind in ("qwen", "llama"):
        cfg = _cfg(tiny_dirs[kind])
        info = validate_model(cfg, get_task(cfg.task.name, **cfg.task.kwargs))
        assert info["context"] == 256 and 20 < info["longest_prompt"] < 256 and info["chat_template"]


def test_model_path_missing_or_without_config(tmp_path):
    with pytest.raises(VapoError, match="does not exist") as e:
        validate_model(_cfg(tmp_path / "nope"))
    assert e.value.where == "model.path" and e.value.fix
    with pytest.raises(VapoError, match="has no config.json"):
        validate_model(_cfg(tmp_path))


def test_model_path_without_a_tokenizer(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["qwen"], tmp_path / "m")
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (d / f).unlink(missing_ok=True)
    with pytest.raises(VapoError, match="has no tokenizer") as e:
        validate_model(_cfg(d))
    assert "tokenizer.save_pretrained" in e.value.fix


def test_tokenizer_without_eos(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["qwen"], tmp_path / "m")
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["eos_token"] = None
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    with pytest.raises(VapoError, match="no EOS token") as e:
        validate_model(_cfg(d))
    assert "eos_token" in e.value.fix


def test_chat_template_that_fails_to_render(tiny_dirs, tmp_path):
    d = make_tiny_model("qwen", tmp_path / "m", chat_template="{% for m in messages %}{{ m.content | nofilter }}{% endfor %}")
    with pytest.raises(VapoError, match="chat template failed to render") as e:
        validate_model(_cfg(d))
    assert "model.chat_template=false" in e.value.fix
    validate_model(_cfg(d, "model.chat_template=false"))  # the documented way out works
    d2 = make_tiny_model("qwen", tmp_path / "m2", chat_template="{{ raise_exception('no system turns') if messages[0].role == 'system' }}x")
    validate_model(_cfg(d2))
    with pytest.raises(VapoError, match="no system turns"):
        validate_model(_cfg(d2, "model.system_prompt=hi"))


def test_prompts_longer_than_the_context(tiny_dirs, tmp_path):
    d = make_tiny_model("qwen", tmp_path / "short", max_positions=48)
    cfg = _cfg(d, "rollout.max_new_tokens=16")
    with pytest.raises(VapoError, match="more than the model's context of 48") as e:
        validate_model(cfg, get_task(cfg.task.name, **cfg.task.kwargs))
    assert "word_problems.jsonl:" in str(e.value) and "rollout.max_new_tokens" in e.value.fix
    cfg = _cfg(tiny_dirs["qwen"], "rollout.max_new_tokens=250")
    with pytest.raises(VapoError, match="more than the model's context of 256"):
        validate_model(cfg, get_task(cfg.task.name, **cfg.task.kwargs))


def test_tokenizer_larger_than_the_embedding(tiny_dirs, tmp_path):
    d = _copy(tiny_dirs["qwen"], tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    c["vocab_size"] = 100
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(VapoError, match="model's vocabulary has 100"):
        validate_model(_cfg(d))


def test_built_in_model_checks(tmp_path):
    cfg = resolve_config("vapo", None, ["model.system_prompt=x"])
    with pytest.raises(VapoError, match="no chat template"):
        validate_model(cfg)
    cfg = resolve_config("vapo", None, ["rollout.max_new_tokens=2100"])
    with pytest.raises(VapoError, match="context of 2048"):
        validate_model(cfg, get_task(cfg.task.name, **cfg.task.kwargs))
    task = get_task("rewrite_sum")
    assert validate_model(resolve_config("vapo"), task)["context"] == 2048
    assert random.Random(0)  # the check draws prompts from its own generator
