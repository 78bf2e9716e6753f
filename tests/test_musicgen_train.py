"""MusicGen in the training job: the roles hold a tiny random MusicGen (no download) without knowing it.

The fast tests check the pieces the job wires (weight snapshots of the trainable tensors, the teacher sharing the
frozen T5, checkpoints that record the source, the CLI refusals); the slow ones run `divcfg train model=musicgen_tiny`
on the tiny world, on local Ray and in local mode with a resume.
"""
import json

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from divcfg.common.record import new_group  # noqa: E402
from divcfg.common.storage.checkpoint import CheckpointError, _write_marker, load_weights
from divcfg.learner.learner import Learner  # noqa: E402
from divcfg.model.loaders import load_policy, policy_family, save_policy
from divcfg.model.musicgen.convert import DECODER_FIELDS
from divcfg.model.musicgen.loading import TINY, tiny_musicgen
from divcfg.model.musicgen.policy import MusicGenPolicy, MusicGenSpec

transformers.logging.set_verbosity_error()
PROMPTS = ["a calm piano melody", "fast loud drums"]


def _learner(spec, lr=3e-3):
    policy, _ = spec.build()
    return Learner(policy, beta=0.0, guidance_scale=3.0, lr=lr, baseline="loo", is_clip=2.0, grad_clip=1.0)


def _group(policy, prompt, g=3, frames=8, seed=0):
    out = policy.generate(policy.encode_condition([prompt] * g), frames, generator=torch.Generator().manual_seed(seed))
    return new_group(prompt_id=0, prompt=prompt, group_id=0, codes=out.codes.numpy(), logprobs=out.logprobs.numpy(),
                     policy_version=0, generate_s=0.0).with_fields(diversity_reward=np.zeros(g, np.float32))


@pytest.mark.parametrize("train_layers", [0, 1])
def test_snapshots_carry_only_the_trainable_tensors(train_layers):
    """The learner publishes the trainable tensors; an actor built from the same spec ends up with the same model."""
    from divcfg.actors.rollout import RolloutWorker
    spec = MusicGenSpec(TINY, train_layers=train_layers, text_max_len=96, seed=0)
    learner = _learner(spec)
    learner.step(_group(learner.student, PROMPTS[0]), 3)
    weights = learner.weights()
    # Published under MusicGen's own names (the converted decoder's fused tensors split back): the same numbers.
    trainable = [p for p in learner.student.parameters() if p.requires_grad]
    assert sum(w.size for w in weights.values()) == sum(p.numel() for p in trainable)
    assert not any(k.startswith("text_encoder.") for k in weights)
    actor = RolloutWorker(spec, n_frames=8, group_size=2)
    actor.set_weights(learner.version, weights)
    codes = torch.randint(0, 64, (2, 4, 8))
    with torch.no_grad():
        ours = learner.student.eval().logits(codes, learner.student.encode_condition(PROMPTS))
        theirs = actor.policy.logits(codes, actor.policy.encode_condition(PROMPTS))
    assert torch.equal(ours, theirs)
    with pytest.raises(ValueError, match="missing"):
        actor.set_weights(2, {k: v for k, v in weights.items() if "lm_heads" not in k})


def test_teacher_shares_the_frozen_text_encoder_and_only_the_decoder_trains():
    learner = _learner(MusicGenSpec(TINY, text_max_len=96))
    s, t = learner.student, learner.teacher
    assert all(a is b for a, b in zip(s.text_encoder.parameters(), t.text_encoder.parameters()))
    assert not any(a is b for a, b in zip(s.decoder.parameters(), t.decoder.parameters()))
    before = {k: v.clone() for k, v in t.state_dict().items()}
    opt_params = {id(p) for group in learner.opt.param_groups for p in group["params"]}
    assert opt_params == {id(p) for p in s.parameters() if p.requires_grad}
    for _ in range(2):
        learner.step(_group(s, PROMPTS[1]), 3)
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())  # the teacher stays the base model
    # What memory_estimate counts for the learner's weights: the student plus the teacher's trainable copy.
    from divcfg.model.musicgen.memory import memory_estimate
    held = {p.data_ptr(): p.numel() for m in (s, t) for p in m.parameters()}
    assert sum(held.values()) * 4 == memory_estimate(s.model_config, 1, 4).learner_weights


