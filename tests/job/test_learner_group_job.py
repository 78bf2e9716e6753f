"""`divcfg train` with the learner off the driver (learner.placement=group): a learner worker killed mid-run is
rebuilt from the last checkpoint, the prompts drawn but not used then are replayed, and the run finishes with the
books balanced and the step count right."""
import json
import threading
import time

import pytest
from test_scheduler import Died, FakeActor, FakeLearner, FakeMembers, FakeReward, balanced, no_stalls  # noqa: F401

from divcfg.common.storage.train_state import load_train_state
from divcfg.job.books import PromptStream
from divcfg.job.recovery import RoleFailures
from divcfg.job.scheduler import Scheduler

PROMPTS = [f"prompt {i}" for i in range(5)]


class DyingLearner(FakeLearner):
    """Raises ``Died`` (as a lost learner worker's call does) on the step calls in ``dies_on``; ``restore`` puts
    back a checkpoint's version, as the rebuilt group's load_state does."""

    failure = (Died,)

    def __init__(self, dies_on=()):
        super().__init__()
        self.dies_on, self.calls = set(dies_on), 0

    def step(self, batch, group_size):
        self.calls += 1
        if self.calls in self.dies_on:
            raise Died("learner worker 1")
        return super().step(batch, group_size)


def run_with_checkpoints(learner, steps, every, recover_dies: int = 0, max_role_failures: int = 2, **kw):
    """The scheduler over fakes, with an in-memory checkpoint every ``every`` steps holding what run_dir.py saves
    (step, version, stream position, books); ``recover`` goes back to the newest one, as train.py's does."""
    members = FakeMembers([FakeActor("a")], [FakeReward()], 2, learner)
    stream = PromptStream(PROMPTS, 0)
    saved = [{"step": 0, "version": 0, "position": 0, "books": {}, "outstanding": []}]
    on_step_calls = []

    def on_step(i, batch, metrics, acct):
        on_step_calls.append(i)
        if (i + 1) % every == 0:
            saved.append({"step": i + 1, "version": learner.version, "position": stream.position,
                          "books": {k: v for k, v in vars(acct).items() if k != "lags"},
                          "outstanding": list(acct.outstanding)})

    dies = [recover_dies]

    def recover():
        if dies[0]:  # the rebuilt group lost a worker while it loaded the checkpoint
            dies[0] -= 1
            raise Died("learner worker 1, while the group was rebuilt")
        ck = saved[-1]
        learner.version, stream.position = ck["version"], ck["position"]
        return ck["step"], ck["outstanding"], dict(ck["books"])
    sched = Scheduler(learner, members, stream, group_size=2, recover=recover, max_role_failures=max_role_failures,
                      **kw)
    return sched.run(steps, on_step), stream, on_step_calls


def test_a_lost_learner_goes_back_to_the_last_checkpoint_hand_counted():
    """Sync, 2 groups a step: the 4th step call dies (prompts 6 and 7). The checkpoint at step 2 had drawn 4 prompts
    and used all of them; steps 3 and 4 are done again from it, on prompts 4-7, and the books count them once."""
    learner = DyingLearner(dies_on={4})
    acct, stream, on_step_calls = run_with_checkpoints(learner, 4, 2, batch_prompts=2, max_lag=0, mode="sync")
    assert learner.used == [[0, 1], [2, 3], [4, 5], [4, 5], [6, 7]]  # step 3's update was lost with the worker
    assert on_step_calls == [0, 1, 2, 2, 3] and learner.version == 4
    assert (acct.generated, acct.used, acct.stale, acct.dropped, acct.unfinished) == (8, 8, 0, 0, 0)
    assert stream.position == 8 and acct.failures == {"learner": 1}


def test_async_recovery_replays_the_outstanding_prompts_and_balances_the_books():
    learner = DyingLearner(dies_on={3, 6})
    acct, stream, on_step_calls = run_with_checkpoints(learner, 5, 2, batch_prompts=1, max_lag=1, mode="async")
    assert on_step_calls[-1] == 4 and learner.version == 5 and acct.failures == {"learner": 2}
    # What the final learner holds: the steps after the last rollback plus those before its checkpoint.
    assert acct.used == 5
    assert acct.generated == acct.used + acct.stale + acct.dropped
    assert stream.position == acct.generated + acct.unfinished


