"""The scheduler's books and admission rule on fake roles, without Ray.

The fakes behave as Ray does where it matters: an actor's call sees the weights it held when the call was made
(Ray runs an actor's calls in submission order), a call on a dead member raises, and calls finish oldest first
unless a test holds one back.
"""
import pytest

from divcfg.job.books import PromptStream
from divcfg.job.recovery import RoleFailures
from divcfg.job.scheduler import Scheduler

from fakes import Died, FakeActor, FakeLearner, FakeMembers, FakeReward

PROMPTS = [f"prompt {i}" for i in range(5)]


@pytest.fixture(autouse=True)
def no_stalls(monkeypatch):
    """The scheduler pauses only when nothing is in flight and admission allows no launch: with fakes that never wait
    for resources, that is a stall forever."""
    def stalled(self):
        raise AssertionError("scheduler stalled: nothing in flight and no room to launch")
    monkeypatch.setattr(Scheduler, "pause", stalled)


def run(actors, rewards, steps, prompts=PROMPTS, group_size=2, **kw):
    learner = FakeLearner()
    members = FakeMembers(actors, rewards, group_size, learner)
    stream = PromptStream(prompts, 0)
    sched = Scheduler(learner, members, stream, group_size=group_size, **kw)
    members.stale_by_step = []  # stale count after each step, before the end of the run counts what is left
    acct = sched.run(steps, lambda i, batch, metrics, acct: members.stale_by_step.append(acct.stale))
    used = [p for ids in learner.used for p in ids]
    return acct, learner, members, stream, used


def balanced(acct, stream, used):
    assert acct.generated == acct.used + acct.stale + acct.dropped
    assert stream.position == acct.generated + acct.unfinished
    assert len(used) == len(set(used)) == acct.used


def test_sync_books_hand_counted():
    acct, learner, members, stream, used = run([FakeActor("a")], [FakeReward()], 3, batch_prompts=2, max_lag=0,
                                               mode="sync")
    assert learner.used == [[0, 1], [2, 3], [4, 5]]  # stream positions, each step the next two
    assert (acct.generated, acct.used, acct.stale, acct.dropped, acct.unfinished) == (6, 6, 0, 0, 0)
    assert acct.lags == [0] * 6 and stream.position == 6
    assert members.launches == [(1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2)]  # never ahead of the learner


def test_async_admission_never_launches_past_the_lag_bound():
    """Launched groups never exceed (version + max_lag + 1) x batch_prompts, and no group trains at a larger lag."""
    acct, learner, members, stream, used = run([FakeActor(n) for n in "abc"], [FakeReward()], 6, batch_prompts=2,
                                               max_lag=1, mode="async", queue_groups=8)
    assert all(n <= (version + 1 + 1) * 2 for n, version in members.launches)
    assert max(n for n, _ in members.launches) == 14  # the bound is reached: 2 x (6 versions + 1) at the end
    assert max(acct.lags) == 1 and acct.used == 12
    balanced(acct, stream, used)


def test_a_group_that_comes_back_too_late_is_stale_and_never_used():
    """Actor a's first group (prompt 0, version 0) is held back for 6 settles: b's generation and scoring of prompts
    1, 2 and 3 train the learner to version 3 first. At max_lag 1 it arrives stale (in step 3) and is never used."""
    acct, learner, members, stream, used = run([FakeActor("a", hold=6), FakeActor("b")], [FakeReward()], 4,
                                               batch_prompts=1, max_lag=1, mode="async")
    assert members.stale_by_step == [0, 0, 0, 1] and 0 not in used
    assert learner.used == [[1], [2], [3], [4]]
    assert max(acct.lags) <= 1
    balanced(acct, stream, used)


def test_dropped_and_stale_groups_free_their_launch_slots():
    """Groups whose reward failed never reach the learner: the run goes on with new prompts (it would stall if
    wasted groups kept their admission slots)."""
    acct, learner, members, stream, used = run([FakeActor("a")], [FakeReward(drop={0, 1, 2})], 3, batch_prompts=1,
                                               max_lag=1, mode="async")
    assert acct.dropped == 3 and learner.used == [[3], [4], [5]]
    balanced(acct, stream, used)


def test_a_dead_actors_groups_are_requeued_none_lost_none_used_twice():
    """Actor a dies on its second call, which carried prompts 2 and 3: both go back to the queue and a fresh actor
    (synced to the newest weights) generates them; the failure is counted once."""
    acct, learner, members, stream, used = run([FakeActor("a", dies_on_call=2)], [FakeReward()], 3,
                                               batch_prompts=2, max_lag=0, mode="sync", groups_per_call=2)
    assert learner.used == [[0, 1], [2, 3], [4, 5]]
    assert acct.requeued == 2 and acct.failures == {"rollout": 1}
    (spare,) = members.replaced_by.values()
    assert spare.calls == 2 and acct.lags == [0] * 6  # it took over with version 1 before its first group
    balanced(acct, stream, used)