def test_a_learner_step_lowers_the_kl_to_the_cfg_teacher():
    """The tiny model's CFG teacher differs from its student (init_std), so there is something to distill."""
    learner = _learner(MusicGenSpec(TINY, text_max_len=96), lr=1e-3)  # 3e-3 moves it off this batch in one step
    batch = _group(learner.student, PROMPTS[0], g=4, frames=12)
    first = learner.step(batch, 4)["losses/distill_kl"]
    for _ in range(8):
        last = learner.step(batch, 4)["losses/distill_kl"]
    assert first > 1e-3 and last < 0.7 * first, (first, last)


def test_learner_kl_and_actor_logprobs_match_the_adapter():
    """model.decoder=divcfg against model.decoder=transformers on the same weights and seed: the actors' log-probs of
    the same codes, and the learner's KL over three updates, agree within 1e-4 (issue: MusicGen in the fast decoder)."""
    from divcfg.actors.rollout import RolloutWorker

    specs = {d: MusicGenSpec(TINY, text_max_len=96, seed=0, decoder=d) for d in ("divcfg", "transformers")}
    actors = {d: RolloutWorker(spec, n_frames=8, group_size=3) for d, spec in specs.items()}
    groups = {d: _group(a.policy, PROMPTS[0], seed=5) for d, a in actors.items()}  # the same sampling seed
    assert np.array_equal(groups["divcfg"].codes, groups["transformers"].codes)
    assert np.allclose(groups["divcfg"].logprobs, groups["transformers"].logprobs, atol=1e-4)
    batch = groups["transformers"]
    kls = {}
    for d, spec in specs.items():
        torch.manual_seed(0)
        learner = _learner(spec, lr=1e-3)
        kls[d] = [learner.step(batch, 3)["losses/distill_kl"] for _ in range(3)]
    assert np.allclose(kls["divcfg"], kls["transformers"], rtol=1e-4, atol=1e-6), kls


def test_checkpoint_records_the_source_and_the_trained_tensors(tmp_path):
    spec = MusicGenSpec(TINY, train_layers=1, text_max_len=96, seed=3)
    learner = _learner(spec)
    learner.step(_group(learner.student, PROMPTS[0]), 3)
    save_policy(learner.student, tmp_path / "s", meta={"codec": None})
    state, config, _ = load_weights(tmp_path / "s", "policy")
    recorded = config.pop("decoder_config")  # what a later transformers is checked against (convert.py)
    assert config == {"family": "musicgen", "musicgen": TINY, "train_layers": 1, "text_max_len": 96, "seed": 3}
    assert set(recorded) == set(DECODER_FIELDS) and recorded["num_codebooks"] == 4
    assert set(state) == set(learner.student.trainable_state_dict()) and policy_family(tmp_path / "s") == "musicgen"
    loaded = load_policy(tmp_path / "s")
    assert isinstance(loaded, MusicGenPolicy) and loaded.spec == MusicGenSpec(TINY, 1, 96, False, 3)
    codes = torch.randint(0, 64, (2, 4, 6))
    with torch.no_grad():
        assert torch.equal(loaded.logits(codes, loaded.encode_condition(PROMPTS)),
                           learner.student.eval().logits(codes, learner.student.encode_condition(PROMPTS)))
    # A real model records no seed: runs that differ only in run.seed stay mergeable.
    assert "seed" not in MusicGenSpec("facebook/musicgen-small", seed=5).checkpoint_config()
    with pytest.raises(ValueError, match="only a MusicGenPolicy built by MusicGenSpec.build"):
        save_policy(MusicGenPolicy(tiny_musicgen()), tmp_path / "t")
    # The tensors of another train_layers don't fit.
    cfg_path = tmp_path / "s" / "config.json"
    header = json.loads(cfg_path.read_text())
    header["config"]["train_layers"] = 2
    cfg_path.write_text(json.dumps(header))
    (tmp_path / "s" / "COMPLETE").unlink()
    _write_marker(tmp_path / "s")  # a consistent checkpoint of the other train_layers, not a damaged file
    with pytest.raises(CheckpointError, match="weights do not fit tiny-random with train_layers=2"):
        load_policy(tmp_path / "s")


