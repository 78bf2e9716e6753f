"""Training checkpoints without pickle: the train state's round trip, a planted pickle never runs, and a crash or a
full disk while writing leaves the last complete checkpoint as it was."""
import errno
import json
import os
import random

import numpy as np
import pytest
import torch

from divcfg.common.storage import checkpoint as ck
from divcfg.common.storage.checkpoint import (
    CheckpointError,
    atomic_dir,
    load_weights,
    newest_verified_checkpoint,
    save_weights,
    verify_checkpoint,
)
from divcfg.common.storage.train_state import load_train_state, restore_rng, rng_state, save_train_state
from divcfg.model.loaders import save_policy
from divcfg.model.policy import build_policy


def trained_adam(seed=0, steps=2):
    """A tiny policy and its fused Adam (as the learner builds it) after ``steps`` updates, so every state tensor
    (step counts, both moments) is non-trivial."""
    policy = build_policy(seed=seed)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, policy.cfg.card, (2, policy.cfg.n_codebooks, 5), generator=gen)
    for _ in range(steps):
        opt.zero_grad()
        policy.logits(codes, policy.encode_condition(["a", "b"])).square().mean().backward()
        opt.step()
    return policy, opt


def train_state(opt, step):
    return {"optimizer": opt.state_dict(), "version": step, "nonfinite_total": 1, "step": step,
            "stream_position": 7 * step, "rng": rng_state(),
            "accounting": {"generated": 12, "used": 10, "stale": 1, "dropped": 1, "failures": {"rollout": 2},
                           "outstanding": [31, 33]}}


def save_run_checkpoint(run_dir, step, policy, opt):
    """What the training job writes each checkpoint: the student, then the train state, under one atomic_dir."""
    with atomic_dir(run_dir / "checkpoints" / f"step_{step:06d}") as tmp:
        save_policy(policy, tmp / "student")
        save_train_state(tmp, train_state(opt, step))
    return run_dir / "checkpoints" / f"step_{step:06d}"


def assert_same(a, b, where="state"):
    """Equal values of equal types, tensors bit for bit (dtype included)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_train_state_round_trip_restores_optimizer_and_rng_exactly(tmp_path):
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    policy, opt = trained_adam()
    state = {**train_state(opt, 4), "extra": (torch.arange(3), np.float32(1.5), np.int64(-3), {1: None})}
    with atomic_dir(tmp_path / "ck") as tmp:
        save_train_state(tmp, state)
    assert sorted(os.listdir(tmp_path / "ck")) == ["COMPLETE", "train_state.json", "train_state.safetensors"]
    expected = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])  # draws after the save
    back = load_train_state(tmp_path / "ck")
    assert_same(state, back)  # int keys of the optimizer's state, its betas tuple, numpy's uint32 key, ...
    assert isinstance(back["optimizer"]["param_groups"][0]["betas"], tuple)
    # Resuming: a fresh optimizer loads the state and takes the same next step; the generators draw the same.
    policy2, opt2 = trained_adam(steps=0)
    policy2.load_state_dict(policy.state_dict())
    opt2.load_state_dict(back["optimizer"])
    for o, p in ((opt, policy), (opt2, policy2)):
        o.zero_grad()
        p.logits(torch.zeros(1, p.cfg.n_codebooks, 3, dtype=torch.long), p.encode_condition(["c"])).mean().backward()
        o.step()
    assert all(torch.equal(a, b) for a, b in zip(policy.state_dict().values(), policy2.state_dict().values()))
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng(back["rng"])
    assert torch.equal(torch.rand(5), expected[0]) and np.array_equal(np.random.rand(5), expected[1])
    assert [random.random() for _ in range(5)] == expected[2]


def test_train_state_refuses_what_it_cannot_store(tmp_path):
    with pytest.raises(TypeError, match="state.sched: can't save a object in a train state"):
        save_train_state(tmp_path, {"sched": object()})


class PlantedPayload:
    """Unpickling this creates a file: proof that the pickle ran."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def plant_pickle(ckdir, target):
    torch.save({"optimizer": PlantedPayload(target), "step": 1}, ckdir / "train_state.pt")


