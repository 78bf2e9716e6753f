"""End-to-end runs of the real entry points on the tiny world. Slow: `make test-slow`."""
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_world_build_is_complete_and_cached(tiny_world):
    from divcfg.common.data.captions import ATTRIBUTES
    from divcfg.common.data.world_dir import WorldError
    from divcfg.world.build import build_world
    info = json.loads((tiny_world / "world.json").read_text())
    for key in ("adherence_cfg1", "adherence_cfg3", "diversity_cfg1", "diversity_cfg3", "embedder_recall_at_1",
                "scorer_accuracy", "codec_distinct_codes", "stage_seconds"):
        assert key in info
    assert min(info["codec_distinct_codes"]) > 1
    assert info["pretrain_loss"]["last"] < info["pretrain_loss"]["first"]
    assert set(info["heldout_nll"]) == {"cond", "null"} and 0 < info["adherence_real"] <= 1
    nll = info["heldout_nll"]
    assert info["prompt_nats_per_clip"] == pytest.approx((nll["null"] - nll["cond"]) * 4 * 50, rel=1e-4)
    assert info["adherence_gap_se"] > 0  # paired over the measured prompts
    assert info["diversity_gap"] == pytest.approx(info["diversity_cfg3"] - info["diversity_cfg1"])
    assert info["diversity_gap_se"] > 0
    # The text encoder learned to read the captions before it was frozen. A caption leaves about two thirds of the
    # attributes free, so always answering "not described" would score about 0.67; 0.9 needs reading the words.
    assert set(info["text_encoder_accuracy"]) == set(ATTRIBUTES) and min(info["text_encoder_accuracy"].values()) > 0.9
    chance = np.mean([1 / len(ATTRIBUTES[a]) for a in ATTRIBUTES])
    assert np.mean(list(info["scorer_accuracy"].values())) > chance
    again = build_world(tiny_world, "tiny", seed=0, progress=False)  # every stage cached
    assert again["adherence_cfg1"] == info["adherence_cfg1"]
    with pytest.raises(WorldError, match="built with .*'seed': 0.*not .*'seed': 1"):
        build_world(tiny_world, "tiny", seed=1, progress=False)


def test_world_embedders_tell_clips_apart(tiny_world):
    """Chunks of one held-out clip are closer to each other than to chunks of other clips, for both embedders."""
    import torch

    from divcfg.common.data.tokens import read_tokens
    from divcfg.reward.judges import Judges
    from divcfg.reward.views import random_chunk_pairs
    judges = Judges.load(tiny_world)
    wav = judges.decode(read_tokens(tiny_world / "heldout.parquet").codes)
    for which, model in (("reward", judges.reward_embedder), ("eval", judges.eval_embedder)):
        a, b = random_chunk_pairs(wav, model.cfg.chunk_samples, torch.Generator().manual_seed(0))
        ea, eb = judges.embed(a, which), judges.embed(b, which)
        sim = ea @ eb.T
        positive = sim.diagonal().mean()
        negative = (sim.sum() - sim.diagonal().sum()) / (sim.numel() - len(sim))
        assert positive > negative, which