def test_merge_and_sample_take_musicgen_checkpoints_eval_wants_their_folder_world(tmp_path, capsys):
    import wave

    from divcfg.cli import main
    paths = []
    for i, prompt in enumerate(PROMPTS):
        learner = _learner(MusicGenSpec(TINY, text_max_len=96))
        learner.step(_group(learner.student, prompt), 3)
        save_policy(learner.student, tmp_path / f"m{i}")
        paths.append(str(tmp_path / f"m{i}"))
    assert main(["merge", *paths, "--lam", "0.5", "--out", str(tmp_path / "merged")]) == 0
    a, b = (load_weights(p, "policy")[0] for p in paths)
    merged, config, _ = load_weights(tmp_path / "merged", "policy")
    assert config["family"] == "musicgen" and all(torch.allclose(merged[k], (a[k] + b[k]) / 2) for k in a)
    out = tmp_path / "wavs"
    assert main(["sample", str(tmp_path / "merged"), "--prompt", "bells", "--n", "2", "--frames", "10",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["codec"] == TINY and manifest["sample_rate"] == 8000
    with wave.open(str(out / "p000_s00.wav")) as w:
        assert w.getnframes() == 10 * 160 and w.getframerate() == 8000
    # Another seed is another base model: its checkpoints don't merge with these.
    other = _learner(MusicGenSpec(TINY, text_max_len=96, seed=1))
    save_policy(other.student, tmp_path / "other")
    assert main(["merge", paths[0], str(tmp_path / "other"), "--lam", "0.5", "--out", str(tmp_path / "x")]) == 2
    assert "different architectures" in capsys.readouterr().err
    assert main(["eval", paths[0], "--world", str(tmp_path / "no-world"), "--out", str(tmp_path / "e")]) == 2
    # No world there: eval says so first, then where a MusicGen student can be evaluated
    err = capsys.readouterr().err
    assert f"no complete world in {tmp_path / 'no-world'}: {paths[0]} is a MusicGen checkpoint (of tiny" in err
    assert "divcfg world build --kind folder --model tiny" in err


def test_merging_two_musicgen_students_at_lambda_0_and_1_gives_each_back(tmp_path):
    """divcfg merge on MusicGen checkpoints: λ = 0 is θ_A and λ = 1 is θ_B to the logit, and λ = 0.5 lies between."""
    from divcfg.model.merge import main as merge_main
    spec = MusicGenSpec(TINY, train_layers=1, text_max_len=96, seed=3)
    students = []
    for name, prompt in (("a", PROMPTS[0]), ("b", PROMPTS[1])):
        learner = _learner(spec, lr=3e-2)
        learner.step(_group(learner.student, prompt), 3)
        save_policy(learner.student, tmp_path / name, meta={"codec": None})
        students.append(learner.student.eval())
    assert merge_main([str(tmp_path / "a"), str(tmp_path / "b"), "--lam", "0", "0.5", "1", "--out",
                       str(tmp_path / "m")]) == 0
    codes = torch.randint(0, 64, (2, 4, 6))

    def logits(policy):
        with torch.no_grad():
            return policy.logits(codes, policy.encode_condition(PROMPTS))

    a, b = (logits(p) for p in students)
    assert not torch.allclose(a, b)
    assert torch.allclose(logits(load_policy(tmp_path / "m" / "lam_0")), a, atol=1e-6)
    assert torch.allclose(logits(load_policy(tmp_path / "m" / "lam_1")), b, atol=1e-6)
    half = logits(load_policy(tmp_path / "m" / "lam_0.5"))
    assert not torch.allclose(half, a) and not torch.allclose(half, b)


def test_export_writes_a_merged_student_that_from_pretrained_loads_bit_for_bit(tmp_path, capsys):
    """divcfg export: a merged MusicGen student as the user's ecosystem loads it, every tensor the student's."""
    from divcfg.cli import main
    spec = MusicGenSpec(TINY, train_layers=1, text_max_len=96, seed=4)
    for name, prompt in (("a", PROMPTS[0]), ("b", PROMPTS[1])):
        learner = _learner(spec, lr=3e-2)
        learner.step(_group(learner.student, prompt), 3)
        save_policy(learner.student, tmp_path / name, meta={"codec": None})
    assert main(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "--lam", "0.5", "--out", str(tmp_path / "m")]) == 0
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 0
    loaded = transformers.MusicgenForConditionalGeneration.from_pretrained(tmp_path / "hf").state_dict()
    student = load_policy(tmp_path / "m")
    ours = student.musicgen_state_dict()
    assert ours and all(torch.equal(loaded[n], t) for n, t in ours.items())
    merged, _, _ = load_weights(tmp_path / "m", "policy")  # the merge's own tensors, not the base's
    assert all(torch.equal(loaded[n], t) for n, t in merged.items())
    # Refusals: a non-empty --out (nothing overwritten), a divcfg policy, a directory that already is MusicGen's
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "hf")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "hf"), "--out", str(tmp_path / "hf2")]) == 2
    assert "already a Hugging Face MusicGen directory" in capsys.readouterr().err
    save_weights_dir = tmp_path / "divcfg_policy"
    save_weights_dir.mkdir()
    (save_weights_dir / "config.json").write_text(json.dumps({"kind": "policy", "config": {"dim": 8}}))
    assert main(["export", str(save_weights_dir), "--out", str(tmp_path / "hf3")]) == 2
    assert "not a MusicGen policy checkpoint" in capsys.readouterr().err and not (tmp_path / "hf3").exists()