def test_a_dead_reward_workers_groups_are_scored_again():
    acct, learner, members, stream, used = run([FakeActor("a"), FakeActor("b")], [FakeReward(dies_on_call=1)], 3,
                                               batch_prompts=2, max_lag=1, mode="async")
    assert acct.failures == {"reward": 1} and acct.dropped == 0 and acct.used == 6
    balanced(acct, stream, used)


def test_consecutive_failures_stop_the_run():
    class AlwaysDies(FakeMembers):
        def add_actor(self):
            if self.added == 10:
                raise AssertionError("10 actors died in a row and the run goes on")
            actor = super().add_actor()
            actor.dies_on_call = 1
            return actor

    learner = FakeLearner()
    members = AlwaysDies([FakeActor("a", dies_on_call=1)], [FakeReward()], 2, learner)
    events = []
    sched = Scheduler(learner, members, PromptStream(PROMPTS, 0), batch_prompts=1, group_size=2, max_lag=1,
                      mode="sync", max_role_failures=3, on_event=events.append)
    with pytest.raises(RoleFailures, match="3 consecutive rollout failures"):
        sched.run(1, lambda *a: None)
    assert events == [f"rollout failure {n} in a row: Died" for n in (1, 2, 3)]
    # Prompt 0 went to each dying actor in turn and is back in the queue: drawn once, never lost.
    assert sched.acct.requeued == 3 and list(sched.flight.requeue) == [(0, PromptStream(PROMPTS, 0).at(0))]


def test_a_success_resets_the_failure_count():
    """Every actor dies on its second call, so failures alternate with successes: two in a row never happen and a
    limit of 2 never stops the run."""
    class DiesOnSecondCall(FakeMembers):
        def add_actor(self):
            actor = super().add_actor()
            actor.dies_on_call = 2
            return actor

    learner = FakeLearner()
    members = DiesOnSecondCall([FakeActor("a", dies_on_call=2)], [FakeReward()], 2, learner)
    stream = PromptStream(PROMPTS, 0)
    acct = Scheduler(learner, members, stream, batch_prompts=1, group_size=2, max_lag=0, mode="sync",
                     max_role_failures=2).run(4, lambda *a: None)
    assert acct.failures == {"rollout": 3} and learner.used == [[0], [1], [2], [3]]
    balanced(acct, stream, [p for ids in learner.used for p in ids])


def test_drain_counts_what_is_in_flight_at_the_end():
    """The last step's launches are still in flight when the run ends: they are generated but stale, and a prompt on
    an actor that died after the last step is unfinished, not lost."""
    acct, learner, members, stream, used = run([FakeActor("a"), FakeActor("b", dies_on_call=3)], [FakeReward()], 2,
                                               batch_prompts=1, max_lag=2, mode="async")
    assert acct.used == 2 and acct.stale + acct.unfinished > 0
    balanced(acct, stream, used)


def test_a_learner_lost_while_its_checkpoint_is_saved_goes_back_to_the_last_complete_one():
    """``on_step`` saves the checkpoint, which reads the learner's state from its workers: a worker lost then
    raises there. The run goes back to the last complete checkpoint (after step 1) as for a loss in ``step``, redoes
    step 2 and ends with balanced books and every prompt used once."""
    learner = FakeLearner()
    learner.failure = (Died,)
    members = FakeMembers([FakeActor("a")], [FakeReward()], 2, learner)
    stream = PromptStream(PROMPTS, 0)
    saved, steps_done, events = {}, [], []

    def on_step(i, batch, metrics, acct):
        if i == 1 and not saved.get("lost"):
            saved["lost"] = True
            raise Died("learner worker, during the checkpoint of step 2")
        steps_done.append(i)
        if i == 0:  # the checkpoint after step 1: what recover() restores
            saved.update(position=stream.position, used=list(learner.used), outstanding=list(acct.outstanding),
                         books={k: getattr(acct, k) for k in ("generated", "used", "stale", "dropped", "requeued")})

    def recover():
        learner.used, learner.version = list(saved["used"]), 1
        stream.position = saved["position"]
        return 1, saved["outstanding"], saved["books"]

    sched = Scheduler(learner, members, stream, batch_prompts=2, group_size=2, max_lag=0, mode="sync",
                      recover=recover, on_event=events.append)
    acct = sched.run(3, on_step)
    used = [p for ids in learner.used for p in ids]
    assert steps_done == [0, 1, 2] and acct.failures == {"learner": 1}
    assert any(e.startswith("learner restart 1: back to step 1") for e in events)
    assert learner.used == [[0, 1], [2, 3], [4, 5]]
    balanced(acct, stream, used)