def _tags(run_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tags = set()
    for events in (run_dir / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags



def _has_custom_scalars_layout(run_dir: Path) -> bool:
    """The layout TensorBoard's custom-scalars plugin reads, with the throughput category in it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2, metadata
    for events in (run_dir / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
        acc.Reload()
        if metadata.CONFIG_SUMMARY_TAG not in acc.Tags()["tensors"]:
            continue
        for event in acc.Tensors(metadata.CONFIG_SUMMARY_TAG):
            layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
            if any(c.title == "throughput" for c in layout.category):
                return True
    return False


@pytest.mark.ray
def test_train_on_ray_async(tiny_world, tmp_path, capsys):
    from divcfg.cli import main
    run = tmp_path / "run"
    assert main(["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={run}", "learner.steps=3",
                 "algo.beta=5", "actors.count=2", "reward.count=1", "logging.progress=false",
                 "autoscale.min=1", "autoscale.max=4"]) == 0
    # The target (2) went to the autoscaler: two actor bundles and one reward-worker bundle.
    assert "autoscaler asked for 2 rollout actor bundles {'CPU': 1.0} plus 1 reward worker bundles" in capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["samples"] == 3 * 4 * 4
    assert summary["groups_generated"] == summary["groups_used"] + summary["groups_stale"] + summary["groups_dropped"]
    tags = _tags(run)
    for tag in ("throughput/samples_per_s", "throughput/tokens_per_s", "losses/distill_kl", "losses/pg",
                "losses/total", "losses/grad_norm", "rewards/diversity_mean", "rollout/policy_lag_mean",
                "rollout/groups_stale", "rollout/actors", "time/teacher", "time/publish", "system/rss_mb",
                "throughput/tokens_per_s_per_actor", "throughput/learner_tokens_per_s"):
        assert tag in tags, tag
    assert _has_custom_scalars_layout(run)


def test_train_local_and_resume(tiny_world, tmp_path):
    from divcfg.cli import main
    run = tmp_path / "run"
    # A constant rate, which a resume may extend (a cosine run keeps its length: the next test)
    args = ["train", "world.size=tiny", f"world.dir={tiny_world}", "learner.mode=local", "logging.progress=false",
            "checkpoint.every=1", "algo.lr_schedule=constant"]
    assert main(args + [f"run.dir={run}", "learner.steps=2"]) == 0
    # The job's parts (setup, first probe, loop, finish) are its whole time but for the moments between them
    s = json.loads((run / "summary.json").read_text())
    parts = s["setup_s"] + s["probe_start_s"] + s["wall_s"] + s["finish_s"]
    assert min(s["setup_s"], s["probe_start_s"], s["finish_s"]) > 0 and 0.95 * s["job_s"] <= parts <= s["job_s"], s
    assert main(args + [f"run.dir={tmp_path / 'run2'}", f"run.resume={run}", "learner.steps=4"]) == 0
    ckpts = sorted(p.name for p in (tmp_path / "run2" / "checkpoints").glob("step_*"))
    assert ckpts[-1] == "step_000004"
    from divcfg.common.storage.train_state import load_train_state
    state = load_train_state(tmp_path / "run2" / "checkpoints" / "step_000004")
    assert state["version"] == 4 and state["stream_position"] == 4 * 4


def test_auto_resume_in_place_keeps_a_cosine_runs_length(tiny_world, tmp_path, capsys):
    """Resumed in its own directory, whose .hydra/config.yaml each invocation rewrites, a run is still checked
    against what it trained with: the checkpoint's own config."""
    from divcfg.cli import main
    run = tmp_path / "run"
    args = ["train", "world.size=tiny", f"world.dir={tiny_world}", "learner.mode=local", "logging.progress=false",
            "checkpoint.every=1", f"run.dir={run}"]
    assert main(args + ["learner.steps=2"]) == 0  # the cosine rate, the default
    saved = (run / "checkpoints" / "step_000002" / "train_state.json").read_bytes()
    assert main(args + ["run.resume=auto", "learner.steps=3"]) == 2
    assert "learner.steps=3 conflicts with the resumed run's learner.steps=2" in capsys.readouterr().err
    assert main(args + ["run.resume=auto", "algo.beta=15"]) == 2
    assert "algo.beta=15.0 conflicts with the resumed run's algo.beta=0.0" in capsys.readouterr().err
    assert (run / "checkpoints" / "step_000002" / "train_state.json").read_bytes() == saved


def test_train_never_starts_over_a_run_and_auto_resume_continues_it(tiny_world, tmp_path, capsys):
    from divcfg.cli import main
    run = tmp_path / "run"
    args = ["train", "world.size=tiny", f"world.dir={tiny_world}", "learner.mode=local", "logging.progress=false",
            "checkpoint.every=1", f"run.dir={run}", "algo.lr_schedule=constant"]  # constant: a resume may extend it
    assert main(args + ["run.resume=auto", "learner.steps=2"]) == 0  # nothing to continue yet: a fresh start
    saved = (run / "checkpoints" / "step_000002" / "train_state.json").read_bytes()
    assert main(args + ["learner.steps=3"]) == 2  # a fresh start here would overwrite step_000002
    assert f"run.dir={run} already holds a run (checkpoint step_000002)" in capsys.readouterr().err
    assert (run / "checkpoints" / "step_000002" / "train_state.json").read_bytes() == saved
    assert main(args + ["run.resume=auto", "learner.steps=3"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


def test_train_multirun_gives_each_job_its_own_run_dir(tiny_world, tmp_path):
    from divcfg.cli import main
    sweep = tmp_path / "sweep"
    assert main(["train", "--multirun", "world.size=tiny", f"world.dir={tiny_world}", "learner.mode=local",
                 "logging.progress=false", f"run.dir={sweep}", "learner.steps=1", "probe.prompts=2",
                 "algo.beta=0,5"]) == 0
    betas = [json.loads((sweep / str(i) / "summary.json").read_text())["beta"] for i in (0, 1)]
    assert betas == [0.0, 5.0]
    assert not (sweep / "checkpoints").exists() and not (sweep / "summary.json").exists()


def test_train_bad_inputs(tiny_world, tmp_path, capsys):
    from divcfg.cli import main
    base = ["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={tmp_path / 'r'}", "learner.mode=local"]
    assert main(base + ["algo.beta=-1"]) == 2
    assert "algo.beta=-1.0: must be >= 0" in capsys.readouterr().err
    assert main(base + ["algo.beta=5", "algo.group_size=1"]) == 2
    assert "algo.group_size=1: must be >= 2 when algo.beta=5.0" in capsys.readouterr().err
    assert main(base + ["algo.guidance_scale=0.5"]) == 2
    assert "the CFG teacher needs" in capsys.readouterr().err
    assert main(base + [f"run.resume={tmp_path / 'nope'}"]) == 2
    assert "no such run directory" in capsys.readouterr().err
    assert main(base + ["algo.nonsense=1"]) != 0


def test_eval_merge_and_sample_on_tiny_checkpoints(tiny_world, tmp_path):
    import wave

    from divcfg.cli import main
    base = tiny_world / "base"
    run = tmp_path / "run"
    assert main(["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={run}", "learner.mode=local",
                 "learner.steps=2", "logging.progress=false"]) == 0
    assert main(["merge", str(base), str(run / "student"), "--lam", "0.5", "--out", str(tmp_path / "merged")]) == 0
    out = tmp_path / "eval"
    assert main(["eval", str(run / "student"), str(tmp_path / "merged"), "--world", str(tiny_world), "--gammas",
                 "1,3", "--merge", str(base), str(run / "student"), "--lams", "0,1", "--prompts", "2",
                 "--samples", "4", "--out", str(out)]) == 0
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["cfg", "cfg", "model", "model", "merge", "merge"]
    assert [r["forward_passes_per_token"] for r in rows[:3]] == [1, 2, 1]
    assert (out / "eval.csv").read_text().startswith("name,kind,guidance_scale")
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg
    assert mpimg.imread(out / "pareto.png").shape[2] in (3, 4)
    # λ = 0 of (base, student) is the base model: same samples, same scores as base without CFG.
    assert rows[4]["adherence"] == pytest.approx(rows[0]["adherence"]) and rows[4]["diversity"] == pytest.approx(rows[0]["diversity"])
    assert main(["sample", str(tmp_path / "merged"), "--prompt", "a fast melody", "--n", "2", "--out",
                 str(tmp_path / "wav")]) == 0
    for name in ("p000_s00.wav", "p000_s01.wav"):
        with wave.open(str(tmp_path / "wav" / name)) as w:
            assert w.getnframes() > 0


def test_heldout_embedder_is_not_the_reward_embedder(tiny_world):
    import torch

    from divcfg.reward.judges import Judges
    judges = Judges.load(tiny_world)
    wav = torch.randn(2, 16000) * 0.1
    assert not torch.allclose(judges.embed(wav, "reward"), judges.embed(wav, "eval"))


@pytest.mark.ray
@pytest.mark.parametrize("role", ["actors", "reward"])
def test_more_gpus_than_the_cluster_has_is_refused_before_work(tiny_world, tmp_path, capsys, role):
    from divcfg.cli import main
    run = tmp_path / "run"
    assert main(["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={run}",
                 f"{role}.num_gpus=1", "logging.progress=false"]) == 2
    assert f"{role}.num_gpus=1" in capsys.readouterr().err
    assert not (run / "tb").exists()


def test_unreachable_cluster_address_is_refused_quickly(tiny_world, tmp_path, capsys):
    import socket
    import time

    from divcfg.cli import main
    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    assert main(["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={tmp_path / 'run'}",
                 f"run.ray_address=127.0.0.1:{port}", "logging.progress=false"]) == 2
    assert f"127.0.0.1:{port}" in capsys.readouterr().err
    assert time.perf_counter() - start < 60


def test_driver_killed_at_a_random_step_resumes_where_it_stopped(tiny_world, tmp_path):
    """SIGKILL the `divcfg train` driver once a random step's checkpoint is complete, resubmit with resume: the step
    counter, optimizer state and prompt position continue from the last complete checkpoint. Local mode keeps the
    prompt position exact (Ray modes draw prompts ahead of use); the checkpoint code is the same in every mode."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    run, run2 = tmp_path / "run", tmp_path / "run2"
    common = ["world.size=tiny", f"world.dir={tiny_world}", "logging.progress=false", "checkpoint.every=1",
              "checkpoint.keep=20", "probe.prompts=2", "probe.samples=2", "learner.mode=local"]
    stop_after = random.Random(233).randint(2, 4)  # seeded: a failure reruns at the same step
    proc = subprocess.Popen([sys.executable, "-m", "divcfg", "train", *common, f"run.dir={run}", "learner.steps=8"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    marker = run / "checkpoints" / f"step_{stop_after:06d}" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists(), "the run ended or timed out before the chosen step"
    last = sorted(p for p in (run / "checkpoints").glob("step_*") if (p / "COMPLETE").is_file())[-1]
    done = int(last.name.split("_")[1])
    assert done >= stop_after and done < 8
    from divcfg.common.storage.train_state import load_train_state
    before = load_train_state(last)

    from divcfg.cli import main
    assert main(["train", *common, f"run.dir={run2}", f"run.resume={run}", "learner.steps=8"]) == 0
    ckpts = sorted(int(p.name.split("_")[1]) for p in (run2 / "checkpoints").glob("step_*"))
    assert ckpts == list(range(done + 1, 9))  # nothing repeated, nothing skipped
    first = load_train_state(run2 / "checkpoints" / f"step_{done + 1:06d}")
    assert first["version"] == before["version"] + 1
    assert first["stream_position"] == before["stream_position"] + 4  # one step of 4 prompts later
    # Adam's step count went on from the checkpoint's instead of starting again.
    steps_before = next(iter(before["optimizer"]["state"].values()))["step"]
    steps_after = next(iter(first["optimizer"]["state"].values()))["step"]
    assert float(steps_after) == float(steps_before) + 1
