"""`divcfg train` in Ray mode, stopped after a few steps and resumed: the prompts the first run had drawn but not
used are generated first, none is lost or used twice, and the step count goes on from the checkpoint."""
import numpy as np
import pytest

from divcfg.common.storage.train_state import load_train_state
from divcfg.learner.learner import Learner

# In the default suite (two short `divcfg train` runs on a local Ray instance, 1-2 minutes on 2 cores): resume in
# Ray mode is the path a preempted cluster job takes.
pytestmark = [pytest.mark.ray]


@pytest.fixture
def used_prompts(monkeypatch):
    """The stream positions of the groups each learner step trains on (the learner runs in the driver)."""
    steps: list[list[int]] = []
    step = Learner.step

    def recording(self, batch, group_size):
        steps.append(sorted(int(p) for p in np.unique(batch.prompt_id)))
        return step(self, batch, group_size)

    monkeypatch.setattr(Learner, "step", recording)
    return steps


def test_ray_resume_replays_outstanding_prompts_and_continues_the_step_count(tiny_world, tmp_path, used_prompts):
    from divcfg.cli import main
    run = tmp_path / "run"
    # One actor and one reward worker: groups reach the learner in the order they were launched. The learner in the
    # driver, so that the fixture's patch of Learner.step sees every step (a learner group's workers are processes
    # of their own); where the learner runs does not change the books or the stream this test is about.
    args = ["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={run}", "learner.mode=async",
            "learner.placement=driver",
            "actors.count=1", "actors.num_cpus=0.5", "actors.groups_per_call=1", "reward.count=1",
            "reward.num_cpus=0.5", "algo.batch_prompts=2", "algo.group_size=2", "algo.max_policy_lag=2",
            "checkpoint.every=1", "probe.prompts=1", "probe.samples=2", "logging.progress=false",
            "logging.audio_every=0", "algo.lr_schedule=constant"]  # constant: the resume below extends the run
    assert main(args + ["learner.steps=2"]) == 0
    first_run = [p for step in used_prompts for p in step]
    saved = load_train_state(run / "checkpoints" / "step_000002")
    outstanding, position = saved["accounting"]["outstanding"], saved["stream_position"]
    # Async admission draws ahead of the learner: the stop leaves prompts drawn but not used.
    assert outstanding and sorted(first_run + outstanding) == list(range(position))

    used_prompts.clear()
    assert main(args + ["run.resume=auto", "learner.steps=4"]) == 0
    # The first step of the resumed run replays them first: with one left outstanding (how many depends on how far
    # the actor ran ahead), that step takes it and the stream's next prompt.
    assert set(sorted(outstanding)[:2]) <= set(used_prompts[0])
    second_run = [p for step in used_prompts for p in step]
    assert len(used_prompts) == 2 and not set(first_run) & set(second_run)
    end = load_train_state(run / "checkpoints" / "step_000004")
    assert end["step"] == 4 and end["version"] == 4
    # Nothing lost across the stop: every drawn position was used once or is still outstanding.
    assert sorted(first_run + second_run + end["accounting"]["outstanding"]) == list(range(end["stream_position"]))
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*"))[-1] == "step_000004"