def test_a_learner_lost_again_while_it_is_rebuilt_is_retried_and_counted():
    """A second worker lost during the rebuild (a wave of preemptions) is one more failure in a row, and the rebuild
    is tried again; the run ends as the hand-counted single loss does. At max_role_failures it stops the run."""
    learner = DyingLearner(dies_on={4})
    acct, stream, on_step_calls = run_with_checkpoints(learner, 4, 2, recover_dies=1, max_role_failures=3,
                                                       batch_prompts=2, max_lag=0, mode="sync")
    assert learner.used == [[0, 1], [2, 3], [4, 5], [4, 5], [6, 7]] and on_step_calls == [0, 1, 2, 2, 3]
    assert acct.failures == {"learner": 2} and learner.version == 4
    assert (acct.generated, acct.used, acct.stale, acct.dropped, acct.unfinished) == (8, 8, 0, 0, 0)
    with pytest.raises(RoleFailures, match="2 consecutive learner failures"):
        run_with_checkpoints(DyingLearner(dies_on={4}), 4, 2, recover_dies=1, batch_prompts=2, max_lag=0,
                             mode="sync")


def test_a_learner_lost_max_role_failures_times_in_a_row_stops_the_run():
    learner = DyingLearner(dies_on={2, 3})
    with pytest.raises(RoleFailures, match="2 consecutive learner failures"):
        run_with_checkpoints(learner, 4, 1, batch_prompts=1, max_lag=0, mode="sync")


@pytest.mark.ray
@pytest.mark.slow


def kill_a_learner_worker_after(checkpoints, killed: list, timeout_s: float = 600.0) -> threading.Thread:
    """Each time one of ``checkpoints`` is complete, kill learner worker 1 of the group then running (its actors are
    named learner-<group>-<rank>; a rebuilt group has a new name)."""
    def run():
        import ray
        deadline, last_kill = time.monotonic() + timeout_s, 0.0
        for checkpoint in checkpoints:
            # Written after the last kill: a checkpoint the run had made before it went back does not count (on a
            # loaded machine the run can be past step 4 when the kill after step 2 lands).
            marker = checkpoint / "COMPLETE"
            while time.monotonic() < deadline and not (marker.is_file() and marker.stat().st_mtime > last_kill):
                time.sleep(0.2)
            names: list[str] = []
            while time.monotonic() < deadline and not names:  # a group rebuilt after the last kill may still start
                names = [n for n in ray.util.list_named_actors() if n.startswith("learner-") and n.endswith("-1")
                         and n not in killed]
                time.sleep(0.0 if names else 0.2)
            if names:
                ray.kill(ray.get_actor(names[0]), no_restart=True)
                killed.append(names[0])
                last_kill = time.time()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_learner_worker_is_rebuilt_from_the_last_checkpoint(tiny_world, tmp_path):
    import ray  # noqa: F401 - imported here first: importing it in the killer thread while train() does races

    from divcfg.cli import main
    run = tmp_path / "run"
    steps, batch = 12, 2
    killed: list[str] = []
    # Three losses, each after a new checkpoint: each rebuilt group comes back from the newest one. The last kill
    # leaves 6 steps to run, so it lands inside the loop (a tiny-world step is a fraction of a second).
    thread = kill_a_learner_worker_after([run / "checkpoints" / f"step_{k:06d}" for k in (2, 4, 6)], killed)
    args = ["train", "world.size=tiny", f"world.dir={tiny_world}", f"run.dir={run}", "learner.mode=async",
            "learner.placement=group", "learner.workers=2", "learner.num_cpus=0.25", f"learner.steps={steps}",
            "actors.count=1", "actors.num_cpus=0.25", "reward.count=1", "reward.num_cpus=0.25",
            f"algo.batch_prompts={batch}", "algo.group_size=2", "algo.max_policy_lag=2", "checkpoint.every=2",
            "probe.prompts=1", "probe.samples=2", "logging.progress=false", "logging.audio_every=0"]
    assert main(args) == 0
    thread.join(timeout=5)
    assert len(killed) == 3
    summary = json.loads((run / "summary.json").read_text())
    shown = ("steps", "learner_restarts", "samples", "samples_redone", "groups_generated", "groups_used",
             "groups_stale", "groups_dropped", "wall_s")
    print("learner chaos:", json.dumps({k: summary[k] for k in shown}))
    assert summary["learner_restarts"] == 3 and summary["steps"] == steps
    # Steps trained again after a rollback count once in the kept samples; the work redone is counted beside them
    assert summary["samples"] == steps * batch * 2 and summary["samples_redone"] >= 0
    # Books: every step used one batch once; every generated group was used, stale or dropped.
    assert summary["groups_used"] == steps * batch
    assert summary["groups_generated"] == (summary["groups_used"] + summary["groups_stale"]
                                           + summary["groups_dropped"])
    end = load_train_state(run / "checkpoints" / f"step_{steps:06d}")
    assert end["step"] == steps and end["version"] == steps
    # Nothing lost, nothing twice: the drawn positions are the used ones plus the ones still outstanding.
    acct = end["accounting"]
    assert acct["used"] == steps * batch
    assert len(set(acct["outstanding"])) == len(acct["outstanding"])