def test_pretrain_refuses_musicgen(tmp_path, capsys):
    from divcfg.cli import main
    assert main(["pretrain", f"data={tmp_path / 'none.parquet'}", f"out={tmp_path / 'o'}", "model=musicgen_tiny"]) == 2
    assert "model.family='musicgen': divcfg pretrain trains divcfg's own policy" in capsys.readouterr().err


@pytest.mark.parametrize("overrides,family,musicgen,preset,codec", [
    ([], "divcfg", None, "small", "auto"),
    (["model=tiny", "codec=world"], "divcfg", None, "tiny", "world"),
    (["model=musicgen_tiny"], "musicgen", TINY, "small", "auto"),
    (["model=musicgen_small", "codec=musicgen", "model.train_layers=4"], "musicgen", "facebook/musicgen-small", "small",
     "musicgen"),
])
def test_train_model_overrides_compose(overrides, family, musicgen, preset, codec):
    from hydra import compose, initialize_config_dir

    from divcfg.common.config.checks import validate_train
    from divcfg.common.config.schema import CONF_DIR, register_configs
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("train", overrides=overrides)
    validate_train(cfg)
    assert (cfg.model.family, cfg.model.musicgen, cfg.model.preset, cfg.codec.source) == (family, musicgen, preset, codec)


def test_musicgen_codec_with_the_divcfg_policy_is_refused():
    from hydra import compose, initialize_config_dir

    from divcfg.common.config.checks import ConfigError, validate_train
    from divcfg.common.config.schema import CONF_DIR, register_configs
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("train", overrides=["codec=musicgen"])
    with pytest.raises(ConfigError, match="codec.source='musicgen': MusicGen's EnCodec makes the codes of a MusicGen "
                                          "policy, and model.family=divcfg"):
        validate_train(cfg)


# ---- the real entry point on the tiny world -------------------------------------------------------------------------
# lr measured: at 1e-3 one update moves the student so far that lag-1 groups get importance weights near 0 and the
# async run's KL doesn't fall; at 3e-4 the probe's KL falls from 0.027 to under 0.01 in 6 to 8 steps.
# (measured at a constant rate, which this run keeps.)
RUN = ["model=musicgen_tiny", "world.size=tiny", "algo.lr=3e-4", "algo.lr_schedule=constant", "algo.batch_prompts=2",
       "probe.prompts=4",
       "probe.samples=2", "logging.progress=false", "logging.audio_every=1"]


