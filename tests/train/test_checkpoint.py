"""Checkpoints prove themselves: a manifest of sizes and sha256 written last, detection of
missing/truncated/corrupted files, fallback to the previous good checkpoint, keep-last-K, a full
disk that leaves the previous checkpoint intact, and state read back without pickle execution."""

import json
import os
import pickle
import random

import pytest
import torch

from vapo.errors import VapoError
from vapo.models import Critic, build_char_tokenizer, build_policy, load_policy_and_tokenizer
from vapo.train.checkpoint import (
    MANIFEST,
    STATE_FILE,
    CheckpointError,
    latest_good_checkpoint,
    load_state,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
)


@pytest.fixture(scope="module")
def models():
    tok = build_char_tokenizer()
    policy = build_policy("micro", tok, seed=0)
    return policy, tok, Critic.from_policy(policy)


def _trainer_like_state(policy, critic):
    """The state vapo.train.trainer_state.state_dict(trainer) holds: two AdamW + LambdaLR after real steps, RNG states."""
    out = {"iteration": 7}
    for name, model in (("actor", policy), ("critic", critic)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        out[f"{name}_opt"], out[f"{name}_sched"] = opt.state_dict(), sched.state_dict()
    rng = random.Random(3)
    rng.random()
    out["prompt_rng"] = rng.getstate()
    out["sample_gen"] = torch.Generator().manual_seed(5).get_state()
    out["torch_rng"] = torch.get_rng_state()
    return out


def _save(run, step, models, state=None):
    policy, tok, critic = models
    return save_checkpoint(run / "checkpoints" / f"step_{step}", {"policy": (policy, tok), "critic": critic},
                           state if state is not None else {"iteration": step}, step=step)


def test_weights_are_safetensors_and_state_round_trips_without_pickle(tmp_path, models):
    policy, tok, critic = models
    state = _trainer_like_state(policy, critic)
    ck = _save(tmp_path, 7, models, state)
    names = {p.relative_to(ck).as_posix() for p in ck.rglob("*") if p.is_file()}
    assert "policy/model.safetensors" in names
    assert any(n.startswith("critic/") and n.endswith(".safetensors") for n in names)
    assert not any(n.endswith((".bin", ".pkl")) for n in names)
    manifest = verify_checkpoint(ck)
    assert set(manifest["files"]) == names - {MANIFEST, "COMPLETE"}
    back = load_state(ck)
    assert back["iteration"] == 7
    assert back["prompt_rng"] == state["prompt_rng"]  # python random state: (version, ints, gauss)
    assert torch.equal(back["sample_gen"], state["sample_gen"])
    g = torch.Generator()
    g.set_state(back["sample_gen"])  # a torch Generator accepts the loaded state
    for k in ("actor_opt", "critic_opt"):
        a, b = state[k]["state"], back[k]["state"]
        assert a.keys() == b.keys() and all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    # and an optimizer accepts it: the moments are restored exactly
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    opt.load_state_dict(back["actor_opt"])
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], state["actor_opt"]["state"][0]["exp_avg"])
    p2, _ = load_policy_and_tokenizer(ck / "policy")
    assert all(torch.equal(x, y) for x, y in zip(p2.state_dict().values(), policy.state_dict().values(), strict=True))


class _Evil:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_object_in_the_state_is_refused(tmp_path, models):
    ck = _save(tmp_path, 1, models)
    _Evil.marker = str(tmp_path / "pwned")
    with open(ck / STATE_FILE, "wb") as f:
        pickle.dump({"iteration": 1, "x": _Evil()}, f, protocol=2)
    from vapo.train.checkpoint import write_manifest

    write_manifest(ck, 1)  # even a checkpoint whose manifest matches cannot run code
    with pytest.raises(CheckpointError, match="plain data"):
        load_state(ck)
    assert not (tmp_path / "pwned").exists()
    with open(ck / STATE_FILE, "rb") as f:  # the file really does run code under plain pickle
        pickle.load(f)
    assert (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest", "bad_manifest"])
def test_damage_is_detected_with_a_clear_message(tmp_path, models, damage):
    ck = _save(tmp_path, 3, models)
    target = ck / "policy" / "model.safetensors"
    if damage == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        match = "policy/model.safetensors has .* bytes.*truncated"
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[-10] ^= 0xFF
        target.write_bytes(bytes(data))
        match = "policy/model.safetensors does not match its sha256.*corrupted"
    elif damage == "delete":
        (ck / STATE_FILE).unlink()
        match = "trainer_state.pt is missing"
    elif damage == "no_manifest":
        (ck / MANIFEST).unlink()
        match = "no MANIFEST.json"
    else:
        (ck / MANIFEST).write_text("{not json")
        match = "MANIFEST.json is unreadable"
    with pytest.raises(CheckpointError, match=match) as e:
        verify_checkpoint(ck)
    assert str(ck) in str(e.value) and "fix:" in str(e.value)
    with pytest.raises(CheckpointError):
        load_state(ck)


def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path, models):
    for s in (0, 1, 2):
        _save(tmp_path, s, models)
    assert latest_good_checkpoint(tmp_path)[:2] == (2, tmp_path / "checkpoints" / "step_2")
    f = tmp_path / "checkpoints" / "step_2" / "critic"
    victim = sorted(p for p in f.iterdir() if p.suffix == ".safetensors")[0]
    victim.write_bytes(victim.read_bytes()[:-1])
    # a half-written step_3 (no manifest) is skipped too
    (tmp_path / "checkpoints" / "step_3" / "policy").mkdir(parents=True)
    lines = []
    step, path, skipped = latest_good_checkpoint(tmp_path, log=lines.append)
    assert (step, path.name) == (1, "step_1")
    assert [p.name for p, _ in skipped] == ["step_3", "step_2"]
    assert "no MANIFEST.json" in skipped[0][1] and "truncated" in skipped[1][1]
    assert len(lines) == 2 and lines[1].startswith("skipping checkpoint step_2:")