def test_a_planted_pickle_in_train_state_never_runs_on_resume(tmp_path):
    target = tmp_path / "pwned"
    policy, opt = trained_adam(steps=1)
    run = tmp_path / "run"
    good = save_run_checkpoint(run, 1, policy, opt)
    plant_pickle(good, target)  # next to the real state: the loader reads train_state.json and never the pickle
    # An old-format checkpoint made entirely by an attacker: a manifest-less marker and only the pickle.
    old = run / "checkpoints" / "step_000002"
    old.mkdir()
    (old / "COMPLETE").write_text("ok\n")
    save_policy(policy, old / "student")
    plant_pickle(old, target)

    assert load_train_state(good)["step"] == 1 and not target.exists()
    newest, skipped = newest_verified_checkpoint(run)  # picking a checkpoint does not load the pickle either
    assert newest == old and skipped == [] and not target.exists()
    with pytest.raises(CheckpointError, match="train_state.pt, the old pickle format: loading it runs any code the "
                                              "file holds.*run.allow_pickle=true"):
        load_train_state(old)
    assert not target.exists()
    # The payload is live: with the user's explicit opt-in the old format is read, and the planted code runs.
    with pytest.warns(UserWarning, match="unpickling .*train_state.pt"):
        load_train_state(old, allow_pickle=True)
    assert target.exists()


def test_a_crash_inside_atomic_dir_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ck"
    save_weights(path, "policy", {"w": torch.ones(3)}, {"a": 1})
    before = {f: (path / f).read_bytes() for f in os.listdir(path)}
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic_dir(path) as tmp:
            from safetensors.torch import save_file
            save_file({"w": torch.zeros(3)}, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps({"kind": "policy", "config": {"a": 2}}))
            raise RuntimeError("killed mid-write")
    assert {f: (path / f).read_bytes() for f in os.listdir(path)} == before
    state, config, _ = load_weights(path, "policy")
    assert torch.equal(state["w"], torch.ones(3)) and config == {"a": 1}
    assert os.listdir(tmp_path) == ["ck"]  # the temporary directory is gone


def enospc_writer(real):
    """A safetensors writer on a full disk: part of the file lands, then ENOSPC."""
    def write(tensors, filename, *args, **kwargs):
        real(tensors, filename, *args, **kwargs)
        with open(filename, "r+b") as f:
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, "No space left on device", filename)
    return write


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_stops_with_the_error(tmp_path, monkeypatch):
    run = tmp_path / "run"
    policy, opt = trained_adam(steps=1)
    first = save_run_checkpoint(run, 1, policy, opt)
    saved = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
    monkeypatch.setattr(ck, "save_file", enospc_writer(ck.save_file))
    with pytest.raises(OSError, match="No space left on device while writing checkpoint .*step_000002; what was "
                                      "saved at .*step_000002 \\(if anything\\) and every older checkpoint are "
                                      "unchanged") as info:
        save_run_checkpoint(run, 2, policy, opt)
    assert info.value.errno == errno.ENOSPC
    # Overwriting a directory in place (the run's final student/) keeps the old one as well.
    with pytest.raises(OSError, match="No space left on device while writing checkpoint .*student"):
        save_policy(policy, first / "student")
    monkeypatch.undo()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000001"]  # no temporary left over
    assert {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()} == saved
    verify_checkpoint(first)
    assert newest_verified_checkpoint(run) == (first, [])
    assert load_train_state(first)["stream_position"] == 7