@pytest.mark.slow
@pytest.mark.ray
def test_train_musicgen_tiny_on_ray(tiny_world, tmp_path):
    from divcfg.cli import main
    run = tmp_path / "run"
    assert main(["train", *RUN, f"world.dir={tiny_world}", f"run.dir={run}", "learner.steps=6", "actors.count=2",
                 "reward.count=1"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    print("musicgen_tiny on Ray:", {k: summary[k] for k in ("kl_start", "kl_end", "wall_s", "groups_used")})
    assert summary["steps"] == 6 and summary["samples"] == 6 * 2 * 4
    assert summary["kl_end"] < summary["kl_start"], summary
    student = load_policy(run / "student")
    assert isinstance(student, MusicGenPolicy) and student.cfg.name == TINY
    assert load_weights(run / "student", "policy")[2]["codec"] is None


@pytest.mark.slow
def test_train_musicgen_tiny_local_resume_and_codec_check(tiny_world, tmp_path, capsys):
    from divcfg.cli import main
    args = ["train", *RUN, f"world.dir={tiny_world}", "learner.mode=local", "checkpoint.every=1",
            "logging.audio_every=0"]
    assert main(args + [f"run.dir={tmp_path / 'a'}", "learner.steps=1"]) == 0
    assert main(args + [f"run.dir={tmp_path / 'b'}", f"run.resume={tmp_path / 'a'}", "learner.steps=2"]) == 0
    from divcfg.common.storage.train_state import load_train_state
    state = load_train_state(tmp_path / "b" / "checkpoints" / "step_000002")
    assert state["version"] == 2
    # Resuming a MusicGen run with another model is refused.
    assert main(args + [f"run.dir={tmp_path / 'c'}", f"run.resume={tmp_path / 'a'}", "learner.steps=2",
                        "model.train_layers=1"]) == 2
    assert "model.train_layers=1 conflicts with the resumed run's model.train_layers=0" in capsys.readouterr().err
    # Too many frames for the model's positions, and a codec that isn't the model's own.
    assert main(args + [f"run.dir={tmp_path / 'd'}", "algo.n_frames=1000"]) == 2
    assert "algo.n_frames=1000" in capsys.readouterr().err
    # codec=world with a MusicGen policy: the sample rates differ, and the error says both.
    assert main(args + [f"run.dir={tmp_path / 'e'}", "codec=world"]) == 2
    err = capsys.readouterr().err
    assert "sample_rate=16000" in err and "trained on sample_rate=" in err
    assert main(["sample", str(tmp_path / "b" / "student"), "--codec", str(tiny_world / "codec"), "--frames", "4",
                 "--out", str(tmp_path / "w")]) == 2
    assert "decode and encode with the model's own EnCodec" in capsys.readouterr().err


# ---- FSDP over MusicGen: two gloo workers make the one-learner update -----------------------------------------------
FSDP_KW = dict(beta=2.0, guidance_scale=3.0, lr=1e-2, baseline="loo", is_clip=2.0, grad_clip=1.0, kl_reduction="sum")


def _fsdp_batch(spec, n_groups=3, g=2):
    """``n_groups`` groups of the base policy's samples, log-probs perturbed (importance weights vary) and rewards
    random (the policy gradient has something to push)."""
    from divcfg.common.record import RolloutBatch
    policy, rng, groups = spec(), np.random.default_rng(0), []
    with torch.no_grad():
        for i in range(n_groups):
            prompt = PROMPTS[i % 2]
            out = policy.generate(policy.encode_condition([prompt] * g), 6, generator=torch.Generator().manual_seed(i))
            lp = out.logprobs.numpy() + rng.normal(0, 0.15, out.logprobs.shape).astype(np.float32)
            groups.append(new_group(prompt_id=i, prompt=prompt, group_id=i, codes=out.codes.numpy(), logprobs=lp,
                                    policy_version=0, generate_s=0.0)
                          .with_fields(diversity_reward=rng.uniform(0, 2, g).astype(np.float32)))
    return RolloutBatch.concat(groups)


def _fsdp_worker(rank, workers, init_method, spec, batch):
    from divcfg.learner.group import LearnerGroupWorker, LearnerSpec, split_groups
    worker = LearnerGroupWorker(LearnerSpec(spec, FSDP_KW, "musicgen"), rank, workers, init_method, shard="fsdp")
    teacher_t5 = all(a is b for a, b in zip(worker.learner.student.text_encoder.parameters(),
                                            worker.learner.teacher.text_encoder.parameters()))
    metrics = worker.step(split_groups(batch, 2, workers)[rank], 2, len(batch))
    return metrics, worker.weights(), teacher_t5


@pytest.mark.parametrize("train_layers", [0, 1])
def test_fsdp_over_musicgen_makes_the_one_learner_update(train_layers):
    """learner.shard=fsdp with model.family=musicgen (in divcfg's decoder: one root unit), the frozen T5 (and
    the layers below train_layers) stay whole and shared with the teacher, and two workers on 2 + 1 groups take the
    step one learner takes on the whole batch."""
    from divcfg.learner.group import spawn_workers
    spec = MusicGenSpec(TINY, train_layers=train_layers, text_max_len=96, seed=0)
    batch = _fsdp_batch(spec)
    [(metrics, weights, shared), (_, none, shared1)] = spawn_workers(_fsdp_worker, 2, spec, batch)
    reference = Learner(spec(), **FSDP_KW)
    ref = reference.step(batch, 2)
    assert shared and shared1 and none is None
    expected = reference.weights()
    assert set(weights) == set(expected)
    moved = 0
    for k, v in expected.items():
        np.testing.assert_allclose(weights[k], v, atol=2e-5, rtol=1e-4, err_msg=k)
        moved += int(not np.array_equal(v, spec().trainable_state_dict()[k].numpy()))
    assert moved > 0  # the step changed the trained tensors, so agreeing means something
    assert "losses/pg" in ref and 0.5 < ref["rollout/is_weight_mean"] < 2.0
    for key, value in ref.items():
        if key.startswith(("losses/", "rollout/")):
            assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