def test_no_checkpoint_at_all_is_none_and_all_bad_is_an_error(tmp_path, models):
    assert latest_good_checkpoint(tmp_path) is None
    ck = _save(tmp_path, 0, models)
    (ck / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="no checkpoint verifies.*step_0: no MANIFEST"):
        latest_good_checkpoint(tmp_path)


def test_keep_last_k_keeps_step_0_and_cleans_stale_temporaries(tmp_path, models):
    for s in range(5):
        _save(tmp_path, s, models)
    stale = tmp_path / "checkpoints" / ".tmp-step_5-123-456"
    stale.mkdir()
    removed = prune_checkpoints(tmp_path, keep=2)
    left = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert left == ["step_0", "step_3", "step_4"]
    assert stale in removed
    assert prune_checkpoints(tmp_path, keep=0) == []  # 0 keeps all


def test_full_disk_leaves_the_previous_checkpoint_intact(tmp_path, models, monkeypatch):
    policy, tok, critic = models
    _save(tmp_path, 1, models)
    before = verify_checkpoint(tmp_path / "checkpoints" / "step_1")

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match="could not write checkpoint step_2: No space left on device.*step_1 is intact") as e:
        _save(tmp_path, 2, models, {"iteration": 2})
    assert isinstance(e.value, VapoError)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_1"]  # no half checkpoint, no temporary left behind
    assert verify_checkpoint(tmp_path / "checkpoints" / "step_1") == before
    # Rewriting an existing step that fails keeps the old copy of that step.
    with pytest.raises(CheckpointError, match="step_1 keeps its previous contents"):
        _save(tmp_path, 1, models, {"iteration": 1})
    assert verify_checkpoint(tmp_path / "checkpoints" / "step_1") == before


def test_manifest_is_written_after_every_other_file(tmp_path, models, monkeypatch):
    """Kill-safety by order: a write interrupted before the manifest never verifies."""
    import vapo.train.checkpoint as ckm

    order = []
    real = ckm.write_manifest

    def spy(root, step=None):
        order.append(sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()))
        return real(root, step)

    monkeypatch.setattr(ckm, "write_manifest", spy)
    ck = _save(tmp_path, 4, models)
    assert STATE_FILE in order[0] and "policy/model.safetensors" in order[0]
    m = json.loads((ck / MANIFEST).read_text())
    assert set(m["files"]) == set(order[0])


def test_eval_and_diagnose_use_only_checkpoints_whose_weights_verify(tmp_path, models):
    """vapo eval / vapo diagnose (readable_checkpoints): a damaged checkpoint is skipped with its
    reason, an unfinished one too; one written before manifests (COMPLETE, no manifest) is used,
    unverified, and said."""
    from vapo.train.checkpoint import readable_checkpoints, weights_verified

    for s in (0, 1, 2):
        _save(tmp_path, s, models)
    legacy = tmp_path / "checkpoints" / "step_3"
    models[0].save_pretrained(legacy / "policy")
    (legacy / "COMPLETE").write_text("1")
    (tmp_path / "checkpoints" / "step_4" / "policy").mkdir(parents=True)  # unfinished: no marker, no manifest
    st = tmp_path / "checkpoints" / "step_1" / STATE_FILE
    st.write_bytes(b"\0" + st.read_bytes()[1:])  # same size, different bytes
    lines = []
    good, skipped = readable_checkpoints(tmp_path, log=lines.append)
    assert [s for s, _ in good] == [0, 2, 3]
    assert [(p.name, "sha256" in why or "MANIFEST" in why) for p, why in skipped] == [("step_1", True), ("step_4", True)]
    assert "corrupted" in skipped[0][1]
    assert any("step_3 has no MANIFEST.json (written before manifests)" in line for line in lines)
    assert weights_verified(tmp_path / "checkpoints" / "step_2") is True and weights_verified(legacy) is False
    with pytest.raises(CheckpointError, match="sha256"):
        weights_verified(tmp_path / "checkpoints" / "step_1")