def test_a_failed_rename_puts_the_old_checkpoint_back(tmp_path, monkeypatch):
    path = tmp_path / "ck"
    save_weights(path, "policy", {"w": torch.ones(2)}, {})
    real, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new directory into place: after the old one was set aside
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(ck.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="Input/output error while writing checkpoint"):
        save_weights(path, "policy", {"w": torch.zeros(2)}, {})
    monkeypatch.undo()
    assert len(calls) == 3 and torch.equal(load_weights(path)[0]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ck"]


def test_resume_auto_picks_the_newest_checkpoint_that_verifies_and_says_what_it_skipped(tmp_path):
    run = tmp_path / "run"
    policy, opt = trained_adam(steps=1)
    steps = [save_run_checkpoint(run, s, policy, opt) for s in (1, 2, 3, 4)]
    tensors = steps[3] / "train_state.safetensors"
    raw = bytearray(tensors.read_bytes())
    raw[-5] ^= 0xFF  # one flipped bit pattern in the data, same size: only the hash can tell
    tensors.write_bytes(bytes(raw))
    (steps[2] / "COMPLETE").write_text('{"format": "divcfg-checkpoint-1", "fi')  # cut short
    (steps[1] / "student" / "model.safetensors").unlink()
    (run / "checkpoints" / "step_000005").mkdir()  # a crash before the marker (an old build's leftover)
    newest, skipped = newest_verified_checkpoint(run)
    assert newest == steps[0]
    assert [p.name for p, _ in skipped] == ["step_000005", "step_000004", "step_000003", "step_000002"]
    why = [w for _, w in skipped]
    assert "step_000005 is incomplete (no COMPLETE marker)" in why[0]
    assert why[1].endswith("step_000004/train_state.safetensors is corrupt: its SHA-256 differs from the one "
                           f"{steps[3] / 'COMPLETE'} records")
    assert "step_000003/COMPLETE is truncated or corrupt" in why[2] and "it is not used" in why[2]
    assert why[3] == f"checkpoint file {steps[1] / 'student' / 'model.safetensors'} is missing (listed in " \
                     f"{steps[1] / 'COMPLETE'})"
    assert newest_verified_checkpoint(tmp_path / "nothing") == (None, [])


def test_overwriting_a_checkpoint_leaves_only_the_new_one(tmp_path):
    """The old directory is set aside, the new one renamed into place, and the old one removed: nothing is left
    beside the checkpoint (a run that checkpoints to one path would otherwise keep every old copy)."""
    path = tmp_path / "ck"
    save_weights(path, "policy", {"w": torch.ones(2)}, {"n": 1}, meta={"step": 1})
    save_weights(path, "policy", {"w": torch.zeros(3)}, {"n": 2}, meta={"step": 2})
    assert os.listdir(tmp_path) == ["ck"]
    state, config, meta = load_weights(path, "policy")
    assert torch.equal(state["w"], torch.zeros(3)) and config == {"n": 2} and meta == {"step": 2}


def test_a_checkpoint_of_another_kind_is_refused_naming_both_kinds(tmp_path):
    save_weights(tmp_path / "codec", "codec", {"w": torch.ones(2)}, {})
    with pytest.raises(CheckpointError) as e:
        load_weights(tmp_path / "codec", "policy")
    assert str(e.value) == f"checkpoint {tmp_path / 'codec'} holds a 'codec', expected a 'policy'"
    assert torch.equal(load_weights(tmp_path / "codec")[0]["w"], torch.ones(2))  # no kind asked: any kind loads


def test_resume_auto_says_which_entry_or_train_state_a_checkpoint_lacks(tmp_path):
    run = tmp_path / "run"
    policy, opt = trained_adam(steps=1)
    good = save_run_checkpoint(run, 1, policy, opt)
    with atomic_dir(run / "checkpoints" / "step_000002") as tmp:  # a student, no train state
        save_policy(policy, tmp / "student")
    with atomic_dir(run / "checkpoints" / "step_000003") as tmp:  # a train state, no student
        save_train_state(tmp, train_state(opt, 3))
    newest, skipped = newest_verified_checkpoint(run)
    assert newest == good
    ck2, ck3 = run / "checkpoints" / "step_000002", run / "checkpoints" / "step_000003"
    assert skipped == [(ck3, f"checkpoint {ck3} lacks student"),
                       (ck2, f"checkpoint {ck2} holds no train state (train_state.json or train_state.pt)")]


def test_an_old_checkpoint_with_a_cut_json_file_is_refused_by_parsing(tmp_path):
    """A checkpoint with the old ``ok`` marker (no manifest) has its .json files parsed, as its .safetensors."""
    path = save_weights(tmp_path / "ck", "policy", {"w": torch.ones(2)}, {"n": 1})
    (path / "COMPLETE").write_text("ok\n")
    verify_checkpoint(path)
    (path / "config.json").write_text('{"kind": "policy", "con')
    with pytest.raises(CheckpointError, match=r"checkpoint file .*/ck/config.json is truncated or corrupt: "):
        verify_checkpoint(path)
